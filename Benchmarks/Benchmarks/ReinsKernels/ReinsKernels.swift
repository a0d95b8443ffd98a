// The kernel workloads at GPT-2-small sizes (the same list `reins kernels` and Scripts/compare.py use). Each one is
// built and verified against its scalar reference kernel once, in setup, before it is timed: a wrong fast path fails
// the run instead of reporting a speed.
import Benchmark
import ReinsTensor

struct VerificationFailed: Error, CustomStringConvertible {
    let description: String
}

/// Holds a workload from setup to teardown (setup hooks return nothing).
final class Slot: @unchecked Sendable {
    var workload: KernelWorkload?
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .peakMemoryResident],
        timeUnits: .microseconds,
        warmupIterations: 2,
        maxDuration: .seconds(3),
        maxIterations: 200
    )
    for (name, make) in KernelWorkload.gpt2Small {
        let slot = Slot()
        Benchmark(
            name,
            closure: { benchmark in
                guard let workload = slot.workload else { return }
                for _ in benchmark.scaledIterations { try workload.run() }
            },
            setup: {
                let workload = try make()
                let difference = try workload.verify()
                guard difference <= workload.tolerance else {
                    throw VerificationFailed(
                        description: "\(workload.name): differs from the reference by \(difference)")
                }
                slot.workload = workload
            },
            teardown: {
                slot.workload = nil
            })
    }
}
