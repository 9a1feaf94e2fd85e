//! Placeholder while this concern is being built; replaced by its owner.
use std::process::ExitCode;

use anyhow::Result;

use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    #[command(name = "__store_pending", hide = true)]
    Pending,
}

pub fn run(cmd: Command, _global: &Global) -> Result<ExitCode> {
    match cmd {
        Command::Pending => anyhow::bail!("not built yet"),
    }
}
