import Foundation

/// Why a PyTorch checkpoint (`.bin`, `.pt`) could not be read. Each case names the file.
public enum TorchCheckpointError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case malformed(path: String, detail: String)
    /// The pickle asks for something a state dict never needs (code, an unknown class): refused, never run.
    case unsupported(path: String, detail: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read: \(reason)"
        case let .malformed(path, detail): return "\(path): malformed PyTorch checkpoint: \(detail)"
        case let .unsupported(path, detail): return "\(path): unsupported PyTorch checkpoint: \(detail)"
        }
    }
}

/// A state dict saved by `torch.save` (the zip format PyTorch has written since 1.6): `NAME/data.pkl`, a pickle of a
/// dict from names to tensors whose storages are the entries `NAME/data/KEY` (raw little-endian values).
///
/// The pickle is read by a small interpreter that knows only what a state dict is made of — dicts, tuples, strings,
/// numbers, `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter` and the typed storage
/// classes — and refuses anything else by name: no code in the file ever runs. Tensors may be strided views and may
/// share storages (tied weights); they are converted to float32 from float32, float16, bfloat16 or float64 when read.
/// The file is memory-mapped and validated when opened: every storage exists and holds every element its views reach.
public struct TorchCheckpoint: @unchecked Sendable {
    /// One tensor: where its elements are in which storage.
    public struct Entry: Sendable, Equatable {
        public let dtype: String
        public let shape: [Int]
        let strides: [Int]
        let storage: String
        let offset: Int
    }

    public let path: String
    /// The tensors by name (non-tensor values in the dict are skipped).
    public let entries: [String: Entry]
    private let data: Data
    private let storages: [String: (range: Range<Int>, dtype: String)]

