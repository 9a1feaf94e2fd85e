//! Reports on a pipeline against the store: what a run would do (`rise plan`), why one stage
//! would run (`rise explain`), each stage's state (`rise status`), and the stage graph
//! (`rise dag`). Each returns a typed report; front ends print it as text or serialize it.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use rise_store::{ArtifactId, ResultId, StageKey, StoreError};
use serde::Serialize;
use serde_json::Value;

use crate::plan::{self, Cache, PlanEntry, PlanStatus};
use crate::resolve::Resolved;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline has no such stage (the message suggests near names).
    #[error("{0}")]
    UnknownStage(String),
    /// A stage of the pipeline is missing from its own plan (a bug).
    #[error("stage missing from plan")]
    NotPlanned,
}

/// What a run would do with every stage, in topological order.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The pipeline's name.
    pub pipeline: String,
    /// One entry per stage.
    pub stages: Vec<PlanEntry>,
}

impl PlanReport {
    /// How many stages would run.
    pub fn runs(&self) -> usize {
        self.stages.iter().filter(|e| e.runs()).count()
    }
}

/// The plan of `resolved` against the results `cache` sees.
pub fn plan_report(resolved: &Resolved, cache: &Cache<'_>) -> Result<PlanReport, StoreError> {
    Ok(PlanReport {
        pipeline: resolved.pipeline.name.clone(),
        stages: plan::plan(resolved, cache)?,
    })
}

/// One stage's key fields now, next to those of its last committed result.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainReport {
    /// The stage.
    pub stage: String,
    /// Its key, when all its inputs have results.
    pub key: Option<StageKey>,
    /// Its last committed result, if any.
    pub last_result: Option<LastResult>,
    /// What a run would do with it.
    pub status: PlanStatus,
    /// Every key field (kind, version, seed, each param, each input): now and then.
    pub fields: Vec<FieldRow>,
    /// Its kind.
    #[serde(skip)]
    pub kind: String,
    /// Its kind's version.
    #[serde(skip)]
    pub kind_version: u32,
    /// The pipeline file.
    #[serde(skip)]
    pub file: PathBuf,
    /// The line of the stage's definition.
    #[serde(skip)]
    pub line: usize,
}

/// The last committed result of a stage.
#[derive(Debug, Clone, Serialize)]
pub struct LastResult {
    /// The result.
    pub result: ResultId,
    /// Its key.
    pub key: StageKey,
    /// When it finished (RFC 3339).
    pub finished_at: String,
}

/// One key field of a stage, now and in its last result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldRow {
    /// `kind`, `kind version`, `seed`, `params.PATH` or `input NAME (from STAGE)`.
    pub field: String,
    /// Its value now.
    pub now: String,
    /// Its value in the last result (`-` without one).
    pub last: String,
    /// Whether it changed since the last result (never said of the seed, which results do
    /// not record).
    pub differs: bool,
}

impl ExplainReport {
    /// Whether a run would execute the stage.
    pub fn runs(&self) -> bool {
        matches!(self.status, PlanStatus::Run { .. })
    }

    /// Why the stage runs or does not, one line per reason.
    pub fn why(&self) -> Vec<String> {
        match &self.status {
            PlanStatus::Cached { .. } => {
                vec!["cached: a valid result exists for this key".to_string()]
            }
            PlanStatus::Run { why } => why.clone(),
        }
    }
}

