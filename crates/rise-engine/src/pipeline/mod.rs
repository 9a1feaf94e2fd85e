//! Pipeline files: parsing (`stage_table`), iteration templates and reference resolution
//! (`iterations`), with every error located by file, line and field (`source`) and unknown
//! names answered with the nearest known one (`suggest`).
//!
//! ```toml
//! [pipeline]
//! name = "demo"
//! seed = 1
//!
//! [stage.numbers]
//! kind = "shell"
//! cmd = 'seq 1 "$RISE_PARAM_N" > "$RISE_OUT/numbers.txt"'
//! params = { n = 10 }
//! outputs = ["numbers.txt"]
//!
//! [iterations]
//! count = 2                  # [iter.stage.X] becomes iter1/X, iter2/X
//! init = { step = "numbers" } # what "@prev.step" means in iteration 1
//!
//! [iter.stage.step]
//! kind = "shell"
//! inputs = { prev = "@prev.step" }
//! cmd = 'cat "$RISE_IN_PREV"/* > "$RISE_OUT/out.txt"'
//! ```
//! Input references: a stage name; `iterK/X`; `@last.X` (the last iteration's X); inside a
//! template, `@prev.X` (the previous iteration's X, or `iterations.init.X` in iteration 1) and a
//! plain name, which means this iteration's stage if the template has one, else a top-level stage.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{PipelineError, PipelineErrors};

mod iterations;
mod shards;
mod source;
mod stage_table;
mod suggest;

pub use shards::{merge_kind, shard_input, shard_name, ShardRole, MAX_SHARDS, SHARD_PARAM};
pub(crate) use source::Source;
use stage_table::parse_stage;
pub(crate) use suggest::suggest;

/// Fields of `[stage.NAME]` the engine itself interprets; any other field is a kind field.
/// (`resources`: the stage's batch-job resources, read by the Slurm executor, never part of
/// the key.)
pub const ENGINE_FIELDS: &[&str] = &["kind", "inputs", "params", "seed", "shards", "resources"];

