// swift-tools-version: 6.1
// Reins's kernel microbenchmarks, in their own package so that depending on Reins pulls in no benchmark dependency.
// Run: cd Benchmarks && swift package benchmark      (see Benchmarks/README.md)
import Foundation
import PackageDescription

// A path dependency is identified by its folder's name, which depends on where Reins was cloned.
let reins = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "ReinsBenchmarks",
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/package-benchmark.git", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "ReinsKernels",
            dependencies: [
                .product(name: "ReinsTensor", package: reins),
                .product(name: "Benchmark", package: "package-benchmark"),
            ],
            path: "Benchmarks/ReinsKernels",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ),
    ]
)
