//! Problems and dataset loaders (GSM8K, MATH, any JSONL with a field mapping).
//!
//! Loaders are strict: a malformed row, a blank line or an empty file is an error naming the file
//! and the 1-based line, because a silently skipped row changes every downstream number.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::grade::extract_boxed;
use crate::DataError;

/// One task instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable identifier: the row's own id if the data has one, else `<file stem>:<line>`.
    pub id: String,
    /// The question shown to the model.
    pub question: String,
    /// The full reference solution (GSM8K calculator annotations removed).
    pub solution: String,
    /// The gold final answer, as written in the data (e.g. `2,125`, `\frac{1}{2}`).
    pub answer: String,
    /// Everything else worth keeping (MATH `subject` and `level`, synthetic `steps`, ...).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// Which JSON fields hold what, for [`load_jsonl`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    /// Field with the question (required in every row).
    pub question: String,
    /// Field with the reference solution, if the data has one.
    pub solution: Option<String>,
    /// Field with the final answer. When absent, the answer is read from the solution: the
    /// text after `####`, else its last `\boxed{}`.
    pub answer: Option<String>,
    /// Field with a row id; rows without one get `<file stem>:<line>`.
    pub id: Option<String>,
    /// Fields copied into [`Problem::meta`] (strings, numbers and booleans). Empty: every
    /// other scalar field.
    pub meta: Vec<String>,
    /// Remove GSM8K calculator annotations `<<48/2=24>>` from the solution (never evaluated).
    pub strip_calculator_annotations: bool,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            question: "question".into(),
            solution: Some("solution".into()),
            answer: Some("answer".into()),
            id: None,
            meta: Vec::new(),
            strip_calculator_annotations: false,
        }
    }
}

impl FieldMap {
    /// GSM8K: `question`, and `answer` holding the solution ending in `#### N`.
    pub fn gsm8k() -> Self {
        FieldMap {
            question: "question".into(),
            solution: Some("answer".into()),
            answer: None,
            id: None,
            meta: Vec::new(),
            strip_calculator_annotations: true,
        }
    }

    /// MATH / MATH500: `problem`, `solution`, `answer` (falls back to the solution's `\boxed{}`),
    /// `unique_id` if present; `subject` and `level` go to meta.
    pub fn math() -> Self {
        FieldMap {
            question: "problem".into(),
            solution: Some("solution".into()),
            answer: Some("answer".into()),
            id: Some("unique_id".into()),
            meta: Vec::new(),
            strip_calculator_annotations: false,
        }
    }
}

/// Loads GSM8K JSONL (`question`, `answer` ending in `#### N`).
///
/// The solution keeps its reasoning with `<<…>>` annotations removed; the answer is the text
/// after `####` as written (`2,125`). A row without `####` is an error.
pub fn load_gsm8k(path: impl AsRef<Path>) -> Result<Vec<Problem>, DataError> {
    load_jsonl(path, &FieldMap::gsm8k())
}

/// Loads MATH JSONL (`problem`, `solution`, `answer`, `subject`, `level`); when `answer` is
/// absent the last `\boxed{}` of the solution is used.
pub fn load_math(path: impl AsRef<Path>) -> Result<Vec<Problem>, DataError> {
    load_jsonl(path, &FieldMap::math())
}

/// Loads any JSONL file with one object per line, mapping fields with `map`.
pub fn load_jsonl(path: impl AsRef<Path>, map: &FieldMap) -> Result<Vec<Problem>, DataError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let row = parse_row(path, line_no, line)?;
        problems.push(problem_from_row(path, line_no, &stem, &row, map)?);
    }
    if problems.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(problems)
}

