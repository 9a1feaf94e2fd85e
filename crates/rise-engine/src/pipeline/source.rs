//! A pipeline file's text and the spans of its tables and values, so that every error names
//! a file, a line and a dotted field (`stage.train.params.lr`).
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::PipelineError;

/// The text of a pipeline file and its line index, for locating errors.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The pipeline file.
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
    pub(super) fn new(path: &Path, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
            spans: SpanTree::default(),
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
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

    /// Record the spans of `text`'s tables and values (when it parses as TOML).
    pub(super) fn index_spans(&mut self) {
        if let Ok(spanned) = DeTable::parse(self.text()) {
            let (table, span) = (spanned.get_ref(), spanned.span());
            let root = Spanned::new(span, DeValue::Table(table.clone()));
            self.spans = SpanTree::build(&root);
        }
    }

    /// Byte offset of the table at `origin` (`stage.x`, `iter.stage.x`), 0 when unknown:
    /// stages are ordered by where they are written.
    pub(super) fn offset(&self, origin: &str) -> usize {
        self.spans
            .children
            .get(origin.split('.').next().unwrap_or(origin))
            .map_or(0, |_| {
                let mut node = &self.spans;
                for seg in split_path(origin) {
                    match node.children.get(&seg) {
                        Some(child) => node = child,
                        None => break,
                    }
                }
                node.span.as_ref().map_or(0, |s| s.start)
            })
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

    /// An error at `field` (located at its deepest existing prefix).
    pub fn error(&self, field: &str, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: self.path.clone(),
            line: self.line(field),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// The file's text.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        assert_eq!(split_path("a.b[0].c"), ["a", "b", "[0]", "c"]);
        assert_eq!(split_path("outputs[1][2]"), ["outputs", "[1]", "[2]"]);
    }
}
