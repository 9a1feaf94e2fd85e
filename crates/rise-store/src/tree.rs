//! Trees: an artifact is a set of files, written down as a canonical manifest blob.
//!
//! Canonical means one tree has exactly one encoding: entries sorted by path (bytewise), no
//! duplicates, compact JSON with a fixed field order, no timestamps, owners or directory
//! entries. Hence a tree's id depends only on its paths, contents and executable bits, never on
//! creation order or mtimes, and two different trees cannot share an id (short of a blake3
//! collision).
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::id::{ArtifactId, BlobId};

/// The format tag written into every tree manifest.
pub const TREE_FORMAT: &str = "rise-tree/1";

/// One file of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeEntry {
    /// Relative, `/`-separated path; validated by [`validate_path`].
    pub path: String,
    /// The file's content.
    pub blob: BlobId,
    /// The file's size in bytes (checked against the blob on read).
    pub size: u64,
    /// Whether the file is executable (the only mode bit recorded).
    pub executable: bool,
}

/// A tree: the files of an artifact, sorted by path.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    /// Entries sorted by path, unique, with no path being a directory of another.
    pub entries: Vec<TreeEntry>,
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    format: &'a str,
    entries: &'a [TreeEntry],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestIn {
    format: String,
    entries: Vec<TreeEntry>,
}

