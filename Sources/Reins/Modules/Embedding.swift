import Foundation
import ReinsTensor

/// A lookup table `[count, size]`; the row of `paddingIndex`, if any, gets no gradient (torch's `padding_idx`).
///
/// An embedding table is also a LoRA insertion point, as PEFT's `lora_embedding_A` / `lora_embedding_B`: the looked-up
/// row gets `s·B·A[:, id]` added, with `A: [r, count]` and `B: [size, r]` (the shapes of a LoRA on a `count -> size`
/// linear layer applied to one-hot inputs). No dropout and no DoRA on tables.
public final class Embedding: Module, LoRAHost {
    public let weight: Parameter
    public let paddingIndex: Int?
    public let count: Int
    public let size: Int
    var slots = LoRASlots()
    public var loras: [String: LoRA] { slots.adapters }
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }

    public init(count: Int, size: Int, paddingIndex: Int? = nil, std: Float = 0.02, seed: UInt64 = 0) throws {
        weight = Parameter("weight", try Initializer.normal([count, size], std: std, seed: seed))
        self.paddingIndex = paddingIndex
        self.count = count
        self.size = size
    }

    public var loraInputs: Int { count }
    public var loraOutputs: Int { size }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        slots.visit(&visit, table: true)
    }

    /// The frozen table kept in its quantized blocks (a GGUF base), or nil; ``weight`` then holds no values.
    public private(set) var quantizedTable: QuantizedMatrix?
    /// How a tied output layer's products with ``quantizedTable`` are computed.
    public var quantizedRoute: QuantizedRoute = .automatic

    /// Keeps the table as `matrix` (`[count, size]` in blocks) instead of float32, frozen; interleaved by 8 rows where it
    /// can be (``QuantizedMatrix/interleavedByRows()``), for a tied output layer's integer products.
    /// - Throws: ``ModelError/badInput(_:)`` when the matrix does not fit.
    public func quantize(_ matrix: QuantizedMatrix) throws {
        guard matrix.rows == count, matrix.columns == size else {
            throw ModelError.badInput(
                "a \(matrix.type) matrix [\(matrix.rows), \(matrix.columns)] does not fit a \(count) x \(size) embedding table")
        }
        guard slots.merged == nil else { throw ModelError.badInput("a table with a merged adapter cannot be quantized") }
        quantizedTable = matrix.interleavedByRows()
        weight.replaceValue(try Tensor.zeros([0]))
    }

    /// The table without the active adapter: what a tied output layer (GPT-2's and BERT's word predictions) reads, as
    /// in PEFT, where LoRA changes the lookup only. Equal to ``weight`` unless an adapter is merged.
    public var unadaptedWeight: Tensor { slots.merged?.base ?? weight.value }

    /// `ids: [...]` to `[..., size]`; throws for an id outside the table.
    public func callAsFunction(_ ids: IntTensor) throws -> Tensor {
        let rows =
            try quantizedTable.map { try Tensor.quantizedEmbedding(ids, table: $0) }
            ?? Tensor.embedding(ids, table: weight.value, paddingIndex: paddingIndex)
        guard let routing = AdapterRouting.current else {
            return try slots.live?.lookup(ids, rows: rows, paddingIndex: paddingIndex) ?? rows
        }
        // A routed batch: each group's adapter adds its rows' low-rank part.
        try routing.check(rows, at: "an embedding table")
        var out = rows
        for g in routing.groups {
            guard let lora = slots.adapters[g.name] else { continue }
            out = try out.replacingRows(
                g.rows, with: try lora.lookup(ids.rows(g.rows), rows: rows.rows(g.rows), paddingIndex: paddingIndex))
        }
        return out
    }

    /// Attaches a LoRA adapter under `name` (replacing one of that name) and makes it active.
    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, count], lora.b.value.shape == [size, lora.rank] else {
            throw ModelError.badInput(
                "LoRA '\(name)': lora_embedding_A \(lora.a.value.shape) and lora_embedding_B \(lora.b.value.shape) do not fit a \(count) x \(size) embedding table (expected [r, \(count)] and [\(size), r])"
            )
        }
        guard !lora.usesDoRA else {
            throw ModelError.badInput("LoRA '\(name)': DoRA on an embedding table is not supported")
        }
        guard lora.dropout == 0 else {
            throw ModelError.badInput(
                "LoRA '\(name)': dropout on an embedding table is not supported (PEFT applies none)")
        }
        slots.attach(name, lora, weight: weight)
    }

    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// Folds the active adapter into the table, `W + s·(B·A)ᵀ`; ``unadaptedWeight`` keeps the base for tied outputs.
    public func merge() throws {
        try slots.merge(into: weight) { lora, base in
            try base
                + Tensor.matmul(lora.a.value, lora.b.value, transposeA: true, transposeB: true).scaled(by: lora.scale)
        }
    }

    public func unmerge() throws { slots.unmerge(weight) }

    public var isMerged: Bool { slots.merged != nil }
}

