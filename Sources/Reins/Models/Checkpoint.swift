import Foundation
import ReinsTensor

/// A Hugging Face model directory: `config.json` plus `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`; without those, PyTorch's `pytorch_model.bin` or its shards listed in
/// `pytorch_model.bin.index.json` (read by ``TorchCheckpoint``, which runs no code from the file). Files are
/// memory-mapped; a tensor is read (and converted to float32 from F32, F16, BF16 or F64) only when asked for.
public struct Checkpoint {
    public let directory: URL
    /// The parsed `config.json`.
    public var config: [String: Any]
    private let files: [any TensorArchive]
    private let fileOfTensor: [String: Int]

    /// Opens a checkpoint directory and validates every shard's header.
    /// - Throws: ``ModelError/missingFile(path:)``, ``ModelError/badConfig(path:detail:)``, ``SafeTensorsError``.
    /// `directory` may also be a GGUF file (``GGUFModel``): its metadata is the config, its tensors are read
    /// dequantized under the model's keys.
    public init(directory: URL) throws {
        self.directory = directory
        if GGUFModel.isGGUF(directory.path) {
            let parts = try GGUFModel.checkpointParts(try GGUFFile(path: directory.path))
            config = parts.config
            files = [parts.archive]
            fileOfTensor = Dictionary(uniqueKeysWithValues: parts.archive.tensorNames.map { ($0, 0) })
            return
        }
        config = try Checkpoint.modelConfig(directory)
        func exists(_ name: String) -> Bool {
            FileManager.default.fileExists(atPath: directory.appendingPathComponent(name).path)
        }
        // safetensors first, as transformers does; the pickled format only when it is all there is.
        let stem =
            exists("model.safetensors") || exists("model.safetensors.index.json")
                || !(exists("pytorch_model.bin") || exists("pytorch_model.bin.index.json"))
            ? "model.safetensors" : "pytorch_model.bin"
        let single = directory.appendingPathComponent(stem)
        let index = directory.appendingPathComponent(stem + ".index.json")
        var files: [any TensorArchive] = [], fileOfTensor: [String: Int] = [:]
        if FileManager.default.fileExists(atPath: single.path) {
            files = [try openTensorArchive(single.path)]
            for name in files[0].tensorNames { fileOfTensor[name] = 0 }
        } else if FileManager.default.fileExists(atPath: index.path) {
            let json = try Checkpoint.readJSON(index)
            guard let map = json["weight_map"] as? [String: String] else {
                throw ModelError.badConfig(path: index.path, detail: "no weight_map object")
            }
            let shardNames = Array(Set(map.values)).sorted()
            for shard in shardNames {
                // A shard is a file in the model directory, named plainly: no folders, no `..`, nothing absolute.
                guard !shard.isEmpty, !shard.contains("/"), !shard.contains("\\"), shard != ".", shard != ".." else {
                    throw ModelError.badConfig(
                        path: index.path,
                        detail: "weight_map names shard '\(shard)', which is not a file name in the model directory")
                }
                let path = directory.appendingPathComponent(shard).path
                guard FileManager.default.fileExists(atPath: path) else { throw ModelError.missingFile(path: path) }
                files.append(try openTensorArchive(path))
            }
            let shardIndex = Dictionary(uniqueKeysWithValues: shardNames.enumerated().map { ($0.element, $0.offset) })
            for (name, shard) in map {
                guard let i = shardIndex[shard] else { continue }  // cannot happen: shardNames holds every value of map
                guard files[i].shape(name) != nil else {
                    throw ModelError.badConfig(
                        path: index.path, detail: "weight_map puts '\(name)' in \(shard), which does not hold it")
                }
                fileOfTensor[name] = i
            }
        } else {
            throw ModelError.missingFile(path: single.path)
        }
        self.files = files
        self.fileOfTensor = fileOfTensor
    }

    /// Where the config came from: `config.json` in the directory, or the GGUF file itself.
    public var configPath: String {
        GGUFModel.isGGUF(directory.path) ? directory.path : directory.appendingPathComponent("config.json").path
    }

    /// The GGUF file's tensors under the model's keys, when this checkpoint is a GGUF file.
    var ggufArchive: GGUFArchive? { files.first as? GGUFArchive }

    /// All tensor names.
    public var tensorNames: [String] { Array(fileOfTensor.keys) }

    /// The number of elements of every tensor together (each already checked against its file's size when opened).
    public var elementCount: Int {
        tensorNames.reduce(0) { total, name in total &+ (shape(name)?.reduce(1, &*) ?? 0) }
    }

