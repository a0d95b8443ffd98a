import Testing
@testable import ReinsTensor
import ReinsTestSupport

/// The ops, through the Tensor API and autograd, against PyTorch (Tests/Fixtures/make_fixtures.py).
struct ReferenceTests {
    let fx: SafeTensorsFile
    init() throws { fx = try Fixtures.file("tensor_ops.safetensors") }

    /// Backward from Σ g ⊙ y, so that each input's gradient is the vector-Jacobian product PyTorch computed with g.
    func backward(_ y: Tensor, _ g: Tensor) throws { try (y * g).sum().backward() }

    @Test(arguments: [("erf", GELUApproximation.none), ("tanh", GELUApproximation.tanh)])
    func gelu(name: String, approximation: GELUApproximation) throws {
        let x = try fx.tensor("gelu.x").requiringGradient()
        let y = x.gelu(approximation)
        expectClose(y, try fx.tensor("gelu_\(name).y"), atol: 1e-5, rtol: 1e-4, "gelu \(name)")
        try backward(y, try fx.tensor("gelu.g"))
        expectClose(
            try #require(x.gradient), try fx.tensor("gelu_\(name).dx"), atol: 1e-5, rtol: 1e-3, "gelu \(name) dx")
    }

    @Test func layerNorm() throws {
        let x = try fx.tensor("ln.x").requiringGradient(), w = try fx.tensor("ln.w").requiringGradient(),
            b = try fx.tensor("ln.b").requiringGradient()
        let y = try Tensor.layerNorm(x, weight: w, bias: b, eps: 1e-5)
        expectClose(y, try fx.tensor("ln.y"), atol: 1e-5, rtol: 1e-4, "layer norm")
        try backward(y, try fx.tensor("ln.g"))
        expectClose(try #require(x.gradient), try fx.tensor("ln.dx"), atol: 1e-5, rtol: 1e-3, "layer norm dx")
        expectClose(try #require(w.gradient), try fx.tensor("ln.dw"), atol: 1e-5, rtol: 1e-3, "layer norm dw")
        expectClose(try #require(b.gradient), try fx.tensor("ln.db"), atol: 1e-5, rtol: 1e-3, "layer norm db")
    }

    @Test func softmax() throws {
        let x = try fx.tensor("softmax.x").requiringGradient()
        let y = x.softmax()
        expectClose(y, try fx.tensor("softmax.y"), atol: 1e-6, rtol: 1e-4, "softmax")
        try backward(y, try fx.tensor("softmax.g"))
        expectClose(try #require(x.gradient), try fx.tensor("softmax.dx"), atol: 1e-6, rtol: 1e-3, "softmax dx")
    }

    @Test func crossEntropy() throws {
        let logits = try fx.tensor("ce.logits").requiringGradient()
        let loss = try Tensor.crossEntropy(logits: logits, targets: try fx.intTensor("ce.targets"))
        expectClose([try loss.item], try fx.tensor("ce.loss").scalars, atol: 1e-5, rtol: 1e-5, "cross-entropy loss")
        try loss.backward()
        expectClose(
            try #require(logits.gradient), try fx.tensor("ce.dlogits"), atol: 1e-6, rtol: 1e-3, "cross-entropy dlogits")
    }

    @Test(arguments: [("causal", true), ("full", false)])
    func attention(name: String, causal: Bool) throws {
        let q = try fx.tensor("attn.q").requiringGradient(), k = try fx.tensor("attn.k").requiringGradient()
        let v = try fx.tensor("attn.v").requiringGradient()
        let out = try Tensor.attention(
            query: q, key: k, value: v, causal: causal, keyMask: try fx.intTensor("attn.key_mask"))
        expectClose(out, try fx.tensor("attn_\(name).out"), atol: 1e-5, rtol: 1e-4, "attention \(name)")
        try backward(out, try fx.tensor("attn.g"))
        expectClose(
            try #require(q.gradient), try fx.tensor("attn_\(name).dq"), atol: 1e-5, rtol: 1e-3, "attention \(name) dq")
        expectClose(
            try #require(k.gradient), try fx.tensor("attn_\(name).dk"), atol: 1e-5, rtol: 1e-3, "attention \(name) dk")
        expectClose(
            try #require(v.gradient), try fx.tensor("attn_\(name).dv"), atol: 1e-5, rtol: 1e-3, "attention \(name) dv")
    }

    @Test func loraLinearWithFrozenBase() throws {
        let x = try fx.tensor("lora.x").requiringGradient()
        let w = try fx.tensor("lora.w"), b = try fx.tensor("lora.b")  // frozen: no gradient
        let a = try fx.tensor("lora.a").requiringGradient(), bm = try fx.tensor("lora.bm").requiringGradient()
        let y = try Tensor.loraLinear(
            x, weight: w, bias: b, loraA: a, loraB: bm, scale: try fx.tensor("lora.scale").item)
        expectClose(y, try fx.tensor("lora.y"), atol: 1e-5, rtol: 1e-4, "lora linear")
        try backward(y, try fx.tensor("lora.g"))
        expectClose(try #require(x.gradient), try fx.tensor("lora.dx"), atol: 1e-5, rtol: 1e-3, "lora dx")
        expectClose(try #require(a.gradient), try fx.tensor("lora.da"), atol: 1e-5, rtol: 1e-3, "lora dA")
        expectClose(try #require(bm.gradient), try fx.tensor("lora.dbm"), atol: 1e-5, rtol: 1e-3, "lora dB")
        #expect(w.gradient == nil && b.gradient == nil)
    }

    @Test func mlpClassifier() throws {
        let names = ["table", "w1", "b1", "w2", "b2"]
        let p = try Dictionary(uniqueKeysWithValues: names.map { ($0, try fx.tensor("mlp.\($0)").requiringGradient()) })
        let h = try Tensor.biasGELU(
            try Tensor.linear(try Tensor.embedding(try fx.intTensor("mlp.ids"), table: p["table"]!), weight: p["w1"]!),
            bias: p["b1"]!, .tanh)
        let logits = try Tensor.linear(h, weight: p["w2"]!, bias: p["b2"]!)
        expectClose(logits, try fx.tensor("mlp.logits"), atol: 1e-5, rtol: 1e-4, "mlp logits")
        let loss = try Tensor.crossEntropy(logits: logits, targets: try fx.intTensor("mlp.targets"))
        expectClose([try loss.item], try fx.tensor("mlp.loss").scalars, atol: 1e-5, rtol: 1e-5, "mlp loss")
        try loss.backward()
        for n in names {
            expectClose(try #require(p[n]!.gradient), try fx.tensor("mlp.d\(n)"), atol: 1e-6, rtol: 1e-3, "mlp d\(n)")
        }
    }

    @Test func causalAttentionBlock() throws {
        let names = ["x", "lw", "lb", "wqkv", "bqkv", "wp", "bp"]
        let p = try Dictionary(
            uniqueKeysWithValues: names.map { ($0, try fx.tensor("block.\($0)").requiringGradient()) })
        let (C, NH) = (15, 3)
        let h = try Tensor.layerNorm(p["x"]!, weight: p["lw"]!, bias: p["lb"]!)
        let qkv = try Tensor.linear(h, weight: p["wqkv"]!, bias: p["bqkv"]!, weightTransposed: true)  // Conv1D layout
        let q = try qkv.slice(axis: -1, 0..<C).splittingHeads(NH)
        let k = try qkv.slice(axis: -1, C..<(2 * C)).splittingHeads(NH)
        let v = try qkv.slice(axis: -1, (2 * C)..<(3 * C)).splittingHeads(NH)
        let a = try Tensor.attention(query: q, key: k, value: v, causal: true).mergingHeads()
        let out = try p["x"]! + Tensor.linear(a, weight: p["wp"]!, bias: p["bp"]!)
        expectClose(out, try fx.tensor("block.out"), atol: 1e-5, rtol: 1e-4, "block output")
        try backward(out, try fx.tensor("block.g"))
        for n in names {
            expectClose(
                try #require(p[n]!.gradient), try fx.tensor("block.d\(n)"), atol: 1e-5, rtol: 1e-3, "block d\(n)")
        }
    }

    @Test func adamwMatchesTorch() throws {
        let param = Parameter("p", try fx.tensor("adamw.p0"))
        let opt = AdamW(learningRate: 1e-2, beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weightDecay: 0.1)
        for t in 0..<3 {
            param.zeroGradient()
            try (param.value * fx.tensor("adamw.g\(t)")).sum().backward()  // ∂/∂p Σ p⊙g = g
            opt.update([param])
        }
        expectClose(param.value, try fx.tensor("adamw.p3"), atol: 1e-6, rtol: 1e-5, "AdamW after 3 steps")
    }
}
