import CReinsKernels
import Foundation
import Testing
import ReinsTestSupport
@testable import ReinsTensor

/// Products with weights kept in GGUF blocks: the 8-bit activation blocks and the integer-dot kernel against their
/// scalar oracles on every instruction set and every type, both routes of `quantizedLinear` against the float32
/// product with the dequantized weight (values and input gradients), and the input gradient against finite differences.
@Suite(.serialized)
struct QuantizedKernelTests {
    static let types: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K, .q2_K, .q3_K, .iq4_NL, .iq4_XS]

    /// Random blocks of `type` for a `[rows, columns]` matrix, with valid half-precision scales of a size that gives
    /// weights of about ±0.1.
    static func randomMatrix(_ type: GGMLType, rows: Int, columns: Int, seed: UInt64) throws -> QuantizedMatrix {
        let be = type.blockElements!, bb = type.blockBytes!
        let blocks = rows * columns / be
        var g = SeededGenerator(seed: seed)
        var bytes = (0..<(blocks * bb)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let offsets = try #require(type.halfScaleOffsets)
        let scale: Float =
            switch type {
            case .q4_0: 0.01
            case .q4_1, .q5_1: 0.006
            case .q5_0: 0.005
            case .q8_0, .q3_K, .iq4_NL: 0.0008
            case .q4_K, .q5_K: 0.0002
            case .q2_K: 0.002
            default: 0.00003  // Q6_K, IQ4_XS
            }
        for k in 0..<blocks {
            for o in offsets {
                let v = Float16((g.nextUniform() + 0.5) * scale * (g.nextUniform() < 0.5 ? -1 : 1)).bitPattern
                bytes[k * bb + o] = UInt8(v & 0xFF)
                bytes[k * bb + o + 1] = UInt8(v >> 8)
            }
        }
        return try QuantizedMatrix(type: type, rows: rows, columns: columns, data: Data(bytes))
    }

    static func blocks(_ x: [Float], rows: Int, columns: Int, reference: Bool) -> [rk_q8_block] {
        var out = [rk_q8_block](repeating: rk_q8_block(), count: rows * columns / 32)
        if reference { rk_quantize_q8_ref(&out, x, Int32(rows), Int32(columns)) } else {
            _ = rk_quantize_q8(&out, x, Int32(rows), Int32(columns))
        }
        return out
    }

    @Test func activationBlocksMatchTheScalarOracleOnEveryInstructionSet() {
        var x = randomFloats(5 * 96, seed: 3, scale: 2)
        for j in 32..<64 { x[j] = 0 }  // an all-zero block: scale 0, values 0
        x[100] = 0.5 / 127 * 3  // values exactly halfway between two steps round to even
        let reference = Self.blocks(x, rows: 5, columns: 96, reference: true)
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            let got = Self.blocks(x, rows: 5, columns: 96, reference: false)
            for (a, b) in zip(got, reference) {
                #expect(a.d == b.d && a.ds == b.ds && a.sum16.0 == b.sum16.0 && a.sum16.1 == b.sum16.1, "isa \(active)")
                #expect(withUnsafeBytes(of: a.q) { Array($0) } == withUnsafeBytes(of: b.q) { Array($0) }, "isa \(active)")
            }
        }
        #expect(reference[1].d == 0 && reference[1].sum16.0 == 0)
        // Each value is x/d rounded, and d = max|x|/127.
        let b = reference[0]
        let amax = x[0..<32].map(abs).max()!
        #expect(b.d == amax / 127)
        let q = withUnsafeBytes(of: b.q) { Array($0.bindMemory(to: Int8.self)) }
        for j in 0..<32 { #expect(Float(q[j]) == (x[j] * (1 / b.d)).rounded(.toNearestOrEven)) }
    }

    /// A NaN among the activations makes its block's scale NaN on every instruction set (a maximum of magnitudes alone
    /// skips it, and the scalar rounding would convert NaN to an integer), so each product row that reads the block
    /// is NaN, as the float product's would be; the other blocks and rows are as before. Quantizing weights with a NaN
    /// or an infinity is refused with an error.
    @Test(arguments: [GGMLType.q4_1, .q5_0, .q8_0, .iq4_NL])
    func aNaNActivationGivesNaNProducts(type: GGMLType) throws {
        let (C, OC, N) = (96, 16, 9)
        var x = randomFloats(N * C, seed: 21, scale: 1)
        x[4 * C + 40] = .nan  // row 4, block 1
        let w = try Self.randomMatrix(type, rows: OC, columns: C, seed: 22)
        var packed = [UInt8](repeating: 0, count: w.byteCount)
        #expect(w.withBytes { rk_qpack8(&packed, $0, Int32(type.rawValue), Int32(OC), Int32(C)) } == RK_OK)
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            let xq = Self.blocks(x, rows: N, columns: C, reference: false)
            #expect(xq[4 * 3 + 1].d.isNaN, "isa \(active)")
            #expect(xq.enumerated().allSatisfy { $0.offset == 13 || $0.element.d.isFinite }, "isa \(active)")
            var out = [Float](repeating: 0, count: N * OC)
            #expect(rk_qmatmul_q8_packed8(&out, xq, packed, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, 2) == RK_OK)
            #expect(out[(4 * OC)..<(5 * OC)].allSatisfy { $0.isNaN }, "\(type), isa \(active): the row with a NaN")
            #expect(out.enumerated().allSatisfy { $0.offset / OC == 4 || $0.element.isFinite }, "\(type), isa \(active)")
        }
        // Weights are another matter: a NaN or an infinity has no quantized value, and quantizing one is refused.
        for bad in [Float.nan, .infinity] {
            var weights = randomFloats(2 * C, seed: 23, scale: 1)
            weights[70] = bad
            #expect(throws: TensorError.self) { _ = try QuantizedMatrix(quantizing: Tensor(shape: [2, C], values: weights), type: type) }
        }
    }

    @Test(arguments: QuantizedKernelTests.types)
    func integerDotsMatchTheOracleAndTheFloatProduct(type: GGMLType) throws {
        // N = 9: the integer kernel takes activation rows four at a time, then the 1-3 left.
        let C = type.blockElements! == 256 ? 512 : 96, OC = 37, N = 9
        let w = try Self.randomMatrix(type, rows: OC, columns: C, seed: UInt64(type.rawValue))
        let x = randomFloats(N * C, seed: 11, scale: 1)
        let xq = Self.blocks(x, rows: N, columns: C, reference: true)
        var reference = [Float](repeating: .nan, count: N * OC)
        let status = w.withBytes { rk_qmatmul_q8_ref(&reference, xq, $0, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, Int32(OC)) }
        #expect(status == RK_OK)
        // The oracle is the float product of the dequantized weight with the dequantized 8-bit activations.
        let dense = try w.dequantized().scalars
        var xBack = [Float](repeating: 0, count: N * C)
        for n in 0..<N {
            for k in 0..<(C / 32) {
                let b = xq[n * (C / 32) + k]
                let q = withUnsafeBytes(of: b.q) { Array($0.bindMemory(to: Int8.self)) }
                for j in 0..<32 { xBack[n * C + 32 * k + j] = Float(q[j]) * b.d }
            }
        }
        var exact = [Float](repeating: 0, count: N * OC), approx = exact
        for n in 0..<N {
            for o in 0..<OC {
                var s: Double = 0, t: Double = 0
                for c in 0..<C {
                    s += Double(dense[o * C + c]) * Double(xBack[n * C + c])
                    t += Double(dense[o * C + c]) * Double(x[n * C + c])
                }
                exact[n * OC + o] = Float(s)
                approx[n * OC + o] = Float(t)
            }
        }
        expectClose(reference, exact, atol: 1e-4, rtol: 1e-4, "\(type) oracle vs float product of the 8-bit input")
        // Against the float input, the 8-bit rounding of x costs at most half a step per element.
        let scale = approx.map(abs).max()!
        expectClose(reference, approx, atol: 0.02 * scale, rtol: 0, "\(type) vs the float input")
        // The exact route for few rows: float products with the dequantized weight.
        for isa in Int32(0)...rk_isa_detected() {
            rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            var f32 = [Float](repeating: .nan, count: N * OC)
            // It takes at most 8 rows: 5, then the other 4.
            let s = w.withBytes { p in
                f32.withUnsafeMutableBufferPointer { out in
                    x.withUnsafeBufferPointer { xs in
                        [rk_qmatvec_f32(out.baseAddress!, xs.baseAddress!, p, Int32(type.rawValue), 5, Int32(C), Int32(OC), 0, Int32(OC)),
                         rk_qmatvec_f32(out.baseAddress! + 5 * OC, xs.baseAddress! + 5 * C, p, Int32(type.rawValue), Int32(N - 5),
                                        Int32(C), Int32(OC), 0, Int32(OC))]
                    }
                }
            }
            #expect(s == [RK_OK, RK_OK])
            expectClose(f32, approx, atol: 1e-5, rtol: 1e-5, "\(type) exact route on isa \(isa)")
        }
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            // Every count of activation rows from 1 to N (every tile size and remainder), the first rows of x.
            for rows in 1...N {
                var got = [Float](repeating: .nan, count: rows * OC)
                // Two weight row ranges, as two threads would split it (20: even, so a pair is never split).
                w.withBytes { p in
                    _ = rk_qmatmul_q8(&got, xq, p, Int32(type.rawValue), Int32(rows), Int32(C), Int32(OC), 0, 20)
                    _ = rk_qmatmul_q8(&got, xq, p, Int32(type.rawValue), Int32(rows), Int32(C), Int32(OC), 20, Int32(OC))
                }
                expectClose(got, Array(reference[0..<(rows * OC)]), atol: 1e-5, rtol: 1e-5, "\(type) \(rows) rows on isa \(active)")
            }
        }
    }

    /// The kernel for batches reads the weight interleaved by 8 rows: its scalar form and its AVX2 / VNNI forms against
    /// the row-major oracle, for 1 to 19 activation rows (every tile of 8, of up to 4 and remainder; with VNNI, Q4_1's
    /// pairs of groups from 8 rows and Q8_0's from 16) and split groups.
    @Test(arguments: [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS, .q2_K, .q3_K])
    func interleavedWeightsGiveTheOraclesProducts(type: GGMLType) throws {
        let C = type.blockElements! == 256 ? 512 : 96, OC = 40, N = 19
        let w = try Self.randomMatrix(type, rows: OC, columns: C, seed: UInt64(type.rawValue) + 40)
        let xq = Self.blocks(randomFloats(N * C, seed: 12, scale: 1), rows: N, columns: C, reference: true)
        var reference = [Float](repeating: .nan, count: N * OC)
        _ = w.withBytes { rk_qmatmul_q8_ref(&reference, xq, $0, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, Int32(OC)) }
        let bytes = rk_qpack8_bytes(Int32(type.rawValue), Int32(OC), Int32(C))
        #expect(bytes == w.byteCount)
        var packed = [UInt8](repeating: 0, count: bytes)
        #expect(w.withBytes { rk_qpack8(&packed, $0, Int32(type.rawValue), Int32(OC), Int32(C)) } == RK_OK)
        let original = w.withBytes { Array(UnsafeRawBufferPointer(start: $0, count: bytes)) }
        #expect(packed != original, "reordered")
        var back = [UInt8](repeating: 0, count: bytes)
        #expect(rk_qunpack8_rows(&back, packed, Int32(type.rawValue), Int32(OC), Int32(C), 0, Int32(OC)) == RK_OK)
        #expect(back == original, "unpacked: the row-major bytes again")
        var tail = [UInt8](repeating: 0, count: 3 * w.rowBytes)
        #expect(rk_qunpack8_rows(&tail, packed, Int32(type.rawValue), Int32(OC), Int32(C), 13, 16) == RK_OK)
        #expect(tail == Array(original[(13 * w.rowBytes)..<(16 * w.rowBytes)]))
        #expect(rk_qunpack8_rows(&tail, packed, Int32(type.rawValue), Int32(OC), Int32(C), 39, 41) == RK_ERR_ARG)
        var scalar = [Float](repeating: .nan, count: N * OC)
        #expect(rk_qmatmul_q8_packed8_ref(&scalar, xq, packed, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, 5) == RK_OK)
        expectClose(scalar, reference, atol: 1e-6, rtol: 1e-6, "\(type) scalar, interleaved")
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            for rows in 1...N {
                var got = [Float](repeating: .nan, count: rows * OC)
                let t = Int32(type.rawValue)
                #expect(rk_qmatmul_q8_packed8(&got, xq, packed, t, Int32(rows), Int32(C), Int32(OC), 0, 2) == RK_OK)
                #expect(rk_qmatmul_q8_packed8(&got, xq, packed, t, Int32(rows), Int32(C), Int32(OC), 2, 5) == RK_OK)
                expectClose(got, Array(reference[0..<(rows * OC)]), atol: 1e-5, rtol: 1e-5, "\(type) \(rows) rows on isa \(active)")
            }
        }
        // Rows longer than the blocks that dequantizing an interleaved row takes at a time (64 of 32 values, 10-15 of 256).
        let wide = try Self.randomMatrix(type, rows: 8, columns: type.blockElements! == 256 ? 16 * 256 : 66 * 32, seed: 3)
        #expect(try wide.interleavedByRows().dequantized().scalars == wide.dequantized().scalars)
        // What cannot be interleaved, and groups outside the matrix.
        #expect(rk_qpack8_bytes(Int32(type.rawValue), 36, Int32(C)) == 0)
        #expect(rk_qpack8_bytes(Int32(GGMLType.f16.rawValue), Int32(OC), Int32(C)) == 0)
        #expect(rk_qpack8(&packed, packed, Int32(type.rawValue), 36, Int32(C)) == RK_ERR_ARG)
        var out = [Float](repeating: 0, count: OC)
        #expect(rk_qmatmul_q8_packed8(&out, xq, packed, Int32(type.rawValue), 1, Int32(C), Int32(OC), 0, 6) == RK_ERR_ARG)
    }

    /// A batch's rows get the bits passes of four rows give them: the eight-row kernels add each row's products in
    /// the order the four-row ones do, so a request's logits do not depend on how many others share its batch.
    @Test(arguments: [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS, .q2_K, .q3_K])
    func eightRowPassesGiveTheBitsOfPassesOfFour(type: GGMLType) throws {
        let C = type.blockElements! == 256 ? 512 : 96, OC = 24, t = Int32(type.rawValue)
        let w = try Self.randomMatrix(type, rows: OC, columns: C, seed: UInt64(type.rawValue) + 60)
        // 8 rows: the eight-row kernels; 16: with VNNI, Q8_0's pairs of groups too (Q4_1's take 8 rows).
        let xq = Self.blocks(randomFloats(16 * C, seed: 13, scale: 1), rows: 16, columns: C, reference: true)
        var packed = [UInt8](repeating: 0, count: w.byteCount)
        #expect(w.withBytes { rk_qpack8(&packed, $0, t, Int32(OC), Int32(C)) } == RK_OK)
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            for N in [8, 16] {
                var eight = [Float](repeating: .nan, count: N * OC)
                #expect(rk_qmatmul_q8_packed8(&eight, xq, packed, t, Int32(N), Int32(C), Int32(OC), 0, Int32(OC / 8)) == RK_OK)
                var fours: [Float] = []
                for first in stride(from: 0, to: N, by: 4) {
                    var four = [Float](repeating: .nan, count: 4 * OC)
                    let rows = Array(xq[(first * C / 32)..<((first + 4) * C / 32)])
                    #expect(rk_qmatmul_q8_packed8(&four, rows, packed, t, 4, Int32(C), Int32(OC), 0, Int32(OC / 8)) == RK_OK)
                    fours += four
                }
                #expect(eight == fours, "\(type), \(N) rows on isa \(active)")
            }
        }
    }

    /// The largest integer sums a block can make — every 4-bit weight 15 (5-bit: 31, 6-bit: 63, 8-bit: ±127) against
    /// activations all ±127 — come out exact on every instruction set (the AVX2 kernels sum a 4-bit block's products,
    /// each half of a 5-bit block's, a K sub-block's eight, four or two steps, in 16 bits), in the eight-row kernels and
    /// the smaller ones (17 rows: two passes of eight and one row; two groups of 8 weight rows, which VNNI takes side by
    /// side for Q4_1 and, from 16 rows, Q8_0). Each type comes with its bits per value: a block is its scales followed
    /// by the values' bits (Q6_K and Q3_K: the values first; Q2_K: between its scales and d), every one of which is set
    /// here (IQ4_NL, IQ4_XS and Q3_K: all set or all clear, the grid's ends 113 and −127, Q3_K's 3 and −4).
    @Test(arguments: [
        (GGMLType.q4_0, 4), (.q4_1, 4), (.q5_0, 5), (.q5_1, 5), (.q8_0, 8), (.q4_K, 4), (.q5_K, 5), (.q6_K, 6),
        (.iq4_NL, 4), (.iq4_XS, 4), (.q2_K, 2), (.q3_K, 3),
    ])
    func interleavedKernelsAreExactAtTheLargestSums(type: GGMLType, bits: Int) throws {
        let be = try #require(type.blockElements), bb = try #require(type.blockBytes)
        let C = 256, OC = 16, N = 17
        let random = try Self.randomMatrix(type, rows: OC, columns: C, seed: 5)
        var bytes = random.withBytes { Array(UnsafeRawBufferPointer(start: $0, count: random.byteCount)) }
        let valueBytes = be * bits / 8
        let values = type == .q6_K || type == .q3_K ? 0..<valueBytes : type == .q2_K ? 16..<80 : (bb - valueBytes)..<bb
        #expect([2, 4, 8, 14, 16, 18, 20].contains(bb - valueBytes), "\(type): \(bb - valueBytes) bytes of scales")
        for k in 0..<(bytes.count / bb) {
            for i in values {
                bytes[k * bb + i] = type == .q8_0 ? (k % 2 == 0 ? 0x7F : 0x81)
                    : [.iq4_NL, .iq4_XS, .q3_K].contains(type) ? (k % 2 == 0 ? 0xFF : 0) : 0xFF
            }
        }
        let w = try QuantizedMatrix(type: type, rows: OC, columns: C, data: Data(bytes))
        let x = (0..<(N * C)).map { i -> Float in
            let row = i / C
            return row % 3 == 0 ? 1 : row % 3 == 1 ? -1 : (i % 2 == 0 ? 1 : -1)
        }
        let xq = Self.blocks(x, rows: N, columns: C, reference: true)
        #expect(xq.allSatisfy { b in withUnsafeBytes(of: b.q) { $0.allSatisfy { Int8(bitPattern: $0).magnitude == 127 } } })
        var reference = [Float](repeating: .nan, count: N * OC)
        _ = w.withBytes { rk_qmatmul_q8_ref(&reference, xq, $0, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, Int32(OC)) }
        var packed = [UInt8](repeating: 0, count: w.byteCount)
        #expect(w.withBytes { rk_qpack8(&packed, $0, Int32(type.rawValue), Int32(OC), Int32(C)) } == RK_OK)
        for isa in Int32(0)...rk_isa_detected() {
            let active = rk_isa_select(isa)
            defer { rk_isa_select(rk_isa_detected()) }
            var got = [Float](repeating: .nan, count: N * OC)
            #expect(rk_qmatmul_q8_packed8(&got, xq, packed, Int32(type.rawValue), Int32(N), Int32(C), Int32(OC), 0, Int32(OC / 8)) == RK_OK)
            expectClose(got, reference, atol: 1e-5, rtol: 1e-6, "\(type) on isa \(active)")
        }
    }

    @Test func kernelsRefuseWhatTheyCannotCompute() {
        var out = [Float](repeating: 0, count: 4)
        var blocks = [rk_q8_block](repeating: rk_q8_block(), count: 1)
        #expect(rk_quantize_q8(&blocks, out, 1, 4) == RK_ERR_ARG)
        #expect(rk_qmatmul_q8(&out, blocks, [UInt8](repeating: 0, count: 64), Int32(GGMLType.f16.rawValue), 1, 32, 1, 0, 1) == RK_ERR_ARG)
        #expect(rk_qmatmul_q8(&out, blocks, [UInt8](repeating: 0, count: 64), Int32(GGMLType.q4_K.rawValue), 1, 32, 1, 0, 1) == RK_ERR_ARG)
        #expect(rk_dequantize(&out, [UInt8](repeating: 0, count: 64), 3, Int32(GGMLType.q8_0.rawValue)) == RK_ERR_ARG)
        #expect(rk_dequantize(&out, [UInt8](repeating: 0, count: 64), 4, 99) == RK_ERR_ARG)
    }

    /// Products of one input with several interleaved weights in one region (a layer's q, k, v) equal each weight's
    /// own `quantizedLinear`, bit for bit, for 1 to 9 rows; what that route cannot take is nil, not a wrong answer.
    @Test(arguments: [GGMLType.q4_0, .q4_1, .q8_0])
    func sharedInputProductsEqualEachProductAlone(type: GGMLType) throws {
        let C = 96
        let weights = try [136, 40, 8].enumerated().map { i, rows in
            try Self.randomMatrix(type, rows: rows, columns: C, seed: 20 + UInt64(i)).interleavedByRows()
        }
        for rows in [1, 2, 5, 9] {
            let x = try Tensor(shape: [rows, 1, C], values: randomFloats(rows * C, seed: UInt64(rows)))
            let together = try Autograd.withoutGradients { try Tensor.sharedInputQuantizedProducts(x, weights: weights) }
            let alone = try Autograd.withoutGradients { try weights.map { try Tensor.quantizedLinear(x, weight: $0) } }
            #expect(together != nil)
            for (t, a) in zip(together ?? [], alone) {
                #expect(t.shape == a.shape && t.scalars == a.scalars, "\(type), \(rows) rows")
            }
        }
        let x = try Tensor(shape: [2, C], values: randomFloats(2 * C, seed: 3))
        let rowMajor = try Self.randomMatrix(type, rows: 16, columns: C, seed: 4)
        let narrower = try Self.randomMatrix(type, rows: 16, columns: 64, seed: 5).interleavedByRows()
        let refused = try Autograd.withoutGradients {
            try [[weights[0], rowMajor], [weights[0], narrower], []].map {
                try Tensor.sharedInputQuantizedProducts(x, weights: $0) == nil
            }
        }
        #expect(refused == [true, true, true], "a row-major weight, another width, no weight")
        #expect(try Tensor.sharedInputQuantizedProducts(x, weights: weights) == nil, "gradients recorded")
    }

    /// A product with some rows of the input scaled as they are quantized (IA3 on a layer's input in a batch of many
    /// adapters) equals `quantizedLinear` of the scaled copy, bit for bit: rows of 3 positions, two rows scaled by
    /// different vectors, one not; a bad row or vector is a named error; what the route cannot take is nil.
    @Test(arguments: [GGMLType.q4_1, .q8_0])
    func rowsScaledAsTheyAreQuantized(type: GGMLType) throws {
        let (B, T, C) = (4, 3, 96)
        let weight = try Self.randomMatrix(type, rows: 40, columns: C, seed: 31).interleavedByRows()
        let x = try Tensor(shape: [B, T, C], values: randomFloats(B * T * C, seed: 32))
        let (s0, s2) = (try Tensor(shape: [C], values: randomFloats(C, seed: 33)),
                        try Tensor(shape: [C], values: randomFloats(C, seed: 34)))
        var scaled = x.scalars
        for (row, s) in [(0, s0), (3, s0), (2, s2)] {
            for t in 0..<T { for c in 0..<C { scaled[(row * T + t) * C + c] *= s.scalars[c] } }
        }
        let copy = try Tensor(shape: [B, T, C], values: scaled)
        let (folded, plain) = try Autograd.withoutGradients {
            (try Tensor.integerProduct(x, weight: weight, scalingRows: [(rows: [0, 3], by: s0), (rows: [2], by: s2)]),
             try Tensor.quantizedLinear(copy, weight: weight))
        }
        #expect(folded?.shape == plain.shape && folded?.scalars == plain.scalars, "\(type)")
        #expect(try Autograd.withoutGradients { try Tensor.integerProduct(x, weight: weight, scalingRows: []) }?.scalars
            == Autograd.withoutGradients { try Tensor.quantizedLinear(x, weight: weight) }.scalars, "no row scaled")
        #expect(throws: TensorError.self, "row 4 of 4") {
            try Autograd.withoutGradients { try Tensor.integerProduct(x, weight: weight, scalingRows: [([4], s0)]) }
        }
        #expect(throws: TensorError.self, "a vector of 95") {
            try Autograd.withoutGradients {
                try Tensor.integerProduct(x, weight: weight, scalingRows: [([1], try Tensor.zeros([C - 1]))])
            }
        }
        let rowMajor = try Self.randomMatrix(type, rows: 40, columns: C, seed: 35)
        let refused = try Autograd.withoutGradients { try Tensor.integerProduct(x, weight: rowMajor, scalingRows: []) }
        #expect(refused == nil, "a row-major weight")
        #expect(try Tensor.integerProduct(x, weight: weight, scalingRows: []) == nil, "gradients recorded")
    }

    /// Row-major weights (45 rows), and weights interleaved by 8 rows (136: 17 groups; the exact route puts them back in
    /// row order 64 rows at a time).
    @Test(arguments: [GGMLType.q4_1, .q8_0, .q6_K], [false, true])
    func quantizedLinearEqualsTheDequantizedProductWithGradients(type: GGMLType, interleave: Bool) throws {
        let C = type.blockElements! == 256 ? 256 : 96, OC = interleave ? 136 : 45
        let rowMajor = try Self.randomMatrix(type, rows: OC, columns: C, seed: 5)
        let w = interleave ? rowMajor.interleavedByRows() : rowMajor
        #expect(w.isInterleaved == interleave)
        let dense = try rowMajor.dequantized()
        #expect(try w.dequantized().scalars == dense.scalars, "the same values in either layout")
        let order = (0..<OC).map { ($0 * 7) % OC }
        #expect(try w.reorderingRows(order).dequantized().scalars == rowMajor.reorderingRows(order).dequantized().scalars)
        let bias = try Tensor(shape: [OC], values: randomFloats(OC, seed: 9)).requiringGradient()
        for rows in [3, 13] {  // the integer route for few rows, the float route for more
            let x = try Tensor(shape: [rows, C], values: randomFloats(rows * C, seed: 7)).requiringGradient()
            let upstream = try Tensor(shape: [rows, OC], values: randomFloats(rows * OC, seed: 8))
            bias.zeroGradient()
            let reference = try Tensor.linear(x, weight: dense, bias: bias)
            try (reference * upstream).sum().backward()
            // Copies of the values: the gradient buffers are zeroed and reused below.
            let (dxRef, dbRef) = (x.gradient!.scalars, bias.gradient!.scalars)
            for route in [QuantizedRoute.exact, .automatic] {
                x.zeroGradient(); bias.zeroGradient()
                // Training (recording a graph): both routes compute the exact float products.
                let y = try Tensor.quantizedLinear(x, weight: w, bias: bias, route: route)
                expectClose(y, reference, atol: 1e-5, rtol: 1e-5, "\(type) \(rows) rows while training (\(route))")
                // Inference: the automatic route takes integer products against 8-bit activations.
                let inferred = try Autograd.withoutGradients {
                    try Tensor.quantizedLinear(x, weight: w, bias: bias, route: route)
                }
                let scale = reference.scalars.map(abs).max()!
                expectClose(
                    inferred, reference, atol: route == .exact ? 1e-5 : 0.02 * scale, rtol: route == .exact ? 1e-5 : 0,
                    "\(type) \(rows) rows inference (\(route))")
                try (y * upstream).sum().backward()
                expectClose(x.gradient!.scalars, dxRef, atol: 1e-5, rtol: 1e-5, "\(type) \(rows) rows dX (\(route))")
                expectClose(bias.gradient!.scalars, dbRef, atol: 1e-5, rtol: 1e-5, "\(type) \(rows) rows db (\(route))")
            }
        }
    }

    @Test func inputGradientMatchesFiniteDifferences() throws {
        let (N, C, OC) = (2, 64, 7)
        let w = try Self.randomMatrix(.q5_1, rows: OC, columns: C, seed: 21)
        let x0 = randomFloats(N * C, seed: 22), up = randomFloats(N * OC, seed: 23)
        let x = try Tensor(shape: [N, C], values: x0).requiringGradient()
        let y = try Tensor.quantizedLinear(x, weight: w, route: .exact)
        try (y * Tensor(shape: [N, OC], values: up)).sum().backward()
        let numeric = numericGradient(doubles(x0), step: 1e-2) { v in
            let t = try! Tensor(shape: [N, C], values: v.map(Float.init))
            let out = try! Autograd.withoutGradients { try Tensor.quantizedLinear(t, weight: w, route: .exact) }
            return dot(doubles(out.scalars), doubles(up))
        }
        expectClose(x.gradient!.scalars, numeric, atol: 1e-3, rtol: 1e-3, "dX vs finite differences")
    }

    @Test(arguments: [11, 24])  // 24 rows: interleaved by 8
    func embeddingRowsAreTheDequantizedRows(tableRows: Int) throws {
        let rowMajor = try Self.randomMatrix(.q8_0, rows: tableRows, columns: 64, seed: 31)
        let table = rowMajor.interleavedByRows()
        #expect(table.isInterleaved == (tableRows == 24))
        let dense = try rowMajor.dequantized().scalars
        let ids = try IntTensor(shape: [2, 2], values: [3, 0, 10, 3])
        let rows = try Tensor.quantizedEmbedding(ids, table: table).scalars
        for (i, id) in ids.values.enumerated() {
            #expect(Array(rows[(i * 64)..<((i + 1) * 64)]) == Array(dense[(Int(id) * 64)..<((Int(id) + 1) * 64)]))
        }
        #expect(throws: TensorError.self) { _ = try Tensor.quantizedEmbedding(IntTensor([Int32(tableRows)]), table: table) }
        #expect(throws: TensorError.self) { _ = try Tensor.quantizedEmbedding(IntTensor([-1]), table: table) }
    }
}

