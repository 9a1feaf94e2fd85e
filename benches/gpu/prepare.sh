#!/usr/bin/env bash
# Builds what benches/gpu/run.sh runs on the lent GPU machine and copies it, stripped, into
# .device/ (git-ignored; the device tool's `carry: [".device"]` takes it there, 64 MiB at most).
# The GPU machine has no Rust toolchain, so everything is built here against the same
# torch 2.11 wheel (see ../shared/docs/GPU.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup >/dev/null
cargo build --release --workspace --bins
cargo build --release -p rise-model --example model_bench
# The parity and sampler test binaries, which read RISE_TEST_DEVICE.
tests=$(cargo test --release -p rise-model --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("parity", "sampler"):
        print(m["target"]["name"], m["executable"])')
rm -rf .device && mkdir -p .device
for bin in target/release/rise target/release/rise-worker target/release/examples/model_bench; do
  strip -o ".device/$(basename "$bin")" "$bin"
done
while read -r name exe; do strip -o ".device/$name" "$exe"; done <<<"$tests"
[ -x .device/parity ] && [ -x .device/sampler ] || { echo "gpu-prepare: test binaries not found" >&2; exit 1; }
ldd .device/rise-worker | grep -q torch_cuda || { echo "gpu-prepare: rise-worker does not link torch_cuda" >&2; exit 1; }
du -sh .device
