//! The `rise` command line. Each concern owns one module and one flattened
//! subcommand enum, so adding a command never touches another concern's file.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod doctor;
mod exec_stage;
mod grade;
mod import;
mod model;
mod pipeline;
mod store;
pub mod worker;

#[derive(Parser)]
#[command(
    name = "rise",
    version,
    about = "RISE: teach language models to correct their own mistakes, as a DAG of cached stages.",
    long_about = "rise runs RISE (Recursive IntroSpEction) experiments as pipelines of cached, \
content-addressed stages: sample, grade, relabel, train, evaluate. Edit a config and only what \
changed re-runs; kill a run and resume it; audit every artifact by its hash.\n\n\
Start with `rise run pipelines/rise.toml`, then `rise show report` for the results.",
    after_help = "Store: ./store by default; override with --store or RISE_STORE."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The artifact store (created on first use).
    #[arg(long, global = true, env = "RISE_STORE", default_value = "store")]
    pub store: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Print the engine version, the store path, and what the torch worker sees.
    Doctor(doctor::Args),
    #[command(flatten)]
    Pipeline(pipeline::Command),
    #[command(flatten)]
    Store(store::Command),
    #[command(flatten)]
    Grade(grade::Command),
    #[command(flatten)]
    Model(model::Command),
    #[command(flatten)]
    Import(import::Command),
    /// Execute and commit one stage from a job spec (what a batch job runs on a compute node).
    #[command(hide = true)]
    ExecStage(exec_stage::Args),
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runs_stages = match &cli.command {
        Command::Pipeline(cmd) => cmd.runs_stages(),
        Command::ExecStage(_) => true,
        _ => false,
    };
    if !runs_stages {
        die_quietly_on_broken_pipe();
    }
    let result = match cli.command {
        Command::Doctor(args) => doctor::run(args, &cli.global),
        Command::Pipeline(cmd) => pipeline::run(cmd, &cli.global),
        Command::Store(cmd) => store::run(cmd, &cli.global),
        Command::Grade(cmd) => grade::run(cmd, &cli.global),
        Command::Model(cmd) => model::run(cmd, &cli.global),
        Command::Import(cmd) => import::run(cmd, &cli.global),
        Command::ExecStage(args) => exec_stage::run(args, &cli.global),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Not `eprintln!`, which panics when stderr is closed.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {}", render_error(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-separated, each said once: library errors often include
/// their source in their own message, which `{:#}` would then print a second time.
fn render_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Logs go to stderr, filtered by `RISE_LOG` (e.g. `RISE_LOG=debug`); warnings by default.
/// Colours only on a terminal: in a log file or a CI capture, escape codes are noise.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RISE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Lets a closed stdout (`rise status p.toml | head`) end the process as it ends `cat` or
/// `ls`: by SIGPIPE, silently. Rust ignores SIGPIPE, so without this every `println!` after the
/// reader left would panic. Not for the commands that run stages (see
/// `pipeline::Command::runs_stages`): a signal would kill the engine without stopping its
/// stage processes; they write through [`out`] instead.
fn die_quietly_on_broken_pipe() {
    // SAFETY: restoring a signal's default disposition has no preconditions; it happens
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Set once stdout's reader has gone: nothing more can be shown.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to stdout. A reader that went away (`rise run p.toml --json | head -1`) makes this
/// and every later write a no-op: nothing more can be shown, and it is no reason to fail a
/// run. Any other write error (a full disk under `> file`) is returned.
pub(crate) fn out(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_GONE.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// `println!` through [`out`]: `outln!("{x}")?`.
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::render_error;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        // Like rise-store's `StoreError::Io`: the source is in the message and in the chain.
        #[derive(Debug)]
        struct Wrapped {
            source: std::io::Error,
        }
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot open store /s: {}", self.source)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let err = anyhow::Error::new(Wrapped {
            source: std::io::Error::other("not a store"),
        })
        .context("cannot open store s");
        assert_eq!(
            render_error(&err),
            "cannot open store s: cannot open store /s: not a store"
        );
        let plain = anyhow::anyhow!("disk full").context("cannot write x");
        assert_eq!(render_error(&plain), "cannot write x: disk full");
    }
}