    /// Refuses a config that implies far more weights than this checkpoint holds — damaged or hostile — before
    /// anything is allocated for it. New task heads may add weights the checkpoint lacks, hence the allowance:
    /// twice the checkpoint plus 16M parameters.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` with both counts.
    public func requireHolds(parameters implied: Int, configPath: String) throws {
        let held = elementCount
        let allowance = held > Int.max / 4 ? Int.max : 2 * held + (1 << 24)
        guard implied <= allowance else {
            throw ModelError.badConfig(
                path: configPath, detail: "the config implies \(implied) parameters, but the checkpoint holds \(held)")
        }
    }

    /// The shape of a tensor, if present.
    public func shape(_ name: String) -> [Int]? { fileOfTensor[name].flatMap { files[$0].shape(name) } }

    /// A tensor as float32.
    public func tensor(_ name: String) throws -> Tensor {
        guard let i = fileOfTensor[name] else {
            throw SafeTensorsError.missingTensor(path: directory.path, tensor: name)
        }
        return try files[i].tensor(name)
    }

    /// Converts a tensor to float32 straight into `buffer`.
    public func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let i = fileOfTensor[name] else {
            throw SafeTensorsError.missingTensor(path: directory.path, tensor: name)
        }
        try files[i].read(name, into: buffer)
    }

    /// The config of a model: `config.json` in a directory, or the one a GGUF file's metadata describes.
    public static func modelConfig(_ model: URL) throws -> [String: Any] {
        if GGUFModel.isGGUF(model.path) { return try GGUFModel.config(of: try GGUFFile(path: model.path)) }
        return try readJSON(model.appendingPathComponent("config.json"))
    }

    public static func readJSON(_ url: URL) throws -> [String: Any] {
        guard FileManager.default.fileExists(atPath: url.path) else { throw ModelError.missingFile(path: url.path) }
        let data: Data
        do { data = try FileBytes.read(url.path) } catch {
            throw ModelError.badConfig(path: url.path, detail: "cannot read: \(error.localizedDescription)")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelError.badConfig(path: url.path, detail: "not a JSON object")
        }
        return object
    }
}

/// How a model's keys map onto a checkpoint's, for one load.
public struct LoadOptions: Sendable {
    /// The name of the base model inside head models (`transformer` for GPT-2, `bert` for BERT). A checkpoint may
    /// store the base with or without this prefix; either loads.
    public var basePrefix: String
    /// Keys the checkpoint may lack because they are new (a freshly initialised task head): prefixes of keys.
    public var newlyInitialized: [String] = []
    /// Checkpoint tensors to skip silently: buffers such as `position_ids` or GPT-2's `attn.bias` mask (suffixes).
    public var ignoredSuffixes: [String] = []
    /// Checkpoint tensors that belong to parts this model does not have (other heads): prefixes of keys.
    public var ignoredPrefixes: [String] = []
    /// Model parameters initialised fresh whatever the checkpoint holds under their keys (a new task head over a
    /// checkpoint that has its own, perhaps of another size): prefixes of keys. They must also be under
    /// ``newlyInitialized``, and the checkpoint's tensors under ``ignoredPrefixes``.
    public var replaced: [String] = []
    /// Checkpoint tensors already installed in their quantized blocks (``Linear/quantize(_:)``): neither read nor
    /// reported.
    public var quantized: Set<String> = []

    /// - Parameters:
    ///   - basePrefix: the base model's key inside head models (`transformer`, `bert`; empty for a model of your own).
    public init(
        basePrefix: String = "", newlyInitialized: [String] = [], ignoredSuffixes: [String] = [],
        ignoredPrefixes: [String] = [],
        replaced: [String] = []
    ) {
        (self.basePrefix, self.newlyInitialized, self.ignoredSuffixes) = (basePrefix, newlyInitialized, ignoredSuffixes)
        (self.ignoredPrefixes, self.replaced) = (ignoredPrefixes, replaced)
    }
}

