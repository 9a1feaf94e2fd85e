//! The one protocol for every child-process stage (`bash -c CMD` or `rise-worker stage SPEC`).
//!
//! The engine writes a [`StageSpec`] as JSON and spawns the child. The child writes [`Event`]s as
//! JSON lines on stdout; any other stdout or stderr line goes to the stage's log. The child writes
//! its outputs into `out_dir` and never touches the store's index: on exit 0 the engine validates,
//! hashes and commits them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a child process needs to run one stage, and the core of every stage's
/// [`StageContext`](crate::stage::StageContext).
///
/// A serialization boundary: the engine writes it as JSON and `rise-worker` (possibly another
/// build, later on another host) reads it, so fields and their names must stay compatible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name, e.g. `iter1/train`.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// The kind's implementation version the key was computed with.
    pub kind_version: u32,
    /// Resolved params (file params as absolute paths).
    pub params: serde_json::Value,
    /// Input name -> read-only artifact directory.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where outputs go.
    pub out_dir: PathBuf,
    /// Resumable state, kept across crashes.
    pub scratch_dir: PathBuf,
    /// Seed.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Threads the stage may use.
    pub threads: usize,
}

/// Errors reading or writing a [`StageSpec`].
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The spec file could not be read or written.
    #[error("stage spec {path}: {source}")]
    Io {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec file is not a valid spec.
    #[error("stage spec {path}: line {line}, column {column}: {message}")]
    Json {
        /// The spec file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json found.
        message: String,
    },
}

impl StageSpec {
    /// Read a spec written by [`StageSpec::write`].
    pub fn read(path: &Path) -> Result<StageSpec, ProtocolError> {
        let bytes = std::fs::read(path).map_err(|source| ProtocolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|err| ProtocolError::Json {
            path: path.to_path_buf(),
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        })
    }

    /// Write the spec as pretty JSON (people read these when debugging a stage).
    pub fn write(&self, path: &Path) -> Result<(), ProtocolError> {
        let io = |source| ProtocolError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(path, text).map_err(io)
    }
}

/// A progress event, one JSON object per stdout line, e.g.
/// `{"event":"advance","n":1}` or `{"event":"metric","name":"accuracy","value":0.41}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A bar of `total` units of `unit` begins (total unknown: a spinner).
    Start {
        /// Units to do, if known.
        total: Option<u64>,
        /// e.g. `steps`, `prompts`.
        unit: String,
    },
    /// `n` units done.
    Advance {
        /// Units done since the last event.
        n: u64,
    },
    /// A status message.
    Message {
        /// Shown beside the bar.
        msg: String,
    },
    /// A metric for the result manifest.
    Metric {
        /// Metric name.
        name: String,
        /// Any JSON value.
        value: serde_json::Value,
    },
    /// A line for the stage log.
    Log {
        /// The line.
        msg: String,
    },
}

impl Event {
    /// Parse one stdout line: `Some(event)` if it is a protocol event, `None` if it is ordinary
    /// output (which belongs in the log). Only lines that start with `{"event"` are tried, so a
    /// stage printing arbitrary JSON is not misread.
    pub fn parse_line(line: &str) -> Option<Event> {
        let trimmed = line.trim();
        if !trimmed.starts_with("{\"event\"") {
            return None;
        }
        serde_json::from_str(trimmed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_lines() {
        let events = vec![
            Event::Start {
                total: Some(10),
                unit: "steps".into(),
            },
            Event::Start {
                total: None,
                unit: "rows".into(),
            },
            Event::Advance { n: 3 },
            Event::Message {
                msg: "loss 1.2".into(),
            },
            Event::Metric {
                name: "acc".into(),
                value: serde_json::json!(0.5),
            },
            Event::Log {
                msg: "hello".into(),
            },
        ];
        for event in events {
            let line = serde_json::to_string(&event).unwrap();
            assert!(line.starts_with("{\"event\""), "{line}");
            assert_eq!(Event::parse_line(&line), Some(event));
        }
        assert_eq!(Event::parse_line("plain output"), None);
        assert_eq!(Event::parse_line("{\"loss\": 1}"), None);
        assert_eq!(Event::parse_line("{\"event\":\"unknown\"}"), None);
    }

    #[test]
    fn spec_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StageSpec {
            pipeline: "p".into(),
            stage: "iter1/train".into(),
            kind: "train".into(),
            kind_version: 3,
            params: serde_json::json!({"lr": 1e-3}),
            inputs: [("data".to_string(), PathBuf::from("/a/b"))].into(),
            out_dir: "/o".into(),
            scratch_dir: "/s".into(),
            seed: 7,
            device: "cpu".into(),
            threads: 2,
        };
        let path = dir.path().join("spec.json");
        spec.write(&path).unwrap();
        assert_eq!(StageSpec::read(&path).unwrap(), spec);
        std::fs::write(&path, "{\n \"pipeline\": 3\n}").unwrap();
        let err = StageSpec::read(&path).unwrap_err().to_string();
        assert!(err.contains("spec.json") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_spec_json_keeps_its_field_names() {
        // The worker reads what the engine writes: renaming or dropping a field breaks every
        // rise-worker built before the change.
        let text = r#"{
  "pipeline": "p",
  "stage": "iter1/train",
  "kind": "train",
  "kind_version": 3,
  "params": {
    "lr": 0.001
  },
  "inputs": {
    "data": "/a/b"
  },
  "out_dir": "/o",
  "scratch_dir": "/s",
  "seed": 7,
  "device": "cpu",
  "threads": 2
}"#;
        let spec: StageSpec = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string_pretty(&spec).unwrap(), text);
    }
}
