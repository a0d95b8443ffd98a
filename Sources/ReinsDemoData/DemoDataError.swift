/// Why the demo's data (WordNet, the FreeDict dictionary) could not be read: a missing file, or the file and line of a
/// malformed entry.
public enum DemoDataError: Error, CustomStringConvertible, Equatable {
    case missing(path: String)
    case malformed(path: String, line: Int, detail: String)

    public var description: String {
        switch self {
        case let .missing(path):
            return
                "\(path) not found: install the demo's data with `bash .ci/install-deps` (Debian's wordnet-base and dict-freedict-eng-fra), or set REINS_WORDNET_DIR / REINS_DICTD_DIR"
        case let .malformed(path, line, detail): return "\(path):\(line): \(detail)"
        }
    }
}
