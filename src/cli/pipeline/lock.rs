//! `rise lock`: the lock that `rise_engine::audit::lock` builds, written or printed.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rise_engine::audit;
use rise_engine::plan::Cache;

use super::{load, open_store, print_json, registry, PipelineArgs};
use crate::cli::Global;

pub(super) fn lock(p: &PipelineArgs, output: Option<PathBuf>, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let file = p.pipeline.display().to_string();
    let lock = audit::lock(&resolved, &Cache::load(&store)?, &file)?;
    if p.json {
        print_json(&lock)?;
    }
    let text = lock.to_toml();
    match output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None if !p.json => crate::cli::out(format_args!("{text}"))?,
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}