/// A parsed pipeline: iteration templates expanded, input references resolved to stage names.
/// Not yet checked against stage kinds (see [`crate::resolve`]).
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[pipeline] name`.
    pub name: String,
    /// `[pipeline] seed` (default 0): every stage's seed unless the stage sets its own.
    pub seed: u64,
    /// `[pipeline] device`, if set (`cpu`, `cuda`, `cuda:N`).
    pub device: Option<String>,
    /// `[iterations] count` (0 without iterations).
    pub iterations: u32,
    /// Stages in file order, iteration instances in place of their templates.
    pub stages: Vec<StageDef>,
    pub(crate) source: Source,
}

/// One stage (or one instance of an iteration template).
#[derive(Debug, Clone)]
pub struct StageDef {
    /// Name, e.g. `total` or `iter2/train`.
    pub name: String,
    /// Kind name.
    pub kind: String,
    /// Input name -> producing stage name (references resolved).
    pub inputs: BTreeMap<String, String>,
    /// The `params` table as JSON.
    pub params: serde_json::Map<String, Value>,
    /// Fields of the stage table other than [`ENGINE_FIELDS`], as JSON.
    pub kind_fields: serde_json::Map<String, Value>,
    /// The stage's seed.
    pub seed: u64,
    /// `iter.stage.train` or `stage.total`: where the definition is in the file.
    pub origin: String,
    /// `(template name, iteration)` for iteration instances.
    pub iteration: Option<(String, u32)>,
    /// Line of the stage's table.
    pub line: usize,
    /// Whether this is one shard of a stage written with `shards = N`, or the step that
    /// merges them (under the stage's own name), or neither.
    pub shard: ShardRole,
}

/// The JSON type name of a TOML value, for "expected X, got Y" messages.
fn toml_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// TOML -> JSON. Non-finite floats are refused: JSON cannot carry them, and a NaN param is
/// never what a user meant.
fn to_json(v: &toml::Value, field: &str, src: &Source) -> Result<Value, PipelineError> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => return Err(src.error(field, format!("{f} is not a finite number"))),
        },
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(to_json(item, &format!("{field}[{i}]"), src)?);
            }
            Value::Array(out)
        }
        toml::Value::Table(t) => {
            let mut out = serde_json::Map::new();
            for (k, item) in t {
                out.insert(k.clone(), to_json(item, &format!("{field}.{k}"), src)?);
            }
            Value::Object(out)
        }
    })
}

/// The longest stage or template name, in bytes. A stage's name becomes the name of its log
/// file (`NAME.log`) and of other per-stage files, and file names stop at 255 bytes
/// (`NAME_MAX`); 200 leaves room for the suffixes.
pub const MAX_STAGE_NAME_BYTES: usize = 200;

/// A valid stage or template name: letters, digits, `_`, `-`, `.`, not starting with `.` or
/// `-`; not empty; at most [`MAX_STAGE_NAME_BYTES`].
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("stage names must not be empty".into());
    }
    if name.len() > MAX_STAGE_NAME_BYTES {
        let head: String = name.chars().take(40).collect();
        return Err(format!(
            "stage name `{head}…` is {} bytes long; at most {MAX_STAGE_NAME_BYTES} are allowed, \
             because the name becomes the file name of the stage's log (file names stop at \
             255 bytes)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "stage name `{name}` contains `{c}`; use letters, digits, `_`, `-` or `.` \
             (`/` is reserved for iteration instances such as iter1/train)"
        ));
    }
    if name.starts_with(['.', '-']) {
        // `..` or `.x` would name a hidden log file, `-x` reads as an option in `rise show -x`.
        return Err(format!(
            "stage name `{name}` starts with `{}`; start it with a letter, a digit or `_`",
            &name[..1]
        ));
    }
    Ok(())
}

/// Collects errors, so one pass reports every problem.
struct Errors<'a> {
    src: &'a Source,
    list: Vec<PipelineError>,
}

impl<'a> Errors<'a> {
    fn at(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(self.src.error(field, message));
    }
}

impl Pipeline {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PipelineErrors::one(PipelineError {
                file: path.to_path_buf(),
                line: None,
                field: None,
                message: format!("cannot read pipeline file: {e}"),
            })
        })?;
        Pipeline::parse(path, text)
    }

    /// Parse pipeline text; `path` is used in messages and to resolve relative file params.
    pub fn parse(path: &Path, text: String) -> Result<Pipeline, PipelineErrors> {
        let mut src = Source::new(path, text);
        let doc: toml::Table = match toml::from_str(src.text()) {
            Ok(doc) => doc,
            Err(err) => {
                let line = err.span().map(|s| src.line_of(s.start));
                return Err(PipelineErrors::one(PipelineError {
                    file: path.to_path_buf(),
                    line,
                    field: None,
                    message: format!("invalid TOML: {}", err.message().trim()),
                }));
            }
        };
        src.index_spans();
        let mut errors = Errors {
            src: &src,
            list: Vec::new(),
        };
        let parsed = parse_doc(&doc, &mut errors);
        if !errors.list.is_empty() {
            return Err(PipelineErrors::sorted(errors.list));
        }
        let (name, seed, device, iterations, stages) = parsed.ok_or_else(|| {
            PipelineErrors::one(PipelineError {
                file: path.to_path_buf(),
                line: None,
                field: None,
                message: "no pipeline could be read".into(),
            })
        })?;
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            seed,
            device,
            iterations,
            stages,
            source: src,
        })
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageDef> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The directory relative file params are looked up in first.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }
}

type Parsed = (String, u64, Option<String>, u32, Vec<StageDef>);

/// Raw stage table before reference resolution.
struct RawStage {
    name: String,
    origin: String,
    kind: String,
    inputs: BTreeMap<String, String>,
    params: serde_json::Map<String, Value>,
    kind_fields: serde_json::Map<String, Value>,
    seed: Option<u64>,
    /// `shards = N`, if set.
    shards: Option<u32>,
    offset: usize,
}

fn parse_doc(doc: &toml::Table, errors: &mut Errors<'_>) -> Option<Parsed> {
    for key in doc.keys() {
        if !matches!(key.as_str(), "pipeline" | "stage" | "iterations" | "iter") {
            errors.at(key, "unknown table; a pipeline file has [pipeline], [stage.NAME], [iterations] and [iter.stage.NAME]");
        }
    }
    let (name, seed, device) = parse_pipeline_table(doc, errors);
    let top = parse_stage_tables(doc, errors);
    let (count, init) = iterations::parse_iterations(doc, errors);
    let templates = iterations::parse_templates(doc, errors);
    let stages = iterations::expand(&top, &templates, count, &init, seed, errors);
    let stages = shards::expand(stages, errors);
    Some((name, seed, device, count, stages))
}

/// `[pipeline]`: name, seed, device.
fn parse_pipeline_table(
    doc: &toml::Table,
    errors: &mut Errors<'_>,
) -> (String, u64, Option<String>) {
    let mut name = String::new();
    let mut seed = 0u64;
    let mut device = None;
    match doc.get("pipeline") {
        None => errors.list.push(PipelineError {
            file: errors.src.path.clone(),
            line: Some(1),
            field: Some("pipeline".into()),
            message: "missing [pipeline] table with `name = \"...\"`".into(),
        }),
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                let field = format!("pipeline.{k}");
                match (k.as_str(), v) {
                    ("name", toml::Value::String(s)) if s.trim().is_empty() => {
                        errors.at(&field, "must not be empty")
                    }
                    // rise prints the name on its terminal: a control character in it (ESC,
                    // BEL) would be an escape sequence there, setting the title or colours.
                    ("name", toml::Value::String(s)) if s.chars().any(char::is_control) => errors
                        .at(
                            &field,
                            format!(
                                "`{}` contains a control character; pipeline names are \
                                 printed on the terminal",
                                crate::progress::escape_controls(s)
                            ),
                        ),
                    ("name", toml::Value::String(s)) => name = s.clone(),
                    ("seed", toml::Value::Integer(i)) if *i >= 0 => seed = *i as u64,
                    ("seed", toml::Value::Integer(i)) => {
                        errors.at(&field, format!("must be >= 0, got {i}"))
                    }
                    ("device", toml::Value::String(s)) => match check_device(s) {
                        Ok(()) => device = Some(s.clone()),
                        Err(m) => errors.at(&field, m),
                    },
                    ("description", toml::Value::String(_)) => {}
                    // Where and with what stages run (#15), not what they compute: checked by
                    // `rise run` (exec::pipeline_execution), never part of a key.
                    ("executor", toml::Value::String(_)) => {}
                    ("resources", toml::Value::Table(_)) => {}
                    ("name" | "device" | "description" | "executor", other) => errors.at(
                        &field,
                        format!("expected a string, got {}", toml_type(other)),
                    ),
                    ("seed", other) => errors.at(
                        &field,
                        format!("expected an integer, got {}", toml_type(other)),
                    ),
                    _ => errors.at(
                        &field,
                        "unknown field; [pipeline] has name, seed, device, description, \
                         executor, resources",
                    ),
                }
            }
            if !t.contains_key("name") {
                errors.at("pipeline", "missing `name = \"...\"`");
            }
        }
        Some(other) => errors.at(
            "pipeline",
            format!("expected a table, got {}", toml_type(other)),
        ),
    }

    (name, seed, device)
}

