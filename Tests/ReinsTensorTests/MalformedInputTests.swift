import Foundation
@testable import ReinsTensor
import ReinsTestSupport
import Testing

/// Inputs that once trapped, overflowed or were read silently wrong by the tensor layer: each now throws an error that
/// names the problem.
struct MalformedInputTests {
    func contains(_ text: String) -> (any Error) -> Bool { { "\($0)".contains(text) } }

    @Test func shapesWhoseSizeOverflowsOrExceedsMemoryAreRefused() throws {
        let huge = [1 << 31, 1 << 31, 1 << 31]
        #expect(performing: { try Tensor.zeros(huge) }, throws: contains("more elements than an Int can count"))
        #expect(performing: { try Tensor.normal([1 << 40], seed: 1) }, throws: contains("more than this machine's"))
        #expect(performing: { try Tensor.uninitialized([-1, 2]) }, throws: contains("negative size"))
        #expect(
            performing: { try IntTensor(shape: huge, values: []) },
            throws: contains("more elements than an Int can count"))
        #expect(
            performing: { try Tensor.zeros([3, 4]).reshaped(huge) },
            throws: contains("more elements than an Int can count"))
        // An op's result is checked too: the outer product of two long vectors.
        let a = try Tensor.zeros([1 << 20, 1]), b = try Tensor.zeros([1, 1 << 20])
        #expect(performing: { try Tensor.matmul(a, b) }, throws: contains("more than this machine's"))
    }

    @Test func elementAccessThrowsOutsideTheShape() throws {
        var t = try Tensor(shape: [2, 3], values: [0, 1, 2, 3, 4, 5])
        #expect(try t.element(at: [1, 2]) == 5)
        try t.setElement(9, at: [0, 1])
        #expect(t.scalars == [0, 9, 2, 3, 4, 5])
        #expect(performing: { try t.element(at: [2, 0]) }, throws: contains("out of range for shape [2, 3]"))
        #expect(performing: { try t.element(at: [0, -1]) }, throws: contains("out of range"))
        #expect(performing: { try t.element(at: [1]) }, throws: contains("index [1] for a tensor of shape [2, 3]"))
    }

    @Test func safeTensorsSizesThatWrapAreRefused() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("x.safetensors")
        func open(_ header: String, _ bytes: Int) throws -> SafeTensorsFile {
            try rawSafeTensors(header: header, data: [UInt8](repeating: 0, count: bytes)).write(to: url)
            return try SafeTensorsFile(path: url.path)
        }
        // 4 × (2^62 + 1) bytes wraps to 4: it once passed the size check and the read wrote past a 4-byte buffer.
        #expect(
            performing: { try open(#"{"a":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}}"#, 4) },
            throws: contains("bytes for shape [4611686018427387905]"))
        // JSON integers beyond 64 bits once wrapped (2^64 + 30 read as 30), fractions were truncated.
        #expect(
            performing: {
                try open(#"{"a":{"dtype":"F32","shape":[18446744073709551646],"data_offsets":[0,120]}}"#, 120)
            },
            throws: contains("bad shape"))
        #expect(
            performing: {
                try open(
                    #"{"a":{"dtype":"F32","shape":[30],"data_offsets":[18446744073709551616,18446744073709551736]}}"#,
                    120)
            },
            throws: contains("bad data_offsets"))
        #expect(
            performing: { try open(#"{"a":{"dtype":"F32","shape":[30.5],"data_offsets":[0,120]}}"#, 120) },
            throws: contains("bad shape"))
        #expect(
            performing: { try open(#"{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#, 4) },
            throws: contains("bad shape"))
        // Integral floats are exact and still read.
        #expect(try open(#"{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, 8).entries["a"]?.shape == [2])
        // An empty file is a named error (and is not memory-mapped: mapping zero bytes leaks in Foundation).
        try Data().write(to: url)
        #expect(
            performing: { try SafeTensorsFile(path: url.path) }, throws: contains("fewer than the 8-byte header length")
        )
        #expect(performing: { try SafeTensorsFile(path: dir.path) }, throws: contains("cannot read"))
    }

    /// A checkpoint whose `data.pkl` is `pickle`, in PyTorch's zip layout.
    func checkpoint(pickle: [UInt8], in dir: URL) throws -> String {
        let url = dir.appendingPathComponent("pytorch_model.bin")
        try storedZip([("archive/data.pkl", Data(pickle))]).write(to: url)
        return url.path
    }

    @Test func deeplyNestedPicklesAreRefusedWithoutExhaustingTheStack() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // 10^6 nested one-tuples (2 MB), and 300,000 nested dicts: once a stack overflow in parsing and teardown.
        let tuples = [0x80, 0x02, 0x4E] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2E]
        #expect(
            performing: { try TorchCheckpoint(path: checkpoint(pickle: tuples, in: dir)) },
            throws: contains("nest more than 64 deep"))
        var dicts: [UInt8] = [0x80, 0x02, 0x7D]
        for _ in 0..<300_000 { dicts += [0x4B, 0x01, 0x7D] }  // key 1, a new empty dict: the value of the next SETITEM
        dicts += [UInt8](repeating: 0x73, count: 300_000) + [0x2E]
        #expect(
            performing: { try TorchCheckpoint(path: checkpoint(pickle: dicts, in: dir)) },
            throws: contains("nest more than 64 deep"))
    }

    @Test func longFlatPicklesParseInLinearTime() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // 400,000 single APPENDs to one list: quadratic copying would take minutes; in place it takes milliseconds.
        var ops: [UInt8] = [0x80, 0x02, 0x7D, 0x4B, 0x01, 0x5D]
        for _ in 0..<400_000 { ops += [0x4E, 0x61] }
        ops += [0x73, 0x2E]
        let start = Date()
        let file = try TorchCheckpoint(path: checkpoint(pickle: ops, in: dir))
        #expect(file.entries.isEmpty)
        #expect(Date().timeIntervalSince(start) < 20, "400,000 appends took \(Date().timeIntervalSince(start)) s")
    }

    @Test func picklesOutsideAZipAreNamedForWhatTheyAre() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let legacy = dir.appendingPathComponent("pytorch_model.bin")
        // The start of a pre-1.6 torch.save file: a protocol-2 pickle of its magic number.
        try Data([0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]).write(
            to: legacy)
        #expect(performing: { try openTensorArchive(legacy.path) }, throws: contains("before PyTorch 1.6"))
        try Data("not a checkpoint at all".utf8).write(to: legacy)
        #expect(performing: { try openTensorArchive(legacy.path) }, throws: contains("not a zip archive"))
    }
}
