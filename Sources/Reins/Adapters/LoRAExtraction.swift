import Foundation
import ReinsTensor

/// Turns a full fine-tune into a LoRA adapter on its base: for every linear layer whose weight changed,
/// `ΔW = W_fine-tuned − W_base` is truncated to rank r by SVD, `ΔW ≈ U_r·diag(S_r)·V_rᵀ`, giving `B = U_r·diag(S_r)`,
/// `A = V_rᵀ` and scale 1. N full fine-tunes of one base become N small files.
public enum LoRAExtraction {
    /// One layer's result.
    public struct Layer: Sendable {
        public let key: String
        public let rank: Int
        /// The share of ‖ΔW‖² kept: Σ_{i<r} s_i² / Σ s_i².
        public let energyKept: Double
    }

    /// The report of an extraction.
    public struct Report: Sendable {
        public let layers: [Layer]
        /// Changed parameters that are not linear weights (biases, norms, embeddings, heads): LoRA cannot carry them.
        public let otherChangedParameters: [String]
    }

    /// Attaches the extracted adapter to `base`'s linear layers under `name` (and activates it).
    /// - Parameters:
    ///   - targets: which linear layers to consider (by key); all by default.
    /// - Throws: ``ModelError`` if the two models do not have the same parameters and shapes.
    public static func extract(
        base: any Module, fineTuned: any Module, rank: Int, name: String = "default",
        targets: (String) -> Bool = { _ in true }
    ) throws -> Report {
        guard rank > 0 else { throw ModelError.badInput("rank must be positive, got \(rank)") }
        let tuned = Dictionary(
            fineTuned.namedParameters().map { ($0.key, $0.parameter) }, uniquingKeysWith: { a, _ in a })
        let baseParameters = base.namedParameters()
        let missing = baseParameters.map(\.key).filter { tuned[$0] == nil }
        let misshaped = baseParameters.compactMap { k, p in
            tuned[k].flatMap {
                $0.value.shape == p.value.shape ? nil : "\(k) is \($0.value.shape), expected \(p.value.shape)"
            }
        }
        guard missing.isEmpty, misshaped.isEmpty else {
            throw ModelError.checkpointMismatch(missing: missing, unexpected: [], misshaped: misshaped)
        }

        var layers: [Layer] = [], covered = Set<String>()
        for (key, module) in base.namedModules() {
            guard let linear = module as? Linear, targets(key), let other = tuned["\(key).weight"] else { continue }
            covered.insert("\(key).weight")
            var delta = try Autograd.withoutGradients { try other.value - linear.weight.value }
            guard delta.scalars.contains(where: { $0 != 0 }) else { continue }
            if linear.weightTransposed { delta = try delta.transposed() }  // always [out, in]
            let (u, s, vt) = try delta.singularValueDecomposition()
            let r = min(rank, s.count)
            let sv = s.scalars
            let total = sv.reduce(0.0) { $0 + Double($1) * Double($1) }
            let kept = sv.prefix(r).reduce(0.0) { $0 + Double($1) * Double($1) }
            let b = try u.slice(axis: 1, 0..<r).multiplying(try s.slice(axis: 0, 0..<r))  // U_r · diag(S_r): scale the columns
            let a = try vt.slice(axis: 0, 0..<r)
            try linear.attachLoRA(name, LoRA(a: a.detached(), b: b.detached(), scale: 1))
            layers.append(Layer(key: key, rank: r, energyKept: total > 0 ? kept / total : 1))
        }
        guard !layers.isEmpty else {
            throw ModelError.badInput(
                "no linear layer\(covered.isEmpty ? " to consider" : "'s weight differs between the base and the fine-tuned model"): there is nothing to extract"
            )
        }
        let others = baseParameters.filter { k, p in
            !covered.contains(k) && tuned[k]!.value.scalars != p.value.scalars  // every base key is in `tuned` (checked above)
        }.map(\.key)
        return Report(layers: layers, otherChangedParameters: others)
    }
}
