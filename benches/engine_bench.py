#!/usr/bin/env python3
"""Engine benchmark driver (called by benches/engine.sh; not a .sh so `benches/run` does not
treat it as a family). Generates one DAG per size for every tool, times first run, no-op re-run
and re-run after editing one stage, and appends a markdown section to RESULTS.md."""
import argparse
import datetime
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path


def parent(i):
    # A binary tree: deep enough to be sequential in places, wide enough to allow parallelism.
    return (i - 1) // 2 if i > 0 else None


def line(i, version):
    return f"s{i} v{version}"


def edited(n):
    return n // 2  # "a stage in the middle"


def cmd_text(i, version, src, dst):
    copy = f'cat "{src}" > "{dst}"; ' if src else f': > "{dst}"; '
    return copy + f'echo "{line(i, version)}" >> "{dst}"'


def gen_rise(d, n, edit):
    out = ['[pipeline]\nname = "bench"\nseed = 0\n']
    for i in range(n):
        v = 2 if edit and i == edited(n) else 1
        p = parent(i)
        src = '$RISE_IN_X/out.txt' if p is not None else None
        inputs = f'inputs = {{ x = "s{p}" }}\n' if p is not None else ""
        cmd = cmd_text(i, v, src, "$RISE_OUT/out.txt").replace("'", "")
        out.append(f"[stage.s{i}]\nkind = \"shell\"\n{inputs}cmd = '{cmd}'\noutputs = [\"out.txt\"]\n")
    (d / "pipeline.toml").write_text("\n".join(out))


def gen_snakemake(d, n, edit):
    out = ["rule all:\n    input: " + ", ".join(f'"data/s{i}.txt"' for i in range(n)) + "\n"]
    for i in range(n):
        v = 2 if edit and i == edited(n) else 1
        p = parent(i)
        inp = f'    input: "data/s{p}.txt"\n' if p is not None else ""
        cmd = cmd_text(i, v, "{input}" if p is not None else None, "{output}")
        out.append(f"rule s{i}:\n{inp}    output: \"data/s{i}.txt\"\n    shell: '{cmd}'\n")
    (d / "Snakefile").write_text("\n".join(out))


def gen_dvc(d, n, edit):
    out = ["stages:"]
    for i in range(n):
        v = 2 if edit and i == edited(n) else 1
        p = parent(i)
        cmd = cmd_text(i, v, f"data/s{p}.txt" if p is not None else None, f"data/s{i}.txt")
        out.append(f"  s{i}:\n    cmd: mkdir -p data && {cmd!r}".replace("'", "'") )
        out[-1] = f"  s{i}:\n    cmd: >-\n      mkdir -p data; {cmd}"
        if p is not None:
            out.append(f"    deps:\n      - data/s{p}.txt")
        out.append(f"    outs:\n      - data/s{i}.txt")
    (d / "dvc.yaml").write_text("\n".join(out) + "\n")


def timed(args, cwd, cap, env=None):
    t = time.perf_counter()
    try:
        r = subprocess.run(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=cap, env=env)
    except subprocess.TimeoutExpired:
        return None, f"> {cap} s (capped)"
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{args} failed in {cwd}:\n{r.stderr.decode()[-2000:]}")
    return dt, None


def bash_baseline(d, n):
    """The commands' own time: the same commands, each in its own `bash -c`, in order."""
    data = d / "data"
    data.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i in range(n):
        p = parent(i)
        subprocess.run(["bash", "-c", cmd_text(i, 1, str(data / f"s{p}.txt") if p is not None else None, str(data / f"s{i}.txt"))], check=True)
    return time.perf_counter() - t


