import CReinsKernels
import Foundation

/// Why a GGUF file could not be read. Each case names the file and what is wrong with it.
public enum GGUFError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case notGGUF(path: String, detail: String)
    case unsupportedVersion(path: String, version: UInt32)
    case truncated(path: String, detail: String)
    case malformed(path: String, detail: String)
    case unsupportedType(path: String, tensor: String, type: UInt32)
    case missingTensor(path: String, tensor: String)
    case missingMetadata(path: String, key: String, expected: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read: \(reason)"
        case let .notGGUF(path, detail): return "\(path): not a GGUF file: \(detail)"
        case let .unsupportedVersion(path, version):
            return "\(path): GGUF version \(version) is not supported (Reins reads versions 2 and 3)"
        case let .truncated(path, detail): return "\(path): truncated GGUF file: \(detail)"
        case let .malformed(path, detail): return "\(path): malformed GGUF file: \(detail)"
        case let .unsupportedType(path, tensor, type):
            return
                "\(path): tensor '\(tensor)' has ggml type \(GGMLType(rawValue: type).map { "\($0)" } ?? String(type)), which Reins does not read (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)"
        case let .missingTensor(path, tensor): return "\(path): no tensor named '\(tensor)'"
        case let .missingMetadata(path, key, expected): return "\(path): metadata '\(key)' is missing or not \(expected)"
        }
    }
}

/// The tensor types of ggml (llama.cpp's tensor library) by their numbers in a GGUF file; Reins reads those with a
/// block size (``blockElements``), the rest are named in errors.
public enum GGMLType: UInt32, Sendable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9, q2_K = 10, q3_K = 11, q4_K = 12
    case q5_K = 13, q6_K = 14, q8_K = 15, iq2_XXS = 16, iq2_XS = 17, iq3_XXS = 18, iq1_S = 19, iq4_NL = 20, iq3_S = 21
    case iq2_S = 22, iq4_XS = 23, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_M = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// ggml's own spelling: Q4_K, IQ2_XXS, BF16.
    public var description: String { GGMLType.names[rawValue] ?? String(rawValue) }
    static let names: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
        12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
        20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
        29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
    ]

    /// Elements per block, or nil for a type Reins does not read.
    public var blockElements: Int? {
        let n = rk_quant_block_elements(Int32(rawValue))
        return n == 0 ? nil : n
    }
    /// Bytes per block, or nil for a type Reins does not read.
    public var blockBytes: Int? {
        let n = rk_quant_block_bytes(Int32(rawValue))
        return n == 0 ? nil : n
    }
    /// True for the block-quantized types (every readable type but F32, F16 and BF16).
    public var isQuantized: Bool { (blockElements ?? 1) > 1 }
    /// Where a block's half-precision scales sit (bytes from its start: d, then Q4_1's, Q5_1's m or the K types'
    /// dmin), or nil for a type that is not block-quantized or that Reins does not read.
    public var halfScaleOffsets: [Int]? {
        switch self {
        case .q4_0, .q5_0, .q8_0, .iq4_NL, .iq4_XS: [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: [0, 2]
        case .q2_K: [80, 82]
        case .q3_K: [108]
        case .q6_K: [208]
        default: nil
        }
    }
}

/// One metadata value of a GGUF file.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32), uint64(UInt64)
    case int64(Int64), float32(Float), float64(Double), bool(Bool), string(String), array([GGUFValue])

    /// An integer value that fits an `Int`, or nil.
    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(exactly: v)
        default: return nil
        }
    }
    /// A number (integer or float) as a `Double`, or nil.
    public var double: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }
    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var array: [GGUFValue]? { if case let .array(a) = self { return a } else { return nil } }
}

