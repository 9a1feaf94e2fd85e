//! Pipeline files: parsing, iteration templates, and reference resolution, with every error
//! located by file, line and field.
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
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{PipelineError, PipelineErrors};

/// Fields of `[stage.NAME]` the engine itself interprets; any other field is a kind field.
pub const ENGINE_FIELDS: &[&str] = &["kind", "inputs", "params", "seed"];

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
}

/// The text of a pipeline file and its line index, for locating errors.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    spans: SpanTree,
}

/// Spans of every table and value, by path.
#[derive(Debug, Clone, Default)]
struct SpanTree {
    span: Option<Range<usize>>,
    children: BTreeMap<String, SpanTree>,
}

impl SpanTree {
    fn build(value: &Spanned<DeValue<'_>>) -> SpanTree {
        let mut tree = SpanTree {
            span: Some(value.span()),
            children: BTreeMap::new(),
        };
        match value.get_ref() {
            DeValue::Table(table) => {
                for (k, v) in table.iter() {
                    tree.children
                        .insert(k.get_ref().to_string(), SpanTree::build(v));
                }
            }
            DeValue::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    tree.children.insert(format!("[{i}]"), SpanTree::build(v));
                }
            }
            _ => {}
        }
        tree
    }
}

impl Source {
    fn new(path: &Path, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
            spans: SpanTree::default(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The line of the deepest existing prefix of `path` (a dotted path whose segments may
    /// carry `[i]` suffixes), so an error always points somewhere useful.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut node = &self.spans;
        let mut best = None;
        for segment in split_path(path) {
            match node.children.get(&segment) {
                Some(child) => {
                    node = child;
                    if let Some(span) = &node.span {
                        best = Some(span.start);
                    }
                }
                None => break,
            }
        }
        best.map(|offset| self.line_of(offset))
    }

    /// Whether `path` exists in the file.
    pub fn has(&self, path: &str) -> bool {
        let mut node = &self.spans;
        for segment in split_path(path) {
            match node.children.get(&segment) {
                Some(child) => node = child,
                None => return false,
            }
        }
        true
    }

    pub fn error(&self, field: &str, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: self.path.clone(),
            line: self.line(field),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `params.a[0].b` -> `params`, `a`, `[0]`, `b`.
fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(rest[..i].to_string());
            }
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                out.push(rest[..=end].to_string());
                rest = &rest[end + 1..];
            }
        } else {
            out.push(rest.to_string());
        }
    }
    out
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

/// A valid stage or template name: letters, digits, `_`, `-`, `.`; not empty; at most
/// [`MAX_STAGE_NAME_BYTES`].
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
        if let Ok(spanned) = DeTable::parse(src.text()) {
            let (table, span) = (spanned.get_ref(), spanned.span());
            let root = Spanned::new(span, DeValue::Table(table.clone()));
            src.spans = SpanTree::build(&root);
        }
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
    offset: usize,
}

