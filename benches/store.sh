#!/usr/bin/env bash
# `just bench store`: store throughput on one large file, side by side with b3sum and sha256sum
# on the same file in the same run. Writes the "## Store" section of benches/RESULTS.md.
#
#   put        Store::put_file: in-kernel copy into staging, blake3 (mmap + rayon) of the copy,
#              fsync, rename into objects/. b3sum only hashes, so put also pays a 1 GiB write.
#   verify     Store::check_blob: full re-hash of the stored blob (what `rise store verify` does
#              per blob). Directly comparable with b3sum: same bytes, same hash, page cache warm.
#   stream     Store::open_blob read to the end: single-threaded verify-on-read (what consumers use).
#
# STORE_BENCH_MIB=N changes the file size (default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."

mib=${STORE_BENCH_MIB:-1024}
work=benches/.work/store
mkdir -p "$work"
cargo build --release -q -p rise-store --bins
probe=target/release/rise-store-bench

b3sum=$(command -v b3sum || true)
if [ -z "$b3sum" ]; then
  b3sum=benches/.work/cargo/bin/b3sum
  if [ ! -x "$b3sum" ]; then
    echo "installing b3sum into benches/.work/cargo (one time)" >&2
    cargo install b3sum --locked --quiet --root benches/.work/cargo
  fi
fi

input=$work/input.bin
want=$((mib * 1024 * 1024))
if [ ! -f "$input" ] || [ "$(stat -c %s "$input")" -ne "$want" ]; then
  echo "writing a ${mib} MiB random file to $input" >&2
  head -c "$want" /dev/urandom >"$input"
fi
cat "$input" >/dev/null # everyone reads from the page cache

now() { date +%s.%N; }
t0=$(now); b3=$("$b3sum" --no-names "$input"); t1=$(now)
t2=$(now); sha256sum "$input" >/dev/null; t3=$(now)
rm -rf "$work/store"
probe_json=$("$probe" "$work/store" "$input")
rm -rf "$work/store"

python3 - "$b3" "$t0" "$t1" "$t2" "$t3" "$probe_json" "$mib" "$("$b3sum" --version)" <<'PY'
import json, os, platform, re, subprocess, sys, datetime
b3, t0, t1, t2, t3, probe, mib, b3ver = sys.argv[1:]
p = json.loads(probe)
if p["blob"] != b3:
    sys.exit(f"blob id {p['blob']} differs from b3sum {b3}: the store hashes wrongly")
b3s = float(t1) - float(t0)
sha = float(t3) - float(t2)
gib = p["bytes"] / 2**30

def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

def mem_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return 0
fs = subprocess.run(["df", "-T", "benches/.work"], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
machine = f"{cpu()}, {os.cpu_count()} cores, {mem_gib():.0f} GiB RAM, {fs} file system, Linux {platform.release()}"
# Other work on a shared machine skews every row alike; say how busy it was.
load = os.getloadavg()[0]
rows = [
    ("b3sum (peer)", "hash", b3s),
    ("sha256sum (peer)", "hash", sha),
    ("rise-store put_file", "copy + blake3 + fsync + rename", p["put_file"]),
    ("rise-store check_blob (verify)", "blake3 re-hash", p["check_blob"]),
    ("rise-store open_blob read", "streaming verify-on-read, 1 thread", p["open_blob_read"]),
]
date = datetime.date.today().isoformat()
out = [
    "## Store",
    "",
    f"`just bench store` on {date}: one {mib} MiB random file, page cache warm, one run each.",
    f"Machine: {machine}; 1-minute load average {load:.2f} when the figures were written.",
    f"Peers: {b3ver.strip()}, `sha256sum` (coreutils).",
    "",
    "| what | does | seconds | GiB/s | time vs b3sum |",
    "|---|---|---:|---:|---:|",
]
for name, does, s in rows:
    out.append(f"| {name} | {does} | {s:.3f} | {gib / s:.2f} | {s / b3s:.2f}x |")
out += [
    "",
    f"Goal: verify within 1.5x of b3sum: {p['check_blob'] / b3s:.2f}x. "
    f"The blob id equals b3sum's hash. put also writes and fsyncs {mib} MiB, which b3sum does not.",
    "",
]
path = "benches/RESULTS.md"
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
# Replace our own section only; other families own theirs.
text = re.sub(r"(?ms)^## Store\n.*?(?=^## |\Z)", "", text).rstrip("\n") + "\n\n"
open(path, "w").write(text + "\n".join(out))
print("\n".join(out))
PY
