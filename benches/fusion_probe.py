#!/usr/bin/env python3
"""What eager fusions could buy rise-model's CPU training step (issue #5), measured in PyTorch on the
same libtorch: a Llama training step (forward + backward, no optimizer) at the model bench's tiny
shape (4 layers, hidden 256, 8/4 heads, vocab 1024, batch 16 x 256), unfused, with fused
F.rms_norm, with one GEMM for q/k/v and one for gate/up, and all of them plus RoPE on q and k at
once. Medians of 3 alternating repetitions, 2 threads.

    .venv/bin/python benches/fusion_probe.py
"""
import torch, time, math, sys
torch.manual_seed(0)
torch.set_num_threads(2)
H, I, L, NH, NKV, V, B, T = 256, 688, 4, 8, 4, 1024, 16, 256
D = H // NH
def mk(*s): return (torch.randn(*s) * 0.02).requires_grad_()
params = {"emb": mk(V, H)}
for l in range(L):
    for n, s in [("q", (NH*D, H)), ("k", (NKV*D, H)), ("v", (NKV*D, H)), ("o", (H, NH*D)), ("g", (I, H)), ("u", (I, H)), ("d", (H, I))]:
        params[f"{l}.{n}"] = mk(*s)
    params[f"{l}.n1"] = torch.ones(H, requires_grad=True); params[f"{l}.n2"] = torch.ones(H, requires_grad=True)
params["nf"] = torch.ones(H, requires_grad=True)
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
pos = torch.arange(T).float()
fr = torch.outer(pos, inv); emb = torch.cat([fr, fr], -1); cos, sin = emb.cos()[None, None], emb.sin()[None, None]
def rot(x):
    x1, x2 = x[..., :D//2], x[..., D//2:]
    return torch.cat([-x2, x1], -1)
def rms(x, w, fused):
    if fused: return torch.nn.functional.rms_norm(x, (H,), w, 1e-5)
    var = x.square().mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + 1e-5))
def step(ids, fused):
    x = params["emb"][ids]
    for l in range(L):
        p = lambda n: params[f"{l}.{n}"]
        h = rms(x, p("n1"), fused["rms"])
        if fused["qkv"]:
            qkv = h @ torch.cat([p("q"), p("k"), p("v")], 0).t()
            q, k, v = qkv.split([NH*D, NKV*D, NKV*D], -1)
        else:
            q, k, v = h @ p("q").t(), h @ p("k").t(), h @ p("v").t()
        q = q.view(B, T, NH, D).transpose(1, 2); k = k.view(B, T, NKV, D).transpose(1, 2); v = v.view(B, T, NKV, D).transpose(1, 2)
        if fused["rope"]:
            qk = torch.cat([q, k], 1)
            qk = qk * cos + rot(qk) * sin
            q, k = qk.split([NH, NKV], 1)
        else:
            q = q * cos + rot(q) * sin; k = k * cos + rot(k) * sin
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + a.transpose(1, 2).reshape(B, T, H) @ p("o").t()
        h = rms(x, p("n2"), fused["rms"])
        if fused["mlp"]:
            gu = h @ torch.cat([p("g"), p("u")], 0).t()
            g, u = gu.chunk(2, -1)
        else:
            g, u = h @ p("g").t(), h @ p("u").t()
        x = x + (torch.nn.functional.silu(g) * u) @ p("d").t()
    x = rms(x, params["nf"], fused["rms"])
    logits = x @ params["emb"].t()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
ids = torch.randint(0, V, (B, T))
variants = {"none": dict(rms=0, qkv=0, rope=0, mlp=0), "rms": dict(rms=1, qkv=0, rope=0, mlp=0), "qkv+mlp": dict(rms=0, qkv=1, rope=0, mlp=1), "all": dict(rms=1, qkv=1, rope=1, mlp=1)}
res = {k: [] for k in variants}
for rep in range(4):
    for name, f in variants.items():
        for p_ in params.values(): p_.grad = None
        t0 = time.perf_counter()
        for _ in range(3):
            loss = step(ids, f); loss.backward()
        res[name].append((time.perf_counter() - t0) / 3)
for name, ts in res.items():
    ts = sorted(ts[1:])
    print(f"{name:8} {1000*ts[len(ts)//2]:.0f} ms/step  {B*T/ts[len(ts)//2]:.0f} tok/s")