/// The `[stage.NAME]` tables.
fn parse_stage_tables(doc: &toml::Table, errors: &mut Errors<'_>) -> Vec<RawStage> {
    let mut top = Vec::new();
    match doc.get("stage") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (stage_name, v) in t {
                if let Some(raw) =
                    parse_stage(stage_name, &format!("stage.{stage_name}"), v, errors)
                {
                    top.push(raw);
                }
            }
        }
        Some(other) => errors.at(
            "stage",
            format!("expected tables [stage.NAME], got {}", toml_type(other)),
        ),
    }
    top
}

fn finish(
    raw: &RawStage,
    name: String,
    inputs: BTreeMap<String, String>,
    pipeline_seed: u64,
    iteration: Option<(String, u32)>,
    errors: &Errors<'_>,
) -> StageDef {
    StageDef {
        name,
        kind: raw.kind.clone(),
        inputs,
        params: raw.params.clone(),
        kind_fields: raw.kind_fields.clone(),
        seed: raw.seed.unwrap_or(pipeline_seed),
        origin: raw.origin.clone(),
        iteration,
        line: errors.src.line(&raw.origin).unwrap_or(1),
        shard: match raw.shards {
            Some(count) if count > 1 => ShardRole::Sharded { count },
            _ => ShardRole::Whole,
        },
    }
}

