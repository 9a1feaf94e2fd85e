//! Artifacts: storing a directory as a tree, reading it back, verifying and materialising it.
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rayon::prelude::*;

use crate::blob::hash_file;
use crate::checkout::{SEALED_DIR_MODE, SEALED_EXEC_MODE, SEALED_FILE_MODE};
use crate::error::{Result, StoreError};
use crate::id::ArtifactId;
use crate::store::{remove_dir_all_force, sync_dir, sync_parent, Store};
use crate::tree::{scan_dir, Tree, TreeEntry};

impl Store {
    /// Stores every file under `dir` (hashing files in parallel) and then the tree manifest.
    /// Returns the artifact id. See [`Tree`] for what is recorded and the path rules.
    pub fn put_tree(&self, dir: &Path) -> Result<ArtifactId> {
        let files = scan_dir(dir)?;
        let entries: Vec<TreeEntry> = files
            .par_iter()
            .map(|f| {
                let (blob, size) = self.put_file_inner(&f.real, false)?;
                Ok(TreeEntry {
                    path: f.rel.clone(),
                    blob,
                    size,
                    executable: f.executable,
                })
            })
            .collect::<Result<_>>()?;
        // Entry blobs must be durable before the manifest that names them.
        self.sync_fanout(entries.iter().map(|e| e.blob))?;
        let tree = Tree::new(entries)?;
        self.put_tree_manifest(&tree)
    }

    /// Stores the manifest of an already-built tree whose blobs are in the store.
    pub fn put_tree_manifest(&self, tree: &Tree) -> Result<ArtifactId> {
        tree.validate()?;
        self.put_bytes(&tree.to_manifest_bytes())
    }

    /// Reads (verified) and parses the tree of artifact `id`.
    pub fn read_tree(&self, id: &ArtifactId) -> Result<Tree> {
        let bytes = self.read_blob(id)?;
        Tree::from_manifest_bytes(id, &bytes)
    }

    /// Checks that every blob of artifact `id` is present, has the recorded size and hashes
    /// correctly. The error names the first bad blob (in path order) and its path in the tree,
    /// or the tree itself when it records a wrong size for an intact blob.
    pub fn verify_artifact(&self, id: &ArtifactId) -> Result<()> {
        let tree = self.read_tree(id)?;
        let mut failures: Vec<(usize, StoreError)> = tree
            .entries
            .par_iter()
            .enumerate()
            .filter_map(|(i, e)| self.check_entry(id, e).err().map(|err| (i, err)))
            .collect();
        failures.sort_by_key(|(i, _)| *i);
        match failures.into_iter().next() {
            None => Ok(()),
            Some((_, err)) => Err(err),
        }
    }