/// Reads problems written by [`write_problems`] (rise's own JSONL form of [`Problem`]).
pub fn read_problems(path: impl AsRef<Path>) -> Result<Vec<Problem>, DataError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            return Err(DataError::EmptyLine {
                path: path.to_path_buf(),
                line: idx + 1,
            });
        }
        let p: Problem = serde_json::from_str(line).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: idx + 1,
            message: e.to_string(),
        })?;
        out.push(p);
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Writes problems as JSONL, one [`Problem`] per line, in order.
pub fn write_problems(path: impl AsRef<Path>, problems: &[Problem]) -> Result<(), DataError> {
    let path = path.as_ref();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for p in problems {
        // Serializing a struct of strings cannot fail.
        let line = serde_json::to_string(p).map_err(|e| io(std::io::Error::other(e)))?;
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

fn parse_row(path: &Path, line: usize, text: &str) -> Result<Map<String, Value>, DataError> {
    if text.trim().is_empty() {
        return Err(DataError::EmptyLine {
            path: path.to_path_buf(),
            line,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(DataError::Json {
            path: path.to_path_buf(),
            line,
            message: format!("expected a JSON object, found {}", json_type(&other)),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar field as text (numbers and booleans too: MATH's `level` is a number in MATH500).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

struct RowCtx<'a> {
    path: &'a Path,
    line: usize,
    row: &'a Map<String, Value>,
}

impl RowCtx<'_> {
    fn string(&self, field: &str) -> Result<String, DataError> {
        match self.row.get(field) {
            None => Err(DataError::MissingField {
                path: self.path.to_path_buf(),
                line: self.line,
                field: field.into(),
            }),
            Some(v) => scalar_text(v).ok_or_else(|| self.wrong_type(field, v)),
        }
    }

    fn optional(&self, field: &str) -> Result<Option<String>, DataError> {
        match self.row.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_text(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, v)),
        }
    }

    fn wrong_type(&self, field: &str, v: &Value) -> DataError {
        DataError::WrongType {
            path: self.path.to_path_buf(),
            line: self.line,
            field: field.into(),
            expected: "a string or number",
            found: json_type(v),
        }
    }

    fn malformed(&self, field: &str, message: impl Into<String>) -> DataError {
        DataError::Malformed {
            path: self.path.to_path_buf(),
            line: self.line,
            field: field.into(),
            message: message.into(),
        }
    }
}

fn problem_from_row(
    path: &Path,
    line: usize,
    stem: &str,
    row: &Map<String, Value>,
    map: &FieldMap,
) -> Result<Problem, DataError> {
    let cx = RowCtx { path, line, row };
    let question = cx.string(&map.question)?;
    if question.trim().is_empty() {
        return Err(cx.malformed(&map.question, "the question is empty"));
    }
    let solution = match &map.solution {
        Some(f) => {
            // With an explicit answer field the solution is optional context; without one it
            // is where the answer comes from, so it must be there.
            let s = if map.answer.is_some() {
                cx.optional(f)?.unwrap_or_default()
            } else {
                cx.string(f)?
            };
            if map.strip_calculator_annotations {
                strip_calculator_annotations(&s).map_err(|m| cx.malformed(f, m))?
            } else {
                s
            }
        }
        None => String::new(),
    };
    let answer = match map
        .answer
        .as_deref()
        .map(|f| cx.optional(f))
        .transpose()?
        .flatten()
    {
        Some(a) => a.trim().to_string(),
        None => {
            let field = map.solution.as_deref().unwrap_or(&map.question);
            answer_from_solution(&solution).ok_or_else(|| {
                let hint = match &map.answer {
                    Some(a) => format!(
                        "no `{a}` field, and the solution has no `#### N` line or \\boxed{{}}"
                    ),
                    None => "the solution has no `#### N` line or \\boxed{}".to_string(),
                };
                cx.malformed(field, hint)
            })?
        }
    };
    if answer.is_empty() {
        let field = map
            .answer
            .as_deref()
            .or(map.solution.as_deref())
            .unwrap_or("answer");
        return Err(cx.malformed(field, "the final answer is empty"));
    }
    let id = match map
        .id
        .as_deref()
        .map(|f| cx.optional(f))
        .transpose()?
        .flatten()
    {
        Some(id) => id,
        None => format!("{stem}:{line}"),
    };
    let used: Vec<&str> = [
        Some(map.question.as_str()),
        map.solution.as_deref(),
        map.answer.as_deref(),
        map.id.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut meta = BTreeMap::new();
    if map.meta.is_empty() {
        for (k, v) in row {
            if !used.contains(&k.as_str()) {
                if let Some(t) = scalar_text(v) {
                    meta.insert(k.clone(), t);
                }
            }
        }
    } else {
        for k in &map.meta {
            if let Some(t) = cx.optional(k)? {
                meta.insert(k.clone(), t);
            }
        }
    }
    Ok(Problem {
        id,
        question,
        solution,
        answer,
        meta,
    })
}

/// The answer a reference solution states: after its last `####`, else its last `\boxed{}`.
fn answer_from_solution(solution: &str) -> Option<String> {
    if let Some(at) = solution.rfind("####") {
        let a = solution[at + 4..].lines().next().unwrap_or("").trim();
        return (!a.is_empty()).then(|| a.to_string());
    }
    extract_boxed(solution).filter(|a| !a.is_empty())
}

/// Removes GSM8K calculator annotations: `48/2 = <<48/2=24>>24` → `48/2 = 24`.
///
/// The annotations are tool calls from the dataset's generation, not text a model should learn
/// to produce. An unterminated `<<` is an error rather than a silent truncation.
pub fn strip_calculator_annotations(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<<") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find(">>").ok_or_else(|| {
            format!(
                "unterminated calculator annotation `<<` at byte {}",
                text.len() - rest.len() + at
            )
        })?;
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn gsm8k_row() {
        let f =
            write("{\"question\": \"Q?\", \"answer\": \"48/2 = <<48/2=24>>24 so\\n#### 2,125\"}\n");
        let p = load_gsm8k(f.path()).expect("loads");
        assert_eq!(p[0].answer, "2,125");
        assert_eq!(p[0].solution, "48/2 = 24 so\n#### 2,125");
        assert!(p[0].id.ends_with(":1"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let f = write("{\"question\": \"Q\", \"answer\": \"#### 1\"}\n{\"question\": \"Q\", \"answer\": \"no marker\"}\n");
        let e = load_gsm8k(f.path()).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("`answer`"), "{e}");

        let f = write("{\"question\": \"Q\"}\n");
        let e = load_gsm8k(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(":1:") && e.contains("missing field `answer`"),
            "{e}"
        );

        let f = write("{\"question\": \"Q\", \"answer\": \"#### 1\"}\n\n{\"question\": \"Q\", \"answer\": \"#### 1\"}\n");
        assert!(matches!(
            load_gsm8k(f.path()),
            Err(DataError::EmptyLine { line: 2, .. })
        ));

        let f = write("[1]\n");
        let e = load_gsm8k(f.path()).unwrap_err().to_string();
        assert!(e.contains("expected a JSON object, found an array"), "{e}");

        let f = write("{\"question\": 3, \"answer\": [1]}\n");
        assert!(matches!(
            load_gsm8k(f.path()),
            Err(DataError::WrongType { .. })
        ));

        let f = write("{\"question\": \"Q\", \"answer\": \"a <<1+1=2 #### 2\"}\n");
        let e = load_gsm8k(f.path()).unwrap_err().to_string();
        assert!(e.contains("unterminated calculator annotation"), "{e}");

        let f = write("");
        assert!(matches!(load_gsm8k(f.path()), Err(DataError::Empty { .. })));
    }

    #[test]
    fn math_row_and_boxed_fallback() {
        let f = write(concat!(
            r#"{"problem": "P", "solution": "so \\boxed{\\frac{1}{2}}.", "answer": "\\frac12", "subject": "Algebra", "level": 3}"#,
            "\n",
            r#"{"problem": "P2", "solution": "thus \\boxed{7}"}"#,
            "\n"
        ));
        let p = load_math(f.path()).expect("loads");
        assert_eq!(p[0].answer, r"\frac12");
        assert_eq!(p[0].meta.get("level").map(String::as_str), Some("3"));
        assert_eq!(
            p[0].meta.get("subject").map(String::as_str),
            Some("Algebra")
        );
        assert_eq!(p[1].answer, "7");
    }

    #[test]
    fn custom_field_map() {
        let f = write(concat!(
            r#"{"q": "What?", "sol": "so #### 12", "uid": 7, "src": "web", "hard": true, "tags": ["x"]}"#,
            "\n"
        ));
        let map = FieldMap {
            question: "q".into(),
            solution: Some("sol".into()),
            answer: None,
            id: Some("uid".into()),
            meta: vec![],
            strip_calculator_annotations: false,
        };
        let p = load_jsonl(f.path(), &map).expect("loads");
        assert_eq!((p[0].id.as_str(), p[0].answer.as_str()), ("7", "12"));
        // Every other scalar field is kept; arrays are not.
        assert_eq!(
            p[0].meta,
            BTreeMap::from([("hard".into(), "true".into()), ("src".into(), "web".into())])
        );
        let only_src = FieldMap {
            meta: vec!["src".into()],
            ..map.clone()
        };
        let p = load_jsonl(f.path(), &only_src).expect("loads");
        assert_eq!(p[0].meta.len(), 1);
        // A mapping that names a missing question field says which one.
        let bad = FieldMap {
            question: "prompt".into(),
            ..map
        };
        let e = load_jsonl(f.path(), &bad).unwrap_err().to_string();
        assert!(e.contains(":1: missing field `prompt`"), "{e}");
        // Mappings come from pipeline configs: unknown keys are errors, not silently ignored.
        let e = serde_json::from_str::<FieldMap>(r#"{"questions": "q"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("questions"), "{e}");
    }

    #[test]
    fn problems_round_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("p.jsonl");
        let p = vec![Problem {
            id: "a".into(),
            question: "q".into(),
            solution: "s".into(),
            answer: "1".into(),
            meta: BTreeMap::from([("k".into(), "v".into())]),
        }];
        write_problems(&path, &p).expect("write");
        assert_eq!(read_problems(&path).expect("read"), p);
    }
}
