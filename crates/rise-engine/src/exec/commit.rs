//! Committing: turning a stage's successful exit into a result in the store, and making a
//! cached result this run's.
//!
//! [`commit_stage`] needs only the stage's context (where its outputs and scratch are), its key
//! and input artifacts, and its metrics: not how or where the stage ran.
use std::collections::BTreeMap;
use std::sync::Mutex;

use rise_store::{ArtifactId, HandedCheckout, ResultId, ResultManifest, StageKey, Store};
use serde_json::{Map, Value};

use super::{now_rfc3339, store_err, RunError, StageEnv, ENGINE_VERSION};
use crate::resolve::ResolvedStage;
use crate::stage::{StageContext, StageError};

/// A stage that exited successfully, to be committed.
pub(crate) struct Outcome<'a> {
    /// Its key.
    pub key: StageKey,
    /// The input artifacts it ran on.
    pub inputs: BTreeMap<String, ArtifactId>,
    /// Their checkouts, as handed to it.
    pub handed: Vec<(String, HandedCheckout)>,
    /// Where it ran: `out_dir` holds its outputs, `scratch_dir` its resumable state.
    pub ctx: &'a StageContext,
    /// The metrics it reported.
    pub metrics: &'a Mutex<Map<String, Value>>,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Check the stage left its inputs untouched and wrote its declared outputs, hash the outputs
/// into the store, commit the result (unless the run is being cancelled), and clean up: the
/// scratch goes, the output directory becomes the artifact's sealed checkout. `phase` notes
/// timings for `RUST_LOG=debug`.
pub(crate) fn commit_stage(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    done: Outcome<'_>,
    phase: &dyn Fn(&str),
) -> Result<(ResultId, ArtifactId), StageError> {
    let Outcome {
        key,
        inputs,
        handed,
        ctx,
        metrics,
        started_at,
    } = done;
    check_inputs_unchanged(env.store, &handed)?;
    for declared in &stage.outputs {
        if !ctx.out_dir.join(declared).exists() {
            return Err(StageError::msg(format!(
                "declared output `{declared}` was not written to $RISE_OUT"
            )));
        }
    }
    let output = env.store.put_tree(&ctx.out_dir).map_err(store_err)?;
    phase("outputs hashed");
    let metrics = metrics.lock().map(|m| m.clone()).unwrap_or_default();
    let manifest = ResultManifest {
        key,
        pipeline: env.resolved.pipeline.name.clone(),
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        kind_version: stage.kind_version,
        params: stage.recorded_params.clone(),
        inputs,
        output,
        metrics: Value::Object(metrics),
        engine_version: ENGINE_VERSION.to_string(),
        host: env.host.clone(),
        device: env.opts.device.clone(),
        started_at,
        finished_at: now_rfc3339(),
        run_id: env.run_id.to_string(),
    };
    // Last chance to stop without a commit.
    ctx.check_cancelled()?;
    let result = env.store.commit_result(&manifest).map_err(store_err)?;
    phase("committed");
    env.cache.mark_valid(output);
    env.cache.record_commit(key, result);
    // An untouched scratch directory is just an empty directory: rmdir it directly and leave
    // anything else to the store.
    if std::fs::remove_dir(&ctx.scratch_dir).is_ok() {
    } else if let Err(e) = env.store.remove_scratch(&key) {
        tracing::warn!(
            "stage {}: committed, but removing its scratch failed: {e}",
            stage.name
        );
    }
    // The output directory becomes the artifact's sealed checkout (no copy): downstream
    // stages get it from `artifact_path`, checked like any checkout. A failure here costs only
    // a checkout made from the blobs on first use.
    if let Err(e) = env.store.adopt_checkout(&output, &ctx.out_dir) {
        tracing::warn!(
            "stage {}: committed; its output stays unsealed: {e}",
            stage.name
        );
    }
    phase("scratch removed");
    Ok((result, output))
}

/// A stage must not change its inputs: even root, whom the read-only modes do not stop, is
/// caught here by the checkouts' seals before anything is committed, and the damaged checkout is
/// discarded so that the next consumer gets the artifact's true files.
fn check_inputs_unchanged(
    store: &Store,
    handed: &[(String, HandedCheckout)],
) -> Result<(), StageError> {
    for (name, checkout) in handed {
        let damage = store.handed_checkout_damage(checkout).map_err(store_err)?;
        if damage.is_empty() {
            continue;
        }
        let repair = match store.remove_checkout(checkout.artifact()) {
            Ok(()) => "the checkout was discarded and is rebuilt from the store on next use".into(),
            Err(e) => {
                format!("discarding the checkout failed ({e}): run `rise store verify --repair`")
            }
        };
        // Stages that ran at the same time share a checkout: any of them may have changed it,
        // and every one that held it may have read the change, so none of them commits.
        return Err(StageError::msg(format!(
            "the stage changed its input `{name}`, or another stage running at the same time \
             with the same input did ({}); nothing committed; {repair}",
            damage.join("; ")
        )));
    }
    Ok(())
}

/// Make a cached result this pipeline stage's latest. The index's "latest result of (pipeline,
/// stage)" drives `rise show STAGE`, `rise status` and gc's roots, so after reverting an edit (or
/// reusing another pipeline's result) it must point at the result this run used, not at the
/// newer one that no longer matches. The store has no "repoint latest" operation, so the
/// manifest is re-committed under this pipeline and stage with a fresh `finished_at`: the same
/// key and output, attributed to this run. Nothing is written when latest already matches
/// (the no-op re-run case), nor when latest is another result of the same key and output (a
/// twin stage's: both twins keep their own, and a no-op re-run writes nothing).
pub(crate) fn adopt(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    result: ResultId,
    manifest: ResultManifest,
) -> Result<ResultId, RunError> {
    let pipeline = &env.resolved.pipeline.name;
    if let Some(latest) = env.cache.latest_id(pipeline, &stage.name) {
        if latest == result {
            return Ok(result);
        }
        if let Ok(current) = env.store.read_result(&latest) {
            if current.key == manifest.key && current.output == manifest.output {
                return Ok(latest);
            }
        }
    }
    let now = now_rfc3339();
    let adopted = ResultManifest {
        pipeline: pipeline.clone(),
        stage: stage.name.clone(),
        started_at: now.clone(),
        finished_at: now,
        run_id: env.run_id.to_string(),
        ..manifest
    };
    Ok(env.store.commit_result(&adopted)?)
}
