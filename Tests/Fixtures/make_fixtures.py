#!/usr/bin/env python3
"""Writes the reference fixtures that Reins's tests compare against. Run by hand, never in CI:

    bash Tests/Fixtures/reference-venv.sh && ~/.reins-reference/bin/python Tests/Fixtures/make_fixtures.py

Pinned reference stack (the versions reference-venv.sh installs):
    torch==2.15.0  transformers==4.57.6  peft==0.21.2  tokenizers==0.22.2  safetensors==0.8.0  numpy==2.4.6

Every fixture is small, uses sizes that are not multiples of 8 and head sizes that are not powers of two, and is
computed by PyTorch in float64 from float32 inputs, then stored as float32 (integers as int32).
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(20261127)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def leaf(*shape, scale=1.0):
    """A float32 random tensor, returned as a float64 leaf that requires grad (so inputs are exactly float32 values)."""
    return (torch.randn(*shape) * scale).to(torch.float32).to(torch.float64).requires_grad_()


def grads(out, upstream, *inputs):
    return torch.autograd.grad(out, inputs, upstream, allow_unused=True)


def tensor_ops():
    fx = {}
    # GELU, both forms, with values well into both tails.
    x = leaf(5, 13, scale=3.0)
    g = leaf(5, 13)
    for name, approx in (("erf", "none"), ("tanh", "tanh")):
        y = F.gelu(x, approximate=approx)
        (dx,) = grads(y, g, x)
        fx[f"gelu_{name}.y"], fx[f"gelu_{name}.dx"] = f32(y), f32(dx)
    fx["gelu.x"], fx["gelu.g"] = f32(x), f32(g)

    # Layer norm over C = 37.
    x, w, b, g = leaf(6, 37, scale=2.0), leaf(37), leaf(37), leaf(6, 37)
    x = (x.detach() + 0.5).requires_grad_()
    y = F.layer_norm(x, (37,), w, b, eps=1e-5)
    dx, dw, db = grads(y, g, x, w, b)
    fx.update({"ln.x": f32(x), "ln.w": f32(w), "ln.b": f32(b), "ln.g": f32(g), "ln.y": f32(y),
               "ln.dx": f32(dx), "ln.dw": f32(dw), "ln.db": f32(db)})

    # Softmax over C = 29.
    x, g = leaf(4, 29, scale=3.0), leaf(4, 29)
    y = torch.softmax(x, dim=-1)
    (dx,) = grads(y, g, x)
    fx.update({"softmax.x": f32(x), "softmax.g": f32(g), "softmax.y": f32(y), "softmax.dx": f32(dx)})

    # Cross-entropy with ignore_index = -100, mean over counted rows.
    logits = leaf(7, 53, scale=2.0)
    targets = torch.tensor([3, -100, 52, 0, 17, -100, 41], dtype=torch.int64)
    loss = F.cross_entropy(logits, targets, ignore_index=-100)
    (dl,) = grads(loss, torch.tensor(1.0, dtype=torch.float64), logits)
    fx.update({"ce.logits": f32(logits), "ce.targets": targets.to(torch.int32), "ce.loss": f32(loss.reshape(1)),
               "ce.dlogits": f32(dl)})

    # Attention: B=2, NH=3, T=5, Tk=7 (two prefix keys), hs=12, causal with offset Tk-T, and a key padding mask.
    B, NH, T, Tk, hs = 2, 3, 5, 7, 12
    q, k, v, g = leaf(B, NH, T, hs), leaf(B, NH, Tk, hs), leaf(B, NH, Tk, hs), leaf(B, NH, T, hs)
    key_mask = torch.ones(B, Tk, dtype=torch.int32)
    key_mask[1, 4:] = 0  # batch 1: the last 3 keys are padding
    i = torch.arange(T)[:, None]
    j = torch.arange(Tk)[None, :]
    for name, causal in (("causal", True), ("full", False)):
        allowed = torch.ones(B, 1, T, Tk, dtype=torch.bool)
        if causal:
            allowed = allowed & (j <= i + (Tk - T))
        allowed = allowed & key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        dq, dk, dv = grads(out, g, q, k, v)
        fx.update({f"attn_{name}.out": f32(out), f"attn_{name}.dq": f32(dq), f"attn_{name}.dk": f32(dk),
                   f"attn_{name}.dv": f32(dv)})
    fx.update({"attn.q": f32(q), "attn.k": f32(k), "attn.v": f32(v), "attn.g": f32(g), "attn.key_mask": key_mask})

    # LoRA linear with a frozen base: y = x Wᵀ + b + s (x Aᵀ) Bᵀ.
    x, W, b, A, Bm, g = leaf(9, 13), leaf(11, 13), leaf(11), leaf(3, 13), leaf(11, 3), leaf(9, 11)
    s = 2.0 / 3.0
    y = F.linear(x, W, b) + s * F.linear(F.linear(x, A), Bm)
    dx, dA, dB = grads(y, g, x, A, Bm)
    fx.update({"lora.x": f32(x), "lora.w": f32(W), "lora.b": f32(b), "lora.a": f32(A), "lora.bm": f32(Bm),
               "lora.g": f32(g), "lora.y": f32(y), "lora.dx": f32(dx), "lora.da": f32(dA), "lora.dbm": f32(dB),
               "lora.scale": torch.tensor([s], dtype=torch.float32)})
    return fx


def mlp_and_block():
    fx = {}
    # A small MLP classifier: embedding -> linear -> tanh-GELU -> linear -> cross-entropy.
    V, C, H, K = 23, 11, 19, 7
    ids = torch.tensor([4, 0, 22, 9, 4], dtype=torch.int64)
    targets = torch.tensor([1, 6, -100, 0, 3], dtype=torch.int64)
    table, W1, b1, W2, b2 = leaf(V, C), leaf(H, C, scale=0.5), leaf(H), leaf(K, H, scale=0.5), leaf(K)
    h = F.gelu(F.linear(F.embedding(ids, table), W1, b1), approximate="tanh")
    logits = F.linear(h, W2, b2)
    loss = F.cross_entropy(logits, targets)
    gs = torch.autograd.grad(loss, (table, W1, b1, W2, b2))
    fx.update({"mlp.ids": ids.to(torch.int32), "mlp.targets": targets.to(torch.int32), "mlp.table": f32(table),
               "mlp.w1": f32(W1), "mlp.b1": f32(b1), "mlp.w2": f32(W2), "mlp.b2": f32(b2),
               "mlp.logits": f32(logits), "mlp.loss": f32(loss.reshape(1))})
    for n, gr in zip(("table", "w1", "b1", "w2", "b2"), gs):
        fx[f"mlp.d{n}"] = f32(gr)

    # A pre-LN causal self-attention block as in GPT-2: x + proj(attn(split(qkv(ln(x))))).
    # C = 15, NH = 3, hs = 5; qkv uses a Conv1D-style [in, out] weight.
    B, T, C, NH = 2, 6, 15, 3
    hs = C // NH
    x, lw, lb = leaf(B, T, C), leaf(C), leaf(C)
    Wqkv, bqkv, Wp, bp, g = leaf(C, 3 * C, scale=0.3), leaf(3 * C), leaf(C, C, scale=0.3), leaf(C), leaf(B, T, C)
    hln = F.layer_norm(x, (C,), lw, lb, eps=1e-5)
    qkv = hln @ Wqkv + bqkv
    q, k, v = qkv.split(C, dim=-1)
    heads = lambda t: t.view(B, T, NH, hs).transpose(1, 2)
    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    a = a.transpose(1, 2).reshape(B, T, C)
    out = x + F.linear(a, Wp, bp)
    gs = grads(out, g, x, lw, lb, Wqkv, bqkv, Wp, bp)
    names = ("x", "lw", "lb", "wqkv", "bqkv", "wp", "bp")
    for n, t in zip(names, (x, lw, lb, Wqkv, bqkv, Wp, bp)):
        fx[f"block.{n}"] = f32(t)
    for n, gr in zip(names, gs):
        fx[f"block.d{n}"] = f32(gr)
    fx["block.g"], fx["block.out"] = f32(g), f32(out)
    return fx


def adamw():
    """Three AdamW steps (torch.optim.AdamW, float32) on fixed gradients, with weight decay."""
    p0 = torch.randn(37)
    gs = [torch.randn(37) for _ in range(3)]
    p = p0.clone().requires_grad_()
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for gr in gs:
        p.grad = gr.clone()
        opt.step()
    fx = {"adamw.p0": p0, "adamw.p3": p.detach().clone()}
    for t, gr in enumerate(gs):
        fx[f"adamw.g{t}"] = gr
    return fx


if __name__ == "__main__":
    fixtures = {**tensor_ops(), **mlp_and_block(), **adamw()}
    path = os.path.join(HERE, "tensor_ops.safetensors")
    save_file({k: v.contiguous() for k, v in fixtures.items()}, path)
    print(f"wrote {len(fixtures)} tensors, {os.path.getsize(path)} bytes, to {path}")