/// A GGUF file (llama.cpp's model format, versions 2 and 3): metadata key-value pairs, tensor descriptions, then the
/// tensor data, each tensor at an aligned offset.
///
/// Opening reads and checks the whole header before anything else: every string and array length against the bytes
/// left (so no count the file claims is ever allocated before it is known to be there), nesting of arrays, the
/// alignment, each tensor's dimensions (product in checked arithmetic, rows a whole number of blocks), its type, and
/// that its bytes lie inside the file and overlap no other tensor. The file is memory-mapped; tensor data is read only
/// when asked for.
public struct GGUFFile: @unchecked Sendable {
    /// One tensor's description.
    public struct TensorInfo: Sendable, Equatable {
        public let name: String
        /// ggml's dimensions, innermost first (`[columns, rows]` for a matrix).
        public let dimensions: [Int]
        public let type: GGMLType
        /// Byte range in the file.
        public let range: Range<Int>
        /// The shape in PyTorch's order (outermost first): the dimensions reversed.
        public var shape: [Int] { dimensions.reversed() }
        public var elementCount: Int { dimensions.reduce(1, *) }  // checked when the header was read
    }

    public let path: String
    public let version: UInt32
    /// Metadata in file order, and by key.
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order, and by name.
    public let tensorInfos: [TensorInfo]
    public let tensorsByName: [String: TensorInfo]
    public let alignment: Int
    private let data: Data

    /// The deepest nesting of arrays accepted (llama.cpp's own files nest at most 2).
    static let maximumArrayDepth = 8

    /// A header of metadata only, no tensors and no file behind it: what a writer is about to write, for the readers
    /// of metadata (a tokenizer, a config) to check before anything is written.
    public init(metadata entries: [(String, GGUFValue)], path: String) {
        (self.path, self.version, self.alignment, self.data) = (path, 3, 32, Data())
        metadataKeys = entries.map(\.0)
        metadata = Dictionary(entries, uniquingKeysWith: { _, last in last })
        (tensorInfos, tensorsByName) = ([], [:])
    }

