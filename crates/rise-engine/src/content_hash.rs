//! Content hashes of what params name: a file's bytes, a directory's files (names, sizes and
//! contents). They enter cache keys, so what they cover must not change: existing stores
//! would lose their cache hits.
use std::path::Path;

use crate::hash_cache::HashCache;

/// The blake3 of a file's content, memory-mapped and hashed on every core (checkpoints run to
/// gigabytes).
pub fn hash_content(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(*hasher.finalize().as_bytes())
}

/// A file's content hash, through `cache` when there is one.
pub(crate) fn hash_file(path: &Path, cache: Option<&HashCache>) -> std::io::Result<[u8; 32]> {
    match cache {
        Some(cache) => cache.hash_file(path),
        None => hash_content(path),
    }
}

/// Deepest directory nesting followed under a directory param: symlinked directories are
/// followed (Hugging Face cache snapshots are links), and a link cycle must end somewhere.
const MAX_DIR_DEPTH: usize = 16;

/// A directory's content hash: over every file below it (symlinks followed, names starting
/// with `.` skipped), in byte order of their `/`-separated relative paths, each as
/// (path, size, blake3 of the content), length-prefixed. Names and contents count; mtimes
/// and the directory's own location do not.
pub(crate) fn hash_dir(root: &Path, cache: Option<&HashCache>) -> std::io::Result<[u8; 32]> {
    let mut files = Vec::new();
    collect_files(root, String::new(), 0, &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new_derive_key("rise-engine directory content v1");
    hasher.update(&(files.len() as u64).to_le_bytes());
    for (rel, size) in &files {
        hasher.update(&(rel.len() as u64).to_le_bytes());
        hasher.update(rel.as_bytes());
        hasher.update(&size.to_le_bytes());
        hasher.update(&hash_file(&root.join(rel), cache)?);
    }
    Ok(*hasher.finalize().as_bytes())
}

fn collect_files(
    dir: &Path,
    prefix: String,
    depth: usize,
    out: &mut Vec<(String, u64)>,
) -> std::io::Result<()> {
    if depth > MAX_DIR_DEPTH {
        return Err(std::io::Error::other(format!(
            "more than {MAX_DIR_DEPTH} nested directories under it (a symlink cycle?)"
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "{}: file name is not UTF-8",
                entry.path().display()
            )));
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        // `metadata` follows symlinks: a linked file counts by its target's content.
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_dir() {
            collect_files(&entry.path(), rel, depth + 1, out)?;
        } else if meta.is_file() {
            out.push((rel, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (rel, text) in files {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_directory_hash_covers_names_and_contents_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        tree(a.path(), &[("w.bin", "weights"), ("sub/c.json", "{}")]);
        tree(
            b.path(),
            &[
                ("sub/c.json", "{}"),
                ("w.bin", "weights"),
                (".git/HEAD", "x"),
            ],
        );
        let ha = hash_dir(a.path(), None).unwrap();
        // Another place, another creation order, a dot directory: the same hash. Pinned, as it
        // enters the keys of stages with a directory param.
        assert_eq!(ha, hash_dir(b.path(), None).unwrap());
        assert_eq!(
            blake3::Hash::from(ha).to_hex().as_str(),
            "40dc205593607b9628388d7e1f0dc9ab7774210f7b8477d9c3bd07921a405698"
        );
        tree(b.path(), &[("w.bin", "weightz")]);
        assert_ne!(ha, hash_dir(b.path(), None).unwrap());
        tree(b.path(), &[("w.bin", "weights"), ("sub/d.json", "{}")]);
        std::fs::remove_file(b.path().join("sub/c.json")).unwrap();
        assert_ne!(ha, hash_dir(b.path(), None).unwrap());
    }
}
