#!/usr/bin/env bash
# Grading benchmarks: worst-case latency on 1 MB adversarial responses, throughput on the
# GSM8K and MATH500 test sets (in process), and `rise grade` end to end (process start-up
# included). Replaces the "## Grading" section of benches/RESULTS.md.
# Called as `benches/grade.sh` from the repo root after `cargo build --release --bins`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=benches/.work/grade
mkdir -p "$work"
rise=./target/release/rise
[ -x "$rise" ] || cargo build --release --bin rise

lib_table=$(cargo run --release -q -p rise-data --example grade_bench -- --jsonl-out "$work/gsm8k_pairs.jsonl")

# Median wall time in milliseconds of RUNS runs of a command (stdout/stderr discarded).
median_ms() {
  local runs=$1; shift
  local times=()
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

cli_rows=""
single=$(median_ms 11 "$rise" grade --task gsm8k --gold '#### 2,125' --pred '\boxed{2125}')
cli_rows+="| \`rise grade\` one pair (process start-up included) | 1 pair | ${single} ms |"$'\n'
head -c $((1 << 20)) /dev/zero | tr '\0' '{' > "$work/braces_1mb.txt"
printf '\\boxed{7}' >> "$work/braces_1mb.txt"
big=$(median_ms 5 "$rise" grade --task math --gold 7 --pred-file "$work/braces_1mb.txt")
cli_rows+="| \`rise grade --pred-file\`: 1 MB of \`{\` then \`\\boxed{7}\` | 1 MB | ${big} ms |"$'\n'
if [ -s "$work/gsm8k_pairs.jsonl" ]; then
  n=$(wc -l < "$work/gsm8k_pairs.jsonl")
  jl=$(median_ms 5 "$rise" grade --task gsm8k --jsonl "$work/gsm8k_pairs.jsonl")
  cli_rows+="| \`rise grade --jsonl\`: GSM8K test golds (full solutions) vs right and off-by-one boxes | $n pairs | ${jl} ms |"$'\n'
fi

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)
section=$(cat <<MD
## Grading

Measured $(date -u +%Y-%m-%d) on $(uname -m), ${cpu}, $(nproc) cores, by \`benches/grade.sh\`
(in-process figures: \`cargo run --release -p rise-data --example grade_bench\`; median of 5).
Every adversarial 1 MB response grades in milliseconds: extraction is one pass, normalization a
few linear passes, structural comparison depth-capped. No peer: the reference graders are Python
scripts inside other projects, not a tool to run side by side.

${lib_table}

| end to end | input | median wall time |
|---|---|---|
${cli_rows}
MD
)

results=benches/RESULTS.md
[ -f "$results" ] || printf '# Benchmark results\n' > "$results"
printf '%s\n' "$section" > "$work/section.md"
# Replace our section in place (up to the next "## " heading), or append it.
awk -v sec="$work/section.md" '
  /^## Grading[[:space:]]*$/ { while ((getline line < sec) > 0) print line; skip = 1; done = 1; next }
  skip && /^## / { skip = 0; print ""; }
  !skip { print }
  END { if (!done) { print ""; while ((getline line < sec) > 0) print line } }
' "$results" > "$work/RESULTS.md.new"
mv "$work/RESULTS.md.new" "$results"
echo "grade: wrote the Grading section of $results"
