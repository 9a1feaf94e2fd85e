//! Errors in pipeline files, located by file, line and field.
use std::fmt;
use std::path::PathBuf;

/// One problem in a pipeline file. Displays as `FILE:LINE: field FIELD: PROBLEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a location.
    pub line: Option<usize>,
    /// Dotted field path, e.g. `stage.total.inputs.numbers`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field {field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in a pipeline file (all are reported at once, so a user fixes them in
/// one pass), sorted by line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PipelineErrors(pub Vec<PipelineError>);

impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl PipelineErrors {
    /// A single error.
    pub fn one(err: PipelineError) -> Self {
        PipelineErrors(vec![err])
    }

    pub(crate) fn sorted(mut errors: Vec<PipelineError>) -> Self {
        errors.sort_by(|a, b| (a.line, &a.field, &a.message).cmp(&(b.line, &b.field, &b.message)));
        errors.dedup();
        PipelineErrors(errors)
    }
}
