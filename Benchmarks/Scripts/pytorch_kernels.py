#!/usr/bin/env python3
"""Times the kernel workloads of `reins kernels` in PyTorch (2 threads, float32, CPU) and prints one JSON object per
workload: {"name": ..., "median_ms": ...}. The names match Reins's workload names so the two can be joined.

    ~/.reins-reference/bin/python Benchmarks/Scripts/pytorch_kernels.py [--repeats 15] [--only TEXT]

Pinned stack: torch==2.15.0 (see Tests/Fixtures/reference-venv.sh).
"""
import argparse
import json

import torch
import torch.nn.functional as F

from timing import median_ms  # noqa: E402 (beside this script)

torch.set_num_threads(2)
torch.manual_seed(0)




def workloads():
    for i, o in ((768, 768), (768, 2304), (768, 3072), (3072, 768)):
        x, w = torch.randn(256, i), torch.randn(o, i) * 0.02
        yield f"matmul 256x{i} -> {o}", lambda x=x, w=w: x @ w.t()

    B, NH, T, hs = 4, 12, 256, 64
    q, k, v, g = (torch.randn(B, NH, T, hs) for _ in range(4))

    def attn_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def attn_bwd():
        ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
        F.scaled_dot_product_attention(ql, kl, vl, is_causal=True).backward(g)

    yield f"attention fwd B{B} NH{NH} T{T} hs{hs} causal", attn_fwd
    yield f"attention fwd+bwd B{B} NH{NH} T{T} hs{hs} causal", attn_bwd

    # Grouped-query attention at SmolLM2-135M's heads: 9 query heads over 3 key/value heads (enable_gqa).
    qg, gg3 = torch.randn(4, 9, 256, 64), torch.randn(4, 9, 256, 64)
    kg, vg = torch.randn(4, 3, 256, 64), torch.randn(4, 3, 256, 64)

    def gqa_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=True)

    def gqa_bwd():
        ql, kl, vl = (t.clone().requires_grad_() for t in (qg, kg, vg))
        F.scaled_dot_product_attention(ql, kl, vl, is_causal=True, enable_gqa=True).backward(gg3)

    yield "attention fwd B4 NH9 NKV3 T256 hs64 causal", gqa_fwd
    yield "attention fwd+bwd B4 NH9 NKV3 T256 hs64 causal", gqa_bwd

    x, w, b, gy = torch.randn(256, 768), torch.randn(768), torch.randn(768), torch.randn(256, 768)

    def ln():
        xl, wl, bl = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        F.layer_norm(xl, (768,), wl, bl, eps=1e-5).backward(gy)

    yield "layer norm fwd+bwd 256x768", ln

    xr, wr, gr = torch.randn(1024, 576), torch.randn(576), torch.randn(1024, 576)

    def rms():
        xl, wl = xr.clone().requires_grad_(), wr.clone().requires_grad_()
        F.rms_norm(xl, (576,), wl, eps=1e-5).backward(gr)

    yield "RMSNorm fwd+bwd 1024x576", rms

    gs, us, gsw = torch.randn(1024, 1536) * 2, torch.randn(1024, 1536), torch.randn(1024, 1536)

    def swiglu():
        gl, ul = gs.clone().requires_grad_(), us.clone().requires_grad_()
        (F.silu(gl) * ul).backward(gsw)

    yield "SwiGLU fwd+bwd 1024x1536", swiglu

    xg, gg = torch.randn(256, 3072) * 2, torch.randn(256, 3072)

    def gelu():
        xl = xg.clone().requires_grad_()
        F.gelu(xl, approximate="tanh").backward(gg)

    yield "GELU (tanh) fwd+bwd 256x3072", gelu

    logits = torch.randn(256, 50257) * 2
    targets = (torch.arange(256) * 7919) % 50257

    def ce():
        l = logits.clone().requires_grad_()
        F.cross_entropy(l, targets).backward()

    yield "softmax cross-entropy fwd+bwd 256x50257", ce

    xin, W, bias = torch.randn(256, 768), torch.randn(2304, 768) * 0.02, torch.randn(2304)
    A, Bm, gl = torch.randn(8, 768) * 0.02, torch.randn(2304, 8) * 0.02, torch.randn(256, 2304)

    def linear():
        xl, wl, bl = xin.clone().requires_grad_(), W.clone().requires_grad_(), bias.clone().requires_grad_()
        F.linear(xl, wl, bl).backward(gl)

    def lora():
        # PEFT's LoRA forward: base(x) + scale * B(A(x)), with the base frozen.
        xl, al, bml = xin.clone().requires_grad_(), A.clone().requires_grad_(), Bm.clone().requires_grad_()
        (F.linear(xl, W, bias) + 2.0 * F.linear(F.linear(xl, al), bml)).backward(gl)

    yield "linear fwd+bwd (trainable) 256x768 -> 2304", linear
    yield "LoRA r=8 fwd+bwd (frozen base) 256x768 -> 2304", lora

    n = 124_000_000
    p = torch.nn.Parameter(torch.randn(n) * 0.02)
    p.grad = torch.randn(n) * 0.01
    # PyTorch's fastest CPU AdamW is the fused kernel.
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, fused=True)
    yield f"AdamW step over {n // 1_000_000}M parameters", opt.step


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    for name, fn in workloads():
        if args.only and args.only not in name:
            continue
        print(json.dumps({"name": name, "median_ms": round(median_ms(fn, args.repeats), 4)}), flush=True)