/// An output layer whose weight is a word-embedding table (GPT-2's `lm_head`, BERT's masked-LM decoder): `y = h·Wᵀ + b`
/// with `W` the table's ``Embedding/unadaptedWeight``. A LoRA insertion point of its own, as PEFT's targets `lm_head`
/// and `decoder` are (`A: [r, hidden]`, `B: [vocabulary, r]`). Such an adapter cannot be merged: the merged weight would
/// also change the input lookups that share the table.
public final class TiedOutput: Module, LoRAHost {
    public let table: Embedding
    public let bias: Parameter?
    public var weight: Parameter { table.weight }
    var slots = LoRASlots()
    public var loras: [String: LoRA] { slots.adapters }
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }
    public var loraInputs: Int { table.size }
    public var loraOutputs: Int { table.count }
    public var isMerged: Bool { false }

    /// An output layer that reads `table` (`[count, size]`) as its weight — logits over the table's rows, tied to the
    /// input embeddings as GPT-2's and BERT's are — with an optional bias `[count]`.
    public init(table: Embedding, bias: Parameter? = nil) {
        self.table = table
        self.bias = bias
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", table.weight)
        visit.parameter("bias", bias)
        slots.visit(&visit)
    }

    /// `h: [..., hidden]` to `[..., vocabulary]`.
    public func callAsFunction(_ h: Tensor) throws -> Tensor {
        if let routing = AdapterRouting.current {
            // A routed batch: the base product once, each group's adapter on its rows.
            try routing.check(h, at: "the output layer")
            var out = try table.quantizedTable.map {
                try Tensor.quantizedLinear(h, weight: $0, bias: bias?.value, route: table.quantizedRoute)
            } ?? Tensor.linear(h, weight: table.unadaptedWeight, bias: bias?.value)
            for g in routing.groups {
                guard let lora = slots.adapters[g.name] else { continue }
                let x = try h.rows(g.rows)
                let low = try Tensor.linear(Tensor.linear(x, weight: lora.a.value), weight: lora.b.value)
                out = try out.replacingRows(g.rows, with: try out.rows(g.rows) + low.scaled(by: lora.scale))
            }
            return out
        }
        if let q = table.quantizedTable {
            let base = try Tensor.quantizedLinear(h, weight: q, bias: bias?.value, route: table.quantizedRoute)
            guard let lora = slots.live else { return base }
            return try base + Tensor.linear(Tensor.linear(h, weight: lora.a.value), weight: lora.b.value).scaled(by: lora.scale)
        }
        let w = table.unadaptedWeight
        guard let lora = slots.live else { return try Tensor.linear(h, weight: w, bias: bias?.value) }
        return try lora.forward(h, weight: w, bias: bias?.value)
    }

    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, loraInputs], lora.b.value.shape == [loraOutputs, lora.rank] else {
            throw ModelError.badInput(
                "LoRA '\(name)': A \(lora.a.value.shape) and B \(lora.b.value.shape) do not fit the \(loraInputs) -> \(loraOutputs) output layer (expected [r, \(loraInputs)] and [\(loraOutputs), r])"
            )
        }
        guard !lora.usesDoRA else {
            throw ModelError.badInput(
                "LoRA '\(name)': DoRA on the output layer tied to the word embeddings is not supported")
        }
        slots.attach(name, lora, weight: weight)
    }

    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// - Throws: ``ModelError/badInput(_:)`` while an adapter is active: its merged weight would change the input
    ///   embeddings too.
    public func merge() throws {
        guard let name = activeLoRA else { return }
        throw ModelError.badInput(
            "LoRA '\(name)' on the output layer cannot be merged: its weight is the word-embedding table, which the input lookups share (use the adapter unmerged)"
        )
    }

    public func unmerge() throws {}
}
