#!/usr/bin/env python3
"""Summarise a benches/gpu/sweep.sh archive: per variant, the mean over seeds of each
model's m1@t1 / m5@t1 / m1@t5 / p1@t5, the two gaps the paper's claims are about
(m1@t5 - m1@t1, m1@t5 - m5@t1), and how sequential turns behave after a wrong and after a
right answer next to parallel samples (P(right | previous wrong / right)).

    python3 benches/sweep_summary.py DIR   # DIR: where sweep.tar.gz was unpacked
"""
import collections
import json
import os
import statistics
import sys


def headline(metrics):
    return {h["key"]: h["value"]["value"] for h in metrics["headline"]}


def transitions(samples, kind):
    after = {False: [0, 0], True: [0, 0]}
    for row in samples:
        for prev, nxt in zip(row[kind], row[kind][1:]):
            after[prev["correct"]][0] += 1
            after[prev["correct"]][1] += nxt["correct"]
    return {k: (v[1] / v[0] if v[0] else float("nan")) for k, v in after.items()}


def main(root):
    table = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in sorted(os.listdir(root)):
        out = os.path.join(root, run, "out")
        if not os.path.isdir(out):
            continue
        variant = run.rsplit("-s", 1)[0]
        for model in ("eval_base", "iter1", "iter2"):
            d = os.path.join(out, model)
            if not os.path.exists(os.path.join(d, "metrics.json")):
                continue
            h = headline(json.load(open(os.path.join(d, "metrics.json"))))
            samples = [json.loads(line) for line in open(os.path.join(d, "samples.jsonl"))]
            seq, par = transitions(samples, "sequential"), transitions(samples, "parallel")
            table[variant][model].append(
                (h["m1@t1"], h["m5@t1"], h["m1@t5"], h["p1@t5"], seq[False], seq[True], par[False], par[True])
            )
    mean = lambda xs: 100 * statistics.mean(xs)
    print("variant      model      n  m1@t1 m5@t1 m1@t5 p1@t5 | t5-t1 t5-m5 | seq P(r|w) P(r|r) | par P(r|w) P(r|r)")
    for variant, models in table.items():
        for model, rows in models.items():
            cols = list(zip(*rows))
            m = [mean(c) for c in cols]
            print(
                f"{variant:12} {model:9} {len(rows):2}  {m[0]:5.1f} {m[1]:5.1f} {m[2]:5.1f} {m[3]:5.1f} |"
                f" {m[2]-m[0]:+5.1f} {m[2]-m[1]:+5.1f} |     {m[4]:5.1f}  {m[5]:5.1f} |     {m[6]:5.1f}  {m[7]:5.1f}"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
