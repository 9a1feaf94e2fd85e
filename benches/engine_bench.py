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


# ---- The executor row: the same DAG as Slurm jobs (`--executor slurm`). ----

SLURM_TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                  "CANCELLED", "BOOT_FAIL", "DEADLINE"}


def slurm_up():
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in r.stdout


def slurm_floor(d, n, jobs, poll):
    """Slurm's own latency for the DAG: each stage one `sbatch` job running only its command,
    submitted as soon as its input exists, up to `jobs` at once, found finished by one `squeue`
    call per round and a `poll` s sleep when none finished (rise's executor polls the same
    way), by this process (no engine)."""
    data = d / "data"
    data.mkdir(parents=True)
    t = time.perf_counter()
    pending, running, done = list(range(n)), {}, set()
    while pending or running:
        for i in list(pending):
            if len(running) >= jobs:
                break
            p = parent(i)
            if p is not None and p not in done:
                continue
            src = str(data / f"s{p}.txt") if p is not None else None
            script = d / f"s{i}.sh"
            script.write_text("#!/bin/bash\n" + cmd_text(i, 1, src, str(data / f"s{i}.txt")) + "\n")
            r = subprocess.run(["sbatch", "--parsable", f"--job-name=floor:s{i}", f"--output={d}/s{i}.log",
                                f"--chdir={d}", str(script)], capture_output=True, text=True, check=True)
            running[r.stdout.strip().split(";")[0]] = i
            pending.remove(i)
        r = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T", "--jobs", ",".join(running)],
                           capture_output=True, text=True, check=True)
        finished = 0
        for l in r.stdout.splitlines():
            jid, state = l.split()
            if state in SLURM_TERMINAL:
                if state != "COMPLETED":
                    raise SystemExit(f"floor job {jid} (s{running[jid]}) ended {state}")
                done.add(running.pop(jid))
                finished += 1
        if not finished:
            time.sleep(poll)
    return time.perf_counter() - t


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench_executor(args, work):
    """rise --executor slurm, Snakemake's Slurm executor and the floor, each `--repeat` times
    on a fresh directory; returns the markdown subsection."""
    n, jobs, reps = args.slurm_stages, args.slurm_jobs, args.repeat
    smk = Path(args.venv) / "bin" / "snakemake"
    plugin = subprocess.run([str(Path(args.venv) / "bin" / "python"), "-c",
                             "import importlib.metadata as m; print(m.version('snakemake-executor-plugin-slurm'))"],
                            capture_output=True, text=True)
    have_smk = smk.exists() and plugin.returncode == 0
    times = {"floor": [], "rise": [], "snakemake": []}
    for r in range(reps):
        times["floor"].append(slurm_floor(work / f"floor-{r}", n, jobs, 0.5))
        d = work / f"rise-slurm-{r}"
        d.mkdir(parents=True)
        gen_rise(d, n, False)
        dt, _ = timed([args.rise, "--store", str(d / "store"), "run", str(d / "pipeline.toml"), "--quiet",
                       "--executor", "slurm", "--jobs", str(jobs)], d, None)
        times["rise"].append(dt)
        if have_smk and r < args.peer_repeat:
            d = work / f"snakemake-slurm-{r}"
            d.mkdir(parents=True)
            gen_snakemake(d, n, False)
            # squeue for job states (the cluster may have no accounting for sacct), first
            # check after 1 s (the plugin's default waits 40 s), `all` as a local rule.
            dt, note = timed([str(smk), "--executor", "slurm", "--jobs", str(jobs), "--quiet",
                              "--slurm-status-command", "squeue",
                              "--slurm-init-seconds-before-status-checks", "1", "all"], d, args.cap)
            times["snakemake"].append(dt if dt is not None else float("inf"))
        print(f"executor round {r + 1}/{reps}: " + ", ".join(f"{k} {v[r]:.2f} s" for k, v in times.items() if len(v) > r),
              flush=True)
    rows = []
    for tool in ["floor", "rise", "snakemake"]:
        if not times[tool]:
            continue
        m = median(times[tool])
        each = ", ".join(f"{t:.2f}" for t in times[tool])
        # Rounds alternate floor and tool, so each tool run is paired with the floor run just
        # before it: the median of the paired differences cancels slow drifts of the machine.
        pairs = [(t - f) / n * 1000 for t, f in zip(times[tool], times["floor"])]
        over = "-" if tool == "floor" else f"{median(pairs):.0f} ms ({min(pairs):.0f} to {max(pairs):.0f})"
        rows.append(f"| {tool} | {m:.2f} s | {each} | {over} |")
    peer = (f"Snakemake {subprocess.run([str(smk), '--version'], capture_output=True, text=True).stdout.strip()} "
            f"with snakemake-executor-plugin-slurm {plugin.stdout.strip()}") if have_smk else \
        "Snakemake's Slurm plugin not installed: no peer row"
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%D nodes, %c CPUs each, %G"], capture_output=True, text=True).stdout.strip()
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return "\n".join([
        "### Executor: Slurm",
        "",
        f"Measured {datetime.date.today()} by `benches/engine.sh` with {version} ({sinfo}). The DAG above "
        f"with N = {n}, as {n} Slurm jobs, at most {jobs} at once, first run, median of the runs "
        f"listed ({reps} rounds of floor then rise, Snakemake in the first {min(reps, args.peer_repeat)}). `floor` is Slurm's own latency: the same commands as bare `sbatch` "
        "jobs submitted as soon as their input exists and found finished by one `squeue` call per "
        "round, 0.5 s apart, as rise polls, from a loop with no engine. `rise`: `rise run --executor "
        f"slurm --jobs {jobs}` (each job runs `rise exec-stage`: the stage, hashing, commit, done "
        f"record). Peer: {peer} (`--executor slurm --jobs {jobs} --slurm-status-command squeue "
        "--slurm-init-seconds-before-status-checks 1`; each of its jobs runs Snakemake again on the "
        "node). Overhead per job: the median over rounds of (run - the round's floor run) / N, with "
        "its range. Goal for rise: under 100 ms.",
        "",
        "| driver | median | runs (s) | overhead per job |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


def put_subsection(results, text):
    """Replace (or append) the executor subsection's generated part (heading, paragraph, table)
    inside "## Engine", leaving the rest, the prose after the table included."""
    res = Path(results)
    old = res.read_text()
    start = old.find("\n## Engine\n")
    if start < 0:
        raise SystemExit(f"{results} has no ## Engine section to add the executor row to")
    end = old.find("\n## ", start + 1)
    end = len(old) if end < 0 else end
    section = old[start:end]
    sub = section.find("\n### Executor: Slurm\n")
    if sub >= 0:
        # Replace what this script wrote (heading, paragraph, table) and keep the prose written
        # by hand after the table: it reads the figures of a dated run and says so.
        nxt = section.find("\n### ", sub + 1)
        sub_end = len(section) if nxt < 0 else nxt
        table = section.find("\n| driver |", sub, sub_end)
        if table >= 0:
            blank = section.find("\n\n", table)
            sub_end = sub_end if blank < 0 else min(blank + 1, sub_end)
        section = section[:sub] + "\n" + text.rstrip("\n") + "\n" + section[sub_end:]
    else:
        section = section.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    res.write_text(old[:start] + section.rstrip("\n") + "\n" + old[end:])


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
    ap.add_argument("--slurm", choices=["auto", "on", "off"], default="auto",
                    help="the executor row: on a reachable Slurm (auto), always, or never")
    ap.add_argument("--slurm-only", action="store_true",
                    help="only the executor row, written into the existing ## Engine section")
    ap.add_argument("--slurm-stages", type=int, default=10)
    ap.add_argument("--slurm-jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the executor row")
    ap.add_argument("--peer-repeat", type=int, default=1,
                    help="rounds of the executor row that also run Snakemake (about a minute each)")
    args = ap.parse_args()
    args.rise = str(Path(args.rise).resolve())
    args.venv = str(Path(args.venv).resolve())
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    slurm = args.slurm == "on" or (args.slurm == "auto" and slurm_up())
    if args.slurm_only:
        if not slurm:
            raise SystemExit("--slurm-only: no Slurm controller answers `scontrol ping`")
        text = bench_executor(args, work)
        print(text)
        put_subsection(args.results, text)
        return
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
    if slurm:
        section += ["", bench_executor(args, work)]
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
