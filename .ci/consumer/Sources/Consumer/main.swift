import Reins
import ReinsTensor

// A tiny use of the public API: one causal attention forward and backward.
let q = try Tensor.normal([1, 2, 3, 5], seed: 1).requiringGradient()
let out = try Tensor.attention(query: q, key: q, value: q, causal: true)
try out.sum().backward()
print("consumer: Reins \(Reins.version), kernels \(Kernels.activeInstructionSet), attention output \(out.shape), gradient \(q.gradient!.shape)")
