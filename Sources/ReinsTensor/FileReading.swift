import Foundation

/// Strict reads of numbers parsed by `JSONSerialization`, shared by every reader of JSON headers and configs.
///
/// Foundation hands a JSON integer beyond 64 bits back as an `NSDecimalNumber` whose `intValue` wraps (2^64 + 30
/// reads as 30), and `30.5` as a double that `intValue` truncates; a size or offset read that way is silently wrong.
/// These accept exactly the integers an `Int` holds and nothing else.
package enum JSONNumber {
    /// The integer `value` holds exactly: a JSON integer that fits an `Int`, or a JSON float with no fractional part
    /// below 2^53 (`2.0`); `nil` for booleans, fractions, strings and integers that do not fit.
    package static func exactInt(_ value: Any?) -> Int? {
        guard let n = value as? NSNumber, !(n is NSDecimalNumber) else { return nil }
        switch String(cString: n.objCType) {
        case "c", "B": return nil  // a JSON boolean
        case "d", "f":
            let d = n.doubleValue
            guard d.isFinite, d == d.rounded(), abs(d) < 9_007_199_254_740_992 else { return nil }
            return Int(d)
        case "Q", "L", "I", "S", "C":
            return Int(exactly: n.uint64Value)
        default:
            return Int(exactly: n.int64Value)
        }
    }

    /// A finite JSON number (not a boolean) as a `Double`.
    package static func double(_ value: Any?) -> Double? {
        guard let n = value as? NSNumber else { return nil }
        let type = String(cString: n.objCType)
        guard type != "c", type != "B", n.doubleValue.isFinite else { return nil }
        return n.doubleValue
    }
}

/// Reads a whole file for a parser: memory-mapped, so that a multi-gigabyte checkpoint costs no copy.
package enum MappedFile {
    /// The bytes of `path`. An empty file is read without mapping (mapping zero bytes leaks a page in Foundation).
    /// - Throws: whatever Foundation throws for a missing or unreadable file.
    package static func read(_ path: String) throws -> Data {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        if (attributes[.type] as? FileAttributeType) == .typeDirectory {
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "is a directory"])
        }
        if let size = attributes[.size] as? NSNumber, size.intValue == 0 { return Data() }
        return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    }
}

/// Reads whole files for every reader in Reins. An empty file is read without Foundation, whose file reading leaks a
/// page for each empty file (LeakSanitizer shows it under fuzzing); anything else is read as Foundation reads it.
package enum FileBytes {
    /// The bytes of `path`.
    /// - Throws: Foundation's error for a missing, unreadable or directory path.
    package static func read(_ path: String) throws -> Data {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        if (attributes[.type] as? FileAttributeType) == .typeRegular, let size = attributes[.size] as? NSNumber,
            size.intValue == 0
        {
            return Data()
        }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }

    /// The bytes of `path`, or nil when it cannot be read.
    package static func contents(_ path: String) -> Data? { try? read(path) }

    /// The text of a UTF-8 file.
    /// - Throws: Foundation's error for an unreadable file, or one that is not UTF-8.
    package static func text(_ path: String) throws -> String {
        guard let text = String(data: try read(path), encoding: .utf8) else {
            throw CocoaError(
                .fileReadInapplicableStringEncoding, userInfo: [NSLocalizedDescriptionKey: "not UTF-8 text"])
        }
        return text
    }
}
