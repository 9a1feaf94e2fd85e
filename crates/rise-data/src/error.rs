use std::path::PathBuf;

/// Everything that can go wrong while loading or generating a dataset.
///
/// Row-level variants carry the file and the 1-based line so a user can open the exact row.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not valid JSON, or not a JSON object.
    #[error("{}:{line}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A required field is absent from a row.
    #[error("{}:{line}: missing field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field name.
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("{}:{line}: field `{field}` must be {expected}, found {found}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field name.
        field: String,
        /// The type the loader needs.
        expected: &'static str,
        /// The JSON type it found.
        found: &'static str,
    },
    /// A row parsed but its content is unusable (no `####` answer, unterminated annotation, ...).
    #[error("{}:{line}: field `{field}`: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A line is empty or only whitespace (JSONL has one object per line, no blank lines).
    #[error("{}:{line}: empty line (JSONL needs one JSON object per line)", path.display())]
    EmptyLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The file holds no rows at all.
    #[error("{}: the dataset is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config field `{field}`: {message}")]
    Config {
        /// The field path, e.g. `max_steps`.
        field: String,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// The synthetic generator could not produce what was asked (e.g. more distinct questions
    /// than the knobs allow).
    #[error("synthetic generation failed: {0}")]
    Generation(String),
}