    public init(path: String) throws {
        self.path = path
        let data: Data
        do { data = try MappedFile.read(path) } catch {
            throw GGUFError.unreadable(path: path, reason: error.localizedDescription)
        }
        self.data = data
        var reader = ByteReader(data: data, path: path)
        guard data.count >= 4 else { throw GGUFError.notGGUF(path: path, detail: "\(data.count) bytes, no magic") }
        let magic = try reader.bytes(4)
        guard magic == Array("GGUF".utf8) else {
            throw GGUFError.notGGUF(path: path, detail: "the file does not start with 'GGUF'")
        }
        let version = try reader.u32()
        if version == 1 { throw GGUFError.unsupportedVersion(path: path, version: 1) }
        if version & 0xFFFF == 0 && version != 0 {
            throw GGUFError.malformed(
                path: path, detail: "version \(version) reads as a big-endian file; Reins reads little-endian GGUF")
        }
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: path, version: version) }
        self.version = version
        let tensorCount = try reader.count("tensor count", minimumBytesEach: 24)
        let kvCount = try reader.count("metadata count", minimumBytesEach: 12)
        var keys: [String] = [], metadata: [String: GGUFValue] = [:]
        keys.reserveCapacity(kvCount)
        for _ in 0..<kvCount {
            let key = try reader.string("a metadata key")
            guard metadata[key] == nil else {
                throw GGUFError.malformed(path: path, detail: "metadata key '\(key)' appears twice")
            }
            let type = try reader.u32()
            metadata[key] = try reader.value(type: type, key: key, depth: 0)
            keys.append(key)
        }
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard case let .uint32(v) = a, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw GGUFError.malformed(
                    path: path, detail: "general.alignment is \(a), not a power of two (uint32) up to 2^20")
            }
            alignment = Int(v)
        }
        var infos: [(name: String, dims: [Int], type: UInt32, offset: Int)] = []
        infos.reserveCapacity(tensorCount)
        for _ in 0..<tensorCount {
            let name = try reader.string("a tensor name")
            let nDims = try reader.u32()
            guard (1...4).contains(nDims) else {
                throw GGUFError.malformed(path: path, detail: "tensor '\(name)' has \(nDims) dimensions (1 to 4)")
            }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try reader.u64()
                guard let i = Int(exactly: d), i >= 0 else {
                    throw GGUFError.malformed(path: path, detail: "tensor '\(name)' has dimension \(d)")
                }
                dims.append(i)
            }
            let type = try reader.u32()
            let offset = try reader.u64()
            guard let o = Int(exactly: offset) else {
                throw GGUFError.malformed(path: path, detail: "tensor '\(name)' has offset \(offset)")
            }
            infos.append((name, dims, type, o))
        }
        // The data section starts at the next multiple of the alignment.
        let headerEnd = reader.position
        let (padded, overflow) = headerEnd.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw GGUFError.malformed(path: path, detail: "header too long") }
        let dataStart = padded / alignment * alignment
        guard dataStart <= data.count || tensorCount == 0 else {
            throw GGUFError.truncated(path: path, detail: "the file ends inside its header (\(data.count) bytes)")
        }
        var tensors: [TensorInfo] = [], byName: [String: TensorInfo] = [:]
        for info in infos {
            guard byName[info.name] == nil else {
                throw GGUFError.malformed(path: path, detail: "tensor '\(info.name)' appears twice")
            }
            guard let type = GGMLType(rawValue: info.type), let be = type.blockElements, let bb = type.blockBytes else {
                throw GGUFError.unsupportedType(path: path, tensor: info.name, type: info.type)
            }
            guard info.dims[0] % be == 0 else {
                throw GGUFError.malformed(
                    path: path,
                    detail: "tensor '\(info.name)' rows of \(info.dims[0]) elements are not whole \(type) blocks of \(be)")
            }
            // Checked arithmetic throughout: every dimension is the file's word.
            let rowBlocks = (info.dims[0] / be).multipliedReportingOverflow(by: bb)
            var bytes: Int? = rowBlocks.overflow ? nil : rowBlocks.partialValue
            for d in info.dims.dropFirst() {
                bytes = bytes.flatMap { b in
                    let m = b.multipliedReportingOverflow(by: d)
                    return m.overflow ? nil : m.partialValue
                }
            }
            guard info.offset % alignment == 0 else {
                throw GGUFError.malformed(
                    path: path, detail: "tensor '\(info.name)' offset \(info.offset) is not a multiple of \(alignment)")
            }
            guard let bytes, info.offset <= data.count - dataStart, bytes <= data.count - dataStart - info.offset else {
                throw GGUFError.truncated(
                    path: path,
                    detail:
                        "tensor '\(info.name)' (\(type) \(info.dims)) at offset \(info.offset) runs past the \(max(0, data.count - dataStart)) data bytes"
                )
            }
            let start = dataStart + info.offset
            let t = TensorInfo(name: info.name, dimensions: info.dims, type: type, range: start..<(start + bytes))
            tensors.append(t)
            byName[info.name] = t
        }
        let sorted = tensors.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.range.upperBound > b.range.lowerBound {
            throw GGUFError.malformed(
                path: path, detail: "tensor '\(b.name)' at bytes \(b.range) overlaps tensor '\(a.name)' at \(a.range)")
        }
        (metadataKeys, self.metadata, tensorInfos, tensorsByName, self.alignment) = (keys, metadata, tensors, byName, alignment)
    }

    /// The description of tensor `name`.
    public func info(_ name: String) throws -> TensorInfo {
        guard let t = tensorsByName[name] else { throw GGUFError.missingTensor(path: path, tensor: name) }
        return t
    }

    /// The raw bytes of tensor `name` (its blocks as stored), for `body`. The pointer is valid only inside `body`.
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let t = try info(name)
        return try data.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[t.range])) }
    }

    /// Matrix `name` (`[rows, columns]` in PyTorch's order) as it is stored, without dequantizing or copying: its
    /// bytes stay in the mapped file.
    public func quantizedMatrix(_ name: String) throws -> QuantizedMatrix {
        let t = try info(name)
        guard t.dimensions.count == 2 else {
            throw GGUFError.malformed(path: path, detail: "tensor '\(name)' has shape \(t.shape), not a matrix")
        }
        let m = try QuantizedMatrix(
            type: t.type, rows: t.dimensions[1], columns: t.dimensions[0], data: data, offset: t.range.lowerBound)
        m.isFileMapping = true
        return m
    }

    /// Tensor `name` dequantized to float32, in PyTorch's shape order (ggml's dimensions reversed).
    public func tensor(_ name: String) throws -> Tensor {
        let t = try info(name)
        let out = try Tensor(uninitializedShape: t.shape, operation: "\(path): tensor '\(name)'")
        try read(name, into: UnsafeMutableBufferPointer(start: out.storage.pointer, count: out.count))
        return out
    }

    /// Dequantizes tensor `name` straight into `buffer`, which must hold exactly its elements.
    public func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        let t = try info(name)
        let n = t.elementCount
        guard buffer.count == n else {
            throw GGUFError.malformed(
                path: path, detail: "tensor '\(name)': \(n) elements do not fit a buffer of \(buffer.count)")
        }
        guard n > 0, let out = buffer.baseAddress else { return }
        let status = data.withUnsafeBytes { raw in
            // Safe: the header check proved the range holds n elements of whole blocks inside the file.
            rk_dequantize(out, raw.baseAddress!.advanced(by: t.range.lowerBound), n, Int32(t.type.rawValue))
        }
        guard status == RK_OK else { throw GGUFError.unsupportedType(path: path, tensor: name, type: t.type.rawValue) }
    }

    // MARK: typed metadata

    /// A required string.
    public func string(_ key: String) throws -> String {
        guard let s = metadata[key]?.string else { throw GGUFError.missingMetadata(path: path, key: key, expected: "a string") }
        return s
    }
    /// A required non-negative integer.
    public func int(_ key: String) throws -> Int {
        guard let i = metadata[key]?.int, i >= 0 else {
            throw GGUFError.missingMetadata(path: path, key: key, expected: "a non-negative integer")
        }
        return i
    }
    /// A required finite number.
    public func double(_ key: String) throws -> Double {
        guard let d = metadata[key]?.double, d.isFinite else {
            throw GGUFError.missingMetadata(path: path, key: key, expected: "a finite number")
        }
        return d
    }
    /// A required array of strings.
    public func strings(_ key: String) throws -> [String] { try array(key, "an array of strings") { $0.string } }
    /// A required array of integers.
    public func ints(_ key: String) throws -> [Int] { try array(key, "an array of integers") { $0.int } }

    /// A required array whose every element `element` reads, else a named error.
    private func array<T>(_ key: String, _ expected: String, _ element: (GGUFValue) -> T?) throws -> [T] {
        guard let a = metadata[key]?.array else { throw GGUFError.missingMetadata(path: path, key: key, expected: expected) }
        return try a.map { v in
            guard let e = element(v) else { throw GGUFError.missingMetadata(path: path, key: key, expected: expected) }
            return e
        }
    }
}

