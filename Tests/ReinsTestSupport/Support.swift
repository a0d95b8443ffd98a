import Foundation
import Testing
import ReinsTensor

/// The one tolerance check for all tests: the shapes must agree, and every element must satisfy
/// |actual - expected| <= atol + rtol·|expected|. A failure reports the largest difference and the first bad index.
public func expectClose(
    _ actual: [Float], _ expected: [Float], atol: Float = 1e-5, rtol: Float = 1e-4, _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard actual.count == expected.count else {
        Issue.record("\(what): \(actual.count) elements, expected \(expected.count)", sourceLocation: sourceLocation)
        return
    }
    var worst: Float = 0, firstBad: Int?
    for i in actual.indices {
        let d = abs(actual[i] - expected[i])
        if !(d <= atol + rtol * abs(expected[i])) {  // also catches NaN
            if firstBad == nil { firstBad = i }
            worst = max(worst, d.isNaN ? .infinity : d)
        }
    }
    if let firstBad {
        Issue.record(
            "\(what): max difference \(worst); first bad index \(firstBad): \(actual[firstBad]) vs expected \(expected[firstBad])",
            sourceLocation: sourceLocation)
    }
}

public func expectClose(
    _ actual: Tensor, _ expected: Tensor, atol: Float = 1e-5, rtol: Float = 1e-4, _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard actual.shape == expected.shape else {
        Issue.record("\(what): shape \(actual.shape), expected \(expected.shape)", sourceLocation: sourceLocation)
        return
    }
    expectClose(actual.scalars, expected.scalars, atol: atol, rtol: rtol, what, sourceLocation: sourceLocation)
}

/// Double-precision version for finite-difference checks: the analytic (float) gradient against a Double estimate.
public func expectClose(
    _ actual: [Float], _ expected: [Double], atol: Double, rtol: Double, _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    expectClose(
        actual, expected.map { Float($0) }, atol: Float(atol), rtol: Float(rtol), what, sourceLocation: sourceLocation)
}

/// Seeded random floats in [-scale, scale).
public func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var g = SeededGenerator(seed: seed)
    return (0..<n).map { _ in (g.nextUniform() * 2 - 1) * scale }
}

/// Central finite differences of a scalar function of a Double vector, in Double.
public func numericGradient(_ x: [Double], step h: Double = 1e-6, _ f: ([Double]) -> Double) -> [Double] {
    var x = x
    return x.indices.map { i in
        let keep = x[i]
        x[i] = keep + h
        let up = f(x)
        x[i] = keep - h
        let down = f(x)
        x[i] = keep
        return (up - down) / (2 * h)
    }
}

public func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
public func doubles(_ a: [Float]) -> [Double] { a.map(Double.init) }

/// The committed PyTorch fixtures (see Tests/Fixtures/make_fixtures.py and make_model_fixtures.py).
public enum Fixtures {
    public static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    /// A fixture model directory (`Tests/Fixtures/models/NAME`).
    public static func model(_ name: String) -> URL { directory.appendingPathComponent("models/\(name)") }

    public static func file(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: directory.appendingPathComponent(name).path)
    }
}

/// A fresh temporary directory, removed by the caller.
public func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("reins-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A zip archive of stored (uncompressed) entries, as `torch.save` writes them, for building damaged checkpoints in
/// tests. CRCs are left zero: Reins's reader does not check them (the data is checked by its own bounds).
public func storedZip(_ entries: [(name: String, data: Data)]) -> Data {
    var out = Data(), central = Data()
    func u16(_ v: Int, _ d: inout Data) {
        withUnsafeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian) { d.append(contentsOf: $0) }
    }
    func u32(_ v: Int, _ d: inout Data) {
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian) { d.append(contentsOf: $0) }
    }
    for (name, data) in entries {
        let offset = out.count, nameBytes = Data(name.utf8)
        u32(0x0403_4b50, &out); u16(20, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0, &out)
        u32(0, &out); u32(data.count, &out); u32(data.count, &out); u16(nameBytes.count, &out); u16(0, &out)
        out.append(nameBytes); out.append(data)
        u32(0x0201_4b50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central)
        u16(0, &central); u16(0, &central); u32(0, &central); u32(data.count, &central); u32(data.count, &central)
        u16(nameBytes.count, &central); u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central)
        u32(0, &central); u32(offset, &central)
        central.append(nameBytes)
    }
    let directoryOffset = out.count
    out.append(central)
    u32(0x0605_4b50, &out); u16(0, &out); u16(0, &out); u16(entries.count, &out); u16(entries.count, &out)
    u32(central.count, &out); u32(directoryOffset, &out); u16(0, &out)
    return out
}

/// A safetensors file from a header written as raw JSON text (so that numbers JSONSerialization cannot write, such
/// as 2^64 + 30, can be tested) and a data section.
public func rawSafeTensors(header: String, data: [UInt8]) -> Data {
    var bytes = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(Data(header.utf8))
    bytes.append(contentsOf: data)
    return bytes
}