/// Explain stage `stage_name` of `resolved`: its key fields now and in its last result.
pub fn explain(
    resolved: &Resolved,
    cache: &Cache<'_>,
    stage_name: &str,
) -> Result<ExplainReport, ExplainError> {
    let i = resolved
        .find(stage_name)
        .map_err(ExplainError::UnknownStage)?;
    let stage = &resolved.stages[i];
    let entries = plan::plan(resolved, cache)?;
    let entry = entries
        .iter()
        .find(|e| e.stage == stage.name)
        .ok_or(ExplainError::NotPlanned)?;
    let outputs: BTreeMap<&str, ArtifactId> = entries
        .iter()
        .filter_map(|e| match &e.status {
            PlanStatus::Cached { output, .. } => Some((e.stage.as_str(), *output)),
            PlanStatus::Run { .. } => None,
        })
        .collect();
    let last = cache.latest(&resolved.pipeline.name, &stage.name);
    let now_params = plan::flatten(&stage.recorded_params);
    let then_params = last
        .as_ref()
        .map(|(_, m)| plan::flatten(&m.params))
        .unwrap_or_default();
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "kind".into(),
            stage.kind.clone(),
            last.as_ref().map_or("-".into(), |(_, m)| m.kind.clone()),
        ),
        (
            "kind version".into(),
            stage.kind_version.to_string(),
            last.as_ref()
                .map_or("-".into(), |(_, m)| m.kind_version.to_string()),
        ),
        (
            "seed".into(),
            stage.seed.to_string(),
            "(not recorded)".into(),
        ),
    ];
    let paths: BTreeSet<&String> = now_params.keys().chain(then_params.keys()).collect();
    for path in paths {
        rows.push((
            format!("params.{path}"),
            now_params.get(path).cloned().unwrap_or("(unset)".into()),
            if last.is_some() {
                then_params.get(path).cloned().unwrap_or("(unset)".into())
            } else {
                "-".into()
            },
        ));
    }
    for (name, &pi) in &stage.inputs {
        let producer = &resolved.stages[pi].name;
        rows.push((
            format!("input {name} (from {producer})"),
            outputs
                .get(producer.as_str())
                .map_or("(will be rebuilt)".into(), |id| id.short(12)),
            last.as_ref()
                .and_then(|(_, m)| m.inputs.get(name))
                .map_or("-".into(), |id| id.short(12)),
        ));
    }
    let fields = rows
        .into_iter()
        .map(|(field, now, last_value)| FieldRow {
            differs: last.is_some() && now != last_value && field != "seed",
            field,
            now,
            last: last_value,
        })
        .collect();
    Ok(ExplainReport {
        stage: stage.name.clone(),
        key: entry.key,
        last_result: last.as_ref().map(|(id, m)| LastResult {
            result: *id,
            key: m.key,
            finished_at: m.finished_at.clone(),
        }),
        status: entry.status.clone(),
        fields,
        kind: stage.kind.clone(),
        kind_version: stage.kind_version,
        file: resolved.pipeline.path.clone(),
        line: stage.line,
    })
}

/// Every stage's state, and the runs in progress on the store.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The pipeline's name.
    pub pipeline: String,
    /// One entry per stage, in topological order.
    pub stages: Vec<StageStatus>,
    /// Processes holding the store's run lock.
    pub runs_in_progress: Vec<RunInProgress>,
}

/// One stage's state.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// The stage.
    pub stage: String,
    /// Whether its result is current.
    pub state: Freshness,
    /// Its last committed result, if any.
    pub last_result: Option<StatusResult>,
    /// The process executing its key now, if any.
    pub running_pid: Option<u32>,
    /// What that process says it is doing (a Slurm driver names the job: `... slurm job N`).
    pub running_what: Option<String>,
}

/// Whether a stage's last result is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Freshness {
    /// A valid result exists for its key.
    #[serde(rename = "up to date")]
    UpToDate,
    /// It has a result, but not for its current key.
    #[serde(rename = "stale")]
    Stale,
    /// It has no result.
    #[serde(rename = "never run")]
    NeverRun,
    /// A process holds its key's lock.
    #[serde(rename = "running")]
    Running,
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Freshness::UpToDate => "up to date",
            Freshness::Stale => "stale",
            Freshness::NeverRun => "never run",
            Freshness::Running => "running",
        })
    }
}

/// A stage's last committed result, as `rise status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusResult {
    /// The result.
    pub result: ResultId,
    /// Its output.
    pub output: ArtifactId,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Its metrics.
    pub metrics: Value,
}

/// A process holding the store's run lock.
#[derive(Debug, Clone, Serialize)]
pub struct RunInProgress {
    /// Its process id.
    pub pid: u32,
    /// Its command line.
    pub command: String,
}

