#!/usr/bin/env python3
"""The "## RISE" section of benches/RESULTS.md from `just bench rise`'s per-seed reports.

    rise_summary.py WORK "1 2 3"           WORK holds report-S.json, seconds-S and run-S.json
    rise_summary.py --result-of STAGE RUN  the result id of STAGE in a `rise run --json` summary

Every figure of every model as mean ± sd over the seeds; the paired tests pooled over the seeds
(each seed's problems are its own pairs: the outcome lists are concatenated, then one McNemar
test, with the same rule as the report's: exact binomial below 25 discordant pairs, else
chi-square with continuity correction); and the paper's claims, seed by seed.
"""
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys

EXACT_BELOW = 25  # rise-stages' MCNEMAR_EXACT_BELOW


def result_of(stage, run_json):
    summary = json.load(open(run_json))
    for s in summary["stages"]:
        if s["stage"] == stage and s.get("result"):
            return s["result"]
    sys.exit(f"{run_json}: no result for stage {stage!r}")


def mcnemar(first, second):
    """(first_only, second_only, p): two-sided, as rise-stages' `mcnemar`."""
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    n = b + c
    if n == 0:
        return b, c, 1.0
    if n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1))
        return b, c, min(1.0, 2 * tail / 2**n)
    chi2 = (abs(b - c) - 1) ** 2 / n
    return b, c, math.erfc(math.sqrt(chi2 / 2))


def ms(xs):
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def main(work, seeds):
    runs = [json.load(open(os.path.join(work, f"report-{s}.json"))) for s in seeds]
    secs = [int(open(os.path.join(work, f"seconds-{s}")).read()) for s in seeds]
    executed = []
    for s in seeds:
        summary = json.load(open(os.path.join(work, f"run-{s}.json")))
        executed.append(sum(1 for st in summary["stages"] if st.get("state") == "executed"))

    first = runs[0]["models"][0]["metrics"]
    heads = [h["key"] for h in first["headline"]]
    supp = [h["key"] for h in first.get("supplementary", [])]
    turns = len(first["per_turn"])
    names = [m["name"] for m in runs[0]["models"]]

    def model(r, name):
        return next(m for m in r["models"] if m["name"] == name)["metrics"]

    def figure(metrics, key):
        for h in metrics["headline"] + metrics.get("supplementary", []):
            if h["key"] == key:
                return h["value"]["value"]
        raise KeyError(key)

    def bits(metrics, key):
        """The per-problem outcomes behind a headline key (the report's `by_key` mapping)."""
        o = metrics["outcomes"]
        k, n = metrics["parallel"], metrics["turns"]
        table = {f"m1@t1": o["m1_t1"], f"m{k}@t1": o["mk_t1"], f"m1@t{n}": o["m1_tn"],
                 f"p1@t{n}": o["p1_tn"], f"pass@{k}": o["pass_k"]}
        return [c == "1" for c in table[key]]

    cpu = subprocess.run(["bash", "-c", "lscpu | sed -n 's/^Model name: *//p'"],
                         capture_output=True, text=True).stdout.strip()
    timing = ", ".join(f"seed {s} {t} s" + (" (re-run of a stored result)" if e == 0 else "")
                       for s, t, e in zip(seeds, secs, executed))
    lines = ["## RISE", ""]
    lines.append(
        f"`just bench rise` on {datetime.date.today()}, {cpu or platform.processor()} "
        f"({os.cpu_count()} cores): pipelines/rise.toml at seeds {', '.join(seeds)} (the seed "
        f"changes the synthetic data, the initial weights and every sample). Accuracy in %, "
        f"mean ± sd over seeds; {first['problems']} held-out problems per seed, temperature 0.7, "
        f"window 2. Wall time: {timing}.")
    lines += ["", "| model | " + " | ".join(heads) + " | " + " | ".join(f"t{t + 1}" for t in range(turns)) + " |",
              "|---|" + "---|" * (len(heads) + turns)]
    for name in names:
        cells = [ms([figure(model(r, name), k) for r in runs]) for k in heads]
        cells += [ms([model(r, name)["per_turn"][t]["value"] for r in runs]) for t in range(turns)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if supp:
        lines += ["", "| model | " + " | ".join(supp) + " |", "|---|" + "---|" * len(supp)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(ms([figure(model(r, name), k) for r in runs]) for k in supp) + " |")

    lines += ["", "The answer changes after the feedback (% of turns, mean ± sd over seeds): after a right "
              "answer, sequential / parallel; after a wrong answer, sequential / parallel.", ""]
    for name in names:
        c = lambda k: ms([model(r, name)["changes"][k]["value"] for r in runs])
        lines.append(f"- {name}: {c('sequential_after_right')} / {c('parallel_after_right')}; "
                     f"{c('sequential_after_wrong')} / {c('parallel_after_wrong')}")

    k, n = first["parallel"], first["turns"]
    t1, tn, par = "m1@t1", f"m1@t{n}", f"m{k}@t1"
    base = runs[0].get("baseline")
    pairs = []
    for name in names:
        pairs.append((name, tn, name, t1))
        pairs.append((name, tn, name, par))
    for name in names:
        if base and name != base:
            pairs.append((name, t1, base, t1))
    lines += ["", f"Paired tests pooled over the seeds ({len(seeds)} × {first['problems']} problems; "
              "McNemar, two-sided; \"a only\" / \"b only\": problems right under one and not the other):", "",
              "| a | b | a | b | a only | b only | p |", "|---|---|---|---|---|---|---|"]
    for (ma, ka, mb, kb) in pairs:
        xa = sum((bits(model(r, ma), ka) for r in runs), [])
        xb = sum((bits(model(r, mb), kb) for r in runs), [])
        b, c, p = mcnemar(xa, xb)
        lines.append(f"| {ma} {ka} | {mb} {kb} | {100 * sum(xa) / len(xa):.1f} | {100 * sum(xb) / len(xb):.1f} "
                     f"| {b} | {c} | {p:.2g} |")

    lines += ["", "Per seed (" + " / ".join(heads) + "):", ""]
    for s, r, t in zip(seeds, runs, secs):
        cells = "; ".join(f"{m['name']} " + " / ".join(f"{100 * h['value']['value']:.1f}" for h in m["metrics"]["headline"])
                          for m in r["models"])
        lines.append(f"- seed {s} ({t} s): {cells}")
    lines += ["", "The paper's claims, per seed and arm (holds / checked; a claim holds when its paired test "
              "supports it at 5%):", ""]
    for s, r in zip(seeds, runs):
        by_arm = {}
        for e in r["effects"]:
            by_arm.setdefault(e.get("arm") or "base/teacher", []).append(e)
        parts = []
        for arm, es in by_arm.items():
            held = sum(1 for e in es if e["holds"])
            missing = [e["claim"] for e in es if not e["holds"]]
            parts.append(f"{arm} {held}/{len(es)}" + (f" (not: {'; '.join(missing)})" if missing else ""))
        rule = r.get("teacher_rule")
        if rule:
            parts.append(f"teacher rule {'met' if rule['met'] else 'NOT met'} "
                         f"({100 * rule['teacher_m1_t1']:.1f} vs base {100 * rule['base_m1_t1']:.1f})")
        lines.append(f"- seed {s}: " + "; ".join(parts))
    section = "\n".join(lines) + "\n"

    path = "benches/RESULTS.md"
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    # Replace our section (up to the next "## " heading) or append it.
    pattern = re.compile(r"^## RISE\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    open(path, "w").write(text)
    print(section)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--result-of":
        print(result_of(sys.argv[2], sys.argv[3]))
    elif len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2].split())
    else:
        sys.exit(__doc__)