fn parse_doc(doc: &toml::Table, errors: &mut Errors<'_>) -> Option<Parsed> {
    for key in doc.keys() {
        if !matches!(key.as_str(), "pipeline" | "stage" | "iterations" | "iter") {
            errors.at(key, "unknown table; a pipeline file has [pipeline], [stage.NAME], [iterations] and [iter.stage.NAME]");
        }
    }
    // [pipeline]
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
                    ("name", toml::Value::String(s)) if !s.trim().is_empty() => name = s.clone(),
                    ("name", toml::Value::String(_)) => errors.at(&field, "must not be empty"),
                    ("seed", toml::Value::Integer(i)) if *i >= 0 => seed = *i as u64,
                    ("seed", toml::Value::Integer(i)) => {
                        errors.at(&field, format!("must be >= 0, got {i}"))
                    }
                    ("device", toml::Value::String(s)) => match check_device(s) {
                        Ok(()) => device = Some(s.clone()),
                        Err(m) => errors.at(&field, m),
                    },
                    ("description", toml::Value::String(_)) => {}
                    ("name" | "device" | "description", other) => errors.at(
                        &field,
                        format!("expected a string, got {}", toml_type(other)),
                    ),
                    ("seed", other) => errors.at(
                        &field,
                        format!("expected an integer, got {}", toml_type(other)),
                    ),
                    _ => errors.at(
                        &field,
                        "unknown field; [pipeline] has name, seed, device, description",
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

    // [stage.NAME]
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

    // [iterations] and [iter.stage.NAME]
    let mut count = 0u32;
    let mut init: BTreeMap<String, String> = BTreeMap::new();
    let mut templates = Vec::new();
    match doc.get("iterations") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                let field = format!("iterations.{k}");
                match (k.as_str(), v) {
                    ("count", toml::Value::Integer(i)) if (0..=10_000).contains(i) => {
                        count = *i as u32
                    }
                    ("count", toml::Value::Integer(i)) => {
                        errors.at(&field, format!("must be between 0 and 10000, got {i}"))
                    }
                    ("count", other) => errors.at(
                        &field,
                        format!("expected an integer, got {}", toml_type(other)),
                    ),
                    ("init", toml::Value::Table(m)) => {
                        for (ik, iv) in m {
                            match iv {
                                toml::Value::String(s) => {
                                    init.insert(ik.clone(), s.clone());
                                }
                                other => errors.at(
                                    &format!("iterations.init.{ik}"),
                                    format!("expected a stage name, got {}", toml_type(other)),
                                ),
                            }
                        }
                    }
                    ("init", other) => errors.at(
                        &field,
                        format!("expected a table, got {}", toml_type(other)),
                    ),
                    _ => errors.at(&field, "unknown field; [iterations] has count and init"),
                }
            }
            if !t.contains_key("count") {
                errors.at("iterations", "missing `count = N`");
            }
        }
        Some(other) => errors.at(
            "iterations",
            format!("expected a table, got {}", toml_type(other)),
        ),
    }
    match doc.get("iter") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                if k != "stage" {
                    errors.at(
                        &format!("iter.{k}"),
                        "unknown table; templates are [iter.stage.NAME]",
                    );
                    continue;
                }
                match v {
                    toml::Value::Table(stages) => {
                        for (stage_name, sv) in stages {
                            let origin = format!("iter.stage.{stage_name}");
                            if let Some(raw) = parse_stage(stage_name, &origin, sv, errors) {
                                templates.push(raw);
                            }
                        }
                    }
                    other => errors.at(
                        "iter.stage",
                        format!("expected tables, got {}", toml_type(other)),
                    ),
                }
            }
            if doc.get("iterations").is_none() {
                errors.at(
                    "iter",
                    "iteration templates need an [iterations] table with `count = N`",
                );
            }
        }
        Some(other) => errors.at(
            "iter",
            format!("expected a table, got {}", toml_type(other)),
        ),
    }

    let top_names: BTreeSet<&str> = top.iter().map(|s| s.name.as_str()).collect();
    let template_names: BTreeSet<&str> = templates.iter().map(|s| s.name.as_str()).collect();
    for (k, target) in &init {
        let field = format!("iterations.init.{k}");
        if !template_names.contains(k.as_str()) {
            errors.at(&field, format!("no template [iter.stage.{k}]; init names what `@prev.{k}` means in iteration 1"));
        }
        if !top_names.contains(target.as_str()) {
            errors.at(
                &field,
                format!(
                    "unknown stage `{target}`{}",
                    suggest(target, top_names.iter().copied())
                ),
            );
        }
    }
    let all_names: Vec<String> = top
        .iter()
        .map(|s| s.name.clone())
        .chain(
            (1..=count).flat_map(|i| templates.iter().map(move |t| format!("iter{i}/{}", t.name))),
        )
        .collect();

    // Resolve references. Stages are ordered by where they appear in the file.
    let mut stages: Vec<(usize, u32, StageDef)> = Vec::new();
    for raw in &top {
        let mut inputs = BTreeMap::new();
        for (input, target) in &raw.inputs {
            let field = format!("{}.inputs.{input}", raw.origin);
            match resolve_ref(target, None, count, &top_names, &template_names, &init) {
                Ok(resolved) => {
                    inputs.insert(input.clone(), resolved);
                }
                Err(msg) => errors.at(&field, with_suggestion(msg, target, &all_names)),
            }
        }
        stages.push((
            raw.offset,
            0,
            finish(raw, raw.name.clone(), inputs, seed, None, errors),
        ));
    }
    for i in 1..=count {
        for raw in &templates {
            let mut inputs = BTreeMap::new();
            for (input, target) in &raw.inputs {
                let field = format!("{}.inputs.{input}", raw.origin);
                match resolve_ref(target, Some(i), count, &top_names, &template_names, &init) {
                    Ok(resolved) => {
                        inputs.insert(input.clone(), resolved);
                    }
                    Err(msg) => errors.at(&field, with_suggestion(msg, target, &all_names)),
                }
            }
            let name = format!("iter{i}/{}", raw.name);
            let iteration = Some((raw.name.clone(), i));
            stages.push((
                raw.offset,
                i,
                finish(raw, name, inputs, seed, iteration, errors),
            ));
        }
    }
    // Templates sit where they are written; instances of one template are ordered by iteration,
    // and all of iteration 1 comes before iteration 2 (so `rise plan` reads like the run).
    let template_start = templates.iter().map(|t| t.offset).min().unwrap_or(0);
    stages.sort_by_key(|(offset, iter, _)| {
        if *iter == 0 {
            (*offset, 0, 0)
        } else {
            (template_start, *iter, *offset)
        }
    });
    let stages: Vec<StageDef> = stages.into_iter().map(|(_, _, s)| s).collect();
    Some((name, seed, device, count, stages))
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

