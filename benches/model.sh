#!/usr/bin/env bash
# CPU throughput of rise's sampler and trainer vs transformers (PyTorch eager), same tiny
# model (LlamaConfig::tiny: 4 layers, hidden 256, GQA 8/4, vocab 1024), same weights, same
# thread count, one run each. Results replace the "## Model (CPU)" section of benches/RESULTS.md.
# Usage: benches/model.sh   (THREADS=N to pin the thread count; default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-$(nproc)}
WORK=benches/.work/model
PY=.venv/bin/python
"$PY" -c 'import transformers' 2>/dev/null || { echo "model bench: run \`just setup-test\` first (needs transformers in .venv)" >&2; exit 1; }

cargo build --release -q -p rise-model --example model_bench
BIN=target/release/examples/model_bench
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN" prepare "$WORK/tiny"

echo "model bench: rise ($THREADS threads)" >&2
rise_json=$("$BIN" run "$WORK/tiny" "$THREADS")
echo "model bench: transformers ($THREADS threads)" >&2
peer_json=$("$PY" benches/model_peer.py "$WORK/tiny" "$THREADS" 2>/dev/null)
echo "$rise_json"
echo "$peer_json"

RISE_JSON="$rise_json" PEER_JSON="$peer_json" "$PY" - <<'PY'
import datetime, json, os, platform, re, subprocess
r, p = json.loads(os.environ["RISE_JSON"]), json.loads(os.environ["PEER_JSON"])
import torch, transformers
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
except OSError:
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = []
for what, key in [("sampling: batch 32, prompt 32, 128 new tokens, T=1", "sample_tokens_per_s"),
                  ("training: batch 16 x 256 tokens, AdamW, clip 1.0", "train_tokens_per_s")]:
    rows.append(f"| {what} | {r[key]:,.0f} | {p[key]:,.0f} | {r[key] / p[key]:.2f}x |")
section = "\n".join([
    "## Model (CPU)",
    "",
    f"`benches/model.sh`, {datetime.date.today()}, commit {commit}, {cpu}, {r['threads']} threads, "
    f"torch {torch.__version__}, transformers {transformers.__version__} "
    f"(attn_implementation={p['attn_implementation']}), fp32. Tiny Llama: 4 layers, hidden 256, "
    "8 query / 4 KV heads, vocab 1024; identical weights. One run each, on a machine shared with "
    f"other work (load average {os.getloadavg()[0]:.1f} at the end), so expect noise of tens of "
    "percent. Goal: >= 1.5x transformers on both.",
    "",
    "| workload | rise tokens/s | transformers tokens/s | rise / transformers |",
    "|---|---:|---:|---:|",
    *rows,
    "",
])
path = "benches/RESULTS.md"
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
pattern = re.compile(r"^## Model \(CPU\)\n.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(section)
PY
