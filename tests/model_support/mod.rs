//! Helpers for the model CLI tests: the tiny HF fixtures and the two binaries.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/bin/python` with transformers, or a failure that says how to get it.
pub fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import transformers, safetensors, tokenizers"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(
        ok,
        "{} lacks transformers: run `just setup-test` (scripts/setup --test)",
        py.display()
    );
    py
}

/// `tests/fixtures/models/<arch>`, built on demand (idempotent, concurrency-safe script).
pub fn fixture(arch: &str) -> PathBuf {
    let models = repo_root().join("tests/fixtures/models");
    let status = Command::new(python())
        .arg(repo_root().join("tests/fixtures/make_tiny_models.py"))
        .arg(&models)
        .status()
        .expect("run make_tiny_models.py");
    assert!(
        status.success(),
        "tests/fixtures/make_tiny_models.py failed"
    );
    models.join(arch)
}

pub fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// `rise ARGS` with the worker found next to it. `cargo test -p rise` does not build the
/// worker binary, so a missing one is a clear failure rather than a skipped test.
pub fn rise(args: &[&str]) -> Output {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rise"));
    let worker = exe.with_file_name("rise-worker");
    assert!(
        worker.exists(),
        "{} is missing: build it with `cargo build -p rise-worker` (`just test` does)",
        worker.display()
    );
    Command::new(exe)
        .args(args)
        .env("RISE_WORKER", &worker)
        .output()
        .expect("run rise")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub const ARCHS: [&str; 3] = ["llama", "mistral", "qwen2"];
