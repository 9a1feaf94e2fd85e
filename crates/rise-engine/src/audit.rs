//! Reproducibility checks on a store (`rise audit`): every blob re-hashed, lineage closure,
//! damaged results, a comparison with a lock file, and a determinism re-run of one stage in a
//! temporary store. Also the lock of a pipeline (`rise lock`), the file `--lock` checks.
use std::collections::{BTreeMap, BTreeSet};

use rise_store::{ArtifactId, ResultId, Store, StoreError, VerifyReport};
use serde::Serialize;

use crate::exec::{self, RunError, RunOptions, StageState};
use crate::key::KEY_SCHEME_VERSION;
use crate::lock::{LockEntry, LockFile, LockHeader};
use crate::lookup::{Results, DAMAGED_HINT};
use crate::plan::{self, Cache, PlanEntry, PlanStatus};
use crate::registry::Registry;
use crate::resolve::Resolved;

/// Why an audit (or a lock) could not be made. Problems found in the store are not errors:
/// they are in the [`AuditReport`].
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The re-run could not be started.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The pipeline has no such stage (the message suggests near names).
    #[error("{0}")]
    UnknownStage(String),
    /// A stage of the pipeline is missing from its own plan (a bug).
    #[error("{0} missing from plan")]
    NotPlanned(&'static str),
    /// The stage to re-run has no current result.
    #[error("stage {0} has no current result to compare with: run the pipeline first")]
    NothingToCompare(String),
    /// An input of the stage to re-run has no current result.
    #[error("input {0} has no result")]
    InputWithoutResult(String),
    /// Copying an input into the temporary store changed its id (a store bug).
    #[error(
        "copying input {name} into the temporary store changed its id ({original} -> {copied})"
    )]
    CopyChangedId {
        /// The input.
        name: String,
        /// Its id in the store.
        original: ArtifactId,
        /// Its id in the temporary store.
        copied: ArtifactId,
    },
    /// Stages without a current result cannot be locked.
    #[error(
        "cannot lock {pipeline}: these stages have no current result: {} (run `rise run {file}` \
         first)",
        stages.join(", ")
    )]
    Unlocked {
        /// The pipeline's name.
        pipeline: String,
        /// Its file, as given.
        file: String,
        /// The stages without a current result.
        stages: Vec<String>,
    },
}

/// What to audit besides lineage closure and damaged results, which are always checked. A
/// determinism re-run, which takes long, is separate ([`rerun`], [`AuditReport::add_rerun`]),
/// so a front end can show the quick checks first.
pub struct AuditRequest<'a> {
    /// Re-hash every blob and check every result (`Store::verify`).
    pub verify: bool,
    /// Compare the store's results with this lock file.
    pub lock: Option<&'a LockFile>,
}

/// The stage to re-run, with what running it needs.
pub struct RerunRequest<'a> {
    /// The pipeline.
    pub resolved: &'a Resolved,
    /// Its stage kinds.
    pub registry: &'a Registry,
    /// The stage.
    pub stage: &'a str,
    /// How to run it (the worker binary, the display).
    pub opts: &'a RunOptions,
}

/// What an audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Every blob and result re-checked, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    /// Readable results whose lineage was checked.
    #[serde(skip)]
    pub lineage_results: usize,
    /// Inputs with neither a producing result nor a pin.
    pub lineage_orphans: Vec<Orphan>,
    /// Results whose manifests could not be read.
    pub damaged_results: Vec<DamagedResult>,
    /// The lock file comparison, when asked for.
    #[serde(flatten)]
    pub lock: Option<LockCheck>,
    /// The re-run, when one was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun: Option<RerunReport>,
    /// No problem found: kept current by [`AuditReport::add_rerun`].
    ok: bool,
}

impl AuditReport {
    /// Whether no problem was found.
    pub fn ok(&self) -> bool {
        self.ok
    }

    /// Add the outcome of a re-run: a stage that did not reproduce is a problem.
    pub fn add_rerun(&mut self, rerun: RerunReport) {
        self.rerun = Some(rerun);
        self.ok = !self.problems_found();
    }