extension GGUFFile: TensorArchive {
    public var tensorNames: [String] { tensorInfos.map(\.name) }
    public func shape(_ name: String) -> [Int]? { tensorsByName[name]?.shape }
}

/// A bounds-checked little-endian reader over a file's bytes: every read checks what is left first.
private struct ByteReader {
    let data: Data
    let path: String
    var position = 0

    var remaining: Int { data.count - position }

    mutating func bytes(_ n: Int) throws -> [UInt8] {
        guard n >= 0, n <= remaining else {
            throw GGUFError.truncated(path: path, detail: "needs \(n) bytes at offset \(position), \(remaining) left")
        }
        defer { position += n }
        return [UInt8](data[data.startIndex + position..<data.startIndex + position + n])
    }
    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else {
            throw GGUFError.truncated(path: path, detail: "needs \(size) bytes at offset \(position), \(remaining) left")
        }
        var v: T = 0
        data.withUnsafeBytes { raw in
            v = T(littleEndian: raw.loadUnaligned(fromByteOffset: position, as: T.self))
        }
        position += size
        return v
    }
    mutating func u32() throws -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws -> UInt64 { try integer(UInt64.self) }

    /// A count of items of at least `minimumBytesEach` bytes, refused when the bytes left could not hold them.
    mutating func count(_ what: String, minimumBytesEach: Int) throws -> Int {
        let at = position
        let n = try u64()
        guard let i = Int(exactly: n), i <= remaining / max(1, minimumBytesEach) else {
            throw GGUFError.malformed(
                path: path, detail: "\(what) \(n) at offset \(at) is more than the \(remaining) bytes left can hold")
        }
        return i
    }
    mutating func string(_ what: String) throws -> String {
        let at = position
        let n = try u64()
        guard let len = Int(exactly: n), len <= remaining else {
            throw GGUFError.truncated(
                path: path, detail: "\(what) at offset \(at) claims \(n) bytes, \(remaining) are left")
        }
        let s = data.withUnsafeBytes { raw in
            String(validating: UnsafeRawBufferPointer(rebasing: raw[position..<position + len]), as: UTF8.self)
        }
        guard let s else { throw GGUFError.malformed(path: path, detail: "\(what) at offset \(at) is not UTF-8") }
        position += len
        return s
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try integer(UInt8.self))
        case 1: return .int8(try integer(Int8.self))
        case 2: return .uint16(try integer(UInt16.self))
        case 3: return .int16(try integer(Int16.self))
        case 4: return .uint32(try integer(UInt32.self))
        case 5: return .int32(try integer(Int32.self))
        case 6: return .float32(Float(bitPattern: try integer(UInt32.self)))
        case 7:
            let b = try integer(UInt8.self)
            guard b <= 1 else { throw GGUFError.malformed(path: path, detail: "'\(key)': boolean byte \(b)") }
            return .bool(b == 1)
        case 8: return .string(try string("the value of '\(key)'"))
        case 9:
            guard depth < GGUFFile.maximumArrayDepth else {
                throw GGUFError.malformed(
                    path: path, detail: "'\(key)': arrays nested deeper than \(GGUFFile.maximumArrayDepth)")
            }
            let elementType = try u32()
            let minimum: Int
            switch elementType {
            case 0, 1, 7: minimum = 1
            case 2, 3: minimum = 2
            case 4, 5, 6: minimum = 4
            case 8, 10, 11, 12: minimum = 8
            case 9: minimum = 12
            default:
                throw GGUFError.malformed(path: path, detail: "'\(key)': array of unknown value type \(elementType)")
            }
            let n = try count("'\(key)': array length", minimumBytesEach: minimum)
            var values: [GGUFValue] = []
            values.reserveCapacity(n)
            for _ in 0..<n { values.append(try value(type: elementType, key: key, depth: depth + 1)) }
            return .array(values)
        case 10: return .uint64(try integer(UInt64.self))
        case 11: return .int64(try integer(Int64.self))
        case 12: return .float64(Double(bitPattern: try integer(UInt64.self)))
        default: throw GGUFError.malformed(path: path, detail: "'\(key)': unknown value type \(type)")
        }
    }
}

