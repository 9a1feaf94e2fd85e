//! The torch stage kinds, run as `rise-worker stage SPEC` (one stage per process).
//!
//! Their schemas (inputs, params, versions) live in `rise-stages`, so the `rise` engine
//! validates and keys them without libtorch; this module supplies the implementations.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rise_stages::kinds::{self, KindStage};
use rise_stages::rise_engine::{Progress, Registry, StageContext, StageSpec};

mod common;
mod evaluate;
mod export;
mod gen;
mod model;
mod relabel;
mod sample;
mod sft;
mod shards;
mod tokenizer;
mod train;
mod training;

/// `rise-worker stage SPEC`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stage spec (JSON) the engine wrote: kind, resolved params, inputs, output and
    /// scratch directories, seed, device, threads.
    pub spec: PathBuf,
}

/// The worker's registry: every rise-stages kind, with the torch kinds' implementations.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    rise_stages::register_all(&mut r);
    let impls: [(&'static kinds::KindSchema, kinds::RunFn); 8] = [
        (&kinds::TOKENIZER, tokenizer::run),
        (&kinds::MODEL, model::run),
        (&kinds::SFT, sft::run),
        (&kinds::SAMPLE, sample::run),
        (&kinds::RELABEL, relabel::run),
        (&kinds::TRAIN, train::run),
        (&kinds::EVALUATE, evaluate::run),
        (&kinds::EXPORT, export::run),
    ];
    for (schema, run) in impls {
        r.register(Box::new(KindStage::with_run(schema, run)));
    }
    r
}

/// Runs one stage from its spec; progress events go to stdout as JSON lines. A failure is
/// printed as one `error: ...` line on stderr (the stage log) and exits with status 1, without
/// a backtrace: the message names the stage and the cause, which is what the user needs.
pub fn run(args: Args) -> Result<()> {
    if let Err(e) = run_spec(&args.spec) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn run_spec(path: &Path) -> Result<()> {
    let spec = StageSpec::read(path)?;
    let registry = registry();
    let Some(stage) = registry.get(&spec.kind) else {
        bail!(
            "stage {}: unknown kind `{}` (this worker knows: {})",
            spec.stage,
            spec.kind,
            registry.kinds().join(", ")
        );
    };
    if stage.version() != spec.kind_version {
        bail!(
            "stage {}: the engine keyed kind `{}` at version {} but this worker implements version {}; \
             rebuild rise and rise-worker together",
            spec.stage,
            spec.kind,
            spec.kind_version,
            stage.version()
        );
    }
    // The engine resolved the params; resolving again (a no-op on resolved params) guards
    // against a spec written by a different build of the schemas.
    let mut spec = spec;
    spec.params = stage.resolve_params(&spec.params).map_err(|e| {
        anyhow::anyhow!(
            "stage {}: {e} (rebuild rise and rise-worker together)",
            spec.stage
        )
    })?;
    std::fs::create_dir_all(&spec.out_dir)
        .with_context(|| format!("creating {}", spec.out_dir.display()))?;
    std::fs::create_dir_all(&spec.scratch_dir)
        .with_context(|| format!("creating {}", spec.scratch_dir.display()))?;
    let name = spec.stage.clone();
    let ctx = StageContext::from_spec(
        spec,
        Progress::stdout_events(),
        Arc::new(AtomicBool::new(false)),
    );
    stage.run(&ctx).map_err(|e| {
        // Stage errors from this crate already start with "stage NAME:".
        let msg = e.to_string();
        if msg.starts_with("stage ") {
            anyhow::anyhow!(msg)
        } else {
            anyhow::anyhow!("stage {name}: {msg}")
        }
    })
}
