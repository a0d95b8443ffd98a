import Foundation
import ReinsFuzzTargets
import ReinsTestSupport
import Testing

/// A seeded, time-bounded mutation fuzz of every file reader: each run mutates the committed fixtures the same way
/// (so a failure reproduces), and every input must be accepted or refused with an error — a crash ends the test run,
/// a slow input fails the test. The coverage-guided harness for longer runs is Tests/Fuzz/run.sh.
struct ReaderFuzzTests {
    static let inputsPerReader = 1000
    /// The slowest any one input may be: a reader's work is bounded by its input, and these inputs are small.
    static let secondsPerInput = 2.0

    @Test(arguments: ReaderFuzzTarget.allCases)
    func mutatedFilesAreReadOrRefusedNeverCrash(target: ReaderFuzzTarget) throws {
        let scratch = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let seeds = try target.seeds(fixtures: Fixtures.directory)
        // The seeds themselves are valid files and must be accepted: otherwise the mutations start from nothing.
        for (i, seed) in seeds.enumerated() where target != .torchCheckpoint {
            #expect(target.run(seed, scratch: scratch, fixtures: Fixtures.directory), "\(target) seed \(i) is refused")
        }
        var mutator = Mutator(seed: UInt64(ReaderFuzzTarget.allCases.firstIndex(of: target)!) * 1_000_003)
        var accepted = 0
        for i in 0..<Self.inputsPerReader {
            let input = mutator.mutate(seeds[i % seeds.count])
            let start = Date()
            if target.run(input, scratch: scratch, fixtures: Fixtures.directory) { accepted += 1 }
            let seconds = Date().timeIntervalSince(start)
            #expect(seconds < Self.secondsPerInput, "\(target) input \(i) (\(input.count) bytes) took \(seconds) s")
        }
        // Not every mutation breaks a file; a fuzz that refuses everything would be testing only the first check.
        #expect(accepted < Self.inputsPerReader, "\(target): every mutated input was accepted")
    }
}
