//! `rise`: the engine, store and data front end. Never links libtorch; torch work is
//! delegated to the `rise-worker` binary (see ARCHITECTURE.md).
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
