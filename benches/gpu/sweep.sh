#!/usr/bin/env bash
# A hyper-parameter sweep of pipelines/rise.toml on the lent GPU machine: each variant at each
# seed is its own `rise run --device cuda` in its own store, several at once (the tiny model
# leaves the card and the 16 cores mostly idle). Used to choose settings worth the 3-seed CPU
# bench (`just bench rise`), which is the result; GPU runs train in bf16, so their figures
# are a guide, not the CPU numbers.
#
#   benches/gpu/sweep.sh VARIANTS [SEEDS] [PARALLEL]
#
# VARIANTS: one variant per line, `name|sed expression` applied to pipelines/rise.toml (an
# empty expression is the default pipeline); benches/gpu/variants.txt is the sweep reported in
# benches/RESULTS.md. Each run's evaluation metrics and samples go to $OUT/sweep.tar.gz
# (summarised at home with benches/sweep_summary.py), and one line per finished run to
# $OUT/sweep.txt as the runs end, so a timeout still returns what finished.
set -uo pipefail
cd "$(dirname "$0")/../.."
VARIANTS=$1
SEEDS=${2:-"1 2"}
PARALLEL=${3:-8}
OUT=${OUT:-/tmp/rise-sweep}
PY=${PY:-python3}
LIB=$("$PY" -c "import torch,os;print(os.path.dirname(torch.__file__)+'/lib')")
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
RISE=$PWD/.device/rise
export RISE_WORKER=$PWD/.device/rise-worker
work=/tmp/rise-sweep-work
mkdir -p "$OUT" "$work"
threads=$(( $(nproc) / PARALLEL )); (( threads < 1 )) && threads=1

names=() exprs=()
while IFS='|' read -r name expr; do
  [[ -z $name || $name == \#* ]] && continue
  names+=("$name") exprs+=("$expr")
done <"$VARIANTS"
# Seeds outermost: the first wave has every variant once, so a timeout still compares them all.
jobs=()
for seed in $SEEDS; do
  for i in "${!names[@]}"; do
    dir="$work/${names[$i]}-s$seed" expr=${exprs[$i]}
    mkdir -p "$dir"
    sed -e "s/^seed = .*/seed = $seed/" -e "s#\"../configs/#\"$PWD/configs/#" \
      ${expr:+-e "$expr"} pipelines/rise.toml >"$dir/pipeline.toml"
    jobs+=("$dir")
  done
done

run_one() {
  local dir=$1 t0=$(date +%s)
  "$RISE" --store "$dir/store" run "$dir/pipeline.toml" --device cuda --threads "$threads" --plain \
    >"$dir/log" 2>&1
  local rc=$?
  for st in eval_base iter1/evaluate iter2/evaluate; do
    local p
    p=$("$RISE" --store "$dir/store" show "$st" --json 2>/dev/null |
      "$PY" -c 'import json,sys;print(json.load(sys.stdin)["output_path"])' 2>/dev/null) || continue
    mkdir -p "$dir/out/${st%%/*}"
    cp "$p/metrics.json" "$p/samples.jsonl" "$dir/out/${st%%/*}/" 2>/dev/null
  done
  echo "$(basename "$dir") rc=$rc secs=$(( $(date +%s) - t0 ))" >>"$OUT/sweep.txt"
  # Several runs end at about the same time: one archive writer at a time.
  (cd "$work" && flock "$work/.tar.lock" tar czf "$OUT/sweep.tar.gz" */out */pipeline.toml */log 2>/dev/null)
}
export -f run_one
export RISE PY OUT work threads
printf '%s\n' "${jobs[@]}" | xargs -P "$PARALLEL" -I{} bash -c 'run_one {}'
cat "$OUT/sweep.txt"
