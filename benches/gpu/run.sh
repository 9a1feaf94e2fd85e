#!/usr/bin/env bash
# CUDA checks and benchmarks, run ON the lent GPU machine with what benches/gpu/prepare.sh
# put into .device/. Not a CI test: there is no GPU in CI. Logs and JSON go to $OUT; the
# figures are copied into benches/RESULTS.md by hand with the card, command and date.
#   1. rise-worker doctor (CUDA visible through tch)
#   2. the parity and sampler tests with RISE_TEST_DEVICE=cuda (fp32 logits within 1e-4 of
#      transformers, greedy token-for-token, seeding, padding, stop strings)
#   3. model_bench vs transformers on the same weights: tiny and medium (0.5B-shaped) models
#   4. pipelines/rise-ci.toml end to end with --device cuda (bf16 training and sampling)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/rise-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
LIB=$("$PY" -c "import torch,os;print(os.path.dirname(torch.__file__)+'/lib')")
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The tests build their fixtures with .venv/bin/python; here that is the machine's Python.
[ -e .venv ] || ln -s "$("$PY" -c 'import sys;print(sys.prefix)')" .venv
D=.device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
"$PY" -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)' >>"$OUT/gpu.txt" 2>&1

# ONLY=REGEX runs just the steps whose names match (e.g. ONLY='bench|rise_ci').
step() {
  local name=$1 limit=$2
  shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 0
  local t0=$(date +%s%N)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc secs=$(( ($(date +%s%N) - t0) / 1000000 ))e-3" | tee -a "$OUT/summary.txt"
}

step doctor 30 "$D/rise-worker" doctor
export RISE_REPO_ROOT=$PWD RISE_TEST_DEVICE=cuda
step parity_cuda 120 "$D/parity" --test-threads 1
step sampler_cuda 60 "$D/sampler" --test-threads 1
unset RISE_TEST_DEVICE
bench() {
  step "bench_$1" "$2" bash -c "$D/model_bench prepare /tmp/bench-$1 $1 &&
    $D/model_bench run /tmp/bench-$1 16 cuda && $PY benches/model_peer.py /tmp/bench-$1 16 cuda"
}
bench tiny 90
step rise_ci_cuda 150 "$D/rise" --store /tmp/rise-store run pipelines/rise-ci.toml --device cuda --plain
bench medium 120
[ -d /tmp/rise-store ] && "$D/rise" --store /tmp/rise-store show report >"$OUT/report_show.txt" 2>&1
cp "$("$D/rise" --store /tmp/rise-store show report --json 2>/dev/null |
  "$PY" -c 'import json,sys;print(json.load(sys.stdin)["output_path"])')/report.md" "$OUT/" 2>/dev/null
cat "$OUT/summary.txt"
