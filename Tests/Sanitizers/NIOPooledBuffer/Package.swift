// swift-tools-version:6.0
// The minimal reproduction of the one ThreadSanitizer suppression (../tsan.supp): README.md in the folder above.
import PackageDescription

let package = Package(
    name: "NIOPooledBuffer",
    platforms: [.macOS(.v14)],
    dependencies: [.package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.0.0")],
    targets: [.executableTarget(name: "Race", dependencies: [.product(name: "Hummingbird", package: "hummingbird")])]
)
