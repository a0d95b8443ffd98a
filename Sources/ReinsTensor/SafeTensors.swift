import Foundation

/// The element types a safetensors file can hold that Reins reads.
public enum SafeTensorsDType: String, Sendable {
    case float32 = "F32", float16 = "F16", bfloat16 = "BF16", int32 = "I32", int64 = "I64"

    var byteCount: Int {
        switch self {
        case .float32, .int32: return 4
        case .float16, .bfloat16: return 2
        case .int64: return 8
        }
    }
}

/// Why a safetensors file could not be read or written. Each case names the file and, where relevant, the tensor.
public enum SafeTensorsError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case truncated(path: String, detail: String)
    case malformedHeader(path: String, detail: String)
    case unsupportedDType(path: String, tensor: String, dtype: String)
    case badOffsets(path: String, tensor: String, detail: String)
    case missingTensor(path: String, tensor: String)
    case wrongDType(path: String, tensor: String, expected: String, found: String)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read: \(reason)"
        case let .truncated(path, detail): return "\(path): truncated safetensors file: \(detail)"
        case let .malformedHeader(path, detail): return "\(path): malformed safetensors header: \(detail)"
        case let .unsupportedDType(path, tensor, dtype):
            return "\(path): tensor '\(tensor)' has unsupported dtype \(dtype)"
        case let .badOffsets(path, tensor, detail): return "\(path): tensor '\(tensor)': \(detail)"
        case let .missingTensor(path, tensor): return "\(path): no tensor named '\(tensor)'"
        case let .wrongDType(path, tensor, expected, found):
            return "\(path): tensor '\(tensor)' is \(found), expected \(expected)"
        case let .unwritable(path, reason): return "\(path): cannot write: \(reason)"
        }
    }
}

/// A safetensors file: an 8-byte little-endian header length, a JSON header mapping each name to its dtype, shape and
/// byte range, then the raw little-endian data.
///
/// Reading validates everything before any tensor is touched: the header length against the file size, the JSON,
/// every dtype, that each byte range matches its shape, lies inside the data and overlaps no other. The file is
/// memory-mapped, so opening a large checkpoint copies nothing until a tensor is asked for.
public struct SafeTensorsFile: @unchecked Sendable {
    /// One tensor's entry in the header.
    public struct Entry: Sendable, Equatable {
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        /// Byte range within the data section.
        public let range: Range<Int>
    }

    public let path: String
    /// The entries by name.
    public let entries: [String: Entry]
    /// The `__metadata__` strings, if any.
    public let metadata: [String: String]
    private let data: Data
    private let dataStart: Int

    /// The tensor names in file order (by offset).
    public var names: [String] { entries.sorted { $0.value.range.lowerBound < $1.value.range.lowerBound }.map(\.key) }