/// Writes GGUF files (version 3, little-endian, 32-byte alignment): metadata in the order given, then the tensors in
/// their types' blocks. The file is written atomically (a temporary file renamed into place).
public enum GGUFWriter {
    /// A float32 tensor to write: its GGUF name and its values in PyTorch's shape order (written with the dimensions
    /// reversed, as GGUF stores them).
    public struct FloatTensor {
        public let name: String
        public let shape: [Int]
        public let values: [Float]
        public init(name: String, shape: [Int], values: [Float]) { (self.name, self.shape, self.values) = (name, shape, values) }
    }

    /// A tensor already in its type's blocks (``GGMLType/encode(_:)``), shape in PyTorch's order.
    public struct EncodedTensor {
        public let name: String
        public let shape: [Int]
        public let type: GGMLType
        public let bytes: Data
        public init(name: String, shape: [Int], type: GGMLType, bytes: Data) {
            (self.name, self.shape, self.type, self.bytes) = (name, shape, type, bytes)
        }
    }

    public static func write(metadata: [(String, GGUFValue)], tensors: [FloatTensor], to path: String) throws {
        for t in tensors where t.values.count != t.shape.reduce(1, *) || t.shape.isEmpty || t.shape.count > 4 {
            throw GGUFError.malformed(path: path, detail: "tensor '\(t.name)': \(t.values.count) values for shape \(t.shape)")
        }
        try write(
            metadata: metadata,
            encoded: tensors.map { t in
                EncodedTensor(name: t.name, shape: t.shape, type: .f32, bytes: t.values.withUnsafeBytes { Data($0) })
            }, to: path)
    }