    /// A cheap completeness check of artifact `id`: its tree reads (verified; it is small) and
    /// every blob is present with the recorded size. Nothing is re-hashed, so this does not
    /// detect flipped bytes; [`Store::verify_artifact`] does.
    pub fn artifact_complete(&self, id: &ArtifactId) -> Result<()> {
        let tree = self.read_tree(id)?;
        for e in &tree.entries {
            let path = self.blob_path(&e.blob);
            match fs::metadata(&path) {
                Ok(m) if m.len() == e.size => {}
                Ok(m) => {
                    return Err(StoreError::CorruptBlob {
                        id: e.blob,
                        path,
                        detail: format!(
                            "size {}, but tree entry {:?} records {}",
                            m.len(),
                            e.path,
                            e.size
                        ),
                    })
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingBlob {
                        id: e.blob,
                        path,
                        context: format!(" (tree entry {:?})", e.path),
                    })
                }
                Err(err) => return Err(StoreError::io("stat blob", &path)(err)),
            }
        }
        Ok(())
    }

    fn check_entry(&self, tree: &ArtifactId, e: &TreeEntry) -> Result<()> {
        match self.check_blob(&e.blob) {
            Ok(size) if size == e.size => Ok(()),
            // The blob hashes to its name, so its size is right: the tree is what is wrong.
            Ok(size) => Err(wrong_size(tree, e, size)),
            Err(StoreError::CorruptBlob { id, path, detail }) => Err(StoreError::CorruptBlob {
                id,
                path,
                detail: format!("{detail} (tree entry {:?})", e.path),
            }),
            Err(StoreError::MissingBlob { id, path, .. }) => Err(StoreError::MissingBlob {
                id,
                path,
                context: format!(" (tree entry {:?})", e.path),
            }),
            Err(err) => Err(err),
        }
    }

    /// Writes artifact `id`'s files into `dest` (which must not exist, or be an empty
    /// directory), e.g. a user's `--to DIR`. Every file is verified after writing; files are
    /// read-only (and executable where recorded). On error nothing is left at `dest`.
    ///
    /// Unlike a checkout, the directories stay writable: `dest` belongs to the user, rise never
    /// reads it back as store data (so sealing it protects nothing rise trusts), and a
    /// read-only directory cannot be removed with `rm -rf` by users other than root.
    pub fn materialize(&self, id: &ArtifactId, dest: &Path) -> Result<()> {
        if let Ok(mut rd) = fs::read_dir(dest) {
            if rd.next().is_some() {
                return Err(StoreError::DestinationExists {
                    path: dest.to_path_buf(),
                });
            }
        } else if dest.exists() {
            return Err(StoreError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        let tree = self.read_tree(id)?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact");
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(StoreError::io("create directory", &parent))?;
        // Stage next to dest (same file system) so the final step is one atomic rename.
        let staging = parent.join(format!(".{name}.rise-partial-{}", std::process::id()));
        let _ = remove_dir_all_force(&staging);
        let result = self.materialize_into(&tree, &staging, false).and_then(|_| {
            fs::rename(&staging, dest).map_err(StoreError::io("rename into place", dest))?;
            sync_parent(dest)
        });
        if result.is_err() {
            let _ = remove_dir_all_force(&staging);
        }
        result
    }

    /// Materialises `tree` into a fresh directory `dir`. Files are read-only (0444, or 0555
    /// when executable). With `seal_dirs` (a checkout), every directory below `dir` is made
    /// 0555 too; `dir` itself stays writable so that it can still be renamed into place
    /// (moving a directory to another parent needs write permission on it), and the caller
    /// seals it after the rename.
    pub(crate) fn materialize_into(&self, tree: &Tree, dir: &Path, seal_dirs: bool) -> Result<()> {
        fs::create_dir(dir).map_err(StoreError::io("create directory", dir))?;
        let mut dirs = vec![dir.to_path_buf()];
        for e in &tree.entries {
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                let p = dir.join(parent);
                if !p.exists() {
                    fs::create_dir_all(&p).map_err(StoreError::io("create directory", &p))?;
                    let mut cur = Path::new(parent);
                    loop {
                        dirs.push(dir.join(cur));
                        match cur.parent() {
                            Some(up) if !up.as_os_str().is_empty() => cur = up,
                            _ => break,
                        }
                    }
                }
            }
        }
        tree.entries
            .par_iter()
            .try_for_each(|e| self.write_entry(tree, e, dir))?;
        dirs.sort();
        dirs.dedup();
        // Deepest first: a directory is sealed only after everything below it is written.
        for d in dirs.iter().rev() {
            if seal_dirs && d.as_path() != dir {
                fs::set_permissions(d, fs::Permissions::from_mode(SEALED_DIR_MODE))
                    .map_err(StoreError::io("set permissions of", d))?;
            }
            sync_dir(d)?;
        }
        Ok(())
    }

    fn write_entry(&self, tree: &Tree, e: &TreeEntry, dir: &Path) -> Result<()> {
        let src = self.blob_path(&e.blob);
        let dest = dir.join(&e.path);
        match fs::copy(&src, &dest) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound && !src.exists() => {
                return Err(StoreError::MissingBlob {
                    id: e.blob,
                    path: src,
                    context: format!(" (tree entry {:?})", e.path),
                });
            }
            Err(err) => return Err(StoreError::io("copy blob to", &dest)(err)),
        }
        // Verify the copy itself: whatever happened on the way, what lands is what was recorded.
        let (actual, size) = hash_file(&dest).map_err(StoreError::io("hash", &dest))?;
        if actual == e.blob && size != e.size {
            return Err(wrong_size(&tree.id(), e, size));
        }
        if actual != e.blob {
            return Err(StoreError::CorruptBlob {
                id: e.blob,
                path: src,
                detail: format!(
                    "{size} bytes that hash to {actual} (tree entry {:?})",
                    e.path
                ),
            });
        }
        let mode = if e.executable {
            SEALED_EXEC_MODE
        } else {
            SEALED_FILE_MODE
        };
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io("set permissions of", &dest))?;
        File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(StoreError::io("sync", &dest))
    }
}

