//! `rise score` and `rise generate`: thin front ends for `rise-worker`, the only process
//! that links libtorch (so `rise` itself keeps starting in milliseconds). Arguments pass
//! through untouched; the worker's stdout and stderr stream straight to ours, and its exit
//! status becomes ours.
use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Log-probabilities of sequences under a model: JSONL in, `{"logprob", "n_tokens"}` out.
    ///
    /// Runs `rise-worker score`; `rise score --help` shows its options (--model DIR
    /// --jsonl FILE [--device] [--dtype] [--batch-size] [--threads]).
    #[command(disable_help_flag = true)]
    Score {
        /// Passed to `rise-worker score`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Sample completions from a model (batched, seeded, optional chat template).
    ///
    /// Runs `rise-worker generate`; `rise generate --help` shows its options (--model DIR
    /// --prompt TEXT [--n] [--temperature] [--top-p] [--top-k] [--max-new-tokens] [--seed]
    /// [--stop] [--chat] [--device] [--json]).
    #[command(disable_help_flag = true)]
    Generate {
        /// Passed to `rise-worker generate`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
}

pub fn run(cmd: Command, _global: &Global) -> Result<ExitCode> {
    let (sub, args) = match cmd {
        Command::Score { args } => ("score", args),
        Command::Generate { args } => ("generate", args),
    };
    let mut child = super::worker::command(std::iter::once(OsString::from(sub)).chain(args))?;
    let status = child
        .status()
        .with_context(|| format!("cannot run rise-worker {sub}"))?;
    Ok(exit_code(status))
}

/// The worker's exit status as ours; a signal becomes 128 + its number, as shells report it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)));
        }
    }
    ExitCode::FAILURE
}
