// A Hummingbird 2 server whose one route collects the request body, as `reins serve` does, and nothing else.
// Built with --sanitize=thread and driven by load.py, ThreadSanitizer reports SwiftNIO's pooled receive-buffer reuse
// (event loop) against the body task's last read of the same storage: the report suppressed in ../tsan.supp.
import Hummingbird

let router = Router()
router.post("/echo") { request, _ -> String in
    let body = try await request.body.collect(upTo: 10 << 20)
    return "\(body.readableBytes)"
}
let port = Int(CommandLine.arguments.dropFirst().first ?? "8199") ?? 8199
let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
try await app.runService()
