import Foundation
import ReinsTensor
import ReinsTestSupport
import Testing

/// Every public tensor op called with arguments it cannot use — shapes that do not fit, axes and ranges outside the
/// tensor, ids out of range, empty and rank-0 tensors, impossible probabilities. Each call must return or throw; a trap
/// would end the test run.
struct TensorAPIAbuseTests {
    let shapes: [[Int]] = [[], [0], [1], [3], [2, 3], [2, 0], [0, 4], [2, 3, 4], [1, 2, 3, 5], [2, 1, 3, 0]]

    func tensor(_ shape: [Int], _ seed: UInt64 = 1) throws -> Tensor { try Tensor.normal(shape, seed: seed) }

    @Test func shapeOpsWithBadArgumentsThrowOrReturn() throws {
        var thrown = 0
        for shape in shapes {
            let t = try tensor(shape)
            for target in [[-1], [-1, -1], [0, -1], [7], [], [-2], [3, -1], [Int.max, 2]] {
                do { _ = try t.reshaped(target) } catch { thrown += 1 }
            }
            for axes in [[], [0], [1, 0], [0, 0], [5, 1], [-1, 0], [2, 1, 0], [0, 1, 2, 3]] {
                do { _ = try t.permuted(axes) } catch { thrown += 1 }
            }
            do { _ = try t.transposed() } catch { thrown += 1 }
            for heads in [0, -1, 1, 2, 7] {
                do { _ = try t.splittingHeads(heads) } catch { thrown += 1 }
            }
            do { _ = try t.mergingHeads() } catch { thrown += 1 }
            for axis in [-5, -1, 0, 1, 3, 9] {
                for range in [0..<0, 0..<1, 1..<3, 2..<9, 5..<6] {
                    do { _ = try t.slice(axis: axis, range) } catch { thrown += 1 }
                }
                do { _ = try t.sum(axis: axis) } catch { thrown += 1 }
                do { _ = try t.mean(axis: axis, keepingAxis: true) } catch { thrown += 1 }
                do { _ = try Tensor.concatenate([t, try tensor([2, 3])], axis: axis) } catch { thrown += 1 }
            }
            do { _ = try Tensor.concatenate([], axis: 0) } catch { thrown += 1 }
            _ = t.softmax()
            _ = t.argmax()
            _ = t.maximum()
            _ = t.mean()
            _ = t.gelu()
            for other in shapes {
                let u = try tensor(other, 2)
                do { _ = try Tensor.matmul(t, u) } catch { thrown += 1 }
                do { _ = try Tensor.matmul(t, u, transposeA: true, transposeB: true) } catch { thrown += 1 }
                do { _ = try Tensor.linear(t, weight: u) } catch { thrown += 1 }
                do { _ = try Tensor.linear(t, weight: u, bias: t, weightTransposed: true) } catch { thrown += 1 }
                do { _ = try Tensor.layerNorm(t, weight: u, bias: u) } catch { thrown += 1 }
                do { _ = try Tensor.biasGELU(t, bias: u) } catch { thrown += 1 }
                do { _ = try t + u } catch { thrown += 1 }
                do { _ = try Tensor.attention(query: t, key: u, value: u, causal: true) } catch { thrown += 1 }
            }
            for p in [-1, 0, 0.5, 1, 1.5, Float.nan] as [Float] {
                do { _ = try t.dropout(p, seed: 1) } catch { thrown += 1 }
            }
            do { _ = try t.element(at: [0, 0, 0, 0, 0]) } catch { thrown += 1 }
        }
        #expect(thrown > 0)
    }

    @Test func idsAndTargetsOutOfRangeThrow() throws {
        let table = try tensor([5, 3])
        for values in [[-1], [5], [Int32.max], [Int32.min], [0, 4]] as [[Int32]] {
            _ = try? Tensor.embedding(IntTensor(values), table: table)
            _ = try? Tensor.embedding(IntTensor(values), table: table, paddingIndex: 7)
            _ = try? Tensor.crossEntropy(logits: try tensor([values.count, 5]), targets: IntTensor(values))
            _ = try? Tensor.crossEntropy(logits: try tensor([3, 5]), targets: IntTensor(values))
            _ = try? Tensor.crossEntropy(logits: try tensor([]), targets: IntTensor(values))
        }
        #expect(throws: TensorError.self) { try Tensor.embedding(IntTensor([9]), table: table) }
        #expect(throws: TensorError.self) { try Tensor.crossEntropy(logits: try tensor([1, 5]), targets: IntTensor([5])) }
        let q = try tensor([1, 2, 3, 4])
        for mask in [[1, 1, 1], [1, 0], [], [0, 0, 0]] as [[Int32]] {
            _ = try? Tensor.attention(query: q, key: q, value: q, keyMask: IntTensor(mask))
        }
        for bad in [[3, 3], [0], [4, 0]] {
            _ = try? Tensor.normal(bad, std: -1, seed: 0)
            _ = try? Tensor.uniform(bad, low: 5, high: -5, seed: 0)
        }
        let empty = try tensor([0, 3])
        _ = try? empty.singularValueDecomposition()
        _ = try? tensor([2, 3, 4]).singularValueDecomposition()
    }
}