/// The state of every stage of `resolved`.
pub fn status(resolved: &Resolved, cache: &Cache<'_>) -> Result<StatusReport, StoreError> {
    let store = cache.store();
    let entries = plan::plan(resolved, cache)?;
    let running = store.running();
    let stages = entries
        .iter()
        .map(|e| {
            let last = cache.latest(&resolved.pipeline.name, &e.stage);
            let state = match (&e.status, &last) {
                (PlanStatus::Cached { .. }, _) => Freshness::UpToDate,
                (PlanStatus::Run { .. }, Some(_)) => Freshness::Stale,
                (PlanStatus::Run { .. }, None) => Freshness::NeverRun,
            };
            // A lock that cannot be inspected says nothing about who runs the key.
            let holder = e.key.and_then(|k| store.key_lock_holder(&k).ok().flatten());
            StageStatus {
                stage: e.stage.clone(),
                state: if holder.is_some() {
                    Freshness::Running
                } else {
                    state
                },
                last_result: last.map(|(id, m)| StatusResult {
                    result: id,
                    output: m.output,
                    finished_at: m.finished_at,
                    metrics: m.metrics,
                }),
                running_what: holder.as_ref().map(|h| h.what.clone()),
                running_pid: holder.map(|h| h.pid),
            }
        })
        .collect();
    Ok(StatusReport {
        pipeline: resolved.pipeline.name.clone(),
        stages,
        runs_in_progress: running
            .into_iter()
            .map(|h| RunInProgress {
                pid: h.pid,
                command: h.command,
            })
            .collect(),
    })
}

/// The stage graph.
#[derive(Debug, Clone, Serialize)]
pub struct DagReport {
    /// The pipeline's name.
    pub pipeline: String,
    /// Stages in topological order.
    pub stages: Vec<DagStage>,
}

/// One stage of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DagStage {
    /// The stage.
    pub stage: String,
    /// Its kind.
    pub kind: String,
    /// Input name -> the stage producing it.
    pub inputs: BTreeMap<String, String>,
    /// The line of its definition.
    pub line: usize,
}

