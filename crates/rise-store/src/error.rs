//! The store's error type. Every variant names the blob, path, key or name involved so
//! that a message read in a log, far from the code, still says what to look at.
use std::path::PathBuf;

use crate::id::BlobId;
use crate::lock::LockHolder;

/// Shorthand for `Result<T, StoreError>`.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "read blob", "rename into place".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A blob's bytes no longer hash to its name: bit rot, truncation or tampering.
    #[error("blob {id} is corrupt ({}): {detail}", path.display())]
    CorruptBlob {
        /// The blob's name (the hash its content should have).
        id: BlobId,
        /// Where the blob lives.
        path: PathBuf,
        /// What was found instead, e.g. "content hashes to 12ab…" or "size 10, expected 12".
        detail: String,
    },

    /// A blob that something refers to is not in the store.
    #[error("blob {id} is missing (expected at {}){context}", path.display())]
    MissingBlob {
        /// The missing blob.
        id: BlobId,
        /// Where it should be.
        path: PathBuf,
        /// Who needs it, e.g. ` (tree entry "model/w.bin")`; may be empty.
        context: String,
    },

    /// A tree entry's path is not a safe relative path.
    #[error("unsafe path {path:?} in tree: {reason}")]
    UnsafePath {
        /// The offending path, as written in the tree or found on disk.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A symbolic link inside a directory being stored points outside that directory.
    #[error("symbolic link {} points outside the tree (to {})", link.display(), target.display())]
    LinkEscapes {
        /// The link.
        link: PathBuf,
        /// Where it resolves to.
        target: PathBuf,
    },

    /// A directory being stored contains something that is neither a file, a directory nor a
    /// link to one (a socket, a FIFO, a device, a dangling link, a link loop).
    #[error("cannot store {}: {reason}", path.display())]
    UnsupportedFile {
        /// The offending path.
        path: PathBuf,
        /// What it is.
        reason: String,
    },

    /// A file name is not valid UTF-8, so it cannot be written into a portable manifest.
    #[error("file name {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },

    /// A blob that should be a tree manifest is not one.
    #[error("artifact {id} is not a valid tree manifest: {reason}")]
    BadTree {
        /// The artifact id (the manifest blob).
        id: BlobId,
        /// What is wrong with it.
        reason: String,
    },

    /// A blob that should be a result manifest is not one.
    #[error("result {id} is not a valid result manifest: {reason}")]
    BadResult {
        /// The result id (the manifest blob).
        id: BlobId,
        /// What is wrong with it.
        reason: String,
    },

    /// A string is not a valid 64-hex-digit id.
    #[error("invalid id {input:?}: {reason}")]
    InvalidId {
        /// The string given.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A pin name or run id cannot be used as a file name.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// "pin name" or "run id".
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A result was committed before its output was fully in the store.
    #[error("cannot commit result for stage key {key}: output artifact {artifact} is incomplete: {reason}")]
    IncompleteOutput {
        /// The stage key being committed.
        key: String,
        /// The output artifact.
        artifact: BlobId,
        /// What is missing.
        reason: String,
    },

    /// The sled index could not be opened or used.
    #[error("index {} failed: {source} (the index is rebuildable: run `rise store reindex`)", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },

    /// The store is in use in a way that forbids the operation (e.g. `gc` during a run).
    #[error("{what}: the store is in use by {}", describe_holders(holders))]
    Busy {
        /// What was refused.
        what: String,
        /// Who holds the store, as far as their lock files say.
        holders: Vec<LockHolder>,
    },

    /// A pin that does not exist was named.
    #[error("no pin named {name:?}")]
    NoSuchPin {
        /// The pin name.
        name: String,
    },

    /// A destination directory already exists and would be overwritten.
    #[error("destination {} already exists and is not empty", path.display())]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },

    /// JSON (de)serialisation of a record failed.
    #[error("cannot {op} {what}: {source}")]
    Json {
        /// "encode" or "decode".
        op: &'static str,
        /// What was being (de)serialised, e.g. "run record r-2024…".
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// True when the error means stored data is damaged or missing (a corrupt or missing blob,
    /// an unreadable manifest). Callers such as the engine treat these as a cache miss and
    /// recompute, rather than failing the run.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptBlob { .. }
                | StoreError::MissingBlob { .. }
                | StoreError::BadTree { .. }
                | StoreError::BadResult { .. }
        )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

fn describe_holders(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return "another process (its pid was not recorded)".to_string();
    }
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
