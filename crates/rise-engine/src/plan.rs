//! What a run would do: each stage's key, whether a valid result exists, and why a stage must
//! run (which key fields differ from its last committed result).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use rise_store::{ArtifactId, ResultId, ResultManifest, StageKey, Store, StoreError};
use serde::Serialize;
use serde_json::Value;

use crate::key::KeyFields;
use crate::resolve::{Resolved, ResolvedStage};

/// A per-run view of the store's index: one index transaction for all lookups of a plan, and
/// each output artifact verified at most once per run.
pub struct Cache<'s> {
    store: &'s Store,
    by_key: BTreeMap<StageKey, ResultId>,
    latest: BTreeMap<(String, String), ResultId>,
    verified: Mutex<HashMap<ArtifactId, Option<String>>>,
    /// Committed results this view knows of: the snapshot's, plus this run's commits, plus
    /// those found by [`Cache::check_live`].
    known: Mutex<BTreeSet<ResultId>>,
    /// Keys of results committed since the snapshot (by other processes or this run).
    seen: Mutex<BTreeMap<StageKey, ResultId>>,
}

/// The outcome of looking a key up.
#[derive(Debug, Clone)]
pub enum CacheCheck {
    /// A committed result whose output is present and valid.
    Hit {
        /// The result.
        result: ResultId,
        /// Its manifest.
        manifest: Box<ResultManifest>,
    },
    /// No result for this key.
    Miss,
    /// A result exists but cannot be used (a blob is missing or corrupt): it is recomputed.
    Invalid {
        /// What is wrong.
        problem: String,
    },
}

impl<'s> Cache<'s> {
    /// Read the index once.
    pub fn load(store: &'s Store) -> Result<Cache<'s>, StoreError> {
        let snapshot = store.current_index()?;
        Ok(Cache {
            store,
            by_key: snapshot.by_key,
            latest: snapshot.latest,
            verified: Mutex::new(HashMap::new()),
            known: Mutex::new(snapshot.results),
            seen: Mutex::new(BTreeMap::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// Look `key` up in the snapshot and check the result is usable.
    pub fn check(&self, key: &StageKey) -> Result<CacheCheck, StoreError> {
        match self.by_key.get(key) {
            None => Ok(CacheCheck::Miss),
            Some(id) => self.check_result(id),
        }
    }

    /// Look `key` up among results committed since the snapshot (call it holding the key's
    /// lock: another process may have committed the key meanwhile).
    ///
    /// A result is committed when its marker `results/<id>` exists (the store's commit point,
    /// written before the committing process releases the key lock), so listing that directory
    /// and reading only the manifests this view has not seen is exact, and far cheaper than an
    /// index transaction per stage. If the directory cannot be listed, the index is asked.
    pub fn check_live(&self, key: &StageKey) -> Result<CacheCheck, StoreError> {
        let Some(new) = self.new_markers() else {
            return match self.store.lookup(key) {
                Ok(None) => Ok(CacheCheck::Miss),
                Ok(Some((id, manifest))) => Ok(self.judge(id, manifest)),
                Err(e) if e.is_corruption() => Ok(CacheCheck::Invalid {
                    problem: e.to_string(),
                }),
                Err(e) => Err(e),
            };
        };
        for id in new {
            match self.store.read_result(&id) {
                Ok(manifest) => {
                    // Remember every key seen, not only this one: a later check for another key
                    // will not list this marker as new again.
                    if let Ok(mut seen) = self.seen.lock() {
                        seen.insert(manifest.key, id);
                    }
                    self.mark_committed(id);
                }
                // A damaged foreign manifest is not ours to judge here; audit reports it.
                Err(e) if e.is_corruption() => self.mark_committed(id),
                Err(e) => return Err(e),
            }
        }
        let seen = self.seen.lock().ok().and_then(|s| s.get(key).copied());
        match seen {
            Some(id) => self.check_result(&id),
            None => Ok(CacheCheck::Miss),
        }
    }

    fn new_markers(&self) -> Option<Vec<ResultId>> {
        let dir = self.store.root().join("results");
        let known = self.known.lock().ok()?;
        let mut new = Vec::new();
        for entry in std::fs::read_dir(&dir).ok()? {
            let name = entry.ok()?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.parse::<ResultId>().ok()) {
                if !known.contains(&id) {
                    new.push(id);
                }
            }
        }
        Some(new)
    }

    /// Remember a result as seen (its marker will not be read again by [`Cache::check_live`]).
    pub fn mark_committed(&self, id: ResultId) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(id);
        }
    }

    /// Remember a result committed by this process under `key`, so that a later
    /// [`Cache::check_live`] of the same key finds it (a run must not execute a key twice).
    pub fn record_commit(&self, key: StageKey, id: ResultId) {
        self.mark_committed(id);
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, id);
        }
    }

