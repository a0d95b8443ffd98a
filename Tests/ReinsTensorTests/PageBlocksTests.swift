import Foundation
import Testing
@testable import ReinsTensor

/// The blocks of 2 MB pages that quantized weights and adapter copies are placed in.
struct PageBlocksTests {
    /// Whole 2 MB pages, at least the block size, 2 MB-aligned; pieces handed out in order at 64-byte boundaries while
    /// they fit; then a new block; a piece larger than the block size gets a block of its own; `startAfresh` starts a
    /// new one for the next piece.
    @Test func piecesComeInOrderFromAlignedBlocks() throws {
        let blocks = PageBlocks(blockSize: 3 << 20)
        let (first, block) = blocks.take(100)
        #expect(first == block.base && block.capacity == 4 << 20 && Int(bitPattern: block.base) % (2 << 20) == 0)
        let (second, same) = blocks.take(10)
        #expect(same === block && second == block.base + 128)
        #expect(blocks.take(64).0 == block.base + 192)
        let rest = block.capacity - 256
        let (overflow, next) = blocks.take(rest + 1)
        #expect(next !== block && overflow == next.base, "one byte more than the block has left")
        let (large, own) = blocks.take((9 << 20) + 1)
        #expect(own.capacity == 10 << 20 && large == own.base && Int(bitPattern: own.base) % (2 << 20) == 0)
        #expect(blocks.take(1).1 === own, "the newest block serves the next piece")
        blocks.startAfresh()
        #expect(blocks.take(1).1 !== own)
        // The allocator itself holds no block: one whose pieces are all released is freed.
        let allocator = PageBlocks(blockSize: 1)
        weak var released: PageBlocks.Block?
        released = allocator.take(8).1
        withExtendedLifetime(allocator) { #expect(released == nil) }
        // Every byte of a piece is writable (AddressSanitizer sees an overrun of the block).
        let (p, holder) = blocks.take(4096)
        withExtendedLifetime(holder) { p.initializeMemory(as: UInt8.self, repeating: 7, count: 4096) }
    }

    /// Interleaved quantized weights live in those blocks and read back as they were packed.
    @Test func interleavedWeightsReadBackFromTheBlocks() throws {
        let weight = try Tensor.normal([16, 64], seed: 3)
        let matrix = try QuantizedMatrix(quantizing: weight, type: .q4_1)
        let interleaved = matrix.interleavedByRows()
        #expect(interleaved.isInterleaved)
        #expect(try interleaved.dequantized().scalars == matrix.dequantized().scalars)
    }
}
