import CReinsKernels
import Foundation
import Testing
import ReinsTestSupport
@testable import ReinsTensor

/// Quantizing float32 into GGUF's block types (what `reins quantize` writes): byte for byte against the `gguf`
/// package's quantizers where it has one, and within each format's error bound where it has none (Q4_K, Q6_K).
struct QuantizeTests {
    static let fixture = Fixtures.directory.appendingPathComponent("gguf/quantize.safetensors").path

    @Test("F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 blocks equal the gguf package's bytes")
    func equalsReference() throws {
        let file = try SafeTensorsFile(path: Self.fixture)
        let source = try file.tensor("source")
        let (rows, columns) = (source.shape[0], source.shape[1])
        let values = source.scalars
        for (name, type) in [("f16", GGMLType.f16), ("bf16", .bf16), ("q8_0", .q8_0), ("q4_0", .q4_0), ("q4_1", .q4_1),
                             ("q5_0", .q5_0), ("q5_1", .q5_1)] {
            let expected = try file.intTensor(name)
            let rowBytes = expected.shape[1]
            for r in 0..<rows {
                let bytes = try values[(r * columns)..<((r + 1) * columns)].withUnsafeBufferPointer { try type.encode($0) }
                let want = expected.values[(r * rowBytes)..<((r + 1) * rowBytes)].map { UInt8($0) }
                #expect(Array(bytes) == want, "\(name) row \(r)")
            }
        }
    }

    @Test("Half precision rounds to nearest even as Swift's Float16 does, subnormals and overflow included")
    func halfRounding() {
        var g = SeededGenerator(seed: 11)
        var cases: [Float] = [0, -0, 1, 65504, 65519.99, 65520, 1e-8, 2.98e-8, 2.9802322e-8, 5.96e-8, 6.1e-5, .infinity, -.infinity]
        for _ in 0..<20000 {
            // Bit patterns across the whole range, and near the half's subnormal and overflow edges.
            cases.append(Float(bitPattern: UInt32(truncatingIfNeeded: g.next())))
            cases.append(Float(bitPattern: 0x3300_0000 + UInt32(truncatingIfNeeded: g.next() % 0x0600_0000)))
            cases.append(Float(bitPattern: 0x4770_0000 + UInt32(truncatingIfNeeded: g.next() % 0x0020_0000)))
        }
        var wrong = 0
        for x in cases where !x.isNaN {
            if rk_float_to_half(x) != Float16(x).bitPattern { wrong += 1 }
        }
        #expect(wrong == 0)
        #expect(rk_half_to_float(rk_float_to_half(.nan)).isNaN)
    }

    @Test("Q4_K and Q6_K: dequantized blocks stay within the format's step of every value", arguments: [GGMLType.q4_K, .q6_K])
    func kQuantError(type: GGMLType) throws {
        let columns = 512, rows = 3
        var x = randomFloats(rows * columns, seed: 5, scale: 0.05)
        for i in 0..<32 { x[i] = 0 }                    // a zero sub-block
        for i in 256..<288 { x[i] = 0.02 }              // a constant positive sub-block
        for i in 600..<616 { x[i] *= 1e-3 }             // a tiny sub-block beside ordinary ones
        for i in 1024..<1280 { x[i] = abs(x[i]) + 0.01 }  // a super-block of positives only
        let bytes = try x.withUnsafeBufferPointer { try type.encode($0) }
        #expect(bytes.count == rows * columns / 256 * type.blockBytes!)
        let m = try QuantizedMatrix(type: type, rows: rows, columns: columns, data: bytes)
        let back = try m.dequantized().scalars
        // Per super-block: the worst error against the super-block's own spread, which a 4-bit (6-bit) grid with 6-bit
        // (8-bit) scales bounds by about one step of 1/15 (1/63) of each sub-block's range plus the scale's rounding.
        let bound: Float = type == .q4_K ? 0.09 : 0.025
        for s in 0..<(x.count / 256) {
            let range = (256 * s)..<(256 * (s + 1))
            let spread = max(x[range].max()! - min(0, x[range].min()!), 1e-12)
            let worst = range.map { abs(back[$0] - x[$0]) }.max()!
            #expect(worst <= bound * spread, "super-block \(s): error \(worst) of spread \(spread)")
        }
        for i in 0..<32 { #expect(back[i] == 0) }
        // Against a 32-element type of a width no greater: Q4_K within 1.5x Q4_1's error, Q6_K (6 bits) below Q5_0's.
        let other: GGMLType = type == .q4_K ? .q4_1 : .q5_0
        let o = try QuantizedMatrix(
            type: other, rows: rows, columns: columns, data: try x.withUnsafeBufferPointer { try other.encode($0) })
        let ob = try o.dequantized().scalars
        func rms(_ y: [Float]) -> Float { (zip(y, x).map { ($0 - $1) * ($0 - $1) }.reduce(0, +) / Float(x.count)).squareRoot() }
        #expect(rms(back) <= (type == .q4_K ? 1.5 : 1.0) * rms(ob), "\(type) rms \(rms(back)) vs \(other) \(rms(ob))")
    }

    @Test("Encoding refuses counts that are not whole blocks and types Reins does not write")
    func refusals() {
        let x = [Float](repeating: 1, count: 48)
        #expect(throws: TensorError.self) { try x.withUnsafeBufferPointer { try GGMLType.q8_0.encode($0) } }
        #expect(throws: TensorError.self) { try x.withUnsafeBufferPointer { try GGMLType.q5_K.encode($0) } }
        #expect(throws: TensorError.self) { try QuantizedMatrix(quantizing: try Tensor.zeros([2, 48]), type: .q4_0) }
    }

    @Test("A GGUF file of encoded tensors reads back as the same blocks")
    func writeEncoded() throws {
        let dir = try temporaryDirectory()
        let path = dir.appendingPathComponent("q.gguf").path
        let x = randomFloats(4 * 64, seed: 9, scale: 0.1)
        let q = try x.withUnsafeBufferPointer { try GGMLType.q4_1.encode($0) }
        try GGUFWriter.write(
            metadata: [("general.architecture", .string("test"))],
            encoded: [.init(name: "w", shape: [4, 64], type: .q4_1, bytes: q),
                      .init(name: "b", shape: [4], type: .f32, bytes: [Float](repeating: 2, count: 4).withUnsafeBytes { Data($0) })],
            to: path)
        let file = try GGUFFile(path: path)
        let m = try file.quantizedMatrix("w")
        #expect(m.type == .q4_1 && m.rows == 4 && m.columns == 64)
        #expect(m.withBytes { Data(bytes: $0, count: m.byteCount) } == q)
        #expect(try file.tensor("b").scalars == [2, 2, 2, 2])
        #expect(throws: GGUFError.self) {
            try GGUFWriter.write(metadata: [], encoded: [.init(name: "w", shape: [4, 64], type: .q4_1, bytes: q.dropLast())], to: path)
        }
    }
}
