import Foundation

/// A small, fast, seeded random number generator (SplitMix64) whose sequence is the same on every platform and run.
///
/// `Tensor.normal` and `Tensor.uniform` draw from it: uniform floats take the top 24 bits of each 64-bit output,
/// and normal floats use the Box–Muller transform on pairs of uniforms, so a seed fully determines a tensor.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// Creates a generator whose output is a pure function of `seed`.
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A float uniform in `[0, 1)`.
    public mutating func nextUniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// A standard normal float (Box–Muller; one of each pair is used so the stream stays simple to reproduce).
    public mutating func nextNormal() -> Float {
        let u1 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        let radius = (-2.0 * log(max(u1, .leastNonzeroMagnitude))).squareRoot()
        return Float(radius * cos(2.0 * Double.pi * u2))
    }
}
