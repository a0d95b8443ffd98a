import Foundation
@testable import ReinsTensor
import ReinsTestSupport
import Testing

/// PyTorch's zip-pickle checkpoints against `torch.save` output (Tests/Fixtures/make_pickle_fixtures.py).
struct TorchCheckpointTests {
    let dir = Fixtures.directory.appendingPathComponent("pickle")

    @Test func everyTensorMatchesItsContiguousCopy() throws {
        let file = try TorchCheckpoint(path: dir.appendingPathComponent("tensors.bin").path)
        let expected = try SafeTensorsFile(path: dir.appendingPathComponent("tensors_expected.safetensors").path)
        #expect(Set(file.tensorNames) == Set(expected.entries.keys))
        // Strided views, two views of one storage, float16, bfloat16, float64, a 0-d tensor and int64 among them.
        #expect(file.entries["transposed"]?.shape == [6, 4] && file.entries["scalar"]?.shape == [])
        #expect(
            file.entries["shared_a"]?.dtype == "Float" && file.entries["half"]?.dtype == "Half"
                && file.entries["ids"]?.dtype == "Long")
        for name in expected.entries.keys {
            let a = try file.tensor(name), b = try expected.tensor(name)
            #expect(a.shape == b.shape, "shape of \(name)")
            #expect(a.scalars.map(\.bitPattern) == b.scalars.map(\.bitPattern), "values of \(name)")
        }
        // The same through the format-sniffing opener.
        let opened = try openTensorArchive(dir.appendingPathComponent("tensors.bin").path)
        #expect(try opened.tensor("transposed").scalars == (try expected.tensor("transposed")).scalars)
        #expect(throws: SafeTensorsError.missingTensor(path: file.path, tensor: "nope")) { try file.tensor("nope") }
    }

    @Test func codeInThePickleIsRefusedByName() throws {
        let path = dir.appendingPathComponent("refused.bin").path
        #expect(
            throws: TorchCheckpointError.unsupported(
                path: path,
                detail: "the pickle refers to os.system, which a state dict does not need (refused, not run)")
        ) {
            try TorchCheckpoint(path: path)
        }
    }

    @Test func aViewBeyondItsStorageIsRefused() throws {
        // Shape (2^62, 4) over a 15-element storage: the element count overflows; nothing is allocated.
        let path = dir.appendingPathComponent("oversized.bin").path
        #expect { try TorchCheckpoint(path: path) } throws: {
            "\($0)".contains("tensor 'huge'") && "\($0)".contains("does not fit storage 0 of 15 elements")
        }
    }

    @Test func truncatedAndDamagedFilesThrow() throws {
        let whole = try Data(contentsOf: dir.appendingPathComponent("tensors.bin"))
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("reins-pickle-\(UUID().uuidString).bin")
        defer { try? FileManager.default.removeItem(at: tmp) }
        for cut in stride(from: 0, to: whole.count, by: 61) {
            try whole.prefix(cut).write(to: tmp)
            #expect(throws: TorchCheckpointError.self, "cut at \(cut)") { try TorchCheckpoint(path: tmp.path) }
        }
        // Every single-byte change inside the pickle either still parses or throws a named error; none traps.
        let files = try ZipDirectory(whole, path: "x")
        let pickle = try #require(files.entries.first { $0.key.hasSuffix("data.pkl") }?.value)
        for i in pickle {
            var damaged = whole
            damaged[i] ^= 0x5A
            try damaged.write(to: tmp)
            do { _ = try TorchCheckpoint(path: tmp.path) } catch is TorchCheckpointError {} catch is SafeTensorsError {}
        }
    }
}