    /// Whether any check found a problem.
    fn problems_found(&self) -> bool {
        !(self.verify.as_ref().is_none_or(VerifyReport::is_clean)
            && self.lineage_orphans.is_empty()
            && self.damaged_results.is_empty()
            && self.lock.as_ref().is_none_or(|l| l.differences.is_empty())
            && self.rerun.as_ref().is_none_or(|r| r.reproducible))
    }
}

/// An input artifact with neither a producing result nor a pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    /// The result that read it.
    pub result: ResultId,
    /// That result's stage.
    pub stage: String,
    /// The input name.
    pub input: String,
    /// The artifact.
    pub artifact: ArtifactId,
}

/// A result whose manifest is missing, corrupt or unparsable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedResult {
    /// The result.
    pub result: ResultId,
    /// What is wrong.
    pub problem: String,
}

/// A lock file compared with the store.
#[derive(Debug, Clone, Serialize)]
pub struct LockCheck {
    /// The lock's pipeline.
    #[serde(skip)]
    pub pipeline: String,
    /// How many stages it locks.
    #[serde(skip)]
    pub stages: usize,
    /// Stages whose result in the store differs from the lock.
    #[serde(rename = "lock_differences")]
    pub differences: Vec<LockDifference>,
}

/// One locked stage that the store does not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockDifference {
    /// The stage.
    pub stage: String,
    /// What differs.
    pub problem: String,
    /// The output the lock records, when the store has another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<ArtifactId>,
    /// The output the store has, when it differs from the lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<ArtifactId>,
}

/// The outcome of re-running a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RerunReport {
    /// The stage.
    pub stage: String,
    /// Whether the re-run produced the stored output, byte for byte.
    pub reproducible: bool,
    /// What happened.
    #[serde(flatten)]
    pub outcome: RerunOutcome,
}

/// What a re-run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RerunOutcome {
    /// The stored output again.
    Same {
        /// The output.
        output: ArtifactId,
    },
    /// Another output.
    Differs {
        /// The stored output.
        output: ArtifactId,
        /// The re-run's output.
        rerun_output: ArtifactId,
        /// One line per differing file: `PATH: OLD -> NEW`, or missing / only in the re-run.
        differing_files: Vec<String>,
    },
    /// The re-run failed or did not finish.
    Failed {
        /// Why.
        error: String,
    },
}

impl RerunReport {
    fn new(stage: &str, outcome: RerunOutcome) -> RerunReport {
        RerunReport {
            stage: stage.to_string(),
            reproducible: matches!(outcome, RerunOutcome::Same { .. }),
            outcome,
        }
    }
}

/// Audit `store`: always lineage closure and damaged results; blobs and a lock as `req` asks.
pub fn audit(store: &Store, req: &AuditRequest<'_>) -> Result<AuditReport, AuditError> {
    let verify = if req.verify {
        Some(store.verify()?)
    } else {
        None
    };
    let results = Results::read(store)?;
    let lineage_orphans = orphans(store, &results)?;
    let damaged_results = results
        .damaged
        .iter()
        .map(|(id, problem)| DamagedResult {
            result: *id,
            problem: problem.clone(),
        })
        .collect();
    let lock = req.lock.map(|l| check_lock(store, l)).transpose()?;
    let mut report = AuditReport {
        verify,
        lineage_results: results.ok.len(),
        lineage_orphans,
        damaged_results,
        lock,
        rerun: None,
        ok: false,
    };
    report.ok = !report.problems_found();
    Ok(report)
}

/// Inputs of readable results that have neither a producer nor a pin. Damaged results count
/// as producers of what the index says they made: they are reported as damaged, not as holes
/// in everyone else's lineage.
fn orphans(store: &Store, results: &Results) -> Result<Vec<Orphan>, StoreError> {
    let produced: BTreeSet<ArtifactId> = results.index.producers.keys().copied().collect();
    let pinned: BTreeSet<ArtifactId> = store.pins()?.into_iter().map(|(_, a)| a).collect();
    let mut out = Vec::new();
    for (id, m) in &results.ok {
        for (name, a) in &m.inputs {
            if !produced.contains(a) && !pinned.contains(a) {
                out.push(Orphan {
                    result: *id,
                    stage: m.stage.clone(),
                    input: name.clone(),
                    artifact: *a,
                });
            }
        }
    }
    Ok(out)
}

