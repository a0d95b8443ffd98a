import CReinsKernels
import Testing

/// A suite whose tests run the kernels under each instruction set this CPU has (scalar, AVX2, AVX-512): the sets to
/// iterate and a way to force one around a body. Such suites are serialized (the choice is process-wide state for the
/// calling thread and the parallel workers it starts).
protocol PerInstructionSet {}

extension PerInstructionSet {
    /// Every instruction set up to the best this CPU has.
    static var instructionSets: [Int32] { Array(Int32(0)...rk_isa_detected()) }

    /// Runs `body` with the kernels forced to `isa`, then restores the best one.
    func with(_ isa: Int32, _ body: () throws -> Void) rethrows {
        #expect(rk_isa_select(isa) == isa)
        defer { rk_isa_select(rk_isa_detected()) }
        try body()
    }
}