/// Attention over a key cache with room to grow (`keyLength` below the rows held): equal to attention over exactly the
/// filled rows; refused while recording gradients and for a length outside the rows.
struct PartlyFilledKeyCacheTests {
    @Test func attentionReadsOnlyTheFilledRows() throws {
        let (B, NH, NKV, T, hs, filled, rows) = (2, 6, 2, 3, 5, 7, 11)
        let q = try Tensor(shape: [B, NH, T, hs], values: randomFloats(B * NH * T * hs, seed: 1))
        var kFull = randomFloats(B * NKV * rows * hs, seed: 2), vFull = randomFloats(B * NKV * rows * hs, seed: 3)
        var kExact: [Float] = [], vExact: [Float] = []
        for h in 0..<(B * NKV) {
            kExact += kFull[(h * rows * hs)..<((h * rows + filled) * hs)]
            vExact += vFull[(h * rows * hs)..<((h * rows + filled) * hs)]
            for r in filled..<rows { for j in 0..<hs { kFull[(h * rows + r) * hs + j] = .nan; vFull[(h * rows + r) * hs + j] = .nan } }
        }
        let mask = try IntTensor(shape: [B, filled], values: [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
        try Autograd.withoutGradients {
            let expected = try Tensor.attention(
                query: q, key: Tensor(shape: [B, NKV, filled, hs], values: kExact),
                value: Tensor(shape: [B, NKV, filled, hs], values: vExact), causal: true, keyMask: mask, window: 4)
            let got = try Tensor.attention(
                query: q, key: Tensor(shape: [B, NKV, rows, hs], values: kFull),
                value: Tensor(shape: [B, NKV, rows, hs], values: vFull), causal: true, keyMask: mask, window: 4,
                keyLength: filled)
            #expect(got.scalars == expected.scalars)
        }
        let k = try Tensor(shape: [B, NKV, rows, hs], values: kFull)
        #expect(throws: TensorError.self) {
            _ = try Tensor.attention(query: q, key: k, value: k, causal: true, keyLength: rows + 1)
        }
        #expect(throws: TensorError.self) {
            _ = try Tensor.attention(query: q.requiringGradient(), key: k, value: k, causal: true, keyLength: filled)
        }
    }
}
