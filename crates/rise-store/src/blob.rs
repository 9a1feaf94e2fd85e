//! Blobs: put (streaming, staged, fsynced, renamed) and verified reads.
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::id::BlobId;
use crate::store::{sync_dir, Store};

const BUF: usize = 1 << 20;
/// Above this size `put_file` fsyncs on a second thread while it hashes.
const OVERLAP_SYNC_BYTES: u64 = 16 << 20;

/// Hashes a file's bytes: memory-mapped and multi-threaded for large files (blake3 falls back
/// to buffered reads for small or unmappable ones). Returns the id and the number of bytes.
///
/// Only called on files nobody else writes (our own staged copies and immutable blobs), which is
/// what makes memory-mapping them sound.
pub(crate) fn hash_file(path: &Path) -> io::Result<(BlobId, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok((BlobId::from(hasher.finalize()), hasher.count()))
}

impl Store {
    /// Stores everything `reader` yields, streaming (never holding it in memory). Returns the id.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<BlobId> {
        let tmp = self.tmp_path("blob")?;
        let mut file = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read input for", &tmp)(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(StoreError::io("write", &tmp))?;
        }
        file.sync_all().map_err(StoreError::io("sync", &tmp))?;
        drop(file);
        let id = BlobId::from(hasher.finalize());
        self.install(&tmp, &id, true)?;
        Ok(id)
    }

    /// Stores the bytes of the file at `path`. Returns the id.
    pub fn put_file(&self, path: &Path) -> Result<BlobId> {
        let (id, _) = self.put_file_inner(path, true)?;
        Ok(id)
    }

    /// Copies `path` into staging (in-kernel copy, a reflink where the file system allows),
    /// hashes the copy (so the id always describes exactly the stored bytes, even if the source
    /// changes meanwhile), fsyncs it and renames it into place. `sync_parent` false lets
    /// `put_tree` fsync each fan-out directory once instead of once per file.
    pub(crate) fn put_file_inner(&self, path: &Path, sync_parent: bool) -> Result<(BlobId, u64)> {
        let tmp = self.tmp_path("blob")?;
        let copied = fs::copy(path, &tmp).map_err(StoreError::io("copy into the store", path))?;
        // A read-only source makes the staged copy read-only too; fsync works on a read-only fd.
        let staged = File::open(&tmp).map_err(StoreError::io("open", &tmp))?;
        let (hashed, synced) = if copied >= OVERLAP_SYNC_BYTES {
            // Write-back to disk and hashing use different resources: overlap them. Both only
            // read the staged copy, which nothing else writes.
            std::thread::scope(|scope| {
                let sync = scope.spawn(|| staged.sync_all());
                let hashed = hash_file(&tmp);
                let synced = sync
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")));
                (hashed, synced)
            })
        } else {
            (hash_file(&tmp), staged.sync_all())
        };
        let (id, size) = hashed.map_err(StoreError::io("hash", &tmp))?;
        synced.map_err(StoreError::io("sync", &tmp))?;
        self.install(&tmp, &id, sync_parent)?;
        Ok((id, size))
    }

    /// Stores `bytes`. Returns the id.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobId> {
        let id = BlobId::of(bytes);
        let tmp = self.tmp_path("blob")?;
        let mut file = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        file.write_all(bytes)
            .and_then(|_| file.sync_all())
            .map_err(StoreError::io("write", &tmp))?;
        drop(file);
        self.install(&tmp, &id, true)?;
        Ok(id)
    }

    /// Moves a staged, fsynced file whose content hashes to `id` into `objects/`.
    ///
    /// The rename replaces any existing file of that name: if a previous copy was damaged, a
    /// fresh put heals it; if it was intact, the bytes are identical and readers holding the old
    /// file are unaffected.
    fn install(&self, tmp: &Path, id: &BlobId, sync_parent: bool) -> Result<()> {
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("set permissions of", tmp))?;
        let dest = self.object_path(id);
        fs::rename(tmp, &dest).map_err(StoreError::io("rename into place", &dest))?;
        if sync_parent {
            if let Some(parent) = dest.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// fsyncs the fan-out directories of `ids` (after renames done with `sync_parent` false).
    pub(crate) fn sync_fanout(&self, ids: impl IntoIterator<Item = BlobId>) -> Result<()> {
        let dirs: BTreeSet<PathBuf> = ids
            .into_iter()
            .filter_map(|id| self.object_path(&id).parent().map(Path::to_path_buf))
            .collect();
        for d in dirs {
            sync_dir(&d)?;
        }
        Ok(())
    }

    /// Where blob `id` lives (it may be absent). Reading it directly bypasses verification:
    /// prefer [`Store::open_blob`] or [`Store::read_blob`].
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.object_path(id)
    }

    fn open_object(&self, id: &BlobId) -> Result<(File, PathBuf)> {
        let path = self.object_path(id);
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob {
                id: *id,
                path,
                context: String::new(),
            }),
            Err(e) => Err(StoreError::io("open blob", &path)(e)),
        }
    }

    /// Opens blob `id` for streaming. The reader hashes what it yields; if the bytes do not hash
    /// to `id`, the read that reaches the end fails with an `InvalidData` I/O error wrapping
    /// [`StoreError::CorruptBlob`], so a consumer that reads to the end never accepts bad data.
    pub fn open_blob(&self, id: &BlobId) -> Result<BlobReader> {
        let (file, path) = self.open_object(id)?;
        Ok(BlobReader {
            file,
            path,
            id: *id,
            hasher: blake3::Hasher::new(),
            done: false,
        })
    }

    /// Reads blob `id` into memory, verified.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let (mut file, path) = self.open_object(id)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(StoreError::io("read blob", &path))?;
        let actual = BlobId::of(&bytes);
        if actual != *id {
            return Err(StoreError::CorruptBlob {
                id: *id,
                path,
                detail: format!("content hashes to {actual}"),
            });
        }
        Ok(bytes)
    }

    /// Re-hashes blob `id` completely; its size if intact, else the error naming it.
    pub fn check_blob(&self, id: &BlobId) -> Result<u64> {
        let path = self.object_path(id);
        match hash_file(&path) {
            Ok((actual, size)) if actual == *id => Ok(size),
            Ok((actual, size)) => Err(StoreError::CorruptBlob {
                id: *id,
                path,
                detail: format!("{size} bytes that hash to {actual}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob {
                id: *id,
                path,
                context: String::new(),
            }),
            Err(e) => Err(StoreError::io("read blob", &path)(e)),
        }
    }

    /// True if blob `id` is present and its bytes hash to `id` (a full re-hash).
    pub fn has_valid_blob(&self, id: &BlobId) -> Result<bool> {
        match self.check_blob(id) {
            Ok(_) => Ok(true),
            Err(StoreError::CorruptBlob { .. } | StoreError::MissingBlob { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True if blob `id` is present (no hashing).
    pub fn has_blob(&self, id: &BlobId) -> bool {
        self.object_path(id).is_file()
    }
}

/// A streaming reader over a blob that verifies the hash when it reaches the end.
/// See [`Store::open_blob`].
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    path: PathBuf,
    id: BlobId,
    hasher: blake3::Hasher,
    done: bool,
}

impl BlobReader {
    /// The blob being read.
    pub fn id(&self) -> &BlobId {
        &self.id
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let actual = BlobId::from(self.hasher.finalize());
        if actual != self.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                StoreError::CorruptBlob {
                    id: self.id,
                    path: self.path.clone(),
                    detail: format!("content hashes to {actual}"),
                },
            ));
        }
        self.done = true;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("store")).unwrap();
        (dir, s)
    }

    fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes);
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .mode(0o644)
            .open(path)
            .unwrap();
        file.write_all(&bytes).unwrap();
    }

    #[test]
    fn put_and_read_all_ways() {
        let (dir, s) = store();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let a = s.put_bytes(&data).unwrap();
        let b = s.put_reader(&data[..]).unwrap();
        let f = dir.path().join("f");
        fs::write(&f, &data).unwrap();
        let c = s.put_file(&f).unwrap();
        assert_eq!(a, BlobId::of(&data));
        assert_eq!((a, a), (b, c));
        assert_eq!(s.read_blob(&a).unwrap(), data);
        let mut streamed = Vec::new();
        s.open_blob(&a).unwrap().read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, data);
        assert!(s.has_valid_blob(&a).unwrap());
        assert_eq!(s.check_blob(&a).unwrap(), data.len() as u64);
        let mode = fs::metadata(s.blob_path(&a)).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "blobs are read-only");
        let empty = s.put_bytes(b"").unwrap();
        assert_eq!(s.read_blob(&empty).unwrap(), b"");
    }

    #[test]
    fn damaged_blobs_are_never_returned() {
        let (_dir, s) = store();
        let flipped = s.put_bytes(b"the quick brown fox").unwrap();
        damage(&s.blob_path(&flipped), |b| b[4] ^= 0x01);
        let truncated = s.put_bytes(b"jumps over the lazy dog").unwrap();
        damage(&s.blob_path(&truncated), |b| b.truncate(5));
        let missing = s.put_bytes(b"gone").unwrap();
        fs::remove_file(s.blob_path(&missing)).unwrap();

        for id in [flipped, truncated] {
            let err = s.read_blob(&id).unwrap_err();
            assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
            assert!(err.to_string().contains(&id.to_string()));
            let mut out = Vec::new();
            let err = s.open_blob(&id).unwrap().read_to_end(&mut out).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(&id.to_string()), "{err}");
            assert!(!s.has_valid_blob(&id).unwrap());
            assert!(s.check_blob(&id).unwrap_err().is_corruption());
        }
        assert!(matches!(
            s.read_blob(&missing),
            Err(StoreError::MissingBlob { .. })
        ));
        assert!(matches!(
            s.open_blob(&missing),
            Err(StoreError::MissingBlob { .. })
        ));
        assert!(!s.has_valid_blob(&missing).unwrap());

        // Putting the same bytes again heals the damaged copy.
        s.put_bytes(b"the quick brown fox").unwrap();
        assert!(s.has_valid_blob(&flipped).unwrap());
    }

    #[test]
    fn put_reader_streams_large_inputs() {
        let (_dir, s) = store();
        // 64 MiB from a generator: far larger than the 1 MiB buffer, never materialised here.
        let reader = io::repeat(0xab).take(64 << 20);
        let id = s.put_reader(reader).unwrap();
        let mut h = blake3::Hasher::new();
        h.update_reader(io::repeat(0xab).take(64 << 20)).unwrap();
        assert_eq!(id, BlobId::from(h.finalize()));
        assert_eq!(s.check_blob(&id).unwrap(), 64 << 20);
        // put_file of a large file takes the overlapped hash + fsync path.
        let f = _dir.path().join("big");
        std::io::copy(
            &mut io::repeat(0xab).take(64 << 20),
            &mut File::create(&f).unwrap(),
        )
        .unwrap();
        assert_eq!(s.put_file(&f).unwrap(), id);
    }
}
