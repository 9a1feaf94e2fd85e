//! The `dataset` kind: problems from the synthetic generator, GSM8K, MATH or any JSONL.
//!
//! Output: `problems.jsonl` (rise-data's [`Problem`] per line) and `dataset.json`
//! ([`DatasetMeta`]: which grader applies, where the problems came from, how many).
use std::path::Path;

use rise_data::grade::TaskKind;
use rise_data::synthetic::SyntheticConfig;
use rise_data::task::FieldMap;
use rise_data::Problem;
use rise_engine::{Execution, ParamError, StageContext, StageError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds::KindSchema;
use crate::params::{int, Ty, TypedParams};
use crate::stage_params;

/// `dataset.json`: what downstream stages need to know about a dataset artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Which grading rules apply.
    pub task: TaskKind,
    /// `synthetic`, `gsm8k`, `math` or `jsonl`.
    pub source: String,
    /// `train` or `test` for synthetic data; the file name otherwise.
    pub split: String,
    /// Problems in `problems.jsonl`.
    pub count: usize,
}

/// The problems, one JSON object a line, in the dataset's order.
pub const PROBLEMS_FILE: &str = "problems.jsonl";
/// The [`DatasetMeta`] of the artifact.
pub const META_FILE: &str = "dataset.json";

fn check_synthetic(v: &Value) -> Result<Value, String> {
    let cfg: SyntheticConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    let mut out = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
    // Without an explicit seed the stage seed is used, so the pipeline seed varies the data;
    // keep the resolved table free of the generator's placeholder seed.
    if v.get("seed").is_none() {
        if let Some(m) = out.as_object_mut() {
            m.remove("seed");
        }
    }
    Ok(out)
}

fn check_fields(v: &Value) -> Result<Value, String> {
    let map: FieldMap = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(map).map_err(|e| e.to_string())
}

stage_params! {
    /// The `dataset` kind's params.
    pub struct DatasetParams {
        source: String = Ty::Choice(&["synthetic", "gsm8k", "math", "jsonl"]), required,
            "where the problems come from";
        split: String = Ty::Choice(&["train", "test"]), default "train",
            "synthetic only: which split of the generated pair (train and test never share a \
             question when generated with the same settings and seed)";
        path: Option<String> = Ty::File, optional, "the JSONL file (gsm8k, math, jsonl)";
        task: Option<TaskKind> = Ty::Choice(&TaskKind::NAMES), optional,
            "grading rules (default: from `source`; required for jsonl)";
        limit: Option<usize> = int(1, i64::MAX), optional, "keep only the first N problems";
        // A table rather than `SyntheticConfig`: whether it names a seed matters (without one
        // the stage seed is used), and the config's own default seed would hide that.
        synthetic: Value = Ty::Table(check_synthetic), default {},
            "synthetic generator knobs: n_train, n_test, min_steps, max_steps, max_operand, \
             max_factor, max_value, ops, seed (default: the stage seed)";
        fields: Option<FieldMap> = Ty::Table(check_fields), optional,
            "jsonl field mapping: question, solution, answer, id, meta, \
             strip_calculator_annotations";
    }
}

/// The `dataset` kind.
pub static SCHEMA: KindSchema = KindSchema {
    kind: "dataset",
    version: 1,
    execution: Execution::InProcess,
    required_inputs: &[],
    optional_inputs: &[],
    any_inputs: false,
    fields: DatasetParams::FIELDS,
    outputs: &[PROBLEMS_FILE, META_FILE],
    about: "Problems for sampling, training or evaluation: `synthetic` (GSM8K-shaped arithmetic \
            generated from a seed), `gsm8k`, `math` (MATH / MATH500) or `jsonl` with a field \
            mapping. Malformed rows and empty files fail the stage naming the file and line.",
    validate: Some(|v| {
        let source = v["source"].as_str().unwrap_or_default();
        if source != "synthetic" && v["path"].is_null() {
            return Err(ParamError::new(
                "params.path",
                format!("required for source = \"{source}\""),
            ));
        }
        if source == "jsonl" && v["task"].is_null() {
            return Err(ParamError::new(
                "params.task",
                "required for source = \"jsonl\" (gsm8k, math or synthetic grading)",
            ));
        }
        if source != "jsonl" && !v["fields"].is_null() {
            return Err(ParamError::new(
                "params.fields",
                "only for source = \"jsonl\"",
            ));
        }
        Ok(())
    }),
    omit_when_absent: &[],
};

/// Runs a `dataset` stage.
pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    let p: DatasetParams = ctx.params()?;
    let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    let (task, split, mut problems) = match p.source.as_str() {
        "synthetic" => {
            let mut table = p.synthetic.clone();
            if table.get("seed").is_none() {
                table["seed"] = Value::from(ctx.seed);
            }
            let cfg: SyntheticConfig = serde_json::from_value(table).map_err(|e| fail(&e))?;
            let split_name = p.split.clone();
            let split = rise_data::synthetic::generate(&cfg).map_err(|e| fail(&e))?;
            let problems = if split_name == "test" {
                split.test
            } else {
                split.train
            };
            (TaskKind::Synthetic, split_name, problems)
        }
        other => {
            // The schema's check makes `path` required for every source but synthetic.
            let path = Path::new(p.path.as_deref().unwrap_or_default());
            let problems = match other {
                "gsm8k" => rise_data::task::load_gsm8k(path),
                "math" => rise_data::task::load_math(path),
                _ => rise_data::task::load_jsonl(path, &p.fields.clone().unwrap_or_default()),
            }
            .map_err(|e| fail(&e))?;
            let task = match p.task {
                Some(t) => t,
                None if other == "math" => TaskKind::Math,
                None => TaskKind::Gsm8k,
            };
            let split = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (task, split, problems)
        }
    };
    if let Some(n) = p.limit {
        problems.truncate(n);
    }
    if problems.is_empty() {
        return Err(fail(&format!(
            "the {} dataset ({split}) has no problems",
            p.source
        )));
    }
    rise_data::task::write_problems(ctx.out_dir.join(PROBLEMS_FILE), &problems)
        .map_err(|e| fail(&e))?;
    let meta = DatasetMeta {
        task,
        source: p.source,
        split,
        count: problems.len(),
    };
    write_json(&ctx.out_dir.join(META_FILE), &meta)?;
    ctx.metric("problems", Value::from(problems.len()));
    ctx.log(format!(
        "{} problems ({} / {}), graded as {}",
        meta.count, meta.source, meta.split, meta.task
    ));
    Ok(())
}

