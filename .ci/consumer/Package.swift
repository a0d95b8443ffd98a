// swift-tools-version: 6.1
// A stand-in for a user's package: it depends on Reins by path and must build in release mode.
import Foundation
import PackageDescription

// A path dependency is identified by its folder's name, which depends on where Reins was cloned.
let reins = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "consumer",
    dependencies: [.package(path: "../..")],
    targets: [
        .executableTarget(name: "consumer", dependencies: [
            .product(name: "ReinsTensor", package: reins),
            .product(name: "Reins", package: reins),
        ], path: "Sources/Consumer"),
    ]
)
