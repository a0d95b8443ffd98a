import Foundation
import ReinsTensor

/// An adapter that changes what a linear layer computes. The layer applies its live adapters innermost first, each
/// given the input and the rest of the layer inside it (`inner`: the plain product, or an adapter around it), so the
/// base layer holds no adapter's arithmetic and no adapter can be skipped by one path of the layer's and not another.
public protocol LinearAdapter: AnyObject {
    /// The layer's output for `x` with this adapter applied around `inner` (the layer's product, or the adapters
    /// inside this one).
    func forward(_ x: Tensor, layer: Linear, inner: (Tensor) throws -> Tensor) throws -> Tensor
}

/// A linear-layer adapter method beyond the built-in LoRA and IA3 (LoHa, ...), kept in each layer's generic
/// ``Linear/methods`` site: it registers its tensors itself (under PEFT's names) and checks that it fits the layer.
public protocol LinearAdapterMethod: LinearAdapter {
    /// Its trainable tensors.
    var parameters: [Parameter] { get }
    /// Registers its tensors for the adapter `name` (keys relative to the layer, e.g. `hada_w1_a.<name>`).
    func visitParameters(_ visit: inout ParameterVisitor, name: String)
    /// Throws a named error when its shapes do not fit `layer`.
    func check(fits layer: Linear) throws
}

extension LoRA: LinearAdapter {
    /// `W x + b + s·B·A·x` in one fused pass (the product inside is replaced, not wrapped), or DoRA's.
    public func forward(_ x: Tensor, layer: Linear, inner: (Tensor) throws -> Tensor) throws -> Tensor {
        if let magnitude { return try doraForward(x, layer: layer, magnitude: magnitude.value) }
        if layer.quantizedWeight != nil {
            // A quantized base: its own product, plus the low-rank update (dropout on the update's input only).
            let input = dropout > 0 && TrainingMode.isActive ? try x.trainingDropout(dropout) : x
            let low = try Tensor.linear(Tensor.linear(input, weight: a.value), weight: b.value)
            // `inner` is the base product with its bias (a LoRA is innermost), computed already when the layer's
            // product was taken together with its neighbours' (``Linear/products(of:_:)``).
            return try inner(x) + low.scaled(by: scale)
        }
        return try forward(
            x, weight: layer.weight.value, bias: layer.bias?.value, weightTransposed: layer.weightTransposed)
    }

    /// DoRA's forward pass: `b + f ⊙ (W x + s·B·A·x)` with `f = m / ‖W + s·B·A‖` (the norm without gradient). With
    /// dropout in training, as PEFT: `W x + b + (f - 1) ⊙ W·drop(x) + f ⊙ s·B·A·drop(x)`.
    func doraForward(_ x: Tensor, layer: Linear, magnitude: Tensor) throws -> Tensor {
        let (weight, bias, weightTransposed, lora) = (layer.weight, layer.bias, layer.weightTransposed, self)
        let factor = try magnitude / doraNorm(on: layer)
        let dropping = lora.dropout > 0 && TrainingMode.isActive
        let dropped = dropping ? try x.trainingDropout(lora.dropout) : x
        if layer.quantizedWeight != nil {
            let low = try Tensor.linear(Tensor.linear(dropped, weight: lora.a.value), weight: lora.b.value)
            let directed = try (layer.baseProduct(dropped, bias: nil) + low.scaled(by: lora.scale)) * factor
            guard dropping else { return try bias.map { try directed + $0.value } ?? directed }
            return try layer.baseProduct(x, bias: bias?.value) + directed - layer.baseProduct(dropped, bias: nil)
        }
        let directed =
            try Tensor.loraLinear(
                dropped, weight: weight.value, loraA: lora.a.value, loraB: lora.b.value,
                scale: lora.scale, weightTransposed: weightTransposed) * factor
        guard dropping else { return try bias.map { try directed + $0.value } ?? directed }
        let base = try Tensor.linear(x, weight: weight.value, bias: bias?.value, weightTransposed: weightTransposed)
        let droppedBase = try Tensor.linear(dropped, weight: weight.value, weightTransposed: weightTransposed)
        return try base + directed - droppedBase
    }

    /// The norm of each output's row of `W + s·B·A` (DoRA's denominator), as a constant. Computed on every call, as
    /// PEFT does by default: merge the adapter for inference at the base layer's cost.
    func doraNorm(on layer: Linear) throws -> Tensor {
        let (weightTransposed, lora) = (layer.weightTransposed, self)
        return try Autograd.withoutGradients {
            let delta = try Tensor.matmul(lora.b.value, lora.a.value).scaled(by: lora.scale)  // [out, in]
            let dense = try layer.denseWeight()
            let adapted = try (weightTransposed ? dense.transposed() : dense) + delta
            return try (adapted * adapted).sum(axis: 1).sqrt()
        }
    }
}

extension LoRA {
    /// `base` with this adapter folded in: `W + s·B·A` (transposed for `[in, out]` storage), or DoRA's
    /// `f ⊙ (W + s·B·A)` with `f = m / ‖W + s·B·A‖` per output (a column of the `[in, out]` layout).
    func folded(into base: Tensor, of layer: Linear) throws -> Tensor {
        let delta = try Tensor.matmul(b.value, a.value).scaled(by: scale)  // [out, in]
        let update = layer.weightTransposed ? try delta.transposed() : delta
        guard let m = magnitude else { return try base + update }
        let factor = try m.value / doraNorm(on: layer)
        return layer.weightTransposed
            ? try (base + update) * factor : try ((base + update).transposed() * factor).transposed()
    }
}

extension LoRA {
    /// An embedding table's rows with the adapter's: `row + s·B·A[:, id]` (PEFT's `lora_embedding_A/B`; the padding
    /// id's column of A gets no gradient).
    func lookup(_ ids: IntTensor, rows: Tensor, paddingIndex: Int?) throws -> Tensor {
        let low = try Tensor.embedding(ids, table: a.value.transposed(), paddingIndex: paddingIndex)  // [..., r]
        return try rows + Tensor.linear(low, weight: b.value).scaled(by: scale)
    }
}

extension IA3: LinearAdapter {
    /// The layer's output scaled by the vector, or (a feed-forward layer's) its input.
    public func forward(_ x: Tensor, layer: Linear, inner: (Tensor) throws -> Tensor) throws -> Tensor {
        scalesInput ? try inner(x * vector.value) : try inner(x) * vector.value
    }
}
