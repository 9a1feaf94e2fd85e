//! Finding and running the `rise-worker` binary, the only libtorch-linked process.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// `RISE_WORKER` if set, else `rise-worker` next to this executable (cargo puts both
/// binaries in the same target directory; an install puts them in the same bin/).
pub fn path() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os("RISE_WORKER") {
        return Ok(PathBuf::from(explicit));
    }
    let exe = std::env::current_exe().context("cannot locate the rise executable")?;
    let sibling = exe.with_file_name("rise-worker");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "rise-worker not found next to {} (build it with `cargo build -p rise-worker`, \
         or set RISE_WORKER to its path)",
        exe.display()
    )
}

/// A `Command` for the worker with its arguments.
pub fn command<I, S>(args: I) -> Result<std::process::Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = std::process::Command::new(path()?);
    cmd.args(args);
    Ok(cmd)
}
