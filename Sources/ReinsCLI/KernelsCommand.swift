import ArgumentParser
import Dispatch
import Foundation
import ReinsTensor

/// `reins kernels`: which instruction set the kernels use, and a verify-then-time pass over each op family.
struct KernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Check every compute kernel against its scalar reference, then time it (median of repeats)."
    )

    @Option(help: "Timed repeats per kernel; the median is reported.")
    var repeats: Int = 7

    @Option(help: "Only workloads whose name contains this text.")
    var only: String?

    @Flag(help: "Print one JSON object per workload instead of the table.")
    var json = false

    @Flag(help: "List the workload labels (the texts --only matches) and exit.")
    var list = false

    func run() throws {
        if list {
            for (label, _) in KernelWorkload.gpt2Small { print(label) }
            return
        }
        if !json {
            print(
                "instruction set: \(Kernels.activeInstructionSet) (detected: \(Kernels.detectedInstructionSet)), threads: \(Parallel.threadCount), OpenBLAS core: \(Kernels.blasCore)\(Kernels.blasCoreFallback.map { " (raised from \($0))" } ?? ""), products with many rows: \(Kernels.manyRowProducts)"
            )
            print("workload".padding(toLength: 56, withPad: " ", startingAt: 0) + "max |fast - reference|   median ms")
        }
        // Build and verify everything selected first, then time round-robin (one run of each workload per round),
        // so that workloads being compared see the same machine conditions.
        var checks: [(KernelWorkload, Float)] = []
        for (label, make) in KernelWorkload.gpt2Small where only.map({ label.contains($0) }) ?? true {
            let check = try make()
            let difference = try check.verify()
            guard difference <= check.tolerance else {
                throw ValidationError(
                    "\(check.name): the fast kernel differs from the reference by \(difference) (tolerance \(check.tolerance))"
                )
            }
            try check.run()  // warm-up
            checks.append((check, difference))
        }
        var times = [[Double]](repeating: [], count: checks.count)
        for _ in 0..<max(repeats, 1) {
            for (i, (check, _)) in checks.enumerated() {
                let start = DispatchTime.now().uptimeNanoseconds
                try check.run()
                times[i].append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
        }
        for ((check, difference), t) in zip(checks, times) {
            let ms = t.sorted()[t.count / 2]
            if json {
                print(
                    "{\"name\": \"\(check.name)\", \"median_ms\": \(ms), \"max_difference\": \(difference), \"isa\": \"\(Kernels.activeInstructionSet)\"}"
                )
                continue
            }
            let name = check.name.padding(toLength: 56, withPad: " ", startingAt: 0)
            let rate = check.flops > 0 ? String(format: "   %.1f GFLOP/s", check.flops / ms / 1e6) : ""
            print("\(name)\(String(format: "%-24.2e %9.3f", difference, ms))\(rate)")
        }
    }
}
