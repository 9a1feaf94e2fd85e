#!/usr/bin/env python3
"""transformers (PyTorch eager) on the same weights and workload as `model_bench run`.

Usage: python benches/model_peer.py MODEL_DIR THREADS [cpu|cuda]
Prints one JSON object: sampling (batch 32, prompt 32, 128 new tokens, temperature 1)
and training (batch 16 x 256 tokens, AdamW, clip 1.0; 1 warm-up + 5 timed steps) tokens/s.
On CUDA, as `model_bench`: sampling in bf16; training with fp32 weights under bf16 autocast.

Usage: python benches/model_peer.py sample MODEL_DIR THREADS PROMPT_FILE NEW_TOKENS BATCH...
The workload of `sampling_bench` (real weights, CPU, fp32): PROMPT_FILE's text tokenized as is,
BATCH copies of it, NEW_TOKENS sampled at temperature 1 (no top-k/top-p, every row runs to the
end), one warm-up call per batch size; the prefill timed alone with one new token.
"""
import contextlib
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

VOCAB, SAMPLE_BATCH, PROMPT_LEN, NEW_TOKENS = 1024, 32, 32, 128
TRAIN_BATCH, TRAIN_LEN, TRAIN_STEPS = 16, 256, 5


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def sample_real(model_dir, threads, prompt_file, new_tokens, batches):
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tok(open(prompt_file).read(), add_special_tokens=False, return_tensors="pt")["input_ids"]
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0, eos_token_id=None)
    results = {}
    with torch.no_grad():
        for batch in batches:
            ids = prompt.repeat(batch, 1)
            mask = torch.ones_like(ids)
            model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, **kw)
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=1, min_new_tokens=1, **kw)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
            secs = time.perf_counter() - t0
            tokens = (out.shape[1] - ids.shape[1]) * batch
            assert tokens == new_tokens * batch
            results[str(batch)] = {
                "secs": secs, "tokens": tokens, "tokens_per_s": tokens / secs, "prefill_secs": prefill,
                "ms_per_step": 1e3 * (secs - prefill) / max(new_tokens - 1, 1),
            }
    print(json.dumps({
        "impl": "transformers", "threads": threads, "prompt_tokens": prompt.shape[1],
        "new_tokens": new_tokens, "attn_implementation": model.config._attn_implementation,
        "batches": results,
    }))


def main():
    if sys.argv[1] == "sample":
        model_dir, threads, prompt_file, new_tokens = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        return sample_real(model_dir, threads, prompt_file, new_tokens, [int(b) for b in sys.argv[6:]])
    model_dir, threads = sys.argv[1], int(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    sample_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=sample_dtype).to(device).eval()
    prompts = torch.randint(3, VOCAB, (SAMPLE_BATCH, PROMPT_LEN), device=device)
    mask = torch.ones_like(prompts)
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        # Warm up with the full batch, as model_bench does.
        model.generate(prompts, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, **kw)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(prompts, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)
        sync(device)
        sample_secs = time.perf_counter() - t0
    generated = (out.shape[1] - PROMPT_LEN) * SAMPLE_BATCH
    attn = model.config._attn_implementation
    del model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    data = torch.randint(3, VOCAB, (TRAIN_BATCH, TRAIN_LEN), device=device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext())
    start = None
    for step in range(TRAIN_STEPS + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        with autocast:
            loss = model(input_ids=data, labels=data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    train_secs = time.perf_counter() - start
    train_tokens = TRAIN_BATCH * TRAIN_LEN * TRAIN_STEPS
    print(json.dumps({
        "impl": "transformers",
        "threads": threads,
        "device": device,
        "attn_implementation": attn,
        "sample_tokens": generated,
        "sample_secs": sample_secs,
        "sample_tokens_per_s": generated / sample_secs,
        "train_tokens": train_tokens,
        "train_secs": train_secs,
        "train_tokens_per_s": train_tokens / train_secs,
    }))


if __name__ == "__main__":
    main()
