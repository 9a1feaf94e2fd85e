#!/usr/bin/env bash
# `just bench rise`: the default RISE pipeline (pipelines/rise.toml: base, teacher, the
# self-distillation and distillation arms, two iterations each) at 3 seeds. Mean ± sd of every
# figure of every model, the pooled paired tests and the paper's claims per seed go into the
# "## RISE" section of benches/RESULTS.md.
# Runs after `cargo build --release --bins` (the dispatcher's contract); builds rise-worker too.
# Each seed takes about as long as one `rise run pipelines/rise.toml` (~30 min on 2 cores).
#   RISE_BENCH_SEEDS="1 2 3"   the seeds
#   RISE_BENCH_STORE=DIR       a store to keep (default: a temporary one). The pipeline seed is in
#                              every cache key, so one store holds every seed, and a seed already
#                              run there (e.g. by `just run pipelines/rise.toml`) is reused: its
#                              wall time is then the re-run's, and the table says so.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${RISE_BENCH_SEEDS:-"1 2 3"}
cargo build --release -p rise-worker --quiet
RISE=target/release/rise
work=$(mktemp -d "${TMPDIR:-/tmp}/rise-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
store=${RISE_BENCH_STORE:-$work/store}
for seed in $SEEDS; do
  pipe="$work/rise-seed$seed.toml"
  # The pipeline seed drives everything: the synthetic data, the initial weights, sampling.
  sed -e "s/^seed = .*/seed = $seed/" -e "s#\"../configs/#\"$PWD/configs/#" pipelines/rise.toml > "$pipe"
  start=$(date +%s)
  "$RISE" --store "$store" run "$pipe" --json > "$work/run-$seed.json"
  end=$(date +%s)
  # The report this run committed or found (not "the latest report": the store holds every seed).
  result=$(python3 benches/rise_summary.py --result-of report "$work/run-$seed.json")
  out=$("$RISE" --store "$store" show "$result" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_path"])')
  cp "$out/report.json" "$work/report-$seed.json"
  echo "$((end - start))" > "$work/seconds-$seed"
  echo "seed $seed: $((end - start)) s"
done
python3 benches/rise_summary.py "$work" "$SEEDS"
