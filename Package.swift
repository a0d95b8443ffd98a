// swift-tools-version: 6.1
// Reins: steer pretrained language models on the CPU — full fine-tuning or small adapters on one frozen base.
import PackageDescription

let package = Package(
    name: "Reins",
    products: [
        .library(name: "ReinsTensor", targets: ["ReinsTensor"]),
        .library(name: "Reins", targets: ["Reins"]),
        .executable(name: "reins", targets: ["ReinsCLI"]),
        // `reins serve`'s HTTP layer (Hummingbird 2, SwiftNIO): a separate product, so that ReinsTensor and Reins stay
        // free of it.
        .library(name: "ReinsServer", targets: ["ReinsServer"]),
        // Data-parallel training over MPI (`reins train --distributed` under mpirun): a separate product, so that
        // ReinsTensor and Reins build without MPI.
        .library(name: "ReinsDistributed", targets: ["ReinsDistributed"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        // `swift package generate-documentation --target Reins` builds the DocC catalog (Sources/Reins/Reins.docc).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.60.0"),
    ],
    targets: [
        // OpenBLAS (cblas + LAPACKE) from the system; Debian: libopenblas-dev liblapacke-dev.
        .systemLibrary(
            name: "COpenBLAS",
            path: "CSupport/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]
        ),
        // C kernels: forward/backward pairs with scalar oracles and run-time SIMD dispatch.
        .target(
            name: "CReinsKernels",
            dependencies: ["COpenBLAS"],
            path: "CSupport/CReinsKernels",
            linkerSettings: [.linkedLibrary("m")]
        ),
        .target(name: "ReinsTensor", dependencies: ["CReinsKernels", "COpenBLAS"]),
        .target(name: "Reins", dependencies: ["ReinsTensor", "CReinsKernels"]),
        // The demo's data (WordNet supersenses) and the real models pip packages ship: used by the CLI's demo and the
        // tests, not part of the library a user imports.
        // zlib from the system (Debian: zlib1g-dev), for the demo's dictionary (dictd's gzip-compressed .dict.dz).
        .systemLibrary(name: "CZlib", path: "CSupport/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "ReinsDemoData", dependencies: ["Reins", "ReinsTensor", "CZlib"]),
        // One base, many adapters, behind OpenAI-compatible HTTP endpoints (`reins serve`).
        .target(
            name: "ReinsServer",
            dependencies: [
                "Reins", "ReinsTensor", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"), .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // MPI from the system, found with pkg-config as Open MPI's `ompi` (Debian: libopenmpi-dev; mpirun: openmpi-bin).
        .systemLibrary(name: "CMPI", path: "CSupport/CMPI", pkgConfig: "ompi", providers: [.apt(["libopenmpi-dev"])]),
        .target(name: "ReinsDistributed", dependencies: ["Reins", "ReinsTensor", "CMPI"]),
        .executableTarget(
            name: "ReinsCLI",
            dependencies: [
                "Reins", "ReinsTensor", "ReinsDemoData", "ReinsServer", "ReinsDistributed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // One tolerance helper and the fixture locations, shared by the test targets.
        .target(name: "ReinsTestSupport", dependencies: ["ReinsTensor"], path: "Tests/ReinsTestSupport"),
        .testTarget(name: "ReinsTensorTests", dependencies: ["ReinsTensor", "CReinsKernels", "ReinsTestSupport"]),
        .testTarget(name: "ReinsTests", dependencies: ["Reins", "ReinsTestSupport", "ReinsFuzzTargets", "ReinsDemoData"]),
        // The public API as a user sees it: no @testable import (the DocC article's example lives here).
        .testTarget(name: "ReinsAPITests", dependencies: ["Reins", "ReinsTensor"]),
        // Every file reader as a fuzz target, shared by the mutation fuzz test and the libFuzzer harness (Tests/Fuzz/run.sh).
        .target(name: "ReinsFuzzTargets", dependencies: ["Reins", "ReinsTensor"], path: "Tests/Fuzz/Targets"),
        .executableTarget(name: "ReinsFuzz", dependencies: ["ReinsFuzzTargets"], path: "Tests/Fuzz/Harness"),
        // Runs the built `reins` tool as a user would (exit status, signal, message, time) on malformed files and
        // arguments; depending on the tool's target makes `swift test` build it first.
        // Starts `reins serve`'s application on a loopback port inside the suite and talks to it over HTTP.
        .testTarget(
            name: "ReinsServerTests",
            dependencies: ["ReinsServer", "Reins", "ReinsTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "ReinsCLITests", dependencies: ["ReinsCLI", "Reins", "ReinsTestSupport", "ReinsDemoData"]),
    ]
)
