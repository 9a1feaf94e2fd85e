//! Lock files: `stage -> key -> output id` for a whole pipeline, deterministic TOML to commit to
//! git and compare across machines (`rise lock`, `rise audit --lock`).
use std::collections::BTreeMap;
use std::path::Path;

use rise_store::{ArtifactId, StageKey};
use serde::{Deserialize, Serialize};

/// The lock of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Header.
    pub pipeline: LockHeader,
    /// Stage name -> key and output.
    pub stage: BTreeMap<String, LockEntry>,
}

/// `[pipeline]` of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockHeader {
    /// Pipeline name.
    pub name: String,
    /// Key scheme the keys were computed with.
    pub key_scheme: u32,
}

/// One stage of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The stage key (hex).
    pub key: StageKey,
    /// The output artifact id (hex).
    pub output: ArtifactId,
}

/// Errors reading a lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Unreadable.
    #[error("{path}: cannot read lock file: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a lock file.
    #[error("{path}{line}: not a rise lock file: {message}")]
    Parse {
        /// The file.
        path: String,
        /// `:LINE` when known.
        line: String,
        /// What is wrong.
        message: String,
    },
}

impl LockFile {
    /// The TOML text: stages sorted by name, no timestamps, so equal locks are equal bytes.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# rise lock file: stage -> cache key -> output artifact. Written by `rise lock`;\n\
             # check a store against it with `rise audit --lock FILE`.\n{body}"
        )
    }

    /// Read a lock file.
    pub fn read(path: &Path) -> Result<LockFile, LockError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: name.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| LockError::Parse {
            line: e
                .span()
                .map(|s| format!(":{}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default(),
            path: name,
            message: e.message().to_string(),
        })
    }
}
