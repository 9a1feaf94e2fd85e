#!/usr/bin/env bash
# `just bench engine`: rise vs Snakemake and DVC on the same generated DAG of N shell stages
# (N = 10, 100, 1000; each stage copies its input and appends a line): first run, no-op re-run,
# re-run after editing one stage in the middle. Appends a table to benches/RESULTS.md ("## Engine").
# Where a Slurm controller answers (`scontrol ping`), adds the executor row: the 10-stage DAG as
# Slurm jobs under `rise run --executor slurm`, under Snakemake's Slurm executor plugin, and as
# bare sbatch jobs (Slurm's own latency); scripts/slurm/start-slurm.sh starts a test cluster.
# Peers are installed from PyPI into benches/.work/venv-peers (git-ignored) on first use.
# Env: ENGINE_BENCH_SIZES (default "10 100 1000"), ENGINE_BENCH_CAP (seconds per peer command,
# default 300), ENGINE_BENCH_PEERS (default "snakemake dvc"), ENGINE_BENCH_SLURM (auto|on|off,
# default auto), ENGINE_BENCH_ONLY=slurm (only the executor row, written into the existing
# "## Engine" section), ENGINE_BENCH_REPEAT (rounds of the executor row, default 5), RISE_BIN
# (default target/release/rise, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
work=benches/.work
venv=$work/venv-peers
mkdir -p "$work"
only=${ENGINE_BENCH_ONLY:-}
slurm=${ENGINE_BENCH_SLURM:-auto}
[ "$only" = "" ] || [ "$only" = slurm ] || { echo "ENGINE_BENCH_ONLY: only 'slurm' is known, got '$only'" >&2; exit 2; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ "$only" = "" ] && { [ ! -x "$venv/bin/snakemake" ] || [ ! -x "$venv/bin/dvc" ]; }; then
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet snakemake dvc
fi
if [ "$slurm" != off ] && command -v sbatch >/dev/null \
   && ! "$venv/bin/python" -c 'import snakemake_executor_plugin_slurm' 2>/dev/null; then
  # The peer of the executor row; without it the row has rise and the sbatch floor only.
  "$venv/bin/pip" install --quiet snakemake snakemake-executor-plugin-slurm \
    || echo "engine.sh: snakemake-executor-plugin-slurm did not install: no Snakemake in the executor row" >&2
fi
rise=${RISE_BIN:-target/release/rise}
[ -x "$rise" ] || cargo build --release --bin rise
args=(--rise "$rise" --venv "$venv" --work "$work/engine" --sizes "${ENGINE_BENCH_SIZES:-10 100 1000}"
      --cap "${ENGINE_BENCH_CAP:-300}" --peers "${ENGINE_BENCH_PEERS:-snakemake dvc}"
      --slurm "$slurm" --repeat "${ENGINE_BENCH_REPEAT:-5}" --results benches/RESULTS.md)
[ "$only" = slurm ] && args+=(--slurm-only)
exec python3 benches/engine_bench.py "${args[@]}"
