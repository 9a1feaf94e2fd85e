//! Helpers for the model CLI tests: the tiny HF fixtures and the two binaries.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

#[path = "../../crates/rise-model/tests/common/fixtures.rs"]
mod fixtures;
pub use fixtures::*;

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
