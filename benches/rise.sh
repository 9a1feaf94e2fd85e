#!/usr/bin/env bash
# `just bench rise`: the default RISE pipeline (pipelines/rise.toml) at 3 seeds; mean ± sd of
# every metric of every model goes into the "## RISE" section of benches/RESULTS.md.
# Runs after `cargo build --release --bins` (the dispatcher's contract); builds rise-worker too.
# Each seed takes about as long as one `rise run pipelines/rise.toml` (~15 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${RISE_BENCH_SEEDS:-"1 2 3"}
cargo build --release -p rise-worker --quiet
RISE=target/release/rise
work=$(mktemp -d "${TMPDIR:-/tmp}/rise-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
reports=()
for seed in $SEEDS; do
  pipe="$work/rise-seed$seed.toml"
  # The pipeline seed drives everything: the synthetic data, the initial weights, sampling.
  sed -e "s/^seed = .*/seed = $seed/" -e "s#\"../configs/#\"$PWD/configs/#" pipelines/rise.toml > "$pipe"
  store="$work/store-$seed"
  start=$(date +%s)
  "$RISE" --store "$store" run "$pipe" --quiet
  end=$(date +%s)
  out=$("$RISE" --store "$store" show report --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_path"])')
  cp "$out/report.json" "$work/report-$seed.json"
  echo "$((end - start))" > "$work/seconds-$seed"
  reports+=("$work/report-$seed.json")
  echo "seed $seed: $((end - start)) s"
done
python3 - "$work" "$SEEDS" <<'PY'
import json, os, re, statistics, subprocess, sys, datetime, platform
work, seeds = sys.argv[1], sys.argv[2].split()
runs = [json.load(open(os.path.join(work, f"report-{s}.json"))) for s in seeds]
secs = [int(open(os.path.join(work, f"seconds-{s}")).read()) for s in seeds]

def ms(xs):
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100*m:.1f} ± {100*sd:.1f}"

models = [m["name"] for m in runs[0]["models"]]
first = runs[0]["models"][0]["metrics"]
keys = [h["key"] for h in first["headline"]]
turns = len(first["per_turn"])
lines = ["## RISE", ""]
cpu = subprocess.run(["bash", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
lines.append(f"`just bench rise` on {datetime.date.today()}, {cpu or platform.processor()} ({os.cpu_count()} cores): "
             f"pipelines/rise.toml at seeds {', '.join(seeds)} (the seed changes the synthetic data, the initial "
             f"weights and every sample). Accuracy in %, mean ± sd over seeds; "
             f"{first['problems']} held-out problems per seed. Wall time per run: "
             f"{statistics.mean(secs):.0f} ± {statistics.stdev(secs) if len(secs) > 1 else 0:.0f} s.")
lines += ["", "| model | " + " | ".join(keys) + " | " + " | ".join(f"t{t+1}" for t in range(turns)) + " |",
          "|---|" + "---|" * (len(keys) + turns)]
for i, name in enumerate(models):
    ms_head = [ms([r["models"][i]["metrics"]["headline"][k]["value"]["value"] for r in runs]) for k in range(len(keys))]
    ms_turn = [ms([r["models"][i]["metrics"]["per_turn"][t]["value"] for r in runs]) for t in range(turns)]
    lines.append(f"| {name} | " + " | ".join(ms_head) + " | " + " | ".join(ms_turn) + " |")
lines += ["", "Flip rates (% of problems, mean over seeds and turn pairs): correct→wrong / wrong→correct.", ""]
for i, name in enumerate(models):
    cw = [statistics.mean(f["correct_to_wrong"]["value"] for f in r["models"][i]["metrics"]["flips"]) for r in runs]
    wc = [statistics.mean(f["wrong_to_correct"]["value"] for f in r["models"][i]["metrics"]["flips"]) for r in runs]
    lines.append(f"- {name}: {ms(cw)} / {ms(wc)}")
lines += ["", "After the feedback (% right next, mean ± sd over seeds): after a right answer, "
          "sequential / parallel; after a wrong answer, sequential / parallel.", ""]
for i, name in enumerate(models):
    t = lambda k: ms([r["models"][i]["metrics"]["transitions"][k]["value"] for r in runs])
    lines.append(f"- {name}: {t('sequential_after_right')} / {t('parallel_after_right')}; "
                 f"{t('sequential_after_wrong')} / {t('parallel_after_wrong')}")
lines += ["", "Per seed (" + " / ".join(keys) + "):", ""]
for s, r in zip(seeds, runs):
    cells = "; ".join(f"{m['name']} " + " / ".join(f"{100*h['value']['value']:.1f}" for h in m["metrics"]["headline"]) for m in r["models"])
    lines.append(f"- seed {s} ({secs[seeds.index(s)]} s): {cells}")
lines += ["", "The paper's effects, per seed (holds / checked):", ""]
for s, r in zip(seeds, runs):
    held = [e for e in r["effects"] if e["holds"]]
    missing = [e["claim"] for e in r["effects"] if not e["holds"]]
    lines.append(f"- seed {s}: {len(held)}/{len(r['effects'])}" + (f"; not seen: {'; '.join(missing)}" if missing else ""))
section = "\n".join(lines) + "\n"

path = "benches/RESULTS.md"
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
# Replace our section (up to the next "## " heading) or append it.
pattern = re.compile(r"^## RISE\n.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(section)
PY
