// swift-tools-version: 6.1
import PackageDescription
let package = Package(name: "Repro", targets: [.target(name: "Lib"), .testTarget(name: "LibTests", dependencies: ["Lib"])])
