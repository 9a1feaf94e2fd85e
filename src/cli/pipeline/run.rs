//! `rise run`.
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rise_engine::exec::{self, ExecutorKind, RunOptions, RunSummary, SlurmOptions, StageState};
use rise_engine::progress::{escape_controls, DisplayMode};

use super::{load, open_store, print_json, registry, RunArgs};
use crate::cli::Global;

/// `eprintln!` that does not panic when stderr is closed (there is nowhere else to report).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `--gpus`: each id once.
fn gpus(ids: Vec<String>) -> Result<Vec<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for id in &ids {
        if id.trim().is_empty() || !seen.insert(id.trim()) {
            return Err(anyhow!(
                "--gpus {}: give each GPU id once, separated by commas (e.g. --gpus 0,1,2,3)",
                ids.join(",")
            ));
        }
    }
    Ok(ids.iter().map(|id| id.trim().to_string()).collect())
}

pub(super) fn run(args: RunArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&args.p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let cancel = Arc::new(AtomicBool::new(false));
    exec::install_ctrlc(cancel.clone()).context("cannot install the Ctrl-C handler")?;
    let device = args
        .device
        .or_else(|| resolved.pipeline.device.clone())
        .unwrap_or_else(|| "cpu".into());
    let execution = exec::pipeline_execution(&resolved).map_err(|e| anyhow!(e))?;
    let executor = match args.executor.or(execution.executor).as_deref() {
        Some("slurm") => {
            // Jobs run this very binary (`rise exec-stage`): it must be on the shared
            // filesystem, like the store.
            let rise = std::env::current_exe().context("cannot find the rise binary")?;
            ExecutorKind::Slurm(Box::new(SlurmOptions {
                defaults: execution.defaults,
                stages: execution.stages,
                ..SlurmOptions::new(rise)
            }))
        }
        _ => ExecutorKind::Local,
    };
    let opts = RunOptions {
        jobs: args.jobs as usize,
        device,
        threads: args.threads,
        worker: crate::cli::worker::path().map_err(|e| format!("{e:#}")),
        targets: args.stages,
        display: if args.quiet {
            DisplayMode::Quiet
        } else if args.plain {
            DisplayMode::Plain
        } else {
            DisplayMode::Auto
        },
        cancel,
        executor,
        gpus: gpus(args.gpus)?,
    };
    let summary = exec::run(&resolved, &registry, &store, &opts)?;
    if args.p.json {
        print_json(&summary)?;
    } else if !args.quiet {
        print_summary(&summary);
    }
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_summary(summary: &RunSummary) {
    let counts: Vec<String> = summary
        .counts()
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    errln!(
        "run {} of {}: {}",
        summary.run_id,
        summary.pipeline,
        counts.join(", ")
    );
    for s in summary.failed() {
        if let StageState::Failed { error, log } = &s.state {
            // The error may quote the stage (its stderr, its file names): text, not escapes.
            let error = escape_controls(error);
            errln!("FAILED {}: {error}\n       log: {}", s.stage, log.display());
        }
    }
    let skipped: Vec<&str> = summary
        .stages
        .iter()
        .filter(|s| matches!(s.state, StageState::Skipped { .. }))
        .map(|s| s.stage.as_str())
        .collect();
    if !skipped.is_empty() {
        errln!("skipped (an input failed): {}", skipped.join(", "));
    }
    if summary.cancelled {
        errln!("interrupted: finished stages are committed; run again to continue");
    }
    errln!("run log: {}", summary.log.display());
}
