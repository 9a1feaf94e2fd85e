//! `rise audit`: the report of `rise_engine::audit`, printed.
use std::process::ExitCode;

use anyhow::Result;
use rise_engine::audit::{
    self, AuditReport, AuditRequest, RerunOutcome, RerunReport, RerunRequest,
};
use rise_engine::exec::RunOptions;
use rise_engine::lock::LockFile;
use rise_engine::lookup::DAMAGED_HINT;
use rise_engine::progress::DisplayMode;

use super::{load, open_store, print_json, registry, AuditArgs};
use crate::cli::{outln, Global};

pub(super) fn audit(args: AuditArgs, global: &Global) -> Result<ExitCode> {
    // Validate the pipeline and the lock file first: a bad file must not touch the store.
    let registry = registry();
    let resolved = match &args.pipeline {
        Some(p) => Some(load(p, &registry, Some(&global.store))?),
        None => None,
    };
    let lock = match &args.lock {
        Some(path) => Some(LockFile::read(path)?),
        None => None,
    };
    let store = open_store(global)?;
    let mut report = audit::audit(
        &store,
        &AuditRequest {
            verify: !args.no_verify,
            lock: lock.as_ref(),
        },
    )?;
    // The quick checks are shown before a re-run starts, which may take long or fail.
    if !args.json {
        print_checks(&report)?;
    }
    if let (Some(stage), Some(resolved)) = (&args.rerun, &resolved) {
        let opts = RunOptions {
            worker: crate::cli::worker::path().map_err(|e| format!("{e:#}")),
            display: DisplayMode::Plain,
            ..RunOptions::default()
        };
        let rerun = audit::rerun(
            &store,
            &RerunRequest {
                resolved,
                registry: &registry,
                stage,
                opts: &opts,
            },
        )?;
        if !args.json {
            print_rerun(&rerun)?;
        }
        report.add_rerun(rerun);
    }
    if args.json {
        print_json(&report)?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_checks(report: &AuditReport) -> Result<()> {
    if let Some(v) = &report.verify {
        outln!(
            "blobs: {} checked ({} bytes), {} results, {} artifacts: {}",
            v.blobs_checked,
            v.bytes_checked,
            v.results_checked,
            v.artifacts_checked,
            if v.is_clean() {
                "intact"
            } else {
                "PROBLEMS (details: rise store verify)"
            }
        )?;
        for b in &v.bad_blobs {
            outln!("  bad blob: {}", serde_json::to_string(b)?)?;
        }
        for r in &v.bad_results {
            outln!("  bad result: {}", serde_json::to_string(r)?)?;
        }
    }
    let orphans = &report.lineage_orphans;
    outln!(
        "lineage: {} results, {}",
        report.lineage_results,
        if orphans.is_empty() {
            "closed (every input has a producer or a pin)".to_string()
        } else {
            format!("{} inputs without producer or pin", orphans.len())
        }
    )?;
    for o in orphans {
        // Each name quoted as a JSON string, as this line has always shown them.
        outln!(
            "  {} input {} = {} has no producer",
            serde_json::to_string(&o.stage)?,
            serde_json::to_string(&o.input)?,
            serde_json::to_string(&o.artifact)?
        )?;
    }
    if !report.damaged_results.is_empty() {
        outln!(
            "damaged results: {} could not be read; {DAMAGED_HINT}",
            report.damaged_results.len()
        )?;
        for d in &report.damaged_results {
            outln!("  {}: {}", d.result, d.problem)?;
        }
    }
    if let Some(lock) = &report.lock {
        outln!(
            "lock {}: {} stages, {}",
            lock.pipeline,
            lock.stages,
            if lock.differences.is_empty() {
                "all match".to_string()
            } else {
                format!("{} differ", lock.differences.len())
            }
        )?;
        for d in &lock.differences {
            outln!("  {}: {}", d.stage, d.problem)?;
        }
    }
    Ok(())
}

fn print_rerun(rerun: &RerunReport) -> Result<()> {
    let stage = &rerun.stage;
    match &rerun.outcome {
        RerunOutcome::Same { output } => {
            outln!("rerun {stage}: reproducible (output {output})")?;
        }
        RerunOutcome::Differs {
            differing_files, ..
        } => {
            outln!("rerun {stage}: NOT reproducible")?;
            for f in differing_files {
                outln!("  {f}")?;
            }
        }
        RerunOutcome::Failed { error } => {
            outln!("rerun {stage}: NOT reproducible")?;
            outln!("  {error}")?;
        }
    }
    Ok(())
}