    /// Opens and validates a safetensors file.
    /// - Throws: ``SafeTensorsError`` naming the file and the problem.
    public init(path: String) throws {
        self.path = path
        let data: Data
        do { data = try MappedFile.read(path) } catch {
            throw SafeTensorsError.unreadable(path: path, reason: error.localizedDescription)
        }
        guard data.count >= 8 else {
            throw SafeTensorsError.truncated(
                path: path, detail: "\(data.count) bytes, fewer than the 8-byte header length")
        }
        let headerLength = data.prefix(8).enumerated().reduce(UInt64(0)) {
            $0 | UInt64($1.element) << (8 * UInt64($1.offset))
        }
        guard headerLength <= UInt64(data.count - 8) else {
            throw SafeTensorsError.truncated(
                path: path, detail: "header length \(headerLength) exceeds the \(data.count - 8) bytes after it")
        }
        let start = 8 + Int(headerLength)
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<start)) } catch {
            throw SafeTensorsError.malformedHeader(path: path, detail: "not JSON (\(error.localizedDescription))")
        }
        guard let header = json as? [String: Any] else {
            throw SafeTensorsError.malformedHeader(path: path, detail: "not a JSON object")
        }
        var entries: [String: Entry] = [:], metadata: [String: String] = [:]
        let dataSize = data.count - start
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else {
                    throw SafeTensorsError.malformedHeader(path: path, detail: "__metadata__ is not an object")
                }
                for (k, v) in m { metadata[k] = (v as? String) ?? "\(v)" }
                continue
            }
            guard let info = value as? [String: Any], let dtypeName = info["dtype"] as? String,
                let shapeAny = info["shape"] as? [Any], let offsetsAny = info["data_offsets"] as? [Any],
                offsetsAny.count == 2
            else {
                throw SafeTensorsError.malformedHeader(
                    path: path, detail: "entry '\(name)' lacks dtype, shape or two data_offsets")
            }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
                throw SafeTensorsError.unsupportedDType(path: path, tensor: name, dtype: dtypeName)
            }
            // Exact integers only: Foundation would wrap 2^64 + 30 to 30 and truncate 30.5 to 30.
            let shape = try shapeAny.map { v -> Int in
                guard let i = JSONNumber.exactInt(v), i >= 0 else {
                    throw SafeTensorsError.malformedHeader(
                        path: path,
                        detail: "entry '\(name)' has a bad shape \(shapeAny) (sizes are non-negative integers)")
                }
                return i
            }
            let offsets = try offsetsAny.map { v -> Int in
                guard let i = JSONNumber.exactInt(v), i >= 0 else {
                    throw SafeTensorsError.malformedHeader(
                        path: path, detail: "entry '\(name)' has bad data_offsets \(offsetsAny) (non-negative integers)"
                    )
                }
                return i
            }
            guard offsets[0] <= offsets[1] else {
                throw SafeTensorsError.badOffsets(
                    path: path, tensor: name, detail: "data_offsets \(offsets) are reversed")
            }
            guard offsets[1] <= dataSize else {
                throw SafeTensorsError.badOffsets(
                    path: path, tensor: name, detail: "data_offsets \(offsets) run past the \(dataSize) data bytes")
            }
            // In checked arithmetic: a wrapped product could match a small byte range and make every later read
            // run past the buffer it was given.
            var bytes: Int? = dtype.byteCount
            for d in shape {
                let m = bytes?.multipliedReportingOverflow(by: d)
                bytes = m.flatMap { $0.overflow ? nil : $0.partialValue }
            }
            guard let bytes, bytes == offsets[1] - offsets[0] else {
                throw SafeTensorsError.badOffsets(
                    path: path, tensor: name,
                    detail: "\(offsets[1] - offsets[0]) bytes for shape \(shape) of \(dtype.rawValue)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, range: offsets[0]..<offsets[1])
        }
        let sorted = entries.sorted { $0.value.range.lowerBound < $1.value.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.value.range.upperBound > b.value.range.lowerBound {
            throw SafeTensorsError.badOffsets(
                path: path, tensor: b.key,
                detail: "bytes \(b.value.range) overlap tensor '\(a.key)' at \(a.value.range)")
        }
        self.entries = entries
        self.metadata = metadata
        self.data = data
        self.dataStart = start
    }

    private func entry(_ name: String) throws -> Entry {
        guard let e = entries[name] else { throw SafeTensorsError.missingTensor(path: path, tensor: name) }
        return e
    }

    /// The tensor `name` converted to float32 (from F32, F16 or BF16).
    public func tensor(_ name: String) throws -> Tensor {
        let t = try Tensor(uninitializedShape: try entry(name).shape, operation: "\(path): tensor '\(name)'")
        try read(name, into: UnsafeMutableBufferPointer(start: t.storage.pointer, count: t.count))
        return t
    }

    /// Converts the tensor `name` to float32 straight into `buffer`, which must hold exactly its elements.
    public func read(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        let e = try entry(name)
        guard e.dtype == .float32 || e.dtype == .float16 || e.dtype == .bfloat16 else {
            throw SafeTensorsError.wrongDType(
                path: path, tensor: name, expected: "a float type (F32, F16, BF16)", found: e.dtype.rawValue)
        }
        let n = e.shape.reduce(1, *)
        guard buffer.count == n,
            let out = buffer.baseAddress ?? (n == 0 ? UnsafeMutablePointer<Float>(bitPattern: 64) : nil)
        else {
            throw SafeTensorsError.badOffsets(
                path: path, tensor: name, detail: "\(n) elements do not fit a buffer of \(buffer.count)")
        }
        guard n > 0 else { return }
        data.withUnsafeBytes { raw in
            // Safe: the header check proved range = n × element size inside the data, and n > 0 so the file is not empty.
            let base = raw.baseAddress!.advanced(by: dataStart + e.range.lowerBound)
            switch e.dtype {
            case .float32:
                for i in 0..<n {
                    out[i] = Float(
                        bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
            case .float16:
                for i in 0..<n {
                    out[i] = Float(
                        Float16(
                            bitPattern: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                        ))
                }
            case .bfloat16:
                for i in 0..<n {
                    out[i] = Float(
                        bitPattern: UInt32(
                            UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
                }
            case .int32, .int64: break
            }
        }
    }

    /// The integer tensor `name` (from I32, or I64 values that fit in Int32).
    public func intTensor(_ name: String) throws -> IntTensor {
        let e = try entry(name)
        let n = e.shape.reduce(1, *)  // checked when the header was read
        var values = [Int32](repeating: 0, count: n)
        switch e.dtype {
        case .int32 where n == 0, .int64 where n == 0: break
        case .int32:
            data.withUnsafeBytes { raw in
                let base = raw.baseAddress!.advanced(by: dataStart + e.range.lowerBound)
                for i in 0..<n {
                    values[i] = Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
                }
            }
        case .int64:
            var bad: Int64?
            data.withUnsafeBytes { raw in
                let base = raw.baseAddress!.advanced(by: dataStart + e.range.lowerBound)
                for i in 0..<n {
                    let v = Int64(littleEndian: base.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
                    guard let v32 = Int32(exactly: v) else { bad = v; return }
                    values[i] = v32
                }
            }
            if let bad {
                throw SafeTensorsError.badOffsets(
                    path: path, tensor: name, detail: "value \(bad) does not fit in Int32")
            }
        default:
            throw SafeTensorsError.wrongDType(
                path: path, tensor: name, expected: "an integer type (I32, I64)", found: e.dtype.rawValue)
        }
        return try IntTensor(shape: e.shape, values: values)
    }

    /// Writes float32 and int32 tensors as a safetensors file, atomically (a temporary file renamed into place).
    public static func write(
        _ tensors: [String: Tensor], integers: [String: IntTensor] = [:], metadata: [String: String] = [:],
        to path: String
    ) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let floatNames = tensors.keys.sorted(), intNames = integers.keys.sorted()
        for name in floatNames {
            let t = tensors[name]!
            header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.count]]
            offset += 4 * t.count
        }
        for name in intNames {
            let t = integers[name]!
            header[name] = ["dtype": "I32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.count]]
            offset += 4 * t.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }  // pad with spaces so the data starts 8-byte aligned
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        // The file is little-endian, as are x86-64 and arm64: their bytes go in whole buffers (one element at a
        // time took ~10 s for a 350 MB training checkpoint).
        for name in floatNames {
            tensors[name]!.withUnsafeBufferPointer { b in  // names are the dictionary's own keys
                #if _endian(little)
                    out.append(b)
                #else
                    for v in b { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
                #endif
            }
        }
        for name in intNames {  // names are the dictionary's own keys
            let values = integers[name]!.values
            #if _endian(little)
                values.withUnsafeBufferPointer { out.append($0) }
            #else
                for v in values { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
            #endif
        }
        try AtomicFile.write(out, to: path)
    }
}

/// Writes files so that a crash midway never leaves a partial file: the bytes go to a temporary file in the same
/// folder, which is flushed and then renamed over the destination.
public enum AtomicFile {
    /// The name of a temporary file for `name`: `.NAME.tmp-PID-RANDOM`, so that a later run can tell whose it was.
    static func temporaryName(for name: String) -> String {
        ".\(name).tmp-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Removes, from `directory`, temporary files and directories that writers killed midway left behind: those whose
    /// process is no longer running (a live writer's are left alone).
    public static func removeStaleTemporaries(in directory: URL) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names where name.hasPrefix(".") {
            guard let marker = name.range(of: ".tmp-", options: .backwards) else { continue }
            let fields = name[marker.upperBound...].split(separator: "-")
            guard fields.count == 2, let pid = Int32(fields[0]), UInt32(fields[1]) != nil else { continue }
            // A writer that still runs (kill answers, or refuses us: it exists) keeps its file; ESRCH means gone.
            if pid != ProcessInfo.processInfo.processIdentifier && !(kill(pid, 0) == -1 && errno == ESRCH) { continue }
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }

    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let temp = url.deletingLastPathComponent().appendingPathComponent(temporaryName(for: url.lastPathComponent))
        do {
            try data.write(to: temp)
            let handle = try FileHandle(forWritingTo: temp)
            try handle.synchronize()
            try handle.close()
            if rename(temp.path, url.path) != 0 {
                throw SafeTensorsError.unwritable(path: path, reason: String(cString: strerror(errno)))
            }
        } catch let error as SafeTensorsError {
            try? FileManager.default.removeItem(at: temp)
            throw error
        } catch {
            try? FileManager.default.removeItem(at: temp)
            throw SafeTensorsError.unwritable(path: path, reason: error.localizedDescription)
        }
    }
}

/// Replaces a directory by another, complete one, so that a reader finds the old directory or the new one, never a
/// mix: the new one is written in full beside it first (``freshDirectory(for:)``), then the old one is renamed aside,
/// the new one renamed into its place, and the old one removed. A kill between the two renames leaves only the
/// aside copy; ``recover(_:)`` (called before each use) puts it back.
public enum DirectorySwap {
    static func aside(_ directory: URL) -> URL {
        directory.deletingLastPathComponent().appendingPathComponent(".\(directory.lastPathComponent).previous")
    }

    /// A new empty directory beside `directory`, for its replacement to be written into.
    public static func freshDirectory(for directory: URL) throws -> URL {
        let parent = directory.deletingLastPathComponent()
        let fresh = parent.appendingPathComponent(AtomicFile.temporaryName(for: directory.lastPathComponent))
        do { try FileManager.default.createDirectory(at: fresh, withIntermediateDirectories: true) } catch {
            throw SafeTensorsError.unwritable(path: fresh.path, reason: error.localizedDescription)
        }
        return fresh
    }

    /// Puts `fresh` in the place of `directory`.
    public static func replace(_ directory: URL, with fresh: URL) throws {
        let fm = FileManager.default, old = aside(directory)
        try recover(directory)
        try? fm.removeItem(at: old)
        if fm.fileExists(atPath: directory.path), rename(directory.path, old.path) != 0 {
            throw SafeTensorsError.unwritable(path: directory.path, reason: String(cString: strerror(errno)))
        }
        guard rename(fresh.path, directory.path) == 0 else {
            let reason = String(cString: strerror(errno))
            _ = rename(old.path, directory.path)
            throw SafeTensorsError.unwritable(path: directory.path, reason: reason)
        }
        try? fm.removeItem(at: old)
    }

    /// Restores the previous directory if a swap was interrupted between its two renames.
    public static func recover(_ directory: URL) throws {
        let fm = FileManager.default, old = aside(directory)
        guard !fm.fileExists(atPath: directory.path), fm.fileExists(atPath: old.path) else { return }
        guard rename(old.path, directory.path) == 0 else {
            throw SafeTensorsError.unwritable(path: directory.path, reason: String(cString: strerror(errno)))
        }
    }
}