    /// Opens and validates a checkpoint.
    /// - Throws: ``TorchCheckpointError`` naming the file and the problem.
    public init(path: String) throws {
        self.path = path
        do { data = try MappedFile.read(path) } catch {
            throw TorchCheckpointError.unreadable(path: path, reason: error.localizedDescription)
        }
        let files = try ZipDirectory(data, path: path)
        guard let pickleName = files.entries.keys.filter({ $0.hasSuffix("/data.pkl") || $0 == "data.pkl" }).min() else {
            throw TorchCheckpointError.malformed(
                path: path, detail: "no data.pkl in the archive (an old, non-zip torch.save file?)")
        }
        let prefix = String(pickleName.dropLast("data.pkl".count))
        var reader = PickleReader(data[files.entries[pickleName]!], path: path)  // pickleName is one of the entries' keys
        let top = try reader.run()
        guard case let .dict(items) = top else {
            throw TorchCheckpointError.unsupported(path: path, detail: "the pickle is not a dict of tensors")
        }
        var entries: [String: Entry] = [:], storages: [String: (range: Range<Int>, dtype: String)] = [:]
        for (key, value) in items {
            guard case let .string(name) = key else { continue }
            guard case let .tensor(storage, dtype, offset, shape, strides) = value else { continue }
            guard let range = files.entries[prefix + "data/" + storage] else {
                throw TorchCheckpointError.malformed(
                    path: path, detail: "tensor '\(name)': storage \(storage) is not in the archive")
            }
            let size = TorchCheckpoint.byteCount(dtype), held = range.count / size
            guard shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }), shape.count == strides.count,
                offset >= 0
            else {
                throw TorchCheckpointError.malformed(
                    path: path, detail: "tensor '\(name)': bad shape \(shape), strides \(strides) or offset \(offset)")
            }
            // The view's elements and the last one it reaches must lie inside its storage (arithmetic checked for
            // overflow: the numbers come from the file).
            var count = 1, last = offset, fits = true
            for (n, st) in zip(shape, strides) {
                let (c, o1) = count.multipliedReportingOverflow(by: n)
                let (reach, o2) = max(n - 1, 0).multipliedReportingOverflow(by: st)
                let (l, o3) = last.addingReportingOverflow(reach)
                (count, last, fits) = (c, l, fits && !o1 && !o2 && !o3)
            }
            guard fits, count <= held, count == 0 || last < held else {
                throw TorchCheckpointError.malformed(
                    path: path,
                    detail:
                        "tensor '\(name)' (shape \(shape), strides \(strides), offset \(offset)) does not fit storage \(storage) of \(held) elements"
                )
            }
            entries[name] = Entry(dtype: dtype, shape: shape, strides: strides, storage: storage, offset: offset)
            storages[storage] = (range, dtype)
        }
        self.entries = entries
        self.storages = storages
    }

    static func byteCount(_ dtype: String) -> Int {
        switch dtype {
        case "Double", "Long": return 8
        case "Half", "BFloat16", "Short": return 2
        case "Char", "Byte", "Bool": return 1
        default: return 4
        }
    }

    /// The tensor `name` converted to float32.
    /// - Throws: ``SafeTensorsError/missingTensor(path:tensor:)``, or ``TorchCheckpointError`` for a non-float tensor.
    public func tensor(_ name: String) throws -> Tensor {
        guard let e = entries[name] else { throw SafeTensorsError.missingTensor(path: path, tensor: name) }
        let t = try Tensor(uninitializedShape: e.shape, operation: "\(path): tensor '\(name)'")
        try read(name, into: UnsafeMutableBufferPointer(start: t.storage.pointer, count: t.count))
        return t
    }

    /// Converts the tensor `name` to float32 straight into `buffer`, which must hold exactly its elements.
    public func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let e = entries[name] else { throw SafeTensorsError.missingTensor(path: path, tensor: name) }
        let convert: (UnsafeRawPointer, Int) -> Float
        switch e.dtype {
        case "Float":
            convert = {
                Float(bitPattern: UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4 * $1, as: UInt32.self)))
            }
        case "Half":
            convert = {
                Float(
                    Float16(bitPattern: UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: 2 * $1, as: UInt16.self)))
                )
            }
        case "BFloat16":
            convert = {
                Float(
                    bitPattern: UInt32(UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: 2 * $1, as: UInt16.self)))
                        << 16)
            }
        case "Double":
            convert = {
                Float(
                    Double(bitPattern: UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8 * $1, as: UInt64.self))))
            }
        case "Long": convert = { Float(Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 8 * $1, as: Int64.self))) }
        case "Int": convert = { Float(Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 4 * $1, as: Int32.self))) }
        default:
            throw TorchCheckpointError.unsupported(path: path, detail: "tensor '\(name)' has element type \(e.dtype)")
        }
        let n = e.shape.reduce(1, *)
        guard buffer.count == n else {
            throw TorchCheckpointError.malformed(
                path: path, detail: "tensor '\(name)': \(n) elements do not fit a buffer of \(buffer.count)")
        }
        guard n > 0, let out = buffer.baseAddress, let range = storages[e.storage]?.range else { return }
        // A contiguous view (the usual case) is one run of elements.
        var contiguous = true, expected = 1
        for (n, st) in zip(e.shape, e.strides).reversed() where n > 1 {
            contiguous = contiguous && st == expected
            expected *= n
        }
        data.withUnsafeBytes { raw in
            let base = UnsafeRawPointer(raw.baseAddress!.advanced(by: range.lowerBound))
            if contiguous && e.dtype == "Float" {
                let from = base.advanced(by: 4 * e.offset)
                for i in 0..<n {
                    out[i] = Float(
                        bitPattern: UInt32(littleEndian: from.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
                return
            }
            if contiguous {
                for i in 0..<n { out[i] = convert(base, e.offset + i) }
                return
            }
            // Walk the view in row-major order: an odometer over the shape, the storage index moved by the strides.
            var index = [Int](repeating: 0, count: e.shape.count)
            var position = e.offset
            for i in 0..<n {
                out[i] = convert(base, position)
                var axis = e.shape.count - 1
                while axis >= 0 {
                    index[axis] += 1
                    position += e.strides[axis]
                    if index[axis] < e.shape[axis] { break }
                    position -= e.strides[axis] * e.shape[axis]
                    index[axis] = 0
                    axis -= 1
                }
            }
        }
    }
}

/// The stored (uncompressed) entries of a zip archive, by name: their byte ranges in the file.
struct ZipDirectory {
    var entries: [String: Range<Int>] = [:]

    init(_ data: Data, path: String) throws {
        func fail(_ detail: String) -> TorchCheckpointError { .malformed(path: path, detail: "zip archive: \(detail)") }
        let count = data.count
        func u16(_ o: Int) throws -> Int {
            guard o >= 0, o <= count - 2 else { throw fail("truncated at byte \(o)") }
            return Int(data[data.startIndex + o]) | Int(data[data.startIndex + o + 1]) << 8
        }
        func u32(_ o: Int) throws -> Int { try u16(o) | (u16(o + 2) << 16) }
        func u64(_ o: Int) throws -> Int {
            let v = try UInt64(u32(o)) | (UInt64(u32(o + 4)) << 32)
            guard v <= UInt64(Int.max) else { throw fail("a 64-bit field overflows at byte \(o)") }
            return Int(v)
        }
        // The end-of-central-directory record: the last signature 0x06054b50 within the final 64 KiB + 22 bytes.
        var end = -1
        var o = count - 22
        while o >= max(0, count - 22 - 65535) {
            if try u32(o) == 0x0605_4b50 { end = o; break }
            o -= 1
        }
        guard end >= 0 else { throw fail("no end-of-central-directory record (not a zip file, or truncated)") }
        var entryCount = try u16(end + 10), directoryOffset = try u32(end + 16)
        if entryCount == 0xFFFF || directoryOffset == 0xFFFF_FFFF {  // ZIP64: the locator sits just before the record
            guard end >= 20, try u32(end - 20) == 0x0706_4b50 else {
                throw fail("ZIP64 fields without a ZIP64 locator")
            }
            let record = try u64(end - 20 + 8)
            guard try u32(record) == 0x0606_4b50 else { throw fail("bad ZIP64 end-of-central-directory record") }
            (entryCount, directoryOffset) = (try u64(record + 32), try u64(record + 48))
        }
        var p = directoryOffset
        for _ in 0..<entryCount {
            guard try u32(p) == 0x0201_4b50 else { throw fail("bad central directory entry at byte \(p)") }
            let method = try u16(p + 10)
            var size = try u32(p + 20), local = try u32(p + 42)
            let nameLength = try u16(p + 28), extraLength = try u16(p + 30), commentLength = try u16(p + 32)
            guard p + 46 + nameLength <= count else { throw fail("truncated central directory") }
            let name = String(
                decoding: data[(data.startIndex + p + 46)..<(data.startIndex + p + 46 + nameLength)], as: UTF8.self)
            // ZIP64 extra field (id 1): the 64-bit sizes and offset that did not fit, in this order.
            var e = p + 46 + nameLength
            while e + 4 <= p + 46 + nameLength + extraLength {
                let id = try u16(e), length = try u16(e + 2)
                if id == 1 {
                    var f = e + 4
                    if try u32(p + 24) == 0xFFFF_FFFF { f += 8 }  // uncompressed size comes first
                    if try u32(p + 20) == 0xFFFF_FFFF { size = try u64(f); f += 8 }
                    if try u32(p + 42) == 0xFFFF_FFFF { local = try u64(f) }
                }
                e += 4 + length
            }
            guard method == 0 else {
                throw fail("entry \(name) is compressed (method \(method)); torch.save stores entries uncompressed")
            }
            guard try u32(local) == 0x0403_4b50 else { throw fail("bad local header for \(name)") }
            let start = try local + 30 + u16(local + 26) + u16(local + 28)
            guard start <= count, size <= count - start else {
                throw fail("entry \(name) runs past the end of the file")
            }
            entries[name] = start..<(start + size)
            p += 46 + nameLength + extraLength + commentLength
        }
    }
}

/// A pickle value, as far as state dicts need.
indirect enum PickleValue {
    case none, bool(Bool), int(Int), float(Double), string(String), bytes(Data)
    case tuple([PickleValue]), list([PickleValue]), dict([(PickleValue, PickleValue)])
    case global(String)
    /// A typed storage reference from a persistent id: its archive key and element type.
    case storage(key: String, dtype: String)
    case tensor(storage: String, dtype: String, offset: Int, shape: [Int], strides: [Int])
    case mark
}

/// Runs the pickle opcodes a state dict uses (protocols 2 to 5), building values; any other opcode, any global
/// outside the short list below, is an error.
///
/// Work and memory are bounded by the file: every opcode does work proportional to the bytes it reads or the items
/// it pops (appends extend the list in place), and values nest at most ``maximumDepth`` deep, so neither building
/// nor releasing them can run the stack out.
struct PickleReader {
    /// A value and how deeply containers nest inside it.
    struct Item {
        var value: PickleValue
        var depth: Int
    }

    /// A state dict nests a handful of levels (dict, tensor arguments, shape tuples); this is far beyond that.
    static let maximumDepth = 64

    let bytes: [UInt8]
    let path: String
    var at = 0
    var stack: [Item] = []
    var memo: [Int: Item] = [:]

    init(_ data: Data, path: String) { (bytes, self.path) = ([UInt8](data), path) }

    func fail(_ detail: String) -> TorchCheckpointError {
        .malformed(path: path, detail: "pickle: \(detail) (byte \(at))")
    }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - at else { throw fail("truncated") }
        defer { at += n }
        return bytes[at..<(at + n)]
    }
    mutating func uint(_ n: Int) throws -> Int { try take(n).reversed().reduce(0) { $0 << 8 | Int($1) } }
    mutating func line() throws -> String {
        guard let end = bytes[at...].firstIndex(of: 0x0A) else { throw fail("unterminated line") }
        defer { at = end + 1 }
        return String(decoding: bytes[at..<end], as: UTF8.self)
    }
    mutating func push(_ value: PickleValue) { stack.append(Item(value: value, depth: 0)) }
    /// Pushes a container built from `children`, one level deeper than the deepest of them.
    mutating func push(_ value: PickleValue, containing children: [Item]) throws {
        let depth = 1 + (children.map(\.depth).max() ?? 0)
        guard depth <= PickleReader.maximumDepth else {
            throw fail("values nest more than \(PickleReader.maximumDepth) deep")
        }
        stack.append(Item(value: value, depth: depth))
    }
    mutating func popItem() throws -> Item {
        guard let v = stack.popLast() else { throw fail("stack underflow") }
        return v
    }
    mutating func pop() throws -> PickleValue { try popItem().value }
    /// The items above the topmost mark (which is removed).
    mutating func popMark() throws -> [Item] {
        guard let m = stack.lastIndex(where: { if case .mark = $0.value { return true } else { return false } }) else {
            throw fail("no mark")
        }
        defer { stack.removeSubrange(m...) }
        return Array(stack[(m + 1)...])
    }

    static let storageTypes = [
        "FloatStorage": "Float", "HalfStorage": "Half", "BFloat16Storage": "BFloat16", "DoubleStorage": "Double",
        "LongStorage": "Long", "IntStorage": "Int", "ShortStorage": "Short", "CharStorage": "Char",
        "ByteStorage": "Byte", "BoolStorage": "Bool",
    ]
    static let allowedGlobals: Set<String> = [
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
    ]

    mutating func global(_ module: String, _ name: String) throws -> PickleValue {
        let full = "\(module).\(name)"
        if module == "torch", let dtype = PickleReader.storageTypes[name] { return .storage(key: "", dtype: dtype) }
        guard PickleReader.allowedGlobals.contains(full) else {
            throw TorchCheckpointError.unsupported(
                path: path, detail: "the pickle refers to \(full), which a state dict does not need (refused, not run)")
        }
        return .global(full)
    }

    mutating func reduce(_ callable: PickleValue, _ args: PickleValue) throws -> PickleValue {
        guard case let .global(name) = callable, case let .tuple(a) = args else { throw fail("REDUCE on a non-global") }
        func ints(_ v: PickleValue) throws -> [Int] {
            guard case let .tuple(items) = v else { throw fail("\(name): expected a tuple of integers") }
            return try items.map {
                if case let .int(i) = $0 { return i } else { throw fail("\(name): expected an integer") }
            }
        }
        switch name {
        case "collections.OrderedDict":
            if a.isEmpty { return .dict([]) }
            guard case let .list(pairs) = a[0] else { throw fail("OrderedDict of a non-list") }
            return .dict(
                try pairs.map {
                    if case let .tuple(kv) = $0, kv.count == 2 {
                        return (kv[0], kv[1])
                    } else {
                        throw fail("OrderedDict pair")
                    }
                })
        case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
            guard a.count >= 4, case let .storage(key, dtype) = a[0], case let .int(offset) = a[1] else {
                throw fail("\(name): bad arguments")
            }
            return .tensor(storage: key, dtype: dtype, offset: offset, shape: try ints(a[2]), strides: try ints(a[3]))
        case "torch._utils._rebuild_parameter":
            guard let data = a.first else { throw fail("\(name): no data") }
            return data
        default: throw fail("REDUCE on \(name)")
        }
    }

    mutating func run() throws -> PickleValue {
        while true {
            let op = try uint(1)
            switch op {
            case 0x80: _ = try uint(1)  // PROTO
            case 0x95: _ = try uint(8)  // FRAME
            case 0x2E: return try pop()  // STOP
            case 0x7D: push(.dict([]))  // EMPTY_DICT
            case 0x5D: push(.list([]))  // EMPTY_LIST
            case 0x29: push(.tuple([]))  // EMPTY_TUPLE
            case 0x28: push(.mark)  // MARK
            case 0x4E: push(.none)  // NONE
            case 0x88: push(.bool(true))
            case 0x89: push(.bool(false))
            case 0x4B: push(.int(try uint(1)))  // BININT1
            case 0x4D: push(.int(try uint(2)))  // BININT2
            case 0x4A: push(.int(Int(Int32(truncatingIfNeeded: try uint(4)))))  // BININT
            case 0x8A:  // LONG1: little-endian two's complement of n bytes
                let n = try uint(1)
                guard n <= 8 else { throw fail("integer of \(n) bytes") }
                let raw = try take(n)
                var v = raw.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                if let top = raw.last, n < 8, top & 0x80 != 0 { v |= ~UInt64(0) << (8 * UInt64(n)) }
                push(.int(Int(truncatingIfNeeded: v)))
            case 0x47: push(.float(Double(bitPattern: try take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))  // BINFLOAT, big-endian
            case 0x58: push(.string(String(decoding: try take(try uint(4)), as: UTF8.self)))  // BINUNICODE
            case 0x8C: push(.string(String(decoding: try take(try uint(1)), as: UTF8.self)))  // SHORT_BINUNICODE
            case 0x8D: push(.string(String(decoding: try take(try uint(8)), as: UTF8.self)))  // BINUNICODE8
            case 0x55: push(.string(String(decoding: try take(try uint(1)), as: UTF8.self)))  // SHORT_BINSTRING
            case 0x54: push(.string(String(decoding: try take(try uint(4)), as: UTF8.self)))  // BINSTRING
            case 0x43: push(.bytes(Data(try take(try uint(1)))))  // SHORT_BINBYTES
            case 0x42: push(.bytes(Data(try take(try uint(4)))))  // BINBYTES
            case 0x63: push(try global(try line(), try line()))  // GLOBAL
            case 0x93:  // STACK_GLOBAL
                guard case let .string(name) = try pop(), case let .string(module) = try pop() else {
                    throw fail("STACK_GLOBAL of non-strings")
                }
                push(try global(module, name))
            case 0x71: memo[try uint(1)] = stack.last  // BINPUT
            case 0x72: memo[try uint(4)] = stack.last  // LONG_BINPUT
            case 0x94: memo[memo.count] = stack.last  // MEMOIZE
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                let k = try uint(op == 0x68 ? 1 : 4)
                guard let v = memo[k] else { throw fail("memo \(k) is empty") }
                stack.append(v)
            case 0x74: let items = try popMark(); try push(.tuple(items.map(\.value)), containing: items)  // TUPLE
            case 0x85: let a = try popItem(); try push(.tuple([a.value]), containing: [a])  // TUPLE1
            case 0x86:
                let b = try popItem(), a = try popItem(); try push(.tuple([a.value, b.value]), containing: [a, b])  // TUPLE2
            case 0x87:  // TUPLE3
                let c = try popItem(), b = try popItem(), a = try popItem()
                try push(.tuple([a.value, b.value, c.value]), containing: [a, b, c])
            case 0x61, 0x65:  // APPEND, APPENDS
                let items = op == 0x61 ? [try popItem()] : try popMark()
                var target = try popItem()
                guard case var .list(l) = target.value else { throw fail("APPEND to a non-list") }
                target.value = .none  // release the old box so that `l` is the only owner and grows in place
                l.append(contentsOf: items.map(\.value))
                try push(.list(l), containing: items + [Item(value: .none, depth: target.depth - 1)])
            case 0x73, 0x75:  // SETITEM, SETITEMS
                var items: [Item] = []
                if op == 0x73 {
                    let v = try popItem(), k = try popItem(); items = [k, v]
                } else {
                    items = try popMark()
                }
                var target = try popItem()
                guard items.count % 2 == 0, case var .dict(d) = target.value else {
                    throw fail("SETITEMS on a non-dict")
                }
                target.value = .none
                d.append(
                    contentsOf: stride(from: 0, to: items.count, by: 2).map { (items[$0].value, items[$0 + 1].value) })
                try push(.dict(d), containing: items + [Item(value: .none, depth: target.depth - 1)])
            case 0x51:  // BINPERSID: ('storage', type, key, location, numel)
                guard case let .tuple(pid) = try pop(), pid.count >= 3, case .string("storage") = pid[0],
                    case let .storage(_, dtype) = pid[1], case let .string(key) = pid[2]
                else { throw fail("persistent id is not a storage") }
                push(.storage(key: key, dtype: dtype))
            case 0x52:  // REDUCE
                let args = try popItem(), callable = try popItem()
                try push(try reduce(callable.value, args.value), containing: [args])
            case 0x62: _ = try pop()  // BUILD: object state (a state dict's _metadata, a tensor's hooks) is not needed
            default: throw fail(String(format: "unsupported opcode 0x%02x", op))
            }
        }
    }
}

/// A file of named tensors Reins reads as float32: a safetensors file or a PyTorch checkpoint.
public protocol TensorArchive: Sendable {
    var path: String { get }
    /// Every tensor name.
    var tensorNames: [String] { get }
    /// The shape of a tensor, if present.
    func shape(_ name: String) -> [Int]?
    func tensor(_ name: String) throws -> Tensor
    func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws
}

extension TorchCheckpoint: TensorArchive {
    public var tensorNames: [String] { Array(entries.keys) }
    public func shape(_ name: String) -> [Int]? { entries[name]?.shape }
}

extension SafeTensorsFile: TensorArchive {
    public var tensorNames: [String] { Array(entries.keys) }
    public func shape(_ name: String) -> [Int]? { entries[name]?.shape }
}

/// Opens `path` by its contents: a zip archive (PK signature) as a PyTorch checkpoint, anything else as safetensors.
///
/// A pickle that is not inside a zip archive (PyTorch's format before 1.6) is refused by name, as is any non-zip
/// file with a PyTorch extension, rather than being misread as a damaged safetensors file.
public func openTensorArchive(_ path: String) throws -> any TensorArchive {
    let head = FileHandle(forReadingAtPath: path).map { h in
        defer { try? h.close() }; return (try? h.read(upToCount: 4)) ?? Data()
    }
    if head?.prefix(2) == Data([0x50, 0x4B]) { return try TorchCheckpoint(path: path) }
    // PROTO 2, then LONG1 of 10 bytes: the magic number legacy torch.save writes first.
    if head == Data([0x80, 0x02, 0x8A, 0x0A]) {
        throw TorchCheckpointError.unsupported(
            path: path,
            detail:
                "a bare pickle (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False); re-save it with a current PyTorch or as safetensors"
        )
    }
    if [".bin", ".pt", ".pth"].contains(where: { path.hasSuffix($0) }) {
        throw TorchCheckpointError.malformed(path: path, detail: "not a zip archive, so not a torch.save file")
    }
    return try SafeTensorsFile(path: path)
}