/// Writes pretty JSON with a trailing newline.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StageError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text)
        .map_err(|e| StageError::with_source(format!("{}: {e}", path.display()), e))
}

/// Reads JSON, naming the file on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::with_source(format!("{}: {e}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| StageError::msg(format!("{}: {e}", path.display())))
}

/// Loads a dataset artifact written by this kind.
pub fn load(dir: &Path) -> Result<(DatasetMeta, Vec<Problem>), StageError> {
    let meta: DatasetMeta = read_json(&dir.join(META_FILE))?;
    let problems = rise_data::task::read_problems(dir.join(PROBLEMS_FILE))
        .map_err(|e| StageError::msg(e.to_string()))?;
    Ok((meta, problems))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn ctx(params: Value, out: &Path) -> StageContext {
        StageContext::from_spec(
            rise_engine::StageSpec {
                pipeline: "p".into(),
                stage: "data".into(),
                kind: "dataset".into(),
                kind_version: 1,
                params,
                inputs: Default::default(),
                out_dir: out.to_path_buf(),
                scratch_dir: out.join("scratch"),
                seed: 7,
                device: "cpu".into(),
                threads: 1,
            },
            rise_engine::Progress::discard(),
            Default::default(),
        )
    }

    fn run(params: Value) -> Result<(tempfile::TempDir, DatasetMeta, Vec<Problem>), StageError> {
        let resolved = SCHEMA.resolve(&params).map_err(StageError::from)?;
        let dir = tempfile::tempdir().unwrap();
        super::run(&ctx(resolved, dir.path()))?;
        let (meta, problems) = load(dir.path())?;
        Ok((dir, meta, problems))
    }

    #[test]
    fn synthetic_train_and_test_are_disjoint_and_seeded() {
        let knobs = json!({"n_train": 30, "n_test": 10});
        let (_d, meta, train) = run(json!({"source": "synthetic", "synthetic": knobs})).unwrap();
        let (_e, _, test) =
            run(json!({"source": "synthetic", "split": "test", "synthetic": knobs})).unwrap();
        assert_eq!(meta.task, TaskKind::Synthetic);
        assert_eq!((train.len(), test.len()), (30, 10));
        assert!(train
            .iter()
            .all(|a| test.iter().all(|b| a.question != b.question)));
        let (_f, _, again) = run(json!({"source": "synthetic", "synthetic": knobs})).unwrap();
        assert_eq!(again, train);
        let seeded = json!({"n_train": 30, "n_test": 10, "seed": 99});
        let (_g, _, other) = run(json!({"source": "synthetic", "synthetic": seeded})).unwrap();
        assert_ne!(other, train);
    }

    #[test]
    fn jsonl_with_limit_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.jsonl");
        std::fs::write(
            &file,
            "{\"q\": \"1+1?\", \"a\": \"2\"}\n{\"q\": \"2+2?\", \"a\": \"4\"}\n",
        )
        .unwrap();
        let params = json!({"source": "jsonl", "task": "gsm8k", "path": file, "limit": 1,
                            "fields": {"question": "q", "answer": "a", "solution": null}});
        let (_d, meta, problems) = run(params).unwrap();
        assert_eq!((meta.count, problems[0].answer.as_str()), (1, "2"));

        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        let e = run(json!({"source": "gsm8k", "path": empty}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage data") && e.contains("empty.jsonl"), "{e}");

        let missing = dir.path().join("missing.jsonl");
        let e = run(json!({"source": "gsm8k", "path": missing}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
    }

    #[test]
    fn params_are_cross_checked() {
        let e = SCHEMA.resolve(&json!({"source": "gsm8k"})).unwrap_err();
        assert_eq!(e.field, "params.path");
        let e = SCHEMA
            .resolve(&json!({"source": "jsonl", "path": "x"}))
            .unwrap_err();
        assert_eq!(e.field, "params.task");
        let e = SCHEMA
            .resolve(&json!({"source": "synthetic", "synthetic": {"max_steps": 99}}))
            .unwrap_err();
        assert_eq!(e.field, "params.synthetic");
        assert!(e.message.contains("max_steps"), "{e}");
    }

    #[test]
    fn gsm8k_slice_when_the_data_is_present() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/gsm8k/test.jsonl");
        if !path.exists() {
            eprintln!("skipping: {} is missing", path.display());
            return;
        }
        let (_d, meta, problems) =
            run(json!({"source": "gsm8k", "path": path, "limit": 20})).unwrap();
        assert_eq!((meta.task, problems.len()), (TaskKind::Gsm8k, 20));
    }
}