/// Compare the store's result for each locked key with the locked output.
pub fn check_lock(store: &Store, lock: &LockFile) -> Result<LockCheck, StoreError> {
    let mut differences = Vec::new();
    for (stage, entry) in &lock.stage {
        let difference = |problem: String, lock, store| LockDifference {
            stage: stage.clone(),
            problem,
            lock,
            store,
        };
        match store.lookup(&entry.key) {
            Err(e) if e.is_corruption() => differences.push(difference(
                format!("its result is damaged ({e}); {DAMAGED_HINT}"),
                None,
                None,
            )),
            Err(e) => return Err(e),
            Ok(None) => differences.push(difference(
                "no result for this key in the store".into(),
                None,
                None,
            )),
            Ok(Some((_, m))) if m.output != entry.output => differences.push(difference(
                "different output".into(),
                Some(entry.output),
                Some(m.output),
            )),
            Ok(Some(_)) => {}
        }
    }
    Ok(LockCheck {
        pipeline: lock.pipeline.name.clone(),
        stages: lock.stage.len(),
        differences,
    })
}

/// Re-execute a stage in a temporary store holding only its inputs, and compare its output
/// with the stage's current result.
pub fn rerun(store: &Store, req: &RerunRequest<'_>) -> Result<RerunReport, AuditError> {
    let resolved = req.resolved;
    let stage_name = req.stage;
    let i = resolved
        .find(stage_name)
        .map_err(AuditError::UnknownStage)?;
    let cache = Cache::load(store)?;
    let entries = plan::plan(resolved, &cache)?;
    let planned = |name: &str| -> Option<&PlanEntry> { entries.iter().find(|e| e.stage == name) };
    let entry = planned(stage_name).ok_or(AuditError::NotPlanned("stage"))?;
    let PlanStatus::Cached {
        output: original, ..
    } = entry.status
    else {
        return Err(AuditError::NothingToCompare(stage_name.to_string()));
    };
    let stage = &resolved.stages[i];
    // A store inside this process's staging area: removed when `store` is dropped, or at the
    // next open if this process dies.
    let scratch = Store::open(store.staging_dir("audit")?.join("store"))?;
    let mut inputs = BTreeMap::new();
    for (name, &pi) in &stage.inputs {
        let producer = planned(&resolved.stages[pi].name).ok_or(AuditError::NotPlanned("input"))?;
        let PlanStatus::Cached { output, .. } = producer.status else {
            return Err(AuditError::InputWithoutResult(name.clone()));
        };
        let dir = store.artifact_path(&output)?;
        let copied = scratch.put_tree(&dir)?;
        if copied != output {
            return Err(AuditError::CopyChangedId {
                name: name.clone(),
                original: output,
                copied,
            });
        }
        inputs.insert(name.clone(), output);
    }
    let state = exec::run_single(resolved, req.registry, &scratch, req.opts, i, inputs)?;
    let outcome = match state {
        StageState::Executed { output, .. }
        | StageState::Reused { output, .. }
        | StageState::Cached { output, .. } => {
            if output == original {
                RerunOutcome::Same { output }
            } else {
                RerunOutcome::Differs {
                    output: original,
                    rerun_output: output,
                    differing_files: differing_files(store, &original, &scratch, &output)?,
                }
            }
        }
        StageState::Failed { error, log } => RerunOutcome::Failed {
            error: format!("the re-run failed: {error} (log {})", log.display()),
        },
        other => RerunOutcome::Failed {
            error: format!("the re-run did not finish: {other:?}"),
        },
    };
    Ok(RerunReport::new(stage_name, outcome))
}

