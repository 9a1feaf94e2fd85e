//! Content hashes of large files named by params (a checkpoint's weights), remembered across
//! commands so that `rise status` or a no-op `rise run` does not read gigabytes each time.
//!
//! Like cargo's fingerprints, an entry is trusted while the file's metadata is unchanged. The
//! metadata compared is (size, mtime, ctime, device, inode): ctime cannot be set back by tools
//! such as `touch -d` or `rsync -t`, and any write to the file moves it. The cache is
//! disposable: a missing, unreadable or corrupt cache file only costs a re-hash, and it is
//! written atomically (temp file + rename), so concurrent commands at worst drop each other's
//! new entries.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use crate::content_hash::hash_content;

/// Files smaller than this are hashed every time: that is about as fast as a cache lookup.
pub const MIN_CACHED_SIZE: u64 = 1 << 20;

const FILE_NAME: &str = "file-hashes.json";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    dev: u64,
    ino: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    fingerprint: Fingerprint,
    blake3: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Entries {
    version: u32,
    files: BTreeMap<PathBuf, Entry>,
}

const VERSION: u32 = 1;

/// A cache of file content hashes, kept in `DIR/file-hashes.json`.
pub struct HashCache {
    file: PathBuf,
    state: Mutex<State>,
}

struct State {
    entries: Entries,
    /// Entries were added since the file was read.
    dirty: bool,
}

impl HashCache {
    /// Opens the cache kept in `dir` (created on [`HashCache::save`] if missing). A cache file
    /// that cannot be read or parsed is treated as empty.
    pub fn open(dir: &Path) -> HashCache {
        let file = dir.join(FILE_NAME);
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Entries>(&bytes).ok())
            .filter(|e| e.version == VERSION)
            .unwrap_or(Entries {
                version: VERSION,
                files: BTreeMap::new(),
            });
        HashCache {
            file,
            state: Mutex::new(State {
                entries,
                dirty: false,
            }),
        }
    }

    /// The blake3 of `path`'s content: from the cache while its metadata is unchanged,
    /// otherwise read (memory-mapped, on every core) and remembered.
    pub fn hash_file(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let meta = std::fs::metadata(path)?;
        if meta.len() < MIN_CACHED_SIZE {
            return hash_content(path);
        }
        let fingerprint = fingerprint(&meta);
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(hash) = self.lookup(&key, &fingerprint) {
            return Ok(hash);
        }
        let hash = hash_content(path)?;
        // The file may have changed while it was read; remember it only if it did not.
        if std::fs::metadata(path).map(|m| self::fingerprint(&m)).ok() == Some(fingerprint.clone())
        {
            let mut state = self.state();
            state.entries.files.insert(
                key,
                Entry {
                    fingerprint,
                    blake3: blake3::Hash::from(hash).to_hex().to_string(),
                },
            );
            state.dirty = true;
        }
        Ok(hash)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, key: &Path, fingerprint: &Fingerprint) -> Option<[u8; 32]> {
        let state = self.state();
        let entry = state.entries.files.get(key)?;
        if &entry.fingerprint != fingerprint {
            return None;
        }
        blake3::Hash::from_hex(&entry.blake3)
            .ok()
            .map(|h| *h.as_bytes())
    }

    /// Writes new entries, if any, atomically. Entries for files that no longer exist are
    /// dropped. Failure is not an error (the cache only saves time), so it is only logged.
    pub fn save(&self) {
        let mut state = self.state();
        if !state.dirty {
            return;
        }
        state.entries.files.retain(|path, _| path.exists());
        let result = (|| -> std::io::Result<()> {
            let dir = self.file.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer(&tmp, &state.entries)?;
            tmp.persist(&self.file).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(
                "could not save the file-hash cache {}: {e}",
                self.file.display()
            );
        }
    }
}

#[cfg(unix)]
fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint {
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

#[cfg(not(unix))]
fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Fingerprint {
        size: meta.len(),
        mtime_ns,
        ctime_ns: 0,
        dev: 0,
        ino: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(byte: u8) -> Vec<u8> {
        vec![byte; MIN_CACHED_SIZE as usize + 10]
    }

    #[test]
    fn cached_hashes_equal_fresh_ones_and_follow_edits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, big(1)).unwrap();
        let cache = HashCache::open(&dir.path().join("cache"));
        let first = cache.hash_file(&file).unwrap();
        assert_eq!(first, hash_content(&file).unwrap());
        cache.save();

        // A new process sees the saved entry...
        let reopened = HashCache::open(&dir.path().join("cache"));
        assert_eq!(reopened.hash_file(&file).unwrap(), first);
        assert!(!reopened.state().dirty, "a hit adds nothing");

        // ...and a rewrite of the same size (new ctime) is hashed again.
        std::fs::write(&file, big(2)).unwrap();
        let edited = reopened.hash_file(&file).unwrap();
        assert_ne!(edited, first);
        assert_eq!(edited, hash_content(&file).unwrap());
    }

    #[test]
    fn a_cached_hash_is_not_trusted_once_the_metadata_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, big(3)).unwrap();
        let cache = HashCache::open(dir.path());
        cache.hash_file(&file).unwrap();
        // Poison the entry: a stale hash under the same fingerprint would be believed, under
        // another fingerprint it must not be.
        {
            let mut state = cache.state();
            let entry = state.entries.files.values_mut().next().unwrap();
            entry.blake3 = blake3::hash(b"stale").to_hex().to_string();
            entry.fingerprint.ino ^= 1;
        }
        assert_eq!(
            cache.hash_file(&file).unwrap(),
            hash_content(&file).unwrap()
        );
    }

    #[test]
    fn a_corrupt_cache_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, big(4)).unwrap();
        let cache = HashCache::open(dir.path());
        assert_eq!(
            cache.hash_file(&file).unwrap(),
            hash_content(&file).unwrap()
        );
        cache.save();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("weights.bin"), "{text}");
    }
}