def bench_tool(tool, d, n, args, cap):
    d.mkdir(parents=True)
    rows = {}
    if tool == "rise":
        gen_rise(d, n, False)
        run = [args.rise, "--store", str(d / "store"), "run", str(d / "pipeline.toml"), "--quiet"]
        steps = [("first", run, None), ("noop", run, None), ("edit", run, lambda: gen_rise(d, n, True))]
    elif tool == "snakemake":
        gen_snakemake(d, n, False)
        run = [str(Path(args.venv) / "bin" / "snakemake"), "-c1", "--quiet", "all"]
        steps = [("first", run, None), ("noop", run, None), ("edit", run, lambda: gen_snakemake(d, n, True))]
    else:
        gen_dvc(d, n, False)
        dvc = str(Path(args.venv) / "bin" / "dvc")
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=d, check=True)
        subprocess.run([dvc, "config", "core.analytics", "false"], cwd=d, check=True)
        run = [dvc, "repro", "-q"]
        steps = [("first", run, None), ("noop", run, None), ("edit", run, lambda: gen_dvc(d, n, True))]
    for name, cmd, before in steps:
        if before:
            before()
        dt, note = timed(cmd, d, cap if tool != "rise" else None)
        rows[name] = (dt, note)
        if dt is None:
            break  # a capped first run leaves nothing to re-run
    return rows


def fmt(cell):
    dt, note = cell if cell else (None, "not run")
    return note if dt is None else f"{dt:.3f} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rise", required=True)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--sizes", default="10 100 1000")
    ap.add_argument("--cap", type=int, default=300)
    ap.add_argument("--peers", default="snakemake dvc")
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    args.rise = str(Path(args.rise).resolve())
    args.venv = str(Path(args.venv).resolve())
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    sizes = [int(s) for s in args.sizes.split()]
    peers = args.peers.split()
    versions = {}
    for tool in peers:
        exe = Path(args.venv) / "bin" / tool
        versions[tool] = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip().splitlines()[0]
    table = []
    overhead = []
    for n in sizes:
        base = bash_baseline(work / f"bash-{n}", n)
        results = {"rise": bench_tool("rise", work / f"rise-{n}", n, args, None)}
        for tool in peers:
            results[tool] = bench_tool(tool, work / f"{tool}-{n}", n, args, args.cap)
        for step in ["first", "noop", "edit"]:
            r = results["rise"][step][0]
            cells = [f"{n}", step, fmt(results["rise"][step])]
            for tool in peers:
                cell = results[tool].get(step)
                cells.append(fmt(cell))
                p = cell[0] if cell else None
                cells.append(f"{p / r:.1f}x" if p and r else "-")
            table.append("| " + " | ".join(cells) + " |")
        first = results["rise"]["first"][0]
        overhead.append(f"| {n} | {base:.3f} s | {first:.3f} s | {(first - base) / n * 1000:.2f} ms |")
        print(f"N={n} done", flush=True)
    cpu = "unknown"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    head = ["| N | run | rise | " + " | ".join(f"{t} | {t}/rise" for t in peers) + " |",
            "|---|---|---|" + "---|---|" * len(peers)]
    section = [
        "## Engine",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, {cpu}, {os.cpu_count()} cores, by "
        f"`benches/engine.sh` (driver `benches/engine_bench.py`). Peers: {', '.join(versions.values())}. "
        "DAG: N shell stages in a binary tree (stage i reads stage (i-1)/2), each copies its input and "
        "appends a line; one job at a time for every tool (`rise --jobs 1`, `snakemake -c1`, `dvc repro`). "
        f"\"edit\" changes the command of stage N/2 and re-runs. Peer commands are capped at {args.cap} s. "
        "Ratios: peer time / rise time (higher = rise faster).",
        "",
        *head,
        *table,
        "",
        "Engine overhead on a first run: rise's wall time minus the same commands run one `bash -c` "
        "each in sequence (their own time), per stage.",
        "",
        "| N | commands alone | rise first run | overhead per stage |",
        "|---|---|---|---|",
        *overhead,
        "",
    ]
    text = "\n".join(section)
    print(text)
    res = Path(args.results)
    old = res.read_text() if res.exists() else "# Benchmark results\n"
    # Replace our section if present, leave the others untouched.
    start = old.find("\n## Engine\n")
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[: start + 1] + (old[end + 1 :] if end >= 0 else "")
    res.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
