import Foundation
import ReinsFuzzTargets

// The coverage-guided harness: libFuzzer calls this with each input it generates, for the reader named by
// REINS_FUZZ_TARGET (see Tests/Fuzz/run.sh). Built without -DREINS_LIBFUZZER it is a replay tool instead:
// `swift run ReinsFuzz TARGET FILE...` runs the reader on each file (to reproduce a crash libFuzzer saved).

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
    .appendingPathComponent("Fixtures")
let scratch: URL = {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("reins-fuzz-\(getpid())")
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let name = ProcessInfo.processInfo.environment["REINS_FUZZ_TARGET"],
        let target = ReaderFuzzTarget(rawValue: name)
    else {
        fatalError("set REINS_FUZZ_TARGET to one of \(ReaderFuzzTarget.allCases.map(\.rawValue))")
    }
    let data = bytes.map { Data(bytes: $0, count: count) } ?? Data()
    target.run(data, scratch: scratch, fixtures: fixtures)
    return 0
}

/// libFuzzer's entry when its own `main` is not used (SwiftPM names this target's entry point itself).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@main
struct Harness {
    static func main() throws {
        #if REINS_LIBFUZZER
            var argc = CommandLine.argc
            var argv = CommandLine.unsafeArgv
            exit(runFuzzDriver(&argc, &argv, fuzzOneInput))
        #else
            let arguments = Array(CommandLine.arguments.dropFirst())
            guard let name = arguments.first, let target = ReaderFuzzTarget(rawValue: name) else {
                print(
                    "usage: ReinsFuzz TARGET FILE...   (TARGET: \(ReaderFuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))"
                )
                return
            }
            for file in arguments.dropFirst() {
                let accepted = target.run(
                    try Data(contentsOf: URL(fileURLWithPath: file)), scratch: scratch, fixtures: fixtures)
                print("\(file): \(accepted ? "accepted" : "refused with an error")")
            }
        #endif
    }
}