fn check_device(s: &str) -> Result<(), String> {
    let ok = s == "cpu"
        || s == "cuda"
        || s.strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!("unknown device `{s}`; use cpu, cuda or cuda:N"))
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) if s.is_empty() => "an empty string".into(),
        toml::Value::Integer(i) => format!("the integer {i}"),
        other => toml_type(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, PipelineErrors> {
        Pipeline::parse(Path::new("p.toml"), text.to_string())
    }

    #[test]
    fn parses_the_issue_example() {
        let p = parse(
            r#"[pipeline]
name = "demo"
seed = 1

[stage.numbers]
kind = "shell"
cmd = 'seq 1 "$RISE_PARAM_N" > "$RISE_OUT/numbers.txt"'
params = { n = 10 }
outputs = ["numbers.txt"]

[stage.total]
kind = "shell"
inputs = { numbers = "numbers" }
cmd = 'awk "{s+=\$1} END {print s}" "$RISE_IN_NUMBERS/numbers.txt" > "$RISE_OUT/total.txt"'
outputs = ["total.txt"]
"#,
        )
        .unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.seed, 1);
        let names: Vec<_> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["numbers", "total"]);
        assert_eq!(p.stages[1].inputs["numbers"], "numbers");
        assert_eq!(p.stages[0].params["n"], 10);
        assert!(p.stages[0].kind_fields.contains_key("cmd"));
        assert_eq!(p.stages[1].line, 11);
    }

    #[test]
    fn expands_iteration_templates() {
        let p = parse(
            r#"[pipeline]
name = "it"
[stage.sft]
kind = "shell"
cmd = "true"
[stage.train_set]
kind = "shell"
cmd = "true"
[iterations]
count = 3
init = { train = "sft" }
[iter.stage.sample]
kind = "shell"
cmd = "true"
inputs = { policy = "@prev.train", prompts = "train_set" }
[iter.stage.train]
kind = "shell"
cmd = "true"
inputs = { data = "sample", base = "@prev.train" }
[stage.report]
kind = "shell"
cmd = "true"
inputs = { first = "iter1/train", last = "@last.train" }
"#,
        )
        .unwrap();
        let names: Vec<_> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sft",
                "train_set",
                "iter1/sample",
                "iter1/train",
                "iter2/sample",
                "iter2/train",
                "iter3/sample",
                "iter3/train",
                "report"
            ]
        );
        let s = |n: &str| p.stage(n).unwrap();
        assert_eq!(s("iter1/sample").inputs["policy"], "sft");
        assert_eq!(s("iter2/sample").inputs["policy"], "iter1/train");
        assert_eq!(s("iter3/train").inputs["data"], "iter3/sample");
        assert_eq!(s("iter3/train").inputs["base"], "iter2/train");
        assert_eq!(s("iter2/sample").inputs["prompts"], "train_set");
        assert_eq!(s("report").inputs["last"], "iter3/train");
        assert_eq!(s("iter2/train").iteration, Some(("train".into(), 2)));
        assert_eq!(s("iter2/train").origin, "iter.stage.train");
    }

    fn first_error(text: &str) -> PipelineError {
        parse(text).unwrap_err().0.remove(0)
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = first_error(
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\ninputs = { y = \"nope\" }\n",
        );
        assert_eq!(e.line, Some(5));
        assert_eq!(e.field.as_deref(), Some("stage.a.inputs.y"));
        assert!(e.message.contains("unknown stage `nope`"), "{}", e.message);
        assert_eq!(
            e.to_string(),
            "p.toml:5: field stage.a.inputs.y: unknown stage `nope`"
        );

        let e = first_error(
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\n[stage.b]\nkind = 3\n",
        );
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(6), Some("stage.b.kind"))
        );

        let e = first_error(
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\n[stage.a]\nkind = \"shell\"\n",
        );
        assert_eq!(e.line, Some(5));
        assert!(
            e.message.contains("duplicate") || e.message.contains("redefin"),
            "{}",
            e.message
        );

        let e = first_error(
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\nparams = { x = nan }\n",
        );
        assert_eq!(e.field.as_deref(), Some("stage.a.params.x"));

        let e = first_error("[pipeline]\nname = \"x\"\n[stage.abc]\nkind = \"shell\"\n[stage.b]\nkind = \"shell\"\ninputs = { i = \"abd\" }\n");
        assert!(e.message.contains("did you mean `abc`"), "{}", e.message);
    }

    #[test]
    fn iteration_reference_errors() {
        let base =
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\n[iterations]\ncount = 2\n";
        let e = first_error(&format!(
            "{base}[iter.stage.t]\nkind = \"shell\"\ninputs = {{ p = \"@prev.t\" }}\n"
        ));
        assert!(e.message.contains("init"), "{}", e.message);
        let e = first_error(&format!(
            "{base}[iter.stage.t]\nkind = \"shell\"\ninputs = {{ p = \"@last.t\" }}\n"
        ));
        assert!(e.message.contains("@prev"), "{}", e.message);
        let e = first_error(&format!("{base}[iter.stage.t]\nkind = \"shell\"\n[stage.r]\nkind = \"shell\"\ninputs = {{ p = \"iter3/t\" }}\n"));
        assert!(e.message.contains("1 to 2"), "{}", e.message);
        let e = first_error(
            "[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"shell\"\ninputs = { p = \"@prev.a\" }\n",
        );
        assert!(e.message.contains("template"), "{}", e.message);
    }
}