    /// Writes `encoded` tensors; each one's bytes must be whole rows of its type's blocks for its shape.
    /// - Throws: ``GGUFError/malformed(path:detail:)`` naming a tensor whose bytes do not fit its shape and type.
    public static func write(metadata: [(String, GGUFValue)], encoded tensors: [EncodedTensor], to path: String) throws {
        var out = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); out.append(contentsOf: Array(s.utf8)) }
        func typeCode(_ v: GGUFValue) -> UInt32 {
            switch v {
            case .uint8: return 0
            case .int8: return 1
            case .uint16: return 2
            case .int16: return 3
            case .uint32: return 4
            case .int32: return 5
            case .float32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .uint64: return 10
            case .int64: return 11
            case .float64: return 12
            }
        }
        func value(_ v: GGUFValue) throws {
            switch v {
            case let .uint8(x): out.append(x)
            case let .int8(x): out.append(UInt8(bitPattern: x))
            case let .uint16(x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case let .int16(x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case let .uint32(x): u32(x)
            case let .int32(x): u32(UInt32(bitPattern: x))
            case let .float32(x): u32(x.bitPattern)
            case let .bool(x): out.append(x ? 1 : 0)
            case let .string(x): string(x)
            case let .array(items):
                let first = items.first.map(typeCode) ?? 8
                guard items.allSatisfy({ typeCode($0) == first }) else {
                    throw GGUFError.malformed(path: path, detail: "an array to write mixes value types")
                }
                u32(first)
                u64(UInt64(items.count))
                for item in items { try value(item) }
            case let .uint64(x): u64(x)
            case let .int64(x): u64(UInt64(bitPattern: x))
            case let .float64(x): u64(x.bitPattern)
            }
        }
        for t in tensors {
            let be = t.type.blockElements ?? 0, bb = t.type.blockBytes ?? 0
            let elements = t.shape.reduce(1, *)
            guard !t.shape.isEmpty, t.shape.count <= 4, be > 0, t.shape.last! % be == 0, elements / be * bb == t.bytes.count
            else {
                throw GGUFError.malformed(
                    path: path, detail: "tensor '\(t.name)': \(t.bytes.count) bytes for \(t.type) of shape \(t.shape)")
            }
        }
        out.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, v) in metadata {
            string(key)
            u32(typeCode(v))
            try value(v)
        }
        let alignment = 32
        var offset = 0
        for t in tensors {
            string(t.name)
            u32(UInt32(t.shape.count))
            for d in t.shape.reversed() { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offset += (t.bytes.count + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out.append(t.bytes)
            while out.count % alignment != 0 { out.append(0) }
        }
        try AtomicFile.write(out, to: path)
    }
}