fn parse_stage(
    name: &str,
    origin: &str,
    v: &toml::Value,
    errors: &mut Errors<'_>,
) -> Option<RawStage> {
    if let Err(msg) = check_name(name) {
        errors.at(origin, msg);
        return None;
    }
    let toml::Value::Table(t) = v else {
        errors.at(
            origin,
            format!("expected a table [{origin}], got {}", toml_type(v)),
        );
        return None;
    };
    let mut ok = true;
    let kind = match t.get("kind") {
        Some(toml::Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other @ toml::Value::String(_)) | Some(other)
            if !matches!(other, toml::Value::String(_)) =>
        {
            errors.at(
                &format!("{origin}.kind"),
                format!("expected a string, got {}", toml_type(other)),
            );
            ok = false;
            String::new()
        }
        Some(_) => {
            errors.at(&format!("{origin}.kind"), "must not be empty");
            ok = false;
            String::new()
        }
        None => {
            errors.at(origin, "missing `kind = \"...\"`");
            ok = false;
            String::new()
        }
    };
    let mut inputs = BTreeMap::new();
    match t.get("inputs") {
        None => {}
        Some(toml::Value::Table(m)) => {
            for (input, target) in m {
                let field = format!("{origin}.inputs.{input}");
                if input.is_empty() {
                    errors.at(
                        &field,
                        "an input name must not be empty (it becomes $RISE_IN_<NAME> and a directory name)",
                    );
                    ok = false;
                    continue;
                }
                match target {
                    toml::Value::String(s) if !s.is_empty() => {
                        inputs.insert(input.clone(), s.clone());
                    }
                    other => {
                        errors.at(
                            &field,
                            format!("expected a stage name, got {}", describe(other)),
                        );
                        ok = false;
                    }
                }
            }
        }
        Some(other) => {
            errors.at(
                &format!("{origin}.inputs"),
                format!(
                    "expected a table of input = \"stage\", got {}",
                    toml_type(other)
                ),
            );
            ok = false;
        }
    }
    let params = match t.get("params") {
        None => serde_json::Map::new(),
        Some(v @ toml::Value::Table(t)) => {
            if t.contains_key("") {
                // `params = { "" = 1 }`: TOML allows the quoted empty key, but a param needs a
                // name to be found by (and a shell stage, an environment variable name).
                errors.at(
                    &format!("{origin}.params."),
                    "a param name must not be empty",
                );
                ok = false;
            }
            match to_json(v, &format!("{origin}.params"), errors.src) {
                Ok(Value::Object(m)) => m,
                Ok(_) => serde_json::Map::new(),
                Err(e) => {
                    errors.list.push(e);
                    ok = false;
                    serde_json::Map::new()
                }
            }
        }
        Some(other) => {
            errors.at(
                &format!("{origin}.params"),
                format!("expected a table, got {}", toml_type(other)),
            );
            ok = false;
            serde_json::Map::new()
        }
    };
    let seed = match t.get("seed") {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 0 => Some(*i as u64),
        Some(other) => {
            errors.at(
                &format!("{origin}.seed"),
                format!("expected an integer >= 0, got {}", describe(other)),
            );
            ok = false;
            None
        }
    };
    let mut kind_fields = serde_json::Map::new();
    for (k, v) in t {
        if ENGINE_FIELDS.contains(&k.as_str()) {
            continue;
        }
        match to_json(v, &format!("{origin}.{k}"), errors.src) {
            Ok(j) => {
                kind_fields.insert(k.clone(), j);
            }
            Err(e) => {
                errors.list.push(e);
                ok = false;
            }
        }
    }
    let offset = errors
        .src
        .spans
        .children
        .get(origin.split('.').next().unwrap_or(origin))
        .map_or(0, |_| {
            let mut node = &errors.src.spans;
            for seg in split_path(origin) {
                match node.children.get(&seg) {
                    Some(child) => node = child,
                    None => break,
                }
            }
            node.span.as_ref().map_or(0, |s| s.start)
        });
    ok.then(|| RawStage {
        name: name.to_string(),
        origin: origin.to_string(),
        kind,
        inputs,
        params,
        kind_fields,
        seed,
        offset,
    })
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) if s.is_empty() => "an empty string".into(),
        toml::Value::Integer(i) => format!("the integer {i}"),
        other => toml_type(other).to_string(),
    }
}

