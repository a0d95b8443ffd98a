import Foundation
import ReinsTensor

/// Llama-family models, their tokenizers and chat templates read from GGUF files (llama.cpp's format), as Hugging
/// Face checkpoints: the `llama.*` / `qwen2.*` metadata becomes a `config.json`, tensor names become the model's keys,
/// and the query and key rows that llama.cpp's converter reorders for its rotary layout are put back in Hugging Face's
/// order. Wherever Reins takes `--model DIR` it also takes `--model FILE.gguf`.
public enum GGUFModel {
    /// True when `path` is a regular file that starts with GGUF's magic.
    public static func isGGUF(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
            let h = FileHandle(forReadingAtPath: path)
        else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    /// The architectures Reins builds from GGUF, by `general.architecture`.
    static let families: [String: (modelType: String, architecture: String, permutesQK: Bool)] = [
        "llama": ("llama", "LlamaForCausalLM", true),
        "qwen2": ("qwen2", "Qwen2ForCausalLM", false),
        "gpt2": ("gpt2", "GPT2LMHeadModel", false),
        "bert": ("bert", "BertModel", false),
    ]

    /// llama.cpp's row order for a rotary projection (query or key) of `rows` rows over `heads` heads: the stored row
    /// of each Hugging Face row (stored row h·hs + 2i + j holds Hugging Face's h·hs + j·hs/2 + i); nil when the rows
    /// are not whole pairs per head.
    static func rotaryStoredRows(rows: Int, heads: Int) -> [Int]? {
        guard heads > 0, rows % (2 * heads) == 0 else { return nil }
        let hs = rows / heads, half = hs / 2
        var stored = [Int](repeating: 0, count: rows)
        for h in 0..<heads {
            for i in 0..<half { for j in 0..<2 { stored[h * hs + j * half + i] = h * hs + 2 * i + j } }
        }
        return stored
    }

    /// Rows of a row-major `[rows, columns]` array moved by `stored` (``rotaryStoredRows(rows:heads:)``): to
    /// llama.cpp's order (`toStored`), or back to Hugging Face's.
    static func movingRotaryRows(_ values: [Float], columns: Int, stored: [Int], toStored: Bool) -> [Float] {
        var out = values
        for (hf, s) in stored.enumerated() {
            let (to, from) = toStored ? (s * columns, hf * columns) : (hf * columns, s * columns)
            for c in 0..<columns { out[to + c] = values[from + c] }
        }
        return out
    }

    /// Every tensor a GGUF file of architecture `arch` may hold, as (model key, GGUF name), for `layers` blocks; the
    /// keys are the base model's own (GPT-2's and BERT's without their `transformer.` / `bert.` prefix).
    static func tensorNames(arch: String, layers: Int) -> [(key: String, gguf: String)] {
        let top: [(String, String)], block: [(String, String)], blockPrefix: String
        switch arch {
        case "gpt2":
            top = [("wte", "token_embd"), ("wpe", "position_embd"), ("ln_f", "output_norm")]
            blockPrefix = "h"
            block = [("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                     ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")]
        case "bert":
            top = [("embeddings.word_embeddings", "token_embd"), ("embeddings.position_embeddings", "position_embd"),
                   ("embeddings.token_type_embeddings", "token_types"), ("embeddings.LayerNorm", "token_embd_norm"),
                   ("pooler.dense", "cls")]
            blockPrefix = "encoder.layer"
            block = [("attention.self.query", "attn_q"), ("attention.self.key", "attn_k"), ("attention.self.value", "attn_v"),
                     ("attention.output.dense", "attn_output"), ("attention.output.LayerNorm", "attn_output_norm"),
                     ("intermediate.dense", "ffn_up"), ("output.dense", "ffn_down"), ("output.LayerNorm", "layer_output_norm")]
        default:
            top = [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")]
            blockPrefix = "model.layers"
            block = [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"), ("self_attn.q_proj", "attn_q"),
                     ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                     ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]
        }
        var names: [(String, String)] = []
        for suffix in ["weight", "bias"] {
            for (key, gguf) in top { names.append(("\(key).\(suffix)", "\(gguf).\(suffix)")) }
            for l in 0..<max(0, layers) {
                for (key, gguf) in block { names.append(("\(blockPrefix).\(l).\(key).\(suffix)", "blk.\(l).\(gguf).\(suffix)")) }
            }
        }
        return names
    }

    /// GPT-2's `Conv1D` weights are `[in, out]` in its checkpoints and `[out, in]` in GGUF.
    static func isTransposedInGGUF(arch: String, key: String) -> Bool {
        arch == "gpt2" && key.hasPrefix("h.") && key.hasSuffix(".weight")
            && (key.contains(".c_attn.") || key.contains(".c_proj.") || key.contains(".c_fc."))
    }

    /// The Hugging Face `config.json` a GGUF file's metadata describes.
    /// - Throws: ``GGUFError`` for missing metadata, ``ModelError/badConfig(path:detail:)`` naming an architecture or
    ///   option Reins does not build.
    public static func config(of file: GGUFFile) throws -> [String: Any] {
        let arch = try file.string("general.architecture")
        guard let family = families[arch] else {
            throw ModelError.badConfig(path: file.path, detail: "GGUF architecture '\(arch)' is not supported (Reins builds \(families.keys.sorted().joined(separator: ", ")))")
        }
        func key(_ k: String) -> String { "\(arch).\(k)" }
        if arch == "gpt2" || arch == "bert" { return try encoderOrGPT2Config(of: file, arch: arch) }
        let heads = try file.int(key("attention.head_count"))
        let hidden = try file.int(key("embedding_length"))
        var config: [String: Any] = [
            "model_type": family.modelType, "architectures": [family.architecture],
            "hidden_size": hidden,
            "intermediate_size": try file.int(key("feed_forward_length")),
            "num_hidden_layers": try file.int(key("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": file.metadata[key("attention.head_count_kv")] == nil
                ? heads : try file.int(key("attention.head_count_kv")),
            "rms_norm_eps": try file.double(key("attention.layer_norm_rms_epsilon")),
            "rope_theta": file.metadata[key("rope.freq_base")] == nil ? 10000.0 : try file.double(key("rope.freq_base")),
            "max_position_embeddings": try file.int(key("context_length")),
            "hidden_act": "silu",
            "tie_word_embeddings": file.tensorsByName["output.weight"] == nil,
        ]
        guard let embedding = file.tensorsByName["token_embd.weight"], embedding.dimensions.count == 2 else {
            throw GGUFError.missingTensor(path: file.path, tensor: "token_embd.weight")
        }
        config["vocab_size"] = embedding.dimensions[1]
        if file.metadata[key("vocab_size")] != nil, try file.int(key("vocab_size")) != embedding.dimensions[1] {
            throw GGUFError.malformed(
                path: file.path,
                detail: "\(key("vocab_size")) is \(try file.int(key("vocab_size"))) but token_embd.weight has \(embedding.dimensions[1]) rows")
        }
        if file.metadata[key("attention.key_length")] != nil {
            let k = try file.int(key("attention.key_length"))
            let v = file.metadata[key("attention.value_length")] == nil ? k : try file.int(key("attention.value_length"))
            guard k == v else {
                throw ModelError.badConfig(path: file.path, detail: "key length \(k) differs from value length \(v), which Llama attention does not support")
            }
            config["head_dim"] = k
        }
        let headDim = (config["head_dim"] as? Int) ?? (heads > 0 ? hidden / heads : 0)
        if file.metadata[key("rope.dimension_count")] != nil {
            let rotary = try file.int(key("rope.dimension_count"))
            guard rotary == headDim else {
                throw ModelError.badConfig(path: file.path, detail: "rotary embeddings over \(rotary) of \(headDim) head dimensions (partial rotary) is not supported")
            }
        }
        if let type = file.metadata[key("rope.scaling.type")]?.string, type != "none" {
            guard type == "linear" else {
                throw ModelError.badConfig(path: file.path, detail: "rope scaling '\(type)' from GGUF is not supported (Reins reads linear)")
            }
            config["rope_scaling"] = ["type": "linear", "factor": try file.double(key("rope.scaling.factor"))]
        }
        if file.tensorsByName["rope_freqs.weight"] != nil {
            throw ModelError.badConfig(path: file.path, detail: "per-frequency rotary factors (rope_freqs.weight, Llama 3.1 scaling) from GGUF are not supported yet")
        }
        let layer0 = "blk.0."
        if family.modelType == "llama" {
            config["attention_bias"] = file.tensorsByName[layer0 + "attn_q.bias"] != nil
            config["mlp_bias"] = file.tensorsByName[layer0 + "ffn_gate.bias"] != nil
        }
        for (gguf, hf) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")]
        where file.metadata[gguf]?.int != nil {
            config[hf] = file.metadata[gguf]!.int!
        }
        return config
    }

    /// GGUF tensor names by the model's keys, for a model of `layers` blocks.
    static func keyMap(of file: GGUFFile, arch: String, layers: Int) -> [String: String] {
        var map: [String: String] = [:]
        for (key, gguf) in tensorNames(arch: arch, layers: layers) where file.tensorsByName[gguf] != nil { map[key] = gguf }
        return map
    }

    /// The config of a GPT-2 or BERT file (`gpt2.*`, `bert.*`): the sizes llama.cpp's converter writes; the vocabulary
    /// size from the token embedding, BERT's token types from theirs.
    static func encoderOrGPT2Config(of file: GGUFFile, arch: String) throws -> [String: Any] {
        func key(_ k: String) -> String { "\(arch).\(k)" }
        guard let embedding = file.tensorsByName["token_embd.weight"], embedding.dimensions.count == 2 else {
            throw GGUFError.missingTensor(path: file.path, tensor: "token_embd.weight")
        }
        let eps = try file.double(key("attention.layer_norm_epsilon"))
        var config: [String: Any]
        if arch == "gpt2" {
            config = [
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": embedding.dimensions[1],
                "n_embd": try file.int(key("embedding_length")), "n_layer": try file.int(key("block_count")),
                "n_head": try file.int(key("attention.head_count")), "n_positions": try file.int(key("context_length")),
                "n_inner": try file.int(key("feed_forward_length")), "layer_norm_epsilon": eps,
                "activation_function": "gelu_new",
            ]
            if file.tensorsByName["output.weight"] != nil {
                throw ModelError.badConfig(path: file.path, detail: "a GPT-2 with an untied output layer (output.weight) is not supported")
            }
        } else {
            if file.metadata[key("attention.causal")]?.bool == true {
                throw ModelError.badConfig(path: file.path, detail: "a causal BERT (bert.attention.causal) is not supported")
            }
            config = [
                "model_type": "bert", "architectures": ["BertModel"], "vocab_size": embedding.dimensions[1],
                "hidden_size": try file.int(key("embedding_length")), "num_hidden_layers": try file.int(key("block_count")),
                "num_attention_heads": try file.int(key("attention.head_count")),
                "intermediate_size": try file.int(key("feed_forward_length")),
                "max_position_embeddings": try file.int(key("context_length")), "layer_norm_eps": eps, "hidden_act": "gelu",
                "type_vocab_size": file.tensorsByName["token_types.weight"]?.dimensions.last ?? 2,
            ]
            if let pad = file.metadata["tokenizer.ggml.padding_token_id"]?.int { config["pad_token_id"] = pad }
        }
        for (gguf, hf) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
            if let id = file.metadata[gguf]?.int { config[hf] = id }
        }
        return config
    }

    /// Installs every quantized matrix of `archive` in the layer of `model` it belongs to (a linear layer's weight,
    /// an embedding table), frozen and in its blocks; returns their checkpoint keys, for the float load to skip.
    /// A head model's keys (`bert.encoder...`) find the base's tensors of a GGUF file under `basePrefix` stripped.
    static func installQuantized(_ archive: GGUFArchive, into model: any Module, basePrefix: String = "") throws -> Set<String> {
        var installed: Set<String> = []
        let prefix = basePrefix.isEmpty ? nil : basePrefix + "."
        for (key, module) in model.namedModules() {
            var weightKey = key.isEmpty ? "weight" : key + ".weight"
            if let prefix, weightKey.hasPrefix(prefix), archive.names[weightKey] == nil {
                weightKey = String(weightKey.dropFirst(prefix.count))
            }
            if let linear = module as? Linear, let q = try archive.quantizedMatrix(weightKey) {
                try linear.quantize(q)
                installed.insert(weightKey)
            } else if let table = module as? Embedding, let q = try archive.quantizedMatrix(weightKey) {
                try table.quantize(q)
                installed.insert(weightKey)
            }
        }
        // A tied output layer reads the embedding's table: its key is the same tensor.
        if installed.contains("model.embed_tokens.weight") { installed.insert("lm_head.weight") }
        return installed
    }

    /// A GGUF file as a checkpoint: its config and its tensors under the model's keys.
    public static func checkpointParts(_ file: GGUFFile) throws -> (config: [String: Any], archive: any TensorArchive) {
        let config = try config(of: file)
        let arch = try file.string("general.architecture")
        let layers = (config["num_hidden_layers"] ?? config["n_layer"]) as? Int ?? 0
        let map = keyMap(of: file, arch: arch, layers: layers)
        let mapped = Set(map.values)
        // Every tensor must be one the model uses: an extra one would mean a part Reins does not build.
        if let extra = file.tensorInfos.map(\.name).first(where: { !mapped.contains($0) }) {
            throw ModelError.badConfig(path: file.path, detail: "tensor '\(extra)' has no place in a \(config["model_type"] ?? "") model")
        }
        var heads: [String: Int] = [:]
        if families[arch]?.permutesQK == true {
            for l in 0..<layers {
                for suffix in ["weight", "bias"] {
                    heads["model.layers.\(l).self_attn.q_proj.\(suffix)"] = config["num_attention_heads"] as? Int
                    heads["model.layers.\(l).self_attn.k_proj.\(suffix)"] = config["num_key_value_heads"] as? Int
                }
            }
        }
        let transposed = Set(map.keys.filter { isTransposedInGGUF(arch: arch, key: $0) })
        return (config, GGUFArchive(file: file, names: map, headsOfPermuted: heads, transposed: transposed))
    }
}

/// A GGUF file's tensors under a model's keys, dequantized to float32 on reading; the query and key rows llama.cpp
/// interleaves per head (pairs of rotary halves) are put back in halves.
struct GGUFArchive: TensorArchive {
    let file: GGUFFile
    /// GGUF name by model key.
    let names: [String: String]
    /// Head counts of the projections whose rows are permuted (query: attention heads; key: key/value heads).
    let headsOfPermuted: [String: Int]
    /// Model keys whose matrices the model stores `[in, out]` (GPT-2's `Conv1D`): read transposed.
    var transposed: Set<String> = []

    var path: String { file.path }
    var tensorNames: [String] { Array(names.keys) }
    func shape(_ name: String) -> [Int]? {
        guard let shape = names[name].flatMap({ file.tensorsByName[$0]?.shape }) else { return nil }
        return transposed.contains(name) ? shape.reversed() : shape
    }

    func tensor(_ name: String) throws -> Tensor {
        guard let shape = shape(name) else { throw GGUFError.missingTensor(path: file.path, tensor: name) }
        var t = try Tensor.zeros(shape)
        try t.withUnsafeMutableBufferPointer { try read(name, into: $0) }
        return t
    }

    /// The weight under model key `name` in its quantized blocks (rows in Hugging Face's order), or nil when it is
    /// stored as floats (F32, F16, BF16) or is not a matrix.
    func quantizedMatrix(_ name: String) throws -> QuantizedMatrix? {
        guard let gguf = names[name], let info = file.tensorsByName[gguf], info.type.isQuantized,
            info.dimensions.count == 2
        else { return nil }
        let matrix = try file.quantizedMatrix(gguf)
        guard let heads = headsOfPermuted[name] else { return matrix }
        guard let order = GGUFModel.rotaryStoredRows(rows: matrix.rows, heads: heads) else {
            throw GGUFError.malformed(
                path: file.path, detail: "tensor '\(gguf)' has \(matrix.rows) rows, not whole pairs for \(heads) heads")
        }
        return try matrix.reorderingRows(order)
    }

    func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let gguf = names[name] else { throw GGUFError.missingTensor(path: file.path, tensor: name) }
        if transposed.contains(name) {
            let t = try file.tensor(gguf).transposed()  // [out, in] stored, [in, out] wanted
            return t.withUnsafeBufferPointer { _ = buffer.initialize(from: $0) }
        }
        guard let heads = headsOfPermuted[name] else { return try file.read(gguf, into: buffer) }
        let shape = try file.info(gguf).shape
        let rows = shape[0], columns = shape.count > 1 ? shape[1] : 1
        guard let order = GGUFModel.rotaryStoredRows(rows: rows, heads: heads) else {
            throw GGUFError.malformed(
                path: file.path, detail: "tensor '\(gguf)' has \(rows) rows, not whole pairs for \(heads) heads")
        }
        var stored = [Float](repeating: 0, count: buffer.count)
        try stored.withUnsafeMutableBufferPointer { try file.read(gguf, into: $0) }
        let rowsInHFOrder = GGUFModel.movingRotaryRows(stored, columns: columns, stored: order, toStored: false)
        _ = buffer.initialize(from: rowsInHFOrder)
    }
}

extension Module {
    /// Sets how every quantized weight of this model computes its products (``QuantizedRoute``).
    public func setQuantizedRoute(_ route: QuantizedRoute) {
        for (_, module) in namedModules() {
            (module as? Linear)?.quantizedRoute = route
            (module as? Embedding)?.quantizedRoute = route
        }
    }

    /// Freezes this model's linear layers and its token embedding tables in `type`'s blocks, in memory, as a base read
    /// quantized from a GGUF file is held (QLoRA without a file): each weight is quantized (``GGMLType/encode(_:)``)
    /// and its float32 values released. Layers whose rows are not whole blocks stay float32, as do position and
    /// token-type embeddings and layers `include` refuses (by key; a task head that will train, say).
    /// - Returns: the keys of the layers quantized.
    /// - Throws: ``ModelError/badInput(_:)`` for a type that is not a block type Reins writes, or a layer with a merged
    ///   adapter.
    @discardableResult
    public func quantizeWeights(_ type: GGMLType, include: (String) -> Bool = { _ in true }) throws -> [String] {
        guard type.isQuantized, GGMLType.writable.contains(type), let block = type.blockElements else {
            throw ModelError.badInput("\(type) is not a block type Reins quantizes to")
        }
        let tokenTables = ["word_embeddings", "wte", "embed_tokens"]
        var done: [String] = []
        for (key, module) in namedModules() where include(key) {
            if let linear = module as? Linear, linear.quantizedWeight == nil, linear.inputs % block == 0 {
                let w = linear.weightTransposed ? try linear.weight.value.transposed() : linear.weight.value
                try linear.quantize(try QuantizedMatrix(quantizing: w, type: type))
                done.append(key)
            } else if let table = module as? Embedding, table.quantizedTable == nil, table.size % block == 0,
                tokenTables.contains(where: { key.hasSuffix($0) })
            {
                try table.quantize(try QuantizedMatrix(quantizing: table.weight.value, type: type))
                done.append(key)
            }
        }
        return done
    }

    /// Whether any weight of this model is held in quantized blocks.
    public var holdsQuantizedWeights: Bool {
        namedModules().contains { m in
            (m.module as? Linear)?.quantizedWeight != nil || (m.module as? Embedding)?.quantizedTable != nil
        }
    }
}

extension GGUFModel {
    /// Writes the active LoRA adapter of a Llama-family `model` as a llama.cpp LoRA adapter file (`general.type`
    /// `adapter`, `adapter.type` `lora`, `adapter.lora.alpha`; `<base tensor>.lora_a` `[r, in]` and `.lora_b`
    /// `[out, r]` under llama.cpp's tensor names, B's query and key rows in llama.cpp's rotary order for the `llama`
    /// architecture). llama.cpp scales each pair by alpha / r: the file's alpha is the adapter's (scale · r) when every
    /// layer shares it, else 1 with each B pre-scaled.
    /// - Throws: ``ModelError/badInput(_:)`` naming what llama.cpp cannot load (DoRA, LoRA on the embedding table or a
    ///   layer outside the blocks) or a model that is not of the Llama family.
    public static func writeLoRAAdapter(of model: any Module, config: [String: Any], name: String, to path: String) throws {
        let modelType = config["model_type"] as? String ?? ""
        let arch = ["llama": "llama", "mistral": "llama", "qwen2": "qwen2"][modelType]
        guard let arch else {
            throw ModelError.badInput("a llama.cpp LoRA adapter is written for Llama, Mistral or Qwen2 models, not '\(modelType)'")
        }
        let heads = config["num_attention_heads"] as? Int ?? 0, kvHeads = config["num_key_value_heads"] as? Int ?? heads
        let layers = config["num_hidden_layers"] as? Int ?? 0
        var names: [String: String] = [:]
        for l in 0..<layers {
            for (hf, gguf) in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                               ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                               ("mlp.down_proj", "ffn_down")] {
                names["model.layers.\(l).\(hf)"] = "blk.\(l).\(gguf).weight"
            }
        }
        names["lm_head"] = "output.weight"
        var pairs: [(gguf: String, lora: LoRA, rowHeads: Int?)] = []
        for (key, module) in model.namedModules() {
            guard let host = module as? any LoRAHost, let active = host.activeLoRA, let lora = host.loras[active] else { continue }
            guard lora.magnitude == nil else {
                throw ModelError.badInput("'\(key)' holds a DoRA adapter, which llama.cpp's LoRA format cannot express")
            }
            guard module is Linear, let gguf = names[key] else {
                throw ModelError.badInput("'\(key)' has a LoRA adapter where llama.cpp loads none (it takes the blocks' linear layers and the output layer)")
            }
            let permuted = arch == "llama" && (key.hasSuffix("q_proj") || key.hasSuffix("k_proj"))
            pairs.append((gguf, lora, permuted ? (key.hasSuffix("q_proj") ? heads : kvHeads) : nil))
        }
        guard !pairs.isEmpty else { throw ModelError.badInput("the model has no active LoRA adapter to write") }
        let shared = pairs.allSatisfy { $0.lora.rank == pairs[0].lora.rank && $0.lora.scale == pairs[0].lora.scale }
        let alpha = shared ? pairs[0].lora.scale * Float(pairs[0].lora.rank) : 1
        var tensors: [GGUFWriter.FloatTensor] = []
        for (gguf, lora, rowHeads) in pairs.sorted(by: { $0.gguf < $1.gguf }) {
            let r = lora.rank, a = lora.a.value, b = lora.b.value
            let out = b.shape[0]
            var bValues = b.scalars
            if !shared { let f = lora.scale * Float(r); bValues = bValues.map { $0 * f } }
            if let h = rowHeads, let order = rotaryStoredRows(rows: out, heads: h) {
                bValues = movingRotaryRows(bValues, columns: r, stored: order, toStored: true)
            }
            tensors.append(.init(name: gguf + ".lora_a", shape: a.shape, values: a.scalars))
            tensors.append(.init(name: gguf + ".lora_b", shape: [out, r], values: bValues))
        }
        try GGUFWriter.write(
            metadata: [
                ("general.architecture", .string(arch)), ("general.type", .string("adapter")),
                ("general.name", .string(name)), ("adapter.type", .string("lora")), ("adapter.lora.alpha", .float32(alpha)),
            ], tensors: tensors, to: path)
    }
}
