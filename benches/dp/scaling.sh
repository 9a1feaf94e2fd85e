#!/usr/bin/env bash
# Data-parallel scaling on CPU (issue #16), the data-parallel row of `just bench model`:
# training tokens/s of the trainer on LlamaConfig::tiny (global batch 16 x 256 tokens, AdamW,
# clip 1.0) in 1 rank x 1 thread and 2 ranks x 1 thread (Gloo over 127.0.0.1), and the
# speed-up (the goal on 2 cores is >= 1.7x). Medians of REPS alternating runs (the machine
# is shared). Prints a markdown row and writes benches/.work/model/dp.json; RESULTS.md is
# written by hand from it.
# Usage: benches/dp/scaling.sh   (REPS=N, default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-3}
WORK=benches/.work/model
mkdir -p "$WORK"
cargo build --release -q -p rise-model --example dp_bench
BIN=target/release/examples/dp_bench
one=() two=()
for rep in $(seq "$REPS"); do
  echo "dp bench: round $rep/$REPS: 1 rank x 1 thread, then 2 ranks x 1 thread" >&2
  one+=("$("$BIN" 1 1)")
  two+=("$("$BIN" 2 1)")
done
PY=${PYTHON:-.venv/bin/python}
"$PY" - "$WORK/dp.json" "${#one[@]}" "${one[@]}" "${two[@]}" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
runs = [json.loads(x) for x in sys.argv[3:]]
one, two = runs[:n], runs[n:]
m1 = statistics.median(r["train_tokens_per_s"] for r in one)
m2 = statistics.median(r["train_tokens_per_s"] for r in two)
res = {"one_rank_tokens_per_s": m1, "two_ranks_tokens_per_s": m2, "speedup": m2 / m1,
       "efficiency": m2 / m1 / 2,
       "one_rank_all": [round(r["train_tokens_per_s"]) for r in one],
       "two_ranks_all": [round(r["train_tokens_per_s"]) for r in two]}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res))
print(f"| training, data parallel (Gloo, CPU): 1 rank x 1 thread vs 2 ranks x 1 thread | "
      f"{m1:,.0f} tok/s | {m2:,.0f} tok/s | {m2 / m1:.2f}x (efficiency {m2 / m1 / 2:.0%}; goal 1.7x) |")
PY
