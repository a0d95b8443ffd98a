import Foundation
import Testing
@testable import ReinsTensor
import ReinsTestSupport

struct SafeTensorsTests {
    /// A file from a header dictionary and a data section, to build broken files on purpose.
    func write(header: [String: Any], data: [UInt8], to url: URL, headerLength: UInt64? = nil) throws {
        let json = try JSONSerialization.data(withJSONObject: header)
        var bytes = Data()
        withUnsafeBytes(of: (headerLength ?? UInt64(json.count)).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(json)
        bytes.append(contentsOf: data)
        try bytes.write(to: url)
    }

    @Test func roundTripsFloatsAndIntegers() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("t.safetensors").path
        let a = try Tensor.normal([3, 5], seed: 1), b = try Tensor.normal([7], seed: 2)
        try SafeTensorsFile.write(
            ["a": a, "b.weight": b], integers: ["ids": try IntTensor(shape: [2, 2], values: [1, -2, 3, 40000])],
            metadata: ["format": "pt"], to: path)
        let f = try SafeTensorsFile(path: path)
        #expect(try f.tensor("a").scalars == a.scalars && f.tensor("a").shape == [3, 5])
        #expect(try f.tensor("b.weight").scalars == b.scalars)
        #expect(try f.intTensor("ids").values == [1, -2, 3, 40000])
        #expect(f.metadata["format"] == "pt")
        #expect(Set(f.names) == ["a", "b.weight", "ids"])
        // No temporary file is left behind by the atomic write.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["t.safetensors"])
    }

    @Test func readsHalfPrecisionAndBFloat16() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("h.safetensors")
        // 1.5 and -2 in F16 (0x3E00, 0xC000) and in BF16 (0x3FC0, 0xC000), little-endian.
        try write(
            header: [
                "h": ["dtype": "F16", "shape": [2], "data_offsets": [0, 4]],
                "b": ["dtype": "BF16", "shape": [2], "data_offsets": [4, 8]],
            ],
            data: [0x00, 0x3E, 0x00, 0xC0, 0xC0, 0x3F, 0x00, 0xC0], to: url)
        let f = try SafeTensorsFile(path: url.path)
        #expect(try f.tensor("h").scalars == [1.5, -2])
        #expect(try f.tensor("b").scalars == [1.5, -2])
    }

    @Test func badFilesThrowNamedErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("bad.safetensors"), path = url.path
        let entry: (String, [Int], [Int]) -> [String: Any] = { ["dtype": $0, "shape": $1, "data_offsets": $2] }

        try Data([1, 2, 3]).write(to: url)
        #expect(throws: SafeTensorsError.truncated(path: path, detail: "3 bytes, fewer than the 8-byte header length"))
        { try SafeTensorsFile(path: path) }

        try write(
            header: ["a": entry("F32", [2], [0, 8])], data: [UInt8](repeating: 0, count: 8), to: url,
            headerLength: 1 << 40)
        #expect { try SafeTensorsFile(path: path) } throws: {
            ($0 as? SafeTensorsError).map { if case .truncated = $0 { true } else { false } } ?? false
        }

        var bytes = Data()
        withUnsafeBytes(of: UInt64(5).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: Array("{nope".utf8))
        try bytes.write(to: url)
        #expect { try SafeTensorsFile(path: path) } throws: {
            ($0 as? SafeTensorsError).map { if case .malformedHeader = $0 { true } else { false } } ?? false
        }

        try write(
            header: ["a": entry("F32", [2], [0, 8]), "b": entry("F32", [2], [4, 12])],
            data: [UInt8](repeating: 0, count: 12), to: url)
        #expect { try SafeTensorsFile(path: path) } throws: { "\($0)".contains("overlap") }

        try write(header: ["a": entry("F32", [4], [0, 16])], data: [UInt8](repeating: 0, count: 8), to: url)
        #expect { try SafeTensorsFile(path: path) } throws: { "\($0)".contains("run past") && "\($0)".contains("'a'") }

        try write(header: ["a": entry("F32", [3], [0, 8])], data: [UInt8](repeating: 0, count: 8), to: url)
        #expect { try SafeTensorsFile(path: path) } throws: { "\($0)".contains("8 bytes for shape [3]") }

        try write(header: ["a": entry("C64", [1], [0, 8])], data: [UInt8](repeating: 0, count: 8), to: url)
        #expect(throws: SafeTensorsError.unsupportedDType(path: path, tensor: "a", dtype: "C64")) {
            try SafeTensorsFile(path: path)
        }

        try write(header: ["ids": entry("I32", [2], [0, 8])], data: [UInt8](repeating: 0, count: 8), to: url)
        let f = try SafeTensorsFile(path: path)
        #expect(
            throws: SafeTensorsError.wrongDType(
                path: path, tensor: "ids", expected: "a float type (F32, F16, BF16)", found: "I32")
        ) { try f.tensor("ids") }
        #expect(throws: SafeTensorsError.missingTensor(path: path, tensor: "weight")) { try f.tensor("weight") }
        #expect { try SafeTensorsFile(path: dir.appendingPathComponent("absent").path) } throws: {
            "\($0)".contains("cannot read")
        }
    }
}
