#!/usr/bin/env bash
# `just bench engine`: rise vs Snakemake and DVC on the same generated DAG of N shell stages
# (N = 10, 100, 1000; each stage copies its input and appends a line): first run, no-op re-run,
# re-run after editing one stage in the middle. Appends a table to benches/RESULTS.md ("## Engine").
# Peers are installed from PyPI into benches/.work/venv-peers (git-ignored) on first use.
# Env: ENGINE_BENCH_SIZES (default "10 100 1000"), ENGINE_BENCH_CAP (seconds per peer command,
# default 300), ENGINE_BENCH_PEERS (default "snakemake dvc").
set -euo pipefail
cd "$(dirname "$0")/.."
work=benches/.work
venv=$work/venv-peers
mkdir -p "$work"
if [ ! -x "$venv/bin/snakemake" ] || [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet snakemake dvc
fi
[ -x target/release/rise ] || cargo build --release --bin rise
exec python3 benches/engine_bench.py --rise target/release/rise --venv "$venv" --work "$work/engine" \
  --sizes "${ENGINE_BENCH_SIZES:-10 100 1000}" --cap "${ENGINE_BENCH_CAP:-300}" \
  --peers "${ENGINE_BENCH_PEERS:-snakemake dvc}" --results benches/RESULTS.md