impl Tree {
    /// Builds a tree from entries in any order; sorts and validates them.
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Tree> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let tree = Tree { entries };
        tree.validate()?;
        Ok(tree)
    }

    /// Checks every invariant: safe paths, sorted, unique, and no path used both as a file and
    /// as a directory (`a` and `a/b`), which could not be written to disk.
    pub fn validate(&self) -> Result<()> {
        let mut dirs: HashSet<&str> = HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            validate_path(&e.path)?;
            if i > 0 {
                let prev = &self.entries[i - 1].path;
                if prev >= &e.path {
                    let reason = if prev == &e.path {
                        "duplicate path"
                    } else {
                        "entries are not sorted by path"
                    };
                    return Err(StoreError::UnsafePath {
                        path: e.path.clone(),
                        reason,
                    });
                }
            }
            let mut idx = 0;
            while let Some(slash) = e.path[idx..].find('/') {
                dirs.insert(&e.path[..idx + slash]);
                idx += slash + 1;
            }
        }
        for e in &self.entries {
            if dirs.contains(e.path.as_str()) {
                return Err(StoreError::UnsafePath {
                    path: e.path.clone(),
                    reason: "used both as a file and as a directory",
                });
            }
        }
        Ok(())
    }

    /// The canonical manifest bytes (what the artifact id hashes).
    pub fn to_manifest_bytes(&self) -> Vec<u8> {
        // Serialising plain structs, strings, integers and bools cannot fail.
        serde_json::to_vec(&ManifestOut {
            format: TREE_FORMAT,
            entries: &self.entries,
        })
        .expect("tree manifest serialisation is infallible")
    }

    /// The id this tree has (the hash of its manifest), without storing anything.
    pub fn id(&self) -> ArtifactId {
        BlobId::of(&self.to_manifest_bytes())
    }

    /// Parses and validates manifest bytes. Rejects any encoding that is not the canonical one,
    /// so that one tree can never be stored under two ids.
    pub fn from_manifest_bytes(id: &ArtifactId, bytes: &[u8]) -> Result<Tree> {
        let bad = |reason: String| StoreError::BadTree { id: *id, reason };
        let parsed: ManifestIn = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if parsed.format != TREE_FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {TREE_FORMAT:?}",
                parsed.format
            )));
        }
        let tree = Tree {
            entries: parsed.entries,
        };
        tree.validate().map_err(|e| bad(e.to_string()))?;
        if tree.to_manifest_bytes() != bytes {
            return Err(bad("manifest is not in canonical form".to_string()));
        }
        Ok(tree)
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Sum of the entries' sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// Accepts only relative, `/`-separated paths whose components are real names: no empty
/// components, no `.` or `..`, no leading `/`, no NUL. Such a path joined to a directory can
/// never leave it.
pub fn validate_path(path: &str) -> Result<()> {
    let reject = |reason| {
        Err(StoreError::UnsafePath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return reject("empty path");
    }
    if path.starts_with('/') {
        return reject("absolute path");
    }
    if path.contains('\0') {
        return reject("contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return reject("empty path component (`//` or trailing `/`)"),
            "." => return reject("`.` component"),
            ".." => return reject("`..` component escapes the tree"),
            _ => {}
        }
    }
    Ok(())
}

/// A regular file found while scanning a directory for `put_tree`.
pub(crate) struct ScannedFile {
    pub rel: String,
    pub real: PathBuf,
    pub executable: bool,
}

/// Lists the files under `root` for storing. Symbolic links are followed only when they resolve
/// inside `root` (stored as the file or directory they point to); a link out of the tree, a
/// dangling link, a link loop, a special file or a non-UTF-8 name is an error.
pub(crate) fn scan_dir(root: &Path) -> Result<Vec<ScannedFile>> {
    let canon = fs::canonicalize(root).map_err(StoreError::io("open directory", root))?;
    let meta = fs::metadata(&canon).map_err(StoreError::io("stat", root))?;
    if !meta.is_dir() {
        return Err(StoreError::UnsupportedFile {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![canon.clone()];
    walk(&canon, &canon, "", &mut stack, &mut out)?;
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<ScannedFile>,
) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(StoreError::io("list directory", dir))?;
    for entry in rd {
        let entry = entry.map_err(StoreError::io("list directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| StoreError::NonUtf8Path { path: path.clone() })?;
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        validate_path(&rel)?;
        let ft = entry.file_type().map_err(StoreError::io("stat", &path))?;
        let (real, ft_meta) = if ft.is_symlink() {
            let target = match fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::UnsupportedFile {
                        path,
                        reason: "dangling symbolic link".into(),
                    });
                }
                Err(e) if e.raw_os_error() == Some(40) => {
                    return Err(StoreError::UnsupportedFile {
                        path,
                        reason: "symbolic link loop".into(),
                    });
                }
                Err(e) => return Err(StoreError::io("resolve symbolic link", &path)(e)),
            };
            if !target.starts_with(root) {
                return Err(StoreError::LinkEscapes { link: path, target });
            }
            let m = fs::metadata(&target).map_err(StoreError::io("stat", &target))?;
            (target, m)
        } else {
            let m = entry.metadata().map_err(StoreError::io("stat", &path))?;
            (path.clone(), m)
        };
        if ft_meta.is_dir() {
            if stack.contains(&real) {
                return Err(StoreError::UnsupportedFile {
                    path,
                    reason: format!("symbolic link loop (points back to {})", real.display()),
                });
            }
            stack.push(real.clone());
            walk(root, &real, &rel, stack, out)?;
            stack.pop();
        } else if ft_meta.is_file() {
            let executable = ft_meta.permissions().mode() & 0o111 != 0;
            out.push(ScannedFile {
                rel,
                real,
                executable,
            });
        } else {
            return Err(StoreError::UnsupportedFile {
                path,
                reason: "not a regular file, directory or link to one (socket, FIFO or device)"
                    .into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, byte: u8) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            blob: BlobId([byte; 32]),
            size: 1,
            executable: false,
        }
    }

    #[test]
    fn paths_are_validated() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b.txt", "..a", "a..", ".hidden/x", "weird name/ü"] {
            validate_path(good).unwrap();
        }
        let msg = validate_path("x/../../etc").unwrap_err().to_string();
        assert!(msg.contains("x/../../etc") && msg.contains(".."), "{msg}");
    }

    #[test]
    fn trees_sort_and_reject_conflicts() {
        let t = Tree::new(vec![entry("b", 1), entry("a/c", 2)]).unwrap();
        assert_eq!(t.entries[0].path, "a/c");
        assert!(Tree::new(vec![entry("a", 1), entry("a", 2)]).is_err());
        let err = Tree::new(vec![entry("a", 1), entry("a/b", 2)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both as a file and as a directory"), "{err}");
        let unsorted = Tree {
            entries: vec![entry("b", 1), entry("a", 1)],
        };
        assert!(unsorted.validate().is_err());
    }

    #[test]
    fn manifest_round_trip_and_canonical_check() {
        let t = Tree::new(vec![entry("x/y", 3), entry("z", 4)]).unwrap();
        let bytes = t.to_manifest_bytes();
        let id = BlobId::of(&bytes);
        assert_eq!(Tree::from_manifest_bytes(&id, &bytes).unwrap(), t);
        // Same content, different whitespace: not canonical, rejected.
        let text = String::from_utf8(bytes).unwrap().replace(",\"", ", \"");
        assert!(Tree::from_manifest_bytes(&id, text.as_bytes()).is_err());
        let evil = br#"{"format":"rise-tree/1","entries":[{"path":"../x","blob":"0000000000000000000000000000000000000000000000000000000000000000","size":0,"executable":false}]}"#;
        let err = Tree::from_manifest_bytes(&id, evil)
            .unwrap_err()
            .to_string();
        assert!(err.contains("../x"), "{err}");
    }
}
