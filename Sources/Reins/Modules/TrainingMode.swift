import Foundation
import ReinsTensor

/// Training mode: while a forward pass runs inside ``TrainingMode/run(seed:_:)``, the models apply dropout where
/// Hugging Face applies it (embeddings, attention probabilities, each residual branch, classifier inputs, LoRA
/// inputs); outside it they are deterministic inference functions.
///
/// Dropout masks are a pure function of `(seed, counter)`: every dropout site reserves a counter range as large as
/// its tensor, in forward order, so one seed reproduces a step's masks exactly (what resuming a run relies on) and
/// backward needs no stored mask.
public final class TrainingMode: @unchecked Sendable {
    @TaskLocal static var current: TrainingMode?

    /// The seed of this forward pass's masks.
    public let seed: UInt64
    private var counter: UInt64 = 0
    private let lock = NSLock()

    init(seed: UInt64, counter: UInt64 = 0) {
        self.seed = seed
        self.counter = counter
    }

    private var counterValue: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return counter
    }

    /// A way to run a block twice with the same dropout masks (gradient checkpointing recomputes a block in backward):
    /// each call runs the block from the counter the current pass has reached now, and the first call then moves the
    /// pass past what it drew. Outside training mode, calls just run the block.
    static func replayable() -> ((() throws -> Tensor) throws -> Tensor) {
        guard let live = current else { return { try $0() } }
        let (seed, start) = (live.seed, live.counterValue)
        var first = true
        return { body in
            let mode = TrainingMode(seed: seed, counter: start)
            let result = try $current.withValue(mode, operation: body)
            if first {
                first = false
                _ = live.reserve(Int(truncatingIfNeeded: mode.counterValue &- start))
            }
            return result
        }
    }

    /// Runs `body` in training mode with dropout masks drawn from `seed`.
    public static func run<R>(seed: UInt64, _ body: () throws -> R) rethrows -> R {
        try $current.withValue(TrainingMode(seed: seed), operation: body)
    }

    /// Whether a forward pass running now is in training mode.
    public static var isActive: Bool { current != nil }

    func reserve(_ n: Int) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        let start = counter
        counter &+= UInt64(n)
        return start
    }

    /// The counter range for `n` draws of the current training pass (nil in inference).
    static func draws(_ n: Int) -> (seed: UInt64, offset: UInt64)? {
        current.map { ($0.seed, $0.reserve(n)) }
    }
}

/// The attention-probability dropout for `probabilities` entries in training mode (nil in inference or when `p` is 0).
func attentionProbabilityDropout(_ p: Float, probabilities: Int) -> (p: Float, seed: UInt64, offset: UInt64)? {
    guard p > 0, let draw = TrainingMode.draws(probabilities) else { return nil }
    return (p, draw.seed, draw.offset)
}

extension Tensor {
    /// Dropout with probability `p` in training mode; `self` unchanged in inference or when `p` is 0.
    func trainingDropout(_ p: Float) throws -> Tensor {
        guard p > 0, let draw = TrainingMode.draws(count) else { return self }
        return try dropout(p, seed: draw.seed, offset: draw.offset)
    }
}
