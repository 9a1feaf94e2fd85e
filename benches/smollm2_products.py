#!/usr/bin/env python3
"""The floor under a SmolLM2-135M decode step on this CPU: only the model's matrix products.

Usage: .venv/bin/python benches/smollm2_products.py [THREADS]   (after `just fetch-smollm2`)

Times F.linear over every 2-D weight of checkpoints/smollm2-135m-instruct (the 210 projections
of 30 layers, and the tied 49,152 x 576 output layer) at the decode shapes, batch 1 and 16, in
fp32 and bf16, in the libtorch of .venv, which rise and transformers both call. benches/RESULTS.md
("Sampling on real weights: where the time goes") compares these with a whole decode step.
"""
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def per_step(weights, out_layer, batch, dtype, reps=20):
    x = torch.randn(batch, 576, dtype=dtype)
    x_mlp = torch.randn(batch, 1536, dtype=dtype)
    ws = [w.to(dtype) for w in weights]
    out_layer = out_layer.to(dtype)

    def step():
        for w in ws:
            F.linear(x if w.shape[1] == 576 else x_mlp, w)
        F.linear(x, out_layer)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    total = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        F.linear(x, out_layer)
    return total, (time.perf_counter() - t0) / reps


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    sd = load_file("checkpoints/smollm2-135m-instruct/model.safetensors")
    weights = [v for k, v in sd.items() if v.dim() == 2 and "embed_tokens" not in k]
    out_layer = sd["model.embed_tokens.weight"]
    print(f"{len(weights)} projections + output layer {tuple(out_layer.shape)}, {torch.get_num_threads()} threads")
    for dtype in [torch.float32, torch.bfloat16]:
        for batch in [1, 16]:
            total, out = per_step(weights, out_layer, batch, dtype)
            print(f"{str(dtype):>15} batch {batch:>2}: {total * 1e3:6.1f} ms per step (output layer {out * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