    fn check_result(&self, id: &ResultId) -> Result<CacheCheck, StoreError> {
        match self.store.read_result(id) {
            Ok(manifest) => Ok(self.judge(*id, manifest)),
            Err(e) if e.is_corruption() => Ok(CacheCheck::Invalid {
                problem: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    fn judge(&self, result: ResultId, manifest: ResultManifest) -> CacheCheck {
        match self.verify(&manifest.output) {
            None => CacheCheck::Hit {
                result,
                manifest: Box::new(manifest),
            },
            Some(problem) => CacheCheck::Invalid { problem },
        }
    }

    /// `None` if every blob of `artifact` is present and valid, else the problem.
    pub fn verify(&self, artifact: &ArtifactId) -> Option<String> {
        if let Some(known) = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(artifact).cloned())
        {
            return known;
        }
        let outcome = self
            .store
            .verify_artifact(artifact)
            .err()
            .map(|e| e.to_string());
        if let Ok(mut m) = self.verified.lock() {
            m.insert(*artifact, outcome.clone());
        }
        outcome
    }

    /// Remember that `artifact` was just written and hashed by this run.
    pub fn mark_valid(&self, artifact: ArtifactId) {
        if let Ok(mut m) = self.verified.lock() {
            m.insert(artifact, None);
        }
    }

    /// The id of the last committed result of `stage` in `pipeline`, if any (no blob read).
    pub fn latest_id(&self, pipeline: &str, stage: &str) -> Option<ResultId> {
        self.latest
            .get(&(pipeline.to_string(), stage.to_string()))
            .copied()
    }

    /// The last committed result of `stage` in `pipeline`, if any.
    pub fn latest(&self, pipeline: &str, stage: &str) -> Option<(ResultId, ResultManifest)> {
        let id = self
            .latest
            .get(&(pipeline.to_string(), stage.to_string()))?;
        self.store.read_result(id).ok().map(|m| (*id, m))
    }
}

/// The key of `stage` given its inputs' artifacts.
pub fn stage_key(stage: &ResolvedStage, inputs: &BTreeMap<String, ArtifactId>) -> StageKey {
    KeyFields {
        kind: &stage.kind,
        kind_version: stage.kind_version,
        params: &stage.key_params,
        inputs,
        seed: stage.seed,
    }
    .key()
}

/// One stage in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// Stage name.
    pub stage: String,
    /// Kind.
    pub kind: String,
    /// The key, when all inputs are known.
    pub key: Option<StageKey>,
    /// What will happen.
    #[serde(flatten)]
    pub status: PlanStatus,
}

/// What a run will do with a stage.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PlanStatus {
    /// A valid result exists: nothing to do.
    Cached {
        /// The result.
        result: ResultId,
        /// Its output artifact.
        output: ArtifactId,
    },
    /// Will run.
    Run {
        /// Why (one line per reason).
        why: Vec<String>,
    },
}

impl PlanEntry {
    /// Whether the stage will run.
    pub fn runs(&self) -> bool {
        matches!(self.status, PlanStatus::Run { .. })
    }
}

/// The plan of a whole pipeline, in topological order.
pub fn plan(resolved: &Resolved, cache: &Cache<'_>) -> Result<Vec<PlanEntry>, StoreError> {
    let mut outputs: Vec<Option<ArtifactId>> = vec![None; resolved.stages.len()];
    let mut out = Vec::with_capacity(resolved.stages.len());
    for &i in &resolved.order {
        let stage = &resolved.stages[i];
        let latest = || cache.latest(&resolved.pipeline.name, &stage.name);
        let mut inputs = BTreeMap::new();
        let mut pending = Vec::new();
        for (name, &p) in &stage.inputs {
            match outputs[p] {
                Some(id) => {
                    inputs.insert(name.clone(), id);
                }
                None => pending.push(format!(
                    "input {name}: stage {} will run first",
                    resolved.stages[p].name
                )),
            }
        }
        if !pending.is_empty() {
            let mut why = pending;
            if let Some((_, last)) = latest() {
                why.extend(differences(stage, None, &last));
            }
            out.push(PlanEntry {
                stage: stage.name.clone(),
                kind: stage.kind.clone(),
                key: None,
                status: PlanStatus::Run { why },
            });
            continue;
        }
        let key = stage_key(stage, &inputs);
        let status = match cache.check(&key)? {
            CacheCheck::Hit { result, manifest } => {
                outputs[i] = Some(manifest.output);
                PlanStatus::Cached {
                    result,
                    output: manifest.output,
                }
            }
            CacheCheck::Invalid { problem } => PlanStatus::Run {
                why: vec![format!("its cached result is unusable: {problem}")],
            },
            CacheCheck::Miss => {
                let why = match latest() {
                    None => vec!["never run".to_string()],
                    Some((_, last)) => {
                        let d = differences(stage, Some(&inputs), &last);
                        if d.is_empty() {
                            vec!["no result for this key, though params and inputs match the last result: the seed or the key scheme changed".to_string()]
                        } else {
                            d
                        }
                    }
                };
                PlanStatus::Run { why }
            }
        };
        out.push(PlanEntry {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            key: Some(key),
            status,
        });
    }
    Ok(out)
}

/// Which key fields of `stage` differ from result `last`, one line each. `inputs` is `None`
/// while the inputs are not yet known.
pub fn differences(
    stage: &ResolvedStage,
    inputs: Option<&BTreeMap<String, ArtifactId>>,
    last: &ResultManifest,
) -> Vec<String> {
    let mut out = Vec::new();
    if stage.kind != last.kind {
        out.push(format!("kind: {} -> {}", last.kind, stage.kind));
    } else if stage.kind_version != last.kind_version {
        out.push(format!(
            "kind version: {} -> {} (the {} implementation changed)",
            last.kind_version, stage.kind_version, stage.kind
        ));
    }
    let now = flatten(&stage.recorded_params);
    let then = flatten(&last.params);
    for (path, v) in &now {
        match then.get(path) {
            None => out.push(format!("params.{path}: (unset) -> {v}")),
            Some(old) if old != v => out.push(format!("params.{path}: {old} -> {v}")),
            _ => {}
        }
    }
    for (path, old) in &then {
        if !now.contains_key(path) {
            out.push(format!("params.{path}: {old} -> (unset)"));
        }
    }
    if let Some(inputs) = inputs {
        for (name, id) in inputs {
            match last.inputs.get(name) {
                None => out.push(format!("input {name}: new")),
                Some(old) if old != id => out.push(format!(
                    "input {name}: {} -> {}",
                    old.short(12),
                    id.short(12)
                )),
                _ => {}
            }
        }
        for name in last.inputs.keys() {
            if !inputs.contains_key(name) {
                out.push(format!("input {name}: removed"));
            }
        }
    }
    out
}

/// `{"a": {"b": 1}, "c": [2]}` -> `a.b = 1`, `c[0] = 2`. Leaves are compact JSON.
pub fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{prefix}[{i}]"), out);
                }
            }
            // The empty root table has no fields to list.
            Value::Object(_) if prefix.is_empty() => {}
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", &mut out);
    out
}