/// `PATH: OLD -> NEW` for each file whose content differs, and the files only one side has.
fn differing_files(
    store_a: &Store,
    a: &ArtifactId,
    store_b: &Store,
    b: &ArtifactId,
) -> Result<Vec<String>, StoreError> {
    let a = store_a.read_tree(a)?;
    let b = store_b.read_tree(b)?;
    let paths: BTreeSet<&str> = a
        .entries
        .iter()
        .chain(&b.entries)
        .map(|e| e.path.as_str())
        .collect();
    let mut files = Vec::new();
    for p in paths {
        match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) if x.blob != y.blob => {
                files.push(format!("{p}: {} -> {}", x.blob.short(12), y.blob.short(12)));
            }
            (Some(_), None) => files.push(format!("{p}: missing in the re-run")),
            (None, Some(_)) => files.push(format!("{p}: only in the re-run")),
            _ => {}
        }
    }
    Ok(files)
}

/// The lock of a pipeline: every stage's key and current output. Every stage must have a
/// current result; `file` (the pipeline file as the user gave it) is named in the error.
pub fn lock(resolved: &Resolved, cache: &Cache<'_>, file: &str) -> Result<LockFile, AuditError> {
    let entries = plan::plan(resolved, cache)?;
    let mut stages = BTreeMap::new();
    let mut missing = Vec::new();
    for e in &entries {
        match (&e.status, e.key) {
            (PlanStatus::Cached { output, .. }, Some(key)) => {
                stages.insert(
                    e.stage.clone(),
                    LockEntry {
                        key,
                        output: *output,
                    },
                );
            }
            _ => missing.push(e.stage.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(AuditError::Unlocked {
            pipeline: resolved.pipeline.name.clone(),
            file: file.to_string(),
            stages: missing,
        });
    }
    Ok(LockFile {
        pipeline: LockHeader {
            name: resolved.pipeline.name.clone(),
            key_scheme: KEY_SCHEME_VERSION,
        },
        stage: stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::fixture::{stage, Fixture};
    use rise_store::BlobId;

    /// a -> b, and `noisy`, whose output changes at every execution.
    fn pipeline(f: &Fixture) -> Resolved {
        let text = stage("a", &[], "n = 1", "")
            + &stage("b", &[("x", "a")], "n = 2", "")
            + &stage(
                "noisy",
                &[("x", "a")],
                "n = 3",
                "date +%s%N > \"$RISE_OUT/when\";",
            )
            .replace(
                "kind = \"shell\"",
                "kind = \"shell\"\noutputs = [\"out.txt\", \"when\"]",
            );
        f.resolve("p", &text)
    }

    fn rerun_of(f: &Fixture, resolved: &Resolved, stage: &str) -> Result<RerunReport, AuditError> {
        rerun(
            &f.store,
            &RerunRequest {
                resolved,
                registry: &f.registry,
                stage,
                opts: &Fixture::opts(),
            },
        )
    }

    #[test]
    fn a_clean_store_passes_and_its_lock_matches() {
        let f = Fixture::new();
        let resolved = pipeline(&f);
        f.run(&resolved);
        let lock = lock(&resolved, &Cache::load(&f.store).unwrap(), "p.toml").unwrap();
        assert_eq!(lock.stage.len(), 3);
        let report = audit(
            &f.store,
            &AuditRequest {
                verify: true,
                lock: Some(&lock),
            },
        )
        .unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.lineage_results, 3);
        let check = report.lock.as_ref().unwrap();
        assert_eq!((check.pipeline.as_str(), check.stages), ("p", 3));
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["lock_differences"], serde_json::json!([]));
        assert!(v["verify"].is_object() && v.get("rerun").is_none(), "{v}");
    }

    #[test]
    fn a_lock_that_differs_names_each_stage_and_what_differs() {
        let f = Fixture::new();
        let resolved = pipeline(&f);
        f.run(&resolved);
        let mut lock = lock(&resolved, &Cache::load(&f.store).unwrap(), "p.toml").unwrap();
        let b = lock.stage.get_mut("b").unwrap();
        let locked = BlobId::of(b"another output");
        b.output = locked;
        lock.stage.get_mut("a").unwrap().key = rise_store::StageKey([7; 32]);
        let report = audit(
            &f.store,
            &AuditRequest {
                verify: false,
                lock: Some(&lock),
            },
        )
        .unwrap();
        assert!(!report.ok());
        assert!(report.verify.is_none());
        let diffs = &report.lock.as_ref().unwrap().differences;
        assert_eq!(diffs.len(), 2);
        assert_eq!(
            (diffs[0].stage.as_str(), diffs[0].problem.as_str()),
            ("a", "no result for this key in the store")
        );
        assert_eq!(diffs[1].problem, "different output");
        assert_eq!(diffs[1].lock, Some(locked));
        let v = serde_json::to_value(&report).unwrap();
        assert!(v.get("verify").is_none(), "{v}");
        assert!(v["lock_differences"][0].get("lock").is_none(), "{v}");
        assert_eq!(v["lock_differences"][1]["lock"], locked.to_hex());
    }

    #[test]
    fn a_damaged_result_is_a_problem_but_not_a_hole_in_the_lineage() {
        let f = Fixture::new();
        let resolved = pipeline(&f);
        f.run(&resolved);
        f.damage_result("p", "a");
        let report = audit(
            &f.store,
            &AuditRequest {
                verify: false,
                lock: None,
            },
        )
        .unwrap();
        assert!(!report.ok());
        assert_eq!(report.damaged_results.len(), 1);
        assert!(report.lineage_orphans.is_empty(), "{report:?}");
        assert_eq!(report.lineage_results, 2);
    }

    #[test]
    fn a_rerun_compares_outputs_file_by_file() {
        let f = Fixture::new();
        let resolved = pipeline(&f);
        f.run(&resolved);
        let b = rerun_of(&f, &resolved, "b").unwrap();
        assert!(b.reproducible, "{b:?}");
        assert!(matches!(b.outcome, RerunOutcome::Same { .. }));

        let noisy = rerun_of(&f, &resolved, "noisy").unwrap();
        assert!(!noisy.reproducible);
        let RerunOutcome::Differs {
            differing_files, ..
        } = &noisy.outcome
        else {
            panic!("{noisy:?}")
        };
        assert_eq!(differing_files.len(), 1, "{differing_files:?}");
        assert!(
            differing_files[0].starts_with("when: "),
            "{differing_files:?}"
        );

        // An irreproducible re-run makes the audit fail; the JSON keeps its old shape.
        let mut report = audit(
            &f.store,
            &AuditRequest {
                verify: false,
                lock: None,
            },
        )
        .unwrap();
        assert!(report.ok());
        report.add_rerun(noisy);
        assert!(!report.ok());
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["rerun"]["stage"], "noisy");
        assert_eq!(v["rerun"]["reproducible"], false);
        assert!(v["rerun"]["differing_files"].is_array(), "{v}");
        assert!(v["rerun"]["rerun_output"].is_string(), "{v}");
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn what_cannot_be_compared_is_an_error() {
        let f = Fixture::new();
        let resolved = pipeline(&f);
        let err = rerun_of(&f, &resolved, "b").unwrap_err();
        assert!(matches!(err, AuditError::NothingToCompare(_)), "{err}");
        let err = rerun_of(&f, &resolved, "bb").unwrap_err();
        assert!(matches!(err, AuditError::UnknownStage(_)), "{err}");
        let err = lock(&resolved, &Cache::load(&f.store).unwrap(), "p.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot lock p: these stages have no current result: a, b, noisy (run `rise run \
             p.toml` first)"
        );
    }

    #[test]
    fn a_failing_rerun_is_reported_not_raised() {
        let f = Fixture::new();
        let flag = f.dir.path().join("fail");
        let text = stage(
            "a",
            &[],
            "n = 1",
            &format!("test -e {} && exit 3;", flag.display()),
        );
        let resolved = f.resolve("p", &text);
        f.run(&resolved);
        std::fs::write(&flag, "").unwrap();
        let report = rerun_of(&f, &resolved, "a").unwrap();
        assert!(!report.reproducible);
        let RerunOutcome::Failed { error } = &report.outcome else {
            panic!("{report:?}")
        };
        assert!(error.starts_with("the re-run failed: "), "{error}");
    }
}
