import Foundation
@testable import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// A run killed at any write boundary of a checkpoint or a best-result save resumes to the same end, bit for bit, as
/// an uninterrupted run, with each step logged once and nothing stale left behind.
struct TrainingFaultTests {
    struct Killed: Error {}

    @Test(arguments: Trainer.CheckpointWrite.allCases)
    func aKillAtEveryWriteBoundaryResumesBitIdentical(boundary: Trainer.CheckpointWrite) throws {
        let trainer = TrainerTests()
        let (_, whole) = try Parallel.withSingleThreadedBLAS { try trainer.run(steps: 8, output: nil) }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Killed the first time the boundary is reached from step 4 on; a best result is first saved at step 3 (the
        // first evaluation), so that boundary from step 3.
        let from = boundary == .bestSwap ? 3 : 4
        var fired = false
        #expect(throws: Killed.self) {
            _ = try Parallel.withSingleThreadedBLAS {
                try trainer.run(steps: 8, output: dir) { t in
                    t.writeBoundary = { [unowned t] stage in
                        if stage == boundary && t.step >= from { fired = true; throw Killed() }
                    }
                }
            }
        }
        #expect(fired, "the \(boundary) boundary was reached")
        let (resumed, final) = try Parallel.withSingleThreadedBLAS {
            try trainer.run(steps: 8, resumeFrom: dir.appendingPathComponent("checkpoint"), output: dir)
        }
        #expect(resumed.step == 8)
        #expect(
            final.count == whole.count && zip(final, whole).allSatisfy { $0.bitPattern == $1.bitPattern },
            "killed before \(boundary) and resumed: the parameters differ from an uninterrupted run")
        let steps = try StepRecord.log(dir.appendingPathComponent("metrics.jsonl")).map(\.step)
        #expect(steps == Array(1...8), "each step logged once, got \(steps)")
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("checkpoint").path)
            .sorted()
        #expect(left == ["trainer_state.json", "training_state-8.safetensors"])
        let top = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        #expect(top == ["best", "checkpoint", "metrics.jsonl"], "no stale temporaries: \(top)")
        #expect(
            FileManager.default.fileExists(atPath: dir.appendingPathComponent("best/adapter_model.safetensors").path))
    }

    @Test func aSwapCutBetweenItsRenamesIsRecovered() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let best = dir.appendingPathComponent("best")
        try FileManager.default.createDirectory(at: best, withIntermediateDirectories: true)
        try Data("old".utf8).write(to: best.appendingPathComponent("f"))
        // The state a kill between the two renames leaves: the old directory aside, the new one not yet in place.
        #expect(rename(best.path, dir.appendingPathComponent(".best.previous").path) == 0)
        try DirectorySwap.recover(best)
        #expect(String(decoding: try Data(contentsOf: best.appendingPathComponent("f")), as: UTF8.self) == "old")
        let fresh = try DirectorySwap.freshDirectory(for: best)
        try Data("new".utf8).write(to: fresh.appendingPathComponent("f"))
        try DirectorySwap.replace(best, with: fresh)
        #expect(String(decoding: try Data(contentsOf: best.appendingPathComponent("f")), as: UTF8.self) == "new")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["best"])
    }

    @Test func temporariesOfDeadWritersAreRemovedAndLiveOnesKept() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // PID 4,194,303 is beyond Linux's default pid_max (32768 on small systems) and unused on this machine's;
        // PID 1 is always alive.
        let dead = ".model.safetensors.tmp-4194303-77", live = ".model.safetensors.tmp-1-78", other = ".hidden"
        for name in [dead, live, other] { try Data().write(to: dir.appendingPathComponent(name)) }
        AtomicFile.removeStaleTemporaries(in: dir)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == [other, live].sorted())
    }

    @Test func aCheckpointManifestCannotNameAFileOutsideItsDirectory() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (trainer, _) = try TrainerTests().run(steps: 2, output: dir)
        let manifest = dir.appendingPathComponent("checkpoint/trainer_state.json")
        var json = try Checkpoint.readJSON(manifest)
        json["state_file"] = "../../etc/passwd"
        try JSONSerialization.data(withJSONObject: json).write(to: manifest)
        #expect(
            performing: { try trainer.resume(from: dir.appendingPathComponent("checkpoint")) },
            throws: { "\($0)".contains("is not a file name in the checkpoint directory") })
    }
}
