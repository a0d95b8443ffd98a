import CReinsKernels
import Foundation
import Testing
import ReinsTestSupport
@testable import ReinsTensor

/// The GGUF reader against the `gguf` Python package (make_gguf_fixtures.py): every tensor type Reins reads, as
/// random blocks (one half-precision subnormal scale, negative scales), dequantized bit for bit as `gguf` does; and
/// malformed files refused by name.
@Suite(.serialized)
struct GGUFTests {
    static let blocks = Fixtures.directory.appendingPathComponent("gguf/blocks.gguf").path

    @Test func everyTypeDequantizesBitExactlyAsTheGGUFPackage() throws {
        let file = try GGUFFile(path: Self.blocks)
        let expected = try SafeTensorsFile(path: Fixtures.directory.appendingPathComponent("gguf/blocks.safetensors").path)
        let names = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q2_k", "q3_k",
                     "iq4_nl", "iq4_xs"]
        #expect(Set(file.tensorNames) == Set(names))
        for name in names {
            let t = try file.tensor(name), e = try expected.tensor(name)
            #expect(t.shape == e.shape, "\(name) shape")
            let same = zip(t.scalars, e.scalars).allSatisfy { $0.bitPattern == $1.bitPattern }
            #expect(same, "\(name): dequantized values differ from gguf's")
            // The scalar oracle, and the dispatched kernel on every instruction set, give the same bits.
            let info = try file.info(name)
            var ref = [Float](repeating: .nan, count: info.elementCount)
            let status = try file.withRawBytes(name) { raw in
                rk_dequantize_ref(&ref, raw.baseAddress!, info.elementCount, Int32(info.type.rawValue))
            }
            #expect(status == RK_OK)
            #expect(zip(ref, e.scalars).allSatisfy { $0.bitPattern == $1.bitPattern }, "\(name) reference")
            for isa in Int32(0)...rk_isa_detected() {
                #expect(rk_isa_select(isa) == isa)
                defer { rk_isa_select(rk_isa_detected()) }
                var got = [Float](repeating: .nan, count: info.elementCount)
                _ = try file.withRawBytes(name) { raw in
                    rk_dequantize(&got, raw.baseAddress!, info.elementCount, Int32(info.type.rawValue))
                }
                #expect(zip(got, e.scalars).allSatisfy { $0.bitPattern == $1.bitPattern }, "\(name) on isa \(isa)")
            }
        }
        #expect(try file.info("q4_k").type == .q4_K)
        #expect(try file.info("q6_k").dimensions == [512, 3])
    }

    @Test func halfToFloatIsExactForEveryHalf() {
        for bits in 0...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let got = rk_half_to_float(bits)
            if expected.isNaN { #expect(got.isNaN) } else { #expect(got.bitPattern == expected.bitPattern, "\(bits)") }
        }
    }

    /// Rewrites a copy of the fixture with `edit` applied to its bytes and opens it.
    static func open(_ edit: (inout [UInt8]) -> Void) throws -> GGUFFile {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: blocks)))
        edit(&bytes)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("reins-gguf-\(UUID()).gguf").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try GGUFFile(path: path)
    }

    static func put64(_ v: UInt64, _ bytes: inout [UInt8], at offset: Int) {
        for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    @Test func malformedFilesAreNamedErrors() throws {
        func refused(_ what: String, containing text: String, _ edit: (inout [UInt8]) -> Void) {
            do {
                _ = try Self.open(edit)
                Issue.record("\(what): opened")
            } catch {
                #expect("\(error)".contains(text), "\(what): \(error)")
            }
        }
        refused("bad magic", containing: "not a GGUF file") { $0[0] = UInt8(ascii: "X") }
        refused("version 1", containing: "version 1") { $0[4] = 1 }
        refused("version 7", containing: "version 7") { $0[4] = 7 }
        refused("big-endian", containing: "big-endian") { b in b[4] = 0; b[7] = 3 }
        refused("huge tensor count", containing: "tensor count") { Self.put64(1 << 60, &$0, at: 8) }
        refused("huge metadata count", containing: "metadata count") { Self.put64(UInt64.max, &$0, at: 16) }
        // The first key's length: claims more bytes than the file has.
        refused("huge key length", containing: "claims") { Self.put64(1 << 40, &$0, at: 24) }
        refused("truncated header", containing: "left") { $0.removeSubrange(60...) }
        refused("truncated data", containing: "runs past") { $0.removeLast(40) }
        refused("empty", containing: "not a GGUF file") { $0 = [] }
    }

    /// Found by fuzzing: a first dimension near 2^63 overflowed the byte count of its rows. Unknown type numbers, and
    /// types ggml has but Reins does not read, are refused by name.
    @Test func hugeDimensionsAreRefusedWithoutATrap() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("reins-gguf-\(UUID()).gguf").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try GGUFWriter.write(metadata: [], tensors: [.init(name: "t", shape: [32], values: [Float](repeating: 1, count: 32))], to: path)
        #expect(try GGUFFile(path: path).tensor("t").scalars == [Float](repeating: 1, count: 32))
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        // Header 24 bytes, then the tensor's name (8-byte length + "t") and its dimension count: the first dimension
        // is at 37, its type at 45.
        for (dim, type) in [(UInt64(1) << 62, UInt32(2)), (UInt64.max, 0), ((UInt64(1) << 62) + 32, 0)] {
            var b = bytes
            Self.put64(dim, &b, at: 37)
            for i in 0..<4 { b[45 + i] = UInt8(truncatingIfNeeded: type >> (8 * UInt32(i))) }
            try Data(b).write(to: URL(fileURLWithPath: path))
            #expect(throws: GGUFError.self, "dimension \(dim)") { _ = try GGUFFile(path: path) }
        }
        bytes[45] = 99
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(throws: GGUFError.self) { _ = try GGUFFile(path: path) }
        // A type ggml has and Reins does not read is named in the error.
        bytes[45] = 16
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try GGUFFile(path: path)
            Issue.record("an IQ2_XXS tensor was opened")
        } catch {
            #expect("\(error)".contains("IQ2_XXS") && "\(error)".contains("IQ4_XS"), "\(error)")
        }
    }

    @Test func everyTruncationIsRefusedWithoutATrap() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.blocks)))
        // Every cut inside the header and a spread of cuts inside the data (the padding after the last tensor is not
        // needed, so cuts stop at its end).
        let end = try GGUFFile(path: Self.blocks).tensorInfos.map(\.range.upperBound).max() ?? bytes.count
        let cuts = Array(0..<min(end, 1200)) + Array(stride(from: 1200, to: end, by: 97))
        for n in cuts {
            #expect(throws: GGUFError.self, "cut at \(n)") { _ = try Self.open { $0 = Array($0.prefix(n)) } }
        }
    }
}