/// Resolve one input reference to a stage name. `iteration` is `Some(i)` inside template i.
fn resolve_ref(
    target: &str,
    iteration: Option<u32>,
    count: u32,
    top: &BTreeSet<&str>,
    templates: &BTreeSet<&str>,
    init: &BTreeMap<String, String>,
) -> Result<String, String> {
    if let Some(x) = target.strip_prefix("@prev.") {
        let Some(i) = iteration else {
            return Err(format!(
                "`{target}`: @prev is only meaningful inside an [iter.stage.*] template"
            ));
        };
        if !templates.contains(x) {
            return Err(format!("`{target}`: there is no template [iter.stage.{x}]"));
        }
        if i == 1 {
            return init.get(x).cloned().ok_or_else(|| {
                format!("`{target}` in iteration 1 needs `init = {{ {x} = \"STAGE\" }}` in [iterations]")
            });
        }
        return Ok(format!("iter{}/{x}", i - 1));
    }
    if let Some(x) = target.strip_prefix("@last.") {
        if iteration.is_some() {
            return Err(format!(
                "`{target}`: @last inside a template would depend on a later iteration; use @prev"
            ));
        }
        if !templates.contains(x) {
            return Err(format!("`{target}`: there is no template [iter.stage.{x}]"));
        }
        if count == 0 {
            return Err(format!(
                "`{target}`: iterations.count is 0, so there is no last iteration"
            ));
        }
        return Ok(format!("iter{count}/{x}"));
    }
    if target.starts_with('@') {
        return Err(format!(
            "`{target}`: unknown reference; use a stage name, iterK/NAME, @prev.NAME or @last.NAME"
        ));
    }
    if let Some((iter, x)) = target.split_once('/') {
        let k = iter
            .strip_prefix("iter")
            .and_then(|n| n.parse::<u32>().ok());
        return match k {
            Some(k) if (1..=count).contains(&k) && templates.contains(x) => {
                if iteration.is_some_and(|i| k >= i) {
                    Err(format!(
                        "`{target}`: iteration {} cannot depend on iteration {k}",
                        iteration.unwrap_or(0)
                    ))
                } else {
                    Ok(target.to_string())
                }
            }
            Some(k) if !(1..=count).contains(&k) => Err(format!(
                "unknown stage `{target}`: iterations run from 1 to {count}"
            )),
            _ => Err(format!("unknown stage `{target}`")),
        };
    }
    if let Some(i) = iteration {
        if templates.contains(target) {
            return Ok(format!("iter{i}/{target}"));
        }
    }
    if top.contains(target) {
        return Ok(target.to_string());
    }
    Err(format!("unknown stage `{target}`"))
}

fn with_suggestion(msg: String, target: &str, names: &[String]) -> String {
    if msg.starts_with("unknown stage") {
        format!("{msg}{}", suggest(target, names.iter().map(String::as_str)))
    } else {
        msg
    }
}

/// ` (did you mean `x`?)` when a known name is within edit distance 2.
pub(crate) fn suggest<'a>(target: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut best: Option<(usize, &str)> = None;
    for name in names {
        let d = edit_distance(target, name);
        if d <= 2 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, name));
        }
    }
    match best {
        Some((_, name)) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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

    #[test]
    fn split_paths() {
        assert_eq!(split_path("a.b[0].c"), ["a", "b", "[0]", "c"]);
        assert_eq!(split_path("outputs[1][2]"), ["outputs", "[1]", "[2]"]);
    }
}
