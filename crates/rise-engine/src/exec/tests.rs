//! The scheduler, driven through [`run`] with a registry of one in-process test kind whose
//! behaviour each stage's params choose (write, fail, wait for company, cancel the run).
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rise_store::Store;
use serde_json::Value;

use super::*;
use crate::pipeline::Pipeline;
use crate::resolve::resolve;
use crate::stage::{Execution, InputSpec, ParamError, Stage, StageContext, StageError};

/// What the test kind saw: stages in the order they started, and the most running at once.
#[derive(Default)]
struct Trace {
    started: Mutex<Vec<String>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    cancelled_once: AtomicBool,
}

/// Kind `step`: writes its params to `out.txt`. Params: `fail` (return an error), `cancel`
/// (set the run's cancel flag, as Ctrl-C would, then finish normally; only the first time),
/// `company` (wait, at most
/// 10 s, until that many `step` stages run at once), `ms` (sleep that long).
struct Step(Arc<Trace>);

impl Stage for Step {
    fn kind(&self) -> &'static str {
        "step"
    }
    fn version(&self) -> u32 {
        1
    }
    fn execution(&self) -> Execution {
        Execution::InProcess
    }
    fn inputs(&self) -> InputSpec {
        InputSpec::any()
    }
    fn resolve_params(&self, params: &Value) -> Result<Value, ParamError> {
        Ok(params.clone())
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let trace = &self.0;
        trace.started.lock().unwrap().push(ctx.stage.clone());
        let now = trace.active.fetch_add(1, Ordering::SeqCst) + 1;
        trace.max_active.fetch_max(now, Ordering::SeqCst);
        let result = self.body(ctx);
        trace.active.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Step {
    fn body(&self, ctx: &StageContext) -> Result<(), StageError> {
        let flag = |name: &str| ctx.params.get(name).and_then(Value::as_bool) == Some(true);
        if let Some(company) = ctx.params.get("company").and_then(Value::as_u64) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.0.active.load(Ordering::SeqCst) < company as usize {
                if Instant::now() > deadline {
                    return Err(StageError::msg(format!("no {company} stages ran at once")));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(ms) = ctx.params.get("ms").and_then(Value::as_u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if flag("fail") {
            return Err(StageError::msg("asked to fail"));
        }
        if flag("cancel") && !self.0.cancelled_once.swap(true, Ordering::SeqCst) {
            ctx.cancel.store(true, Ordering::SeqCst);
        }
        std::fs::create_dir_all(&ctx.out_dir)?;
        std::fs::write(ctx.out_dir.join("out.txt"), ctx.params.to_string())?;
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    registry: Registry,
    trace: Arc<Trace>,
    resolved: Resolved,
}

fn fixture(stages: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let trace = Arc::new(Trace::default());
    let mut registry = Registry::new();
    registry.register(Box::new(Step(trace.clone())));
    let text = format!("[pipeline]\nname = \"t\"\n{stages}");
    let path = dir.path().join("p.toml");
    let pipeline = Pipeline::parse(Path::new(&path), text).unwrap();
    let resolved = resolve(pipeline, &registry).unwrap();
    Fixture {
        _dir: dir,
        store,
        registry,
        trace,
        resolved,
    }
}

fn opts(jobs: usize) -> RunOptions {
    RunOptions {
        jobs,
        display: DisplayMode::Quiet,
        ..RunOptions::default()
    }
}

impl Fixture {
    fn run(&self, opts: &RunOptions) -> RunSummary {
        run(&self.resolved, &self.registry, &self.store, opts).unwrap()
    }

    fn started(&self) -> Vec<String> {
        std::mem::take(&mut *self.trace.started.lock().unwrap())
    }
}

fn state<'s>(summary: &'s RunSummary, stage: &str) -> &'s StageState {
    &summary
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .unwrap_or_else(|| panic!("no stage {stage}"))
        .state
}

fn label(summary: &RunSummary, stage: &str) -> &'static str {
    state(summary, stage).label()
}

#[test]
fn stages_run_producers_first_in_file_order_then_come_from_the_cache() {
    let f = fixture(
        r#"
[stage.a]
kind = "step"
params = { n = 1 }
[stage.lone]
kind = "step"
params = { n = 2 }
[stage.b]
kind = "step"
inputs = { x = "a" }
[stage.c]
kind = "step"
inputs = { x = "b", y = "lone" }
"#,
    );
    let summary = f.run(&opts(1));
    assert!(summary.success(), "{summary:?}");
    assert_eq!(f.started(), ["a", "lone", "b", "c"]);
    let names: Vec<&str> = summary.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["a", "lone", "b", "c"]);
    assert!(summary
        .stages
        .iter()
        .all(|s| matches!(s.state, StageState::Executed { .. })));
    let again = f.run(&opts(1));
    assert!(f.started().is_empty());
    assert_eq!(again.counts().get("cached"), Some(&4));
    for (first, second) in summary.stages.iter().zip(&again.stages) {
        assert_eq!(first.key, second.key);
        assert_eq!(first.state.output(), second.state.output());
    }
}

#[test]
fn targets_select_their_ancestors_only() {
    let f = fixture(
        r#"
[stage.a]
kind = "step"
[stage.b]
kind = "step"
inputs = { x = "a" }
[stage.other]
kind = "step"
params = { n = 3 }
"#,
    );
    let summary = f.run(&RunOptions {
        targets: vec!["b".into()],
        ..opts(1)
    });
    assert_eq!(f.started(), ["a", "b"]);
    assert_eq!(summary.stages.len(), 2);
    let err = run(
        &f.resolved,
        &f.registry,
        &f.store,
        &RunOptions {
            targets: vec!["bb".into()],
            ..opts(1)
        },
    )
    .unwrap_err();
    assert!(matches!(err, RunError::UnknownStage(_)), "{err}");
}

const THREE_TOGETHER: &str = r#"
[stage.a]
kind = "step"
params = { n = 1, company = 2 }
[stage.b]
kind = "step"
params = { n = 2, company = 2 }
[stage.c]
kind = "step"
params = { n = 3, ms = 50 }
"#;

#[test]
fn jobs_bounds_the_stages_running_at_once() {
    // a and b each wait until two stages run: they can only succeed side by side.
    let f = fixture(THREE_TOGETHER);
    let summary = f.run(&opts(2));
    assert!(summary.success(), "{summary:?}");
    assert_eq!(f.trace.max_active.load(Ordering::SeqCst), 2);

    let f = fixture(
        r#"
[stage.a]
kind = "step"
params = { n = 1, ms = 30 }
[stage.b]
kind = "step"
params = { n = 2, ms = 30 }
[stage.c]
kind = "step"
params = { n = 3, ms = 30 }
"#,
    );
    assert!(f.run(&opts(1)).success());
    assert_eq!(f.trace.max_active.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failure_skips_its_consumers_and_the_rest_keeps_going() {
    let f = fixture(
        r#"
[stage.bad]
kind = "step"
params = { fail = true }
[stage.after_bad]
kind = "step"
inputs = { x = "bad" }
[stage.after_after]
kind = "step"
inputs = { x = "after_bad" }
[stage.good]
kind = "step"
params = { n = 1 }
[stage.after_good]
kind = "step"
inputs = { x = "good" }
"#,
    );
    let summary = f.run(&opts(1));
    assert!(!summary.success());
    assert_eq!(f.started(), ["bad", "good", "after_good"]);
    match state(&summary, "bad") {
        StageState::Failed { error, log } => {
            assert!(error.contains("asked to fail"), "{error}");
            assert!(log.exists());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(state(&summary, "after_bad"), StageState::Skipped { because } if because == "bad")
    );
    assert!(
        matches!(state(&summary, "after_after"), StageState::Skipped { because } if because == "after_bad")
    );
    assert_eq!(label(&summary, "good"), "executed");
    assert_eq!(label(&summary, "after_good"), "executed");
    assert_eq!(summary.failed().count(), 1);
}

#[test]
fn cancelling_starts_nothing_new_and_commits_nothing_of_the_running_stage() {
    let f = fixture(
        r#"
[stage.first]
kind = "step"
params = { n = 1 }
[stage.stopper]
kind = "step"
inputs = { x = "first" }
params = { cancel = true }
[stage.after]
kind = "step"
inputs = { x = "stopper" }
[stage.lone]
kind = "step"
params = { n = 2 }
"#,
    );
    // `lone` is independent but comes after `stopper` in the order: with one job it would start
    // only once `stopper` is done, and by then the run is cancelled.
    let o = opts(1);
    let summary = f.run(&o);
    assert!(summary.cancelled && !summary.success());
    assert_eq!(f.started(), ["first", "stopper"]);
    assert_eq!(label(&summary, "first"), "executed");
    for stage in ["stopper", "after", "lone"] {
        assert_eq!(label(&summary, stage), "not run", "{stage}");
    }
    // Nothing of `stopper` was committed: the next run executes it (and it cancels no more).
    o.cancel.store(false, Ordering::SeqCst);
    let summary = f.run(&o);
    assert!(summary.success(), "{summary:?}");
    assert_eq!(f.started(), ["stopper", "after", "lone"]);
    assert_eq!(label(&summary, "first"), "cached");
}

#[test]
fn twin_keys_execute_once_per_run() {
    let f = fixture(
        r#"
[stage.one]
kind = "step"
params = { n = 1, ms = 20 }
[stage.two]
kind = "step"
params = { n = 1, ms = 20 }
[stage.use_two]
kind = "step"
inputs = { x = "two" }
[stage.bad1]
kind = "step"
params = { fail = true }
[stage.bad2]
kind = "step"
params = { fail = true }
"#,
    );
    let summary = f.run(&opts(4));
    let started = f.started();
    assert_eq!(
        started.iter().filter(|s| s.starts_with("bad")).count(),
        1,
        "{started:?}"
    );
    assert_eq!(
        started
            .iter()
            .filter(|s| *s == "one" || *s == "two")
            .count(),
        1,
        "{started:?}"
    );
    let report = |name: &str| summary.stages.iter().find(|s| s.stage == name).unwrap();
    assert_eq!(report("one").key, report("two").key);
    assert_eq!(report("one").state.output(), report("two").state.output());
    let labels = [label(&summary, "one"), label(&summary, "two")];
    assert!(
        labels.contains(&"executed") && labels.contains(&"cached"),
        "{labels:?}"
    );
    assert_eq!(label(&summary, "use_two"), "executed");
    for bad in ["bad1", "bad2"] {
        assert_eq!(label(&summary, bad), "failed", "{bad}");
    }
}

#[test]
fn one_stage_executes_and_commits_without_the_scheduler() {
    let f = fixture(
        r#"
[stage.a]
kind = "step"
params = { n = 1 }
[stage.b]
kind = "step"
inputs = { x = "a" }
"#,
    );
    let summary = f.run(&opts(1));
    let a_out = state(&summary, "a").output().unwrap();
    let b_out = state(&summary, "b").output().unwrap();
    f.started();
    // `b` has a valid result, and is executed again all the same, its result committed.
    let inputs = [("x".to_string(), a_out)].into();
    let b = f.resolved.index_of("b").unwrap();
    let again = run_single(&f.resolved, &f.registry, &f.store, &opts(1), b, inputs).unwrap();
    assert_eq!(f.started(), ["b"]);
    match again {
        StageState::Executed { result, output, .. } => {
            assert_eq!(output, b_out);
            let manifest = f.store.read_result(&result).unwrap();
            assert_eq!(Some(manifest.key), summary.stages[1].key);
        }
        other => panic!("{other:?}"),
    }
}
