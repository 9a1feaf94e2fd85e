//! `rise show`, `rise lineage` and `rise export`: results found and reported by
//! `rise_engine::lookup` and `rise_engine::lineage`, printed.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use rise_engine::lineage::{self, LineageNode};
use rise_engine::lookup::{self, ExportRequest, InputProducer, DAMAGED_HINT};
use rise_engine::plan::flatten;
use rise_stages::format::HF_MODEL_FILES;

use super::{open_store, print_json};
use crate::cli::{outln, Global};

pub(super) fn show(
    what: &str,
    pipeline: Option<&str>,
    json: bool,
    global: &Global,
) -> Result<ExitCode> {
    let store = open_store(global)?;
    let report = lookup::show(&store, what, pipeline)?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = &report.manifest;
    outln!("result   {}", report.result)?;
    outln!(
        "stage    {} (pipeline {}, kind {} v{})",
        m.stage,
        m.pipeline,
        m.kind,
        m.kind_version
    )?;
    outln!("key      {}", m.key)?;
    outln!(
        "run      {} on {} ({}), {} .. {}",
        m.run_id,
        m.host,
        m.device,
        m.started_at,
        m.finished_at
    )?;
    outln!("params")?;
    for (k, v) in flatten(&m.params) {
        outln!("  {k} = {v}")?;
    }
    outln!("inputs")?;
    for input in &report.inputs {
        let producer = match &input.producer {
            InputProducer::Stage(stage) => format!("from {stage}"),
            InputProducer::None => "(no producer: imported or pinned)".to_string(),
            InputProducer::Damaged(id) => {
                format!("(its producer, result {}, is damaged)", id.short(12))
            }
        };
        outln!("  {} = {} {producer}", input.name, input.artifact)?;
    }
    if report.inputs.is_empty() {
        outln!("  (none)")?;
    }
    outln!("output   {}", m.output)?;
    for f in &report.files {
        outln!("  {:<40} {:>10}  {}", f.path, f.size, f.blob.short(16))?;
    }
    outln!("metrics")?;
    for (k, v) in flatten(&m.metrics) {
        outln!("  {k} = {v}")?;
    }
    outln!("path     {}", report.output_path.display())?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn lineage(
    what: &str,
    pipeline: Option<&str>,
    json: bool,
    global: &Global,
) -> Result<ExitCode> {
    let store = open_store(global)?;
    let report = lineage::lineage(&store, what, pipeline)?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for node in &report.lineage {
        let indent = "  ".repeat(node.depth());
        match node {
            LineageNode::Result {
                via,
                stage,
                kind,
                result,
                output,
                repeat,
                ..
            } => outln!(
                "{indent}{}{stage} [{kind}] result {} output {}{}",
                if via.is_empty() {
                    String::new()
                } else {
                    format!("{via}: ")
                },
                result.short(12),
                output.short(12),
                if *repeat { " (see above)" } else { "" }
            )?,
            LineageNode::Damaged {
                via,
                artifact,
                damaged_result,
                problem,
                ..
            } => outln!(
                "{indent}{via}: artifact {} (its producing result {} is damaged: {problem}; \
                 {DAMAGED_HINT})",
                artifact.short(12),
                damaged_result.short(12)
            )?,
            LineageNode::Root {
                via,
                artifact,
                root,
                ..
            } => outln!("{indent}{via}: artifact {} ({root})", artifact.short(12))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The files a model output must have to be loadable as a Hugging Face directory.
const MODEL_REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

pub(super) fn export(
    what: &str,
    to: &Path,
    pipeline: Option<&str>,
    global: &Global,
) -> Result<ExitCode> {
    let store = open_store(global)?;
    let request = ExportRequest {
        what,
        pipeline,
        required: &MODEL_REQUIRED,
        noun: "model",
        files: &HF_MODEL_FILES,
    };
    let done = lookup::export(&store, &request, to)?;
    outln!(
        "exported {} ({}, result {}) to {}",
        done.manifest.stage,
        done.manifest.kind,
        done.result.short(12),
        to.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
