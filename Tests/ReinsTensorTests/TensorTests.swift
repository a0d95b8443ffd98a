import Foundation
import Testing
@testable import ReinsTensor
import ReinsTestSupport

struct TensorTests {
    @Test func seededCreationIsReproducible() throws {
        #expect(try Tensor.normal([5, 7], seed: 3).scalars == Tensor.normal([5, 7], seed: 3).scalars)
        #expect(try Tensor.normal([5, 7], seed: 3).scalars != Tensor.normal([5, 7], seed: 4).scalars)
        let n = try Tensor.normal([20000], mean: 1, std: 2, seed: 5).scalars
        let mean = n.reduce(0, +) / Float(n.count), variance = n.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(n.count)
        #expect(abs(mean - 1) < 0.05 && abs(variance.squareRoot() - 2) < 0.05)
        let u = try Tensor.uniform([1000], low: -1, high: 3, seed: 6).scalars
        #expect(u.allSatisfy { $0 >= -1 && $0 < 3 })
        // SplitMix64's first output for seed 42 (computed independently of Reins), so a change to the generator is noticed.
        var g = SeededGenerator(seed: 42)
        #expect(g.next() == 0xBDD7_3226_2FEB_6E95)
    }

    @Test func valueSemantics() throws {
        let a = try Tensor.zeros([2, 2])
        var b = a
        b[0, 1] = 5
        #expect(a[0, 1] == 0 && b[0, 1] == 5)
    }

    @Test func sliceConcatenate() throws {
        let x = try Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        #expect(try x.slice(axis: 1, 1..<3).scalars == [2, 3, 5, 6])
        #expect(try Tensor.concatenate([x, x.slice(axis: 1, 0..<1)], axis: 1).scalars == [1, 2, 3, 1, 4, 5, 6, 4])
        #expect(throws: TensorError.self) { try x.slice(axis: 1, 2..<4) }
        #expect(throws: TensorError.self) { try x.slice(axis: 2, 0..<1) }
        #expect(throws: TensorError.self) { try Tensor.concatenate([x, try Tensor.zeros([3, 3])], axis: 1) }
    }
}
