//! `rise-worker`: the only binary that links libtorch.
//!
//! The `rise` engine spawns it for torch work (one stage per process) and for the
//! model commands (`score`, `generate`). Keeping libtorch out of `rise` keeps the
//! engine's start-up in milliseconds; see ARCHITECTURE.md, "Two binaries".
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod doctor;
mod generate;
mod model_opts;
mod ranks;
mod score;
mod stages;

#[derive(Parser)]
#[command(
    name = "rise-worker",
    version,
    about = "Runs rise's torch stages and model commands (spawned by `rise`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the libtorch version, CUDA devices and thread count as JSON.
    Doctor,
    /// Run one pipeline stage from the spec the engine wrote (progress as JSON lines on stdout).
    Stage(stages::Args),
    /// Log-probabilities of sequences under a model (JSONL in, JSONL out).
    Score(score::Args),
    /// Sample completions from a model.
    Generate(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => doctor::run(),
        Command::Stage(args) => ranks::run_stage(args),
        Command::Score(args) => score::run(args),
        Command::Generate(args) => generate::run(args),
    };
    // Errors are for people (and the engine's stage log): the context chain, not a backtrace.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `rise generate ... | head`: the reader left; there is no one to tell. Exit as a
        // process killed by SIGPIPE would be reported (128 + 13), silently.
        Err(err) if reader_went_away(&err) => ExitCode::from(141),
        Err(err) => {
            // Not `eprintln!`, which panics when stderr is closed.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` comes from writing to a pipe whose reader is gone.
fn reader_went_away(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
