//! `rise plan`, `rise explain`, `rise status` and `rise dag`: reports from
//! `rise_engine::explain`, printed.
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use rise_engine::explain::{self, DagReport};
use rise_engine::plan::{Cache, PlanStatus};

use super::{load, open_store, print_json, registry, table, PipelineArgs};
use crate::cli::{outln, Global};

pub(super) fn plan(p: &PipelineArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let report = explain::plan_report(&resolved, &Cache::load(&store)?)?;
    if p.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = report
        .stages
        .iter()
        .map(|e| {
            let key = e.key.map_or("(after inputs)".to_string(), |k| k.short(12));
            let (action, why) = match &e.status {
                PlanStatus::Cached { output, .. } => {
                    ("cached", format!("output {}", output.short(12)))
                }
                PlanStatus::Run { why } => ("run", why.join("; ")),
            };
            vec![e.stage.clone(), e.kind.clone(), action.into(), key, why]
        })
        .collect();
    table(&["STAGE", "KIND", "ACTION", "KEY", "WHY"], &rows)?;
    outln!(
        "\n{} of {} stages would run",
        report.runs(),
        report.stages.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn explain(p: &PipelineArgs, stage: &str, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    // An unknown stage is refused before the store is opened (and perhaps created).
    resolved.find(stage).map_err(|e| anyhow!(e))?;
    let store = open_store(global)?;
    let report = explain::explain(&resolved, &Cache::load(&store)?, stage)?;
    if p.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "stage {} ({} v{}), defined at {}:{}",
        report.stage,
        report.kind,
        report.kind_version,
        report.file.display(),
        report.line
    )?;
    outln!(
        "key now:      {}",
        report
            .key
            .map_or("(known once its inputs are built)".to_string(), |k| k
                .to_string())
    )?;
    match &report.last_result {
        Some(last) => outln!(
            "last result:  {} (key {}, {})",
            last.result,
            last.key.short(12),
            last.finished_at
        )?,
        None => outln!("last result:  none")?,
    }
    outln!()?;
    let rows: Vec<Vec<String>> = report
        .fields
        .iter()
        .map(|f| {
            let mark = if f.differs { "*" } else { "" };
            vec![mark.into(), f.field.clone(), f.now.clone(), f.last.clone()]
        })
        .collect();
    table(&["", "FIELD", "NOW", "LAST RESULT"], &rows)?;
    outln!(
        "\n{}: {}",
        if report.runs() {
            "will run"
        } else {
            "up to date"
        },
        report.why().join("; ")
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(p: &PipelineArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let report = explain::status(&resolved, &Cache::load(&store)?)?;
    if p.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = report
        .stages
        .iter()
        .map(|s| {
            vec![
                s.stage.clone(),
                s.state.to_string(),
                s.last_result
                    .as_ref()
                    .map_or("-".into(), |r| r.finished_at.clone()),
                s.last_result
                    .as_ref()
                    .map_or("-".into(), |r| r.output.short(12)),
            ]
        })
        .collect();
    table(&["STAGE", "STATE", "LAST FINISHED", "OUTPUT"], &rows)?;
    for s in &report.stages {
        if let (Some(pid), Some(what)) = (s.running_pid, &s.running_what) {
            outln!("running {}: pid {pid}, {what}", s.stage)?;
        }
    }
    for h in &report.runs_in_progress {
        outln!("run in progress: pid {} ({})", h.pid, h.command)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn dag(p: &PipelineArgs, dot: bool) -> Result<ExitCode> {
    let registry = registry();
    // No store: the graph needs no keys worth remembering.
    let report = explain::dag(&load(&p.pipeline, &registry, None)?);
    if dot {
        print_dot(&report)?;
    } else if p.json {
        print_json(&report)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .stages
            .iter()
            .map(|s| {
                let inputs: Vec<String> = s
                    .inputs
                    .iter()
                    .map(|(n, producer)| format!("{n} <- {producer}"))
                    .collect();
                vec![
                    s.stage.clone(),
                    s.kind.clone(),
                    if inputs.is_empty() {
                        "-".into()
                    } else {
                        inputs.join(", ")
                    },
                ]
            })
            .collect();
        table(&["STAGE", "KIND", "INPUTS"], &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Graphviz: one box per stage, one edge per input, labelled with the input's name.
fn print_dot(report: &DagReport) -> Result<()> {
    outln!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];",
        report.pipeline.replace('"', "\\\"")
    )?;
    for s in &report.stages {
        outln!("  \"{}\" [label=\"{}\\n({})\"];", s.stage, s.stage, s.kind)?;
    }
    for s in &report.stages {
        for (input, producer) in &s.inputs {
            outln!("  \"{producer}\" -> \"{}\" [label=\"{input}\"];", s.stage)?;
        }
    }
    outln!("}}")?;
    Ok(())
}