/// A tree entry records a size its intact blob does not have: the tree is wrong, not the blob
/// (a blob that hashes to its name has exactly the bytes it was stored with).
fn wrong_size(tree: &ArtifactId, e: &TreeEntry, actual: u64) -> StoreError {
    StoreError::BadTree {
        id: *tree,
        reason: format!(
            "entry {:?} records {} bytes, but its blob {} (intact) has {actual}",
            e.path, e.size, e.blob
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("store")).unwrap();
        (dir, s)
    }

    fn write(p: &Path, bytes: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    #[test]
    fn tree_round_trip_with_modes_and_links_inside() {
        let (dir, s) = setup();
        let src = dir.path().join("src");
        write(&src.join("a.txt"), b"alpha");
        write(&src.join("sub/deep/b.bin"), &[0u8, 1, 2, 255]);
        write(&src.join("run.sh"), b"#!/bin/sh\necho hi\n");
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a.txt", src.join("link-to-a")).unwrap();
        symlink("sub/deep", src.join("link-to-dir")).unwrap();
        let id = s.put_tree(&src).unwrap();
        let tree = s.read_tree(&id).unwrap();
        let paths: Vec<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a.txt",
                "link-to-a",
                "link-to-dir/b.bin",
                "run.sh",
                "sub/deep/b.bin"
            ]
        );
        assert!(tree.get("run.sh").unwrap().executable && !tree.get("a.txt").unwrap().executable);
        s.verify_artifact(&id).unwrap();

        let out = dir.path().join("out");
        s.materialize(&id, &out).unwrap();
        assert_eq!(fs::read(out.join("link-to-a")).unwrap(), b"alpha");
        assert_eq!(
            fs::read(out.join("sub/deep/b.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert_eq!(
            fs::metadata(out.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o555
        );
        assert_eq!(
            fs::metadata(out.join("a.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o444
        );
        assert_eq!(
            s.put_tree(&out).unwrap(),
            id,
            "a materialised tree stores back to the same id"
        );
        assert!(matches!(
            s.materialize(&id, &out),
            Err(StoreError::DestinationExists { .. })
        ));

        // An export keeps writable directories (the user's to delete); a checkout is sealed.
        assert_ne!(
            fs::metadata(out.join("sub")).unwrap().permissions().mode() & 0o200,
            0
        );

        let co = s.artifact_path(&id).unwrap();
        assert_eq!(co, s.root().join("checkouts").join(id.to_hex()));
        assert_eq!(s.artifact_path(&id).unwrap(), co);
        assert!(s.check_checkout(&co, &tree).is_empty());
        assert_eq!(
            fs::metadata(co.join("sub")).unwrap().permissions().mode() & 0o777,
            0o555
        );
        s.remove_checkout(&id).unwrap();
        assert!(!co.exists());
    }

    #[test]
    fn a_tree_recording_a_wrong_size_is_blamed_not_its_intact_blob() {
        let (dir, s) = setup();
        let blob = s.put_bytes(b"payload").unwrap();
        let text = format!(
            r#"{{"format":"rise-tree/1","entries":[{{"path":"p","blob":"{blob}","size":99,"executable":false}}]}}"#
        );
        let tree = s.put_bytes(text.as_bytes()).unwrap();
        for err in [
            s.verify_artifact(&tree).unwrap_err(),
            s.materialize(&tree, &dir.path().join("out")).unwrap_err(),
            s.artifact_path(&tree).unwrap_err(),
        ] {
            let StoreError::BadTree { id, reason } = &err else {
                panic!("expected the tree to be blamed: {err}");
            };
            assert_eq!(*id, tree);
            assert!(
                reason.contains("\"p\" records 99 bytes")
                    && reason.contains(&blob.to_string())
                    && reason.contains("(intact) has 7"),
                "{reason}"
            );
            assert!(err.is_corruption());
        }
        assert!(!dir.path().join("out").exists() && !s.checkout_path(&tree).exists());
    }

    #[test]
    fn links_out_of_the_tree_and_special_files_are_rejected() {
        let (dir, s) = setup();
        let outside = dir.path().join("secret");
        write(&outside, b"do not store");
        let src = dir.path().join("src");
        write(&src.join("ok"), b"ok");
        symlink(&outside, src.join("escape")).unwrap();
        let err = s.put_tree(&src).unwrap_err();
        assert!(matches!(err, StoreError::LinkEscapes { .. }), "{err}");
        assert!(
            err.to_string().contains("escape") && err.to_string().contains("outside the tree"),
            "{err}"
        );

        fs::remove_file(src.join("escape")).unwrap();
        symlink("../secret", src.join("relative-escape")).unwrap();
        assert!(matches!(
            s.put_tree(&src),
            Err(StoreError::LinkEscapes { .. })
        ));
        fs::remove_file(src.join("relative-escape")).unwrap();

        symlink("nowhere", src.join("dangling")).unwrap();
        let err = s.put_tree(&src).unwrap_err().to_string();
        assert!(err.contains("dangling"), "{err}");
        fs::remove_file(src.join("dangling")).unwrap();

        symlink(".", src.join("loop")).unwrap();
        let err = s.put_tree(&src).unwrap_err().to_string();
        assert!(err.contains("loop"), "{err}");
        fs::remove_file(src.join("loop")).unwrap();

        let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        let err = s.put_tree(&src).unwrap_err().to_string();
        assert!(err.contains("sock") && err.contains("socket"), "{err}");
        drop(sock);
        fs::remove_file(src.join("sock")).unwrap();
        s.put_tree(&src).unwrap();
    }

    #[test]
    fn unsafe_manifests_are_rejected_before_writing() {
        let (dir, s) = setup();
        // A manifest crafted by hand with `..` in a path, stored as a blob.
        let blob = s.put_bytes(b"payload").unwrap();
        let text = format!(
            r#"{{"format":"rise-tree/1","entries":[{{"path":"../../escaped","blob":"{blob}","size":7,"executable":false}}]}}"#
        );
        let id = s.put_bytes(text.as_bytes()).unwrap();
        let out = dir.path().join("out");
        let err = s.materialize(&id, &out).unwrap_err().to_string();
        assert!(err.contains("../../escaped"), "{err}");
        assert!(!out.exists() && !dir.path().join("escaped").exists());
        let abs = text.replace("../../escaped", "/tmp/escaped");
        let id = s.put_bytes(abs.as_bytes()).unwrap();
        assert!(s
            .read_tree(&id)
            .unwrap_err()
            .to_string()
            .contains("absolute"));
    }

    #[test]
    fn materialize_refuses_damaged_blobs_and_leaves_nothing() {
        let (dir, s) = setup();
        let src = dir.path().join("src");
        write(&src.join("x"), b"xxxxxxxx");
        write(&src.join("y"), b"yyyyyyyy");
        let id = s.put_tree(&src).unwrap();
        let tree = s.read_tree(&id).unwrap();
        let victim = tree.get("y").unwrap().blob;
        let p = s.blob_path(&victim);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"yyyyyyyz").unwrap();
        let err = s.verify_artifact(&id).unwrap_err();
        assert!(
            err.to_string().contains(&victim.to_string()) && err.to_string().contains("\"y\""),
            "{err}"
        );
        let out = dir.path().join("out");
        assert!(s.materialize(&id, &out).unwrap_err().is_corruption());
        assert!(!out.exists());
        assert!(s.artifact_path(&id).unwrap_err().is_corruption());
        assert!(!s.root().join("checkouts").join(id.to_hex()).exists());
    }
}