extension Module {
    /// Copies every parameter from `checkpoint`, strictly: all missing, unexpected and mis-shaped tensors are collected
    /// and reported together. Tied parameters (registered under two keys) load from whichever key is present.
    ///
    /// Parameters the options allow to be absent (``LoadOptions/newlyInitialized``) are initialised as Hugging Face
    /// does: biases 0, layer-norm weights 1, other weights N(0, 0.02), drawn with a seed derived from the key.
    /// - Throws: ``ModelError/checkpointMismatch(missing:unexpected:misshaped:)``, ``SafeTensorsError``.
    public func load(from checkpoint: Checkpoint, options: LoadOptions) throws {
        let names = Set(checkpoint.tensorNames)
        let prefix = options.basePrefix + "."
        // Does the checkpoint store the base under the prefix? Decide once, from the data.
        let checkpointHasPrefix = names.contains { $0.hasPrefix(prefix) }
        let modelKeys = allParameterKeys()
        // A bare base model reading a head model's checkpoint: all its keys are base keys.
        let modelHasHead = modelKeys.contains { $0.key.hasPrefix(prefix) }
        func checkpointKey(_ key: String) -> String {
            if key.hasPrefix(prefix) { return checkpointHasPrefix ? key : String(key.dropFirst(prefix.count)) }
            return !modelHasHead && checkpointHasPrefix ? prefix + key : key
        }
        var groups: [ObjectIdentifier: (parameter: Parameter, keys: [String])] = [:], order: [ObjectIdentifier] = []
        for (key, p) in modelKeys {
            let id = ObjectIdentifier(p)
            if groups[id] == nil { order.append(id); groups[id] = (p, []) }
            groups[id]!.keys.append(key)
        }
        var missing: [String] = [], misshaped: [String] = [], used = Set<String>()
        var loads: [(Parameter, String)] = [], fresh: [(Parameter, String)] = []
        for id in order {
            let (p, keys) = groups[id]!
            // Parameters this load replaces start fresh even where the checkpoint has a tensor of that name.
            let replaced = keys.contains { k in options.replaced.contains { k.hasPrefix($0) } }
            let candidates = replaced ? [] : keys.map(checkpointKey)
            for c in candidates where names.contains(c) { used.insert(c) }
            guard let found = candidates.first(where: names.contains) else {
                if keys.contains(where: { k in options.newlyInitialized.contains { k.hasPrefix($0) } }) {
                    fresh.append((p, keys[0]))
                } else {
                    missing.append(keys[0])
                }
                continue
            }
            if options.quantized.contains(found) { continue }
            let shape = checkpoint.shape(found)!  // found is one of the checkpoint's names, so it has a shape
            guard shape == p.value.shape else {
                misshaped.append("\(found) is \(shape), expected \(p.value.shape)")
                continue
            }
            loads.append((p, found))
        }
        let unexpected = names.subtracting(used).filter { n in
            !options.ignoredSuffixes.contains { n.hasSuffix($0) }
                && !options.ignoredPrefixes.contains { n.hasPrefix($0) || n.hasPrefix(prefix + $0) }
        }.sorted()
        guard missing.isEmpty, misshaped.isEmpty, unexpected.isEmpty else {
            throw ModelError.checkpointMismatch(missing: missing, unexpected: unexpected, misshaped: misshaped)
        }
        // Into the parameters' own buffers: no second copy of the model is ever allocated.
        for (p, key) in loads {
            try p.value.withUnsafeMutableBufferPointer { try checkpoint.read(key, into: $0) }
        }
        for (p, key) in fresh { try initializeFresh(p, key: key) }
    }

    private func initializeFresh(_ p: Parameter, key: String) throws {
        let shape = p.value.shape
        if key.hasSuffix("bias") {
            p.replaceValue(try Tensor.zeros(shape))
        } else if key.contains("LayerNorm") || key.contains("ln_") || key.contains("norm") {
            p.replaceValue(try Tensor.ones(shape))
        } else {
            // The same head gets the same initial weights in every run.
            p.replaceValue(try Tensor.normal(shape, std: 0.02, seed: seed(forKey: key)))
        }
    }

    /// Writes `config.json` and `model.safetensors` (each atomically) to `directory`; tied parameters are stored once,
    /// under their first key. It writes the base only: no adapter's tensors, and never an active adapter's head, BitFit
    /// biases or merged LoRA in place of the base's own (see ``Module/saveAdapter(_:to:baseModel:)`` for adapters).
    public func save(to directory: URL, config: [String: Any]) throws {
        if let key = namedModules().first(where: { m in
            (m.module as? Linear)?.quantizedWeight != nil || (m.module as? Embedding)?.quantizedTable != nil
        })?.key {
            throw ModelError.badInput(
                "'\(key)' holds a quantized weight, which a float32 safetensors checkpoint cannot store; load the base with --exact to save it in float32"
            )
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let owned = Set(adapterNames.flatMap { parameters(ofAdapter: $0) }.map(ObjectIdentifier.init))
        var tensors: [String: Tensor] = [:]
        try withBareBase {
            for (key, p) in namedParameters() where !owned.contains(ObjectIdentifier(p)) {
                tensors[key] = p.value.detached()
            }
        }
        try SafeTensorsFile.write(
            tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent("model.safetensors").path)
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(json, to: directory.appendingPathComponent("config.json").path)
    }
}
