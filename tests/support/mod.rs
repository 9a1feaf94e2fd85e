//! The one helper module of the root integration tests (`mod support;` in each test file).
//!
//! Every test starts the real `rise` binary through [`rise`] (or [`rise_under`], for a
//! wrapper such as `setpriv`), so each one gets the same binary and the same cleaned
//! environment: the caller's `RISE_STORE`, `RISE_INDEX_DIR`, `RISE_LOG` and `RISE_WORKER`
//! never reach it, and a test that needs one of them sets it. Beside the launcher:
//! - [`engine`]: shell-stage pipelines in a temp directory (the engine's own tests);
//! - [`pipeline`]: the CI RISE pipeline (`pipelines/rise-ci.toml`) on a temp store;
//! - [`model`]: the tiny Hugging Face fixtures and the torch worker's reference outputs.
//!
//! Each test binary compiles all of it and uses a part, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod engine;
pub mod pipeline;
// rise-model's own tests share this file; it uses neither tch nor rise-model, so the `rise`
// test binaries stay free of libtorch.
#[path = "../../crates/rise-model/tests/common/fixtures.rs"]
pub mod model;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `rise` binary cargo built for these tests.
pub const RISE: &str = env!("CARGO_BIN_EXE_rise");

/// Variables of the caller's shell that would change what `rise` does under test.
const CALLER_VARS: [&str; 4] = ["RISE_STORE", "RISE_INDEX_DIR", "RISE_LOG", "RISE_WORKER"];

/// The base launcher: `rise` with the caller's rise variables removed (see the module doc).
pub fn rise() -> Command {
    rise_under(&[])
}

/// [`rise`] run through `wrapper` (`["setpriv", "--reuid=nobody", ..., "--"]`): the wrapper's
/// words come first, then the binary; the environment is cleaned the same way.
pub fn rise_under(wrapper: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        None => Command::new(RISE),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(RISE);
            cmd
        }
    };
    for var in CALLER_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// `rise --store STORE`.
pub fn rise_at(store: &Path) -> Command {
    let mut cmd = rise();
    cmd.arg("--store").arg(store);
    cmd
}

/// [`rise`] with `RISE_WORKER` naming the `rise-worker` built beside it (the torch stages).
pub fn rise_with_worker() -> Command {
    let mut cmd = rise();
    cmd.env("RISE_WORKER", worker());
    cmd
}

/// The `rise-worker` next to `rise`. `cargo test -p rise` does not build it (it is another
/// package), so a missing one fails with how to build it rather than obscurely.
pub fn worker() -> PathBuf {
    let worker = Path::new(RISE).with_file_name("rise-worker");
    assert!(
        worker.exists(),
        "{} is missing: build it first (`cargo build -p rise-worker`, or `just test`)",
        worker.display()
    );
    worker
}

/// Runs `cmd` to completion (a failure to start it fails the test).
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run rise")
}

/// `rise ARGS`.
pub fn run(args: &[&str]) -> Output {
    output(rise().args(args))
}

/// `rise --store STORE ARGS`.
pub fn run_at(store: &Path, args: &[&str]) -> Output {
    output(rise_at(store).args(args))
}

/// `rise ARGS` with the built worker ([`rise_with_worker`]).
pub fn run_with_worker(args: &[&str]) -> Output {
    output(rise_with_worker().args(args))
}

/// The repository root (the `rise` package).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Status, stdout and stderr, for an assertion's message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