/// The stage graph of `resolved`.
pub fn dag(resolved: &Resolved) -> DagReport {
    DagReport {
        pipeline: resolved.pipeline.name.clone(),
        stages: resolved
            .order
            .iter()
            .map(|&i| {
                let s = &resolved.stages[i];
                DagStage {
                    stage: s.name.clone(),
                    kind: s.kind.clone(),
                    inputs: s
                        .inputs
                        .iter()
                        .map(|(n, &pi)| (n.clone(), resolved.stages[pi].name.clone()))
                        .collect(),
                    line: s.line,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::fixture::{stage, Fixture};

    fn diamond(c_params: &str) -> String {
        stage("a", &[], "n = 1, nested = { x = 1, y = [1, 2] }", "")
            + &stage("b", &[("x", "a")], "n = 2", "")
            + &stage("c", &[("x", "a")], c_params, "")
            + &stage("d", &[("left", "b"), ("right", "c")], "n = 4", "")
    }

    fn field<'r>(report: &'r ExplainReport, name: &str) -> &'r FieldRow {
        report
            .fields
            .iter()
            .find(|f| f.field == name)
            .unwrap_or_else(|| panic!("no field {name} in {:?}", report.fields))
    }

    #[test]
    fn an_edited_param_marks_its_field_and_the_inputs_it_changes() {
        let f = Fixture::new();
        f.run(&f.resolve("p", &diamond("n = 3")));
        let edited = f.resolve("p", &diamond("n = 33"));
        let cache = Cache::load(&f.store).unwrap();

        let c = explain(&edited, &cache, "c").unwrap();
        assert!(c.runs());
        assert_eq!(c.why(), ["params.params.n: 3 -> 33"]);
        let n = field(&c, "params.params.n");
        assert_eq!(
            (n.now.as_str(), n.last.as_str(), n.differs),
            ("33", "3", true)
        );
        assert!(!field(&c, "kind").differs);
        // The seed is not recorded in results: never marked.
        let seed = field(&c, "seed");
        assert_eq!(
            (seed.last.as_str(), seed.differs),
            ("(not recorded)", false)
        );
        assert!(c.key.is_some() && c.last_result.is_some());

        // d's key is unknown until c is rebuilt; its right input is marked.
        let d = explain(&edited, &cache, "d").unwrap();
        assert_eq!(d.key, None);
        let right = field(&d, "input right (from c)");
        assert_eq!(right.now, "(will be rebuilt)");
        assert!(right.differs);
        assert!(!field(&d, "input left (from b)").differs);

        // a is cached: every field as it was, nested params flattened.
        let a = explain(&edited, &cache, "a").unwrap();
        assert!(!a.runs());
        assert_eq!(a.why(), ["cached: a valid result exists for this key"]);
        assert!(a.fields.iter().all(|f| !f.differs), "{:?}", a.fields);
        assert_eq!(field(&a, "params.params.nested.y[1]").now, "2");
        assert_eq!(a.line, 5);
        assert_eq!(a.file, f.dir.path().join("p.toml"));

        let err = explain(&edited, &cache, "cc").unwrap_err().to_string();
        assert!(err.contains("has no stage `cc`"), "{err}");
    }

    #[test]
    fn explain_without_a_result_compares_with_nothing() {
        let f = Fixture::new();
        let resolved = f.resolve("p", &diamond("n = 3"));
        let report = explain(&resolved, &Cache::load(&f.store).unwrap(), "a").unwrap();
        assert!(report.last_result.is_none());
        assert_eq!(report.why(), ["never run"]);
        assert!(report
            .fields
            .iter()
            .all(|f| f.last == "-" || f.field == "seed"));
        assert!(report.fields.iter().all(|f| !f.differs));
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["last_result"], Value::Null);
        assert_eq!(v["status"]["status"], "run");
        assert!(v.get("kind").is_none() && v.get("line").is_none(), "{v}");
    }

    #[test]
    fn plan_and_status_say_what_would_run() {
        let f = Fixture::new();
        f.run(&f.resolve("p", &diamond("n = 3")));
        let edited = f.resolve("p", &(diamond("n = 33") + &stage("e", &[], "n = 5", "")));
        let cache = Cache::load(&f.store).unwrap();
        let plan = plan_report(&edited, &cache).unwrap();
        assert_eq!(plan.pipeline, "p");
        let runs: Vec<&str> = plan
            .stages
            .iter()
            .filter(|e| e.runs())
            .map(|e| e.stage.as_str())
            .collect();
        assert_eq!(runs, ["c", "d", "e"]);
        assert_eq!(plan.runs(), 3);

        let status = status(&edited, &cache).unwrap();
        let states: Vec<(&str, Freshness)> = status
            .stages
            .iter()
            .map(|s| (s.stage.as_str(), s.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a", Freshness::UpToDate),
                ("b", Freshness::UpToDate),
                ("c", Freshness::Stale),
                ("d", Freshness::Stale),
                ("e", Freshness::NeverRun)
            ]
        );
        assert!(status.runs_in_progress.is_empty());
        assert!(status.stages.iter().all(|s| s.running_pid.is_none()));
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["stages"][0]["state"], "up to date");
        assert_eq!(v["stages"][4]["state"], "never run");
        assert_eq!(v["stages"][4]["last_result"], Value::Null);
        assert_eq!(Freshness::Stale.to_string(), "stale");
    }

    #[test]
    fn dag_lists_each_stage_with_its_producers() {
        let f = Fixture::new();
        let report = dag(&f.resolve("p", &diamond("n = 3")));
        let d = report.stages.last().unwrap();
        assert_eq!(d.stage, "d");
        assert_eq!(
            d.inputs,
            BTreeMap::from([("left".into(), "b".into()), ("right".into(), "c".into())])
        );
        assert_eq!(report.stages[0].stage, "a");
        assert!(report.stages[0].inputs.is_empty());
    }
}
