//! Checkouts: sealed, read-only copies of artifacts under `checkouts/<id>/`, handed to stages
//! as their inputs (`$RISE_IN_<NAME>`) and to users by `rise show`.
//!
//! A checkout is trusted by the next stage that reads it, so a stage (or a person) that changes
//! one could make a later stage commit a wrong result that records the right input id. Two
//! defences:
//!
//! 1. **Sealed modes.** Every directory of a checkout is 0555 and every file 0444 (0555 when
//!    executable), so a stage running as any user but root cannot delete, add, rename or
//!    rewrite anything in it (`EACCES`).
//! 2. **A seal record, checked on every use.** When a checkout is made, the size, mtime, ctime,
//!    device, inode and mode of each file and directory are written to `checkouts/<id>.seal`
//!    (atomically, outside the checkout itself). [`Store::artifact_path`] compares them with
//!    the disk before handing the checkout over: a file whose stat is unchanged is trusted
//!    (cargo's fingerprint idea: ctime cannot be set back, and any write moves it), a changed one
//!    is re-hashed, and a directory whose stat changed is re-listed (adding or removing an entry
//!    moves its mtime and ctime). Root, who ignores modes, is caught here. A damaged checkout
//!    is discarded atomically and materialised again from the blobs, with a warning that says
//!    what was wrong; a mode that is merely loosened over intact content is tightened in place.
//!    A missing or unreadable seal means: check everything by hashing, then write the seal.
//!
//! A re-run that hands over unchanged checkouts therefore costs one `lstat` per file and
//! directory and no hashing. `rise store verify` ignores seals and re-hashes every checkout.
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::id::{ArtifactId, BlobId};
use crate::store::{remove_dir_all_force, sync_parent, Store};
use crate::tree::{Tree, TreeEntry};

/// The mode of every directory of a checkout.
pub(crate) const SEALED_DIR_MODE: u32 = 0o555;
/// The mode of a checkout file that is not executable.
pub(crate) const SEALED_FILE_MODE: u32 = 0o444;
/// The mode of an executable checkout file.
pub(crate) const SEALED_EXEC_MODE: u32 = 0o555;

const SEAL_FORMAT: &str = "rise-seal/2";

/// This boot's id (empty where the kernel does not say): see [`SealRecord::boot`].
fn boot_id() -> &'static str {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}
/// Suffix of a seal record's file name, next to its checkout: `checkouts/<id>.seal`.
pub(crate) const SEAL_SUFFIX: &str = ".seal";

/// The stat fields a seal trusts. `mode` is the whole `st_mode`, so a file replaced by a
/// directory or a link, or a loosened permission, never matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    dev: u64,
    ino: u64,
    mode: u32,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
        }
    }
}

/// The seal record of one checkout: the stamp of every directory (`""` is the checkout
/// itself) and file, by relative path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stamps {
    dirs: BTreeMap<String, Stamp>,
    files: BTreeMap<String, Stamp>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealRecord {
    format: String,
    artifact: ArtifactId,
    /// The boot the stamps were taken in. Stamps prove nothing across a machine crash: a file
    /// whose data was never written back keeps its size and times. A checkout adopted from a
    /// stage's output ([`Store::adopt_checkout`]) is not fsynced, so after a reboot every file
    /// is re-hashed once.
    boot: String,
    // Not `#[serde(flatten)]`: flattening buffers values in a form without 128-bit integers.
    stamps: Stamps,
}

/// A checkout as it was handed to a process ([`Store::hand_over_checkout`]): which directory,
/// and the stamps its files had then. The directory is held open, so that its inode number
/// cannot be reused while the handle lives: a checkout discarded and rebuilt under the same
/// path then always has another inode (a freed one is soon reused, which made a comparison of
/// bare inode numbers miss the rebuild).
#[derive(Debug)]
pub struct HandedCheckout {
    id: ArtifactId,
    root: fs::File,
    stamps: Stamps,
}

impl HandedCheckout {
    /// The artifact whose checkout was handed over.
    pub fn artifact(&self) -> &ArtifactId {
        &self.id
    }
}

/// How much of a checkout's content [`inspect`] re-hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hashing {
    /// Files whose stamp differs from the seal (every file, without a seal).
    Changed,
    /// Every file (`verify`).
    All,
    /// None: the content was verified a moment ago while it was written (a fresh checkout).
    Trusted,
}

/// A checkout entry whose mode is not the sealed one: (path, sealed mode, description).
pub(crate) type LooseMode = (PathBuf, u32, String);

/// What [`inspect`] found.
#[derive(Debug, Default)]
pub(crate) struct Inspection {
    /// Differences only re-materialising repairs: changed content, extra, missing or replaced
    /// entries. Each names the file or directory.
    pub damage: Vec<String>,
    /// Entries with the right content but a mode other than the sealed one.
    pub loose: Vec<LooseMode>,
    /// Files whose content was re-hashed.
    pub rehashed: usize,
    /// What the disk looked like (stamps taken before hashing); meaningful without damage.
    stamps: Stamps,
}

impl Inspection {
    /// Every problem, damage first, for reports.
    pub fn problems(&self) -> Vec<String> {
        self.damage
            .iter()
            .cloned()
            .chain(self.loose.iter().map(|(_, _, d)| d.clone()))
            .collect()
    }
}

/// How a checkout was handed over by [`Store::checkout_with_outcome`] (for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckoutOutcome {
    /// Materialised now (there was none).
    Created,
    /// Reused after the seal check; `rehashed` files had a changed stat (or there was no
    /// seal) and were re-hashed, `modes_fixed` loosened modes were tightened.
    Reused { rehashed: usize, modes_fixed: usize },
    /// Found damaged, discarded and materialised again.
    Rebuilt { damage: Vec<String> },
}

/// The directories a tree needs, each with the names it must contain (files and
/// subdirectories); `""` is the top.
fn layout(tree: &Tree) -> BTreeMap<String, BTreeSet<String>> {
    let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    dirs.insert(String::new(), BTreeSet::new());
    for e in &tree.entries {
        let mut parent = String::new();
        for component in e.path.split('/') {
            dirs.entry(parent.clone())
                .or_default()
                .insert(component.to_string());
            if parent.is_empty() {
                parent = component.to_string();
            } else {
                parent = format!("{parent}/{component}");
            }
        }
    }
    dirs
}

/// Whether a file of `tree` under `dir` has other hard links. Sealing such a file would change
/// the mode of a file outside the store (a stage may `ln` any file it can read into
/// `$RISE_OUT`), and a checkout must own its inodes: such an output is not adopted; its
/// checkout is made from the blobs instead.
fn has_shared_inodes(dir: &Path, tree: &Tree) -> bool {
    tree.entries
        .iter()
        .any(|e| fs::symlink_metadata(join(dir, &e.path)).map_or(true, |m| m.nlink() > 1))
}

fn join(dir: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    }
}

fn describe_dir(rel: &str) -> String {
    if rel.is_empty() {
        "the checkout directory".to_string()
    } else {
        format!("directory {rel:?}")
    }
}

/// What a non-file, non-directory, or unexpected entry is, for messages.
fn kind_of(ft: &fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn sealed_mode(e: &TreeEntry) -> u32 {
    if e.executable {
        SEALED_EXEC_MODE
    } else {
        SEALED_FILE_MODE
    }
}

/// Hashes a file by reading it (never memory-mapped: a checkout file may be truncated by a
/// misbehaving process while we read it, which would be SIGBUS through a mapping). Large
/// chunks are hashed on every core.
fn hash_by_reading(path: &Path) -> io::Result<(BlobId, u64)> {
    const CHUNK: usize = 8 << 20;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; (len as usize).clamp(1, CHUNK)];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n >= 1 << 20 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
    }
    Ok((BlobId::from(hasher.finalize()), hasher.count()))
}

/// Compares checkout `dir` with `tree` (see the module docs). `seal` is the recorded stamps,
/// if any; which files are re-hashed depends on `hashing`.
fn inspect(dir: &Path, tree: &Tree, seal: Option<&Stamps>, hashing: Hashing) -> Inspection {
    let mut ins = Inspection::default();
    for (rel, children) in layout(tree) {
        let path = join(dir, &rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ins.damage
                    .push(format!("{} is missing", describe_dir(&rel)));
                continue;
            }
            Err(e) => {
                ins.damage
                    .push(format!("cannot stat {}: {e}", describe_dir(&rel)));
                continue;
            }
        };
        if !meta.file_type().is_dir() {
            ins.damage.push(format!(
                "{} was replaced by {}",
                describe_dir(&rel),
                kind_of(&meta.file_type())
            ));
            continue;
        }
        let stamp = Stamp::of(&meta);
        ins.stamps.dirs.insert(rel.clone(), stamp);
        let mode = meta.mode() & 0o7777;
        if mode != SEALED_DIR_MODE {
            ins.loose.push((
                path.clone(),
                SEALED_DIR_MODE,
                format!(
                    "{} has mode {mode:04o}; checkout directories are {SEALED_DIR_MODE:04o}",
                    describe_dir(&rel)
                ),
            ));
        }
        if hashing == Hashing::Changed && seal.and_then(|s| s.dirs.get(&rel)) == Some(&stamp) {
            // Adding, removing or renaming an entry moves a directory's mtime and ctime.
            continue;
        }
        let listing = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) => {
                ins.damage
                    .push(format!("cannot list {}: {e}", describe_dir(&rel)));
                continue;
            }
        };
        let mut extra = Vec::new();
        for entry in listing {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    ins.damage
                        .push(format!("cannot list {}: {e}", describe_dir(&rel)));
                    break;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if !children.contains(&name) {
                let what = entry.file_type().map_or("an entry", |ft| kind_of(&ft));
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                extra.push(format!(
                    "extra entry {child:?} ({what}) is not in the artifact"
                ));
            }
        }
        extra.sort();
        ins.damage.extend(extra);
    }

    let files: Vec<FileCheck> = tree
        .entries
        .par_iter()
        .map(|e| check_file(dir, e, seal, hashing))
        .collect();
    for (e, check) in tree.entries.iter().zip(files) {
        if let Some(stamp) = check.stamp {
            ins.stamps.files.insert(e.path.clone(), stamp);
        }
        ins.damage.extend(check.damage);
        ins.loose.extend(check.loose);
        ins.rehashed += usize::from(check.rehashed);
    }
    ins
}

/// What [`check_file`] found about one file of a checkout.
#[derive(Default)]
struct FileCheck {
    /// Its stamp, if it is a regular file.
    stamp: Option<Stamp>,
    /// Damage, naming the file.
    damage: Option<String>,
    /// A loosened mode over content that is (or is trusted to be) right.
    loose: Option<LooseMode>,
    /// Whether its content was re-hashed.
    rehashed: bool,
}

/// Checks file entry `e` of checkout `dir`: kind, mode, and content when its stamp is not
/// the sealed one (or `hashing` says so).
fn check_file(dir: &Path, e: &TreeEntry, seal: Option<&Stamps>, hashing: Hashing) -> FileCheck {
    let path = dir.join(&e.path);
    let damaged = |msg: String| FileCheck {
        damage: Some(msg),
        ..FileCheck::default()
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return damaged(format!("file {:?} is missing", e.path))
        }
        Err(err) => return damaged(format!("cannot stat file {:?}: {err}", e.path)),
    };
    if !meta.file_type().is_file() {
        let what = kind_of(&meta.file_type());
        return damaged(format!("file {:?} was replaced by {what}", e.path));
    }
    let stamp = Stamp::of(&meta);
    let wanted = sealed_mode(e);
    let mode = meta.mode() & 0o7777;
    let mut check = FileCheck {
        stamp: Some(stamp),
        loose: (mode != wanted).then(|| {
            (
                path.clone(),
                wanted,
                format!(
                    "file {:?} has mode {mode:04o}; checkout files are {wanted:04o}",
                    e.path
                ),
            )
        }),
        ..FileCheck::default()
    };
    let trusted = match hashing {
        Hashing::Trusted => true,
        Hashing::All => false,
        Hashing::Changed => seal.and_then(|s| s.files.get(&e.path)) == Some(&stamp),
    };
    if trusted {
        return check;
    }
    if meta.len() != e.size {
        check.damage = Some(format!(
            "file {:?} was modified: it has {} bytes, the artifact records {} (blob {})",
            e.path,
            meta.len(),
            e.size,
            e.blob
        ));
        return check;
    }
    check.rehashed = true;
    check.damage = match hash_by_reading(&path) {
        Ok((id, size)) if id == e.blob && size == e.size => None,
        Ok((id, size)) => Some(format!(
            "file {:?} was modified: its {size} bytes hash to {id}, not to blob {}",
            e.path, e.blob
        )),
        Err(err) => Some(format!("cannot read file {:?}: {err}", e.path)),
    };
    check
}

/// At most `n` problems joined for a one-line message, with a count of the rest.
fn summarise(problems: &[String], n: usize) -> String {
    let mut text = problems
        .iter()
        .take(n)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > n {
        text += &format!("; and {} more", problems.len() - n);
    }
    text
}

impl Store {
    /// `checkouts/<id>.seal`: the seal record of checkout `id`.
    pub(crate) fn seal_path(&self, id: &ArtifactId) -> PathBuf {
        self.root
            .join("checkouts")
            .join(format!("{}{SEAL_SUFFIX}", id.to_hex()))
    }

    /// The recorded stamps of checkout `id`; `None` if there is no seal or it cannot be used
    /// (unreadable, another format, another artifact, another boot): then everything is re-hashed.
    fn read_seal(&self, id: &ArtifactId) -> Option<Stamps> {
        let path = self.seal_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!("cannot read seal {}: {e}; re-hashing", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<SealRecord>(&bytes) {
            Ok(r) if r.format == SEAL_FORMAT && r.artifact == *id && r.boot == boot_id() => {
                Some(r.stamps)
            }
            Ok(_) => {
                tracing::debug!("seal {} is for something else; re-hashing", path.display());
                None
            }
            Err(e) => {
                tracing::debug!("seal {} is unreadable ({e}); re-hashing", path.display());
                None
            }
        }
    }

    /// Writes the seal record of checkout `id`. A failure (a store the user may read but not
    /// write) is only logged: without a seal the next use re-hashes, which is slower, not wrong.
    fn write_seal(&self, id: &ArtifactId, stamps: Stamps) {
        if let Err(e) = self.try_write_seal(id, stamps) {
            tracing::warn!("cannot record the seal of checkout {id}: {e}");
        }
    }

    fn try_write_seal(&self, id: &ArtifactId, stamps: Stamps) -> Result<()> {
        let record = SealRecord {
            format: SEAL_FORMAT.to_string(),
            artifact: *id,
            boot: boot_id().to_string(),
            stamps,
        };
        let bytes = serde_json::to_vec(&record).map_err(|source| StoreError::Json {
            op: "encode",
            what: format!("seal of checkout {id}"),
            source,
        })?;
        // A lost or torn seal costs one re-hash, and a seal from before a crash names an
        // earlier boot, which is distrusted: no fsync.
        self.write_atomic_unsynced(&self.seal_path(id), &bytes)
    }

    /// A sealed checkout of artifact `id` under `checkouts/<id>/`, ready to hand to a stage or a
    /// user: made (verified while written, renamed into place atomically) on first use, and
    /// checked against its seal on every later use. A damaged checkout is discarded and made
    /// again from the blobs (with a warning naming what was wrong), so what this returns always
    /// holds exactly the artifact's files. Concurrent first uses are safe: one rename wins.
    ///
    /// Errors if the artifact's own blobs are damaged or missing (`is_corruption()`), then
    /// nothing is left at the checkout path.
    pub fn artifact_path(&self, id: &ArtifactId) -> Result<PathBuf> {
        self.checkout_with_outcome(id).map(|(path, _)| path)
    }

    /// [`Store::artifact_path`], also saying whether the checkout was made, reused or rebuilt.
    pub(crate) fn checkout_with_outcome(
        &self,
        id: &ArtifactId,
    ) -> Result<(PathBuf, CheckoutOutcome)> {
        self.checkout_sealed(id)
            .map(|(path, outcome, _)| (path, outcome))
    }

    /// [`Store::checkout_with_outcome`], with the stamps the checkout was sealed with (`None`
    /// when another process made it at the same moment: its seal is theirs).
    fn checkout_sealed(
        &self,
        id: &ArtifactId,
    ) -> Result<(PathBuf, CheckoutOutcome, Option<Stamps>)> {
        let dest = self.checkout_path(id);
        let tree = self.read_tree(id)?;
        let damage = match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_dir() => {
                let seal = self.read_seal(id);
                let ins = inspect(&dest, &tree, seal.as_ref(), Hashing::Changed);
                if ins.damage.is_empty() {
                    let rehashed = ins.rehashed;
                    let (modes_fixed, stamps) =
                        self.reseal(id, &dest, &tree, ins, seal.as_ref())?;
                    return Ok((
                        dest,
                        CheckoutOutcome::Reused {
                            rehashed,
                            modes_fixed,
                        },
                        Some(stamps),
                    ));
                }
                ins.damage
            }
            Ok(meta) => vec![format!(
                "the checkout is {}, not a directory",
                kind_of(&meta.file_type())
            )],
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("stat", &dest)(e)),
        };
        if damage.is_empty() {
            let stamps = self.create_checkout(id, &tree, &dest)?;
            return Ok((dest, CheckoutOutcome::Created, stamps));
        }
        tracing::warn!(
            "checkout {} of artifact {id} was damaged ({}); discarding it and materialising it again from the store's blobs",
            dest.display(),
            summarise(&damage, 5)
        );
        self.remove_checkout(id)?;
        let stamps = self.create_checkout(id, &tree, &dest)?;
        Ok((dest, CheckoutOutcome::Rebuilt { damage }, stamps))
    }

    /// After an inspection without damage: tightens loosened modes and rewrites the seal if
    /// anything differs from it. Returns how many modes were tightened, and the stamps sealed.
    fn reseal(
        &self,
        id: &ArtifactId,
        dest: &Path,
        tree: &Tree,
        ins: Inspection,
        seal: Option<&Stamps>,
    ) -> Result<(usize, Stamps)> {
        let fixed = ins.loose.len();
        let stamps = if ins.loose.is_empty() {
            ins.stamps
        } else {
            tracing::warn!(
                "checkout {} of artifact {id}: contents intact, read-only modes restored ({})",
                dest.display(),
                summarise(
                    &ins.loose
                        .iter()
                        .map(|(_, _, d)| d.clone())
                        .collect::<Vec<_>>(),
                    5
                )
            );
            for (path, mode, _) in &ins.loose {
                fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                    .map_err(StoreError::io("set permissions of", path))?;
            }
            // chmod moved the ctimes; the content was just verified, so stamp without hashing.
            inspect(dest, tree, None, Hashing::Trusted).stamps
        };
        if seal != Some(&stamps) {
            self.write_seal(id, stamps.clone());
        }
        Ok((fixed, stamps))
    }

    /// Materialises artifact `id` into a fresh staging directory, renames it to `dest`, seals
    /// the top directory and writes the seal record. Returns the stamps sealed, `None` when
    /// another process made the checkout at the same moment.
    fn create_checkout(&self, id: &ArtifactId, tree: &Tree, dest: &Path) -> Result<Option<Stamps>> {
        let staging = self.tmp_path("checkout")?;
        if let Err(e) = self.materialize_into(tree, &staging, true) {
            let _ = remove_dir_all_force(&staging);
            return Err(e);
        }
        // The top directory is still writable: renaming a directory to another parent needs
        // write permission on it (its `..` entry changes) for users other than root.
        match fs::rename(&staging, dest) {
            Ok(()) => {}
            Err(_) if dest.is_dir() => {
                // Another process made it at the same moment (verified as it wrote it, sealed
                // by it): use theirs.
                return remove_dir_all_force(&staging).map(|()| None);
            }
            Err(e) => {
                let _ = remove_dir_all_force(&staging);
                return Err(StoreError::io("rename into place", dest)(e));
            }
        }
        fs::set_permissions(dest, fs::Permissions::from_mode(SEALED_DIR_MODE))
            .map_err(StoreError::io("set permissions of", dest))?;
        sync_parent(dest)?;
        let ins = inspect(dest, tree, None, Hashing::Trusted);
        if !ins.damage.is_empty() {
            // Only a concurrent writer could cause this; the next use re-checks and rebuilds.
            return Err(StoreError::io("seal checkout", dest)(io::Error::other(
                summarise(&ins.damage, 5),
            )));
        }
        self.write_seal(id, ins.stamps.clone());
        Ok(Some(ins.stamps))
    }

    /// Makes `dir`, a directory whose files [`Store::put_tree`] has just stored as artifact
    /// `id` (a stage's output, with every process that wrote it gone), the checkout of `id`:
    /// modes sealed, renamed into `checkouts/<id>/`, seal record written, with no copy and no
    /// second hashing. Later stages then get their inputs from [`Store::artifact_path`] like any
    /// other checkout, checked against the seal. When a checkout of `id` exists already, or
    /// `dir` holds what a checkout cannot (symbolic links, empty directories), `dir` is removed
    /// and the checkout is made from the blobs on first use. Returns the checkout's path.
    pub fn adopt_checkout(&self, id: &ArtifactId, dir: &Path) -> Result<PathBuf> {
        let dest = self.checkout_path(id);
        let tree = self.read_tree(id)?;
        let adopted = fs::symlink_metadata(&dest).is_err() && !has_shared_inodes(dir, &tree) && {
            let ins = inspect(dir, &tree, None, Hashing::Trusted);
            ins.damage.is_empty() && {
                for (path, mode, _) in ins.loose.iter().filter(|(p, _, _)| p != dir) {
                    fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                        .map_err(StoreError::io("set permissions of", path))?;
                }
                fs::rename(dir, &dest).is_ok()
            }
        };
        if !adopted {
            remove_dir_all_force(dir)?;
            return Ok(dest);
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(SEALED_DIR_MODE))
            .map_err(StoreError::io("set permissions of", &dest))?;
        // No fsync of `checkouts/`: a checkout is derived from the blobs, and one that a crash
        // loses is made again on first use (its seal, if it survived, names an earlier boot).
        self.write_seal(id, inspect(&dest, &tree, None, Hashing::Trusted).stamps);
        Ok(dest)
    }

    /// [`Store::artifact_path`] for a checkout handed to a process that will read it (a stage's
    /// input): also remembers which directory was handed over and its seal, so that
    /// [`Store::handed_checkout_damage`] can tell afterwards whether what the process could
    /// read was the artifact's files all along.
    pub fn hand_over_checkout(&self, id: &ArtifactId) -> Result<(PathBuf, HandedCheckout)> {
        let (dest, _, sealed) = self.checkout_sealed(id)?;
        let root = fs::File::open(&dest).map_err(StoreError::io("open", &dest))?;
        // The stamps just checked or sealed; when another process made the checkout, its seal
        // (or, without one, the stamps as they are now: it verified the files as it wrote them).
        let stamps = match sealed.or_else(|| self.read_seal(id)) {
            Some(stamps) => stamps,
            None => inspect(&dest, &self.read_tree(id)?, None, Hashing::Trusted).stamps,
        };
        let handed = HandedCheckout {
            id: *id,
            root,
            stamps,
        };
        Ok((dest, handed))
    }

    /// What differs between a checkout handed over by [`Store::hand_over_checkout`] and its
    /// artifact now, without repairing anything: empty if the process saw the artifact's files
    /// throughout. Besides changed content (stat against the seal taken at hand-over, re-hash
    /// what changed), a checkout that is no longer the directory handed over counts: another
    /// process sharing it found it damaged and discarded it (or it was rebuilt) while this one
    /// ran, so this one may have read the changed files.
    pub fn handed_checkout_damage(&self, handed: &HandedCheckout) -> Result<Vec<String>> {
        let dest = self.checkout_path(&handed.id);
        let root = match fs::symlink_metadata(&dest) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(vec![format!(
                    "the checkout {} was discarded while in use (found damaged by a process \
                     sharing it)",
                    dest.display()
                )])
            }
            Err(e) => return Err(StoreError::io("stat", &dest)(e)),
        };
        let held = handed
            .root
            .metadata()
            .map_err(StoreError::io("stat", &dest))?;
        if (root.dev(), root.ino()) != (held.dev(), held.ino()) {
            return Ok(vec![format!(
                "the checkout {} was replaced while in use (found damaged and rebuilt by a \
                 process sharing it)",
                dest.display()
            )]);
        }
        let tree = self.read_tree(&handed.id)?;
        Ok(inspect(&dest, &tree, Some(&handed.stamps), Hashing::Changed).problems())
    }

    /// Compares checkout `id` with its artifact the way [`Store::artifact_path`] does (stat
    /// against the seal; re-hash only what changed) without repairing anything: the damage
    /// found, empty if the checkout is intact (or absent). To learn whether a process that was
    /// handed the checkout saw the artifact's files throughout, use
    /// [`Store::handed_checkout_damage`]: an absent or rebuilt checkout is no damage here.
    pub fn checkout_damage(&self, id: &ArtifactId) -> Result<Vec<String>> {
        let dest = self.checkout_path(id);
        match fs::symlink_metadata(&dest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("stat", &dest)(e)),
        }
        let tree = self.read_tree(id)?;
        let seal = self.read_seal(id);
        Ok(inspect(&dest, &tree, seal.as_ref(), Hashing::Changed).problems())
    }

    /// Removes the checkout of `id` and its seal, if any (it is recreated on next use).
    pub fn remove_checkout(&self, id: &ArtifactId) -> Result<()> {
        self.discard_dir(&self.checkout_path(id))?;
        // After the directory: a seal without its checkout is harmless (the next creation
        // overwrites it), a checkout without its seal only costs a re-hash.
        match fs::remove_file(self.seal_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", self.seal_path(id))(e)),
        }
    }

    /// Discards the checkout of `id` (however damaged) and makes it again from the blobs.
    /// `rise store verify --repair` uses it: unlike [`Store::artifact_path`] it does not trust
    /// the seal.
    pub fn rebuild_checkout(&self, id: &ArtifactId) -> Result<PathBuf> {
        self.remove_checkout(id)?;
        self.artifact_path(id)
    }

    /// Removes an entry of `checkouts/` that is not named by an artifact id.
    pub fn remove_stray_checkout(&self, path: &Path) -> Result<()> {
        let checkouts = self.root.join("checkouts");
        if path.parent() != Some(checkouts.as_path()) {
            return Err(StoreError::io("remove", path)(io::Error::other(
                "not an entry of the store's checkouts/ directory",
            )));
        }
        self.discard_dir(path)
    }

    /// Removes a directory that others may trust if present (a checkout): first renamed into
    /// staging in one atomic step, then deleted, so a crash mid-delete never leaves a partial
    /// checkout under its real name (staging leftovers are cleaned at the next open). A file or
    /// link in its place is simply removed.
    pub(crate) fn discard_dir(&self, dir: &Path) -> Result<()> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("stat", dir)(e)),
            Ok(meta) if !meta.is_dir() => {
                return match fs::remove_file(dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::io("remove", dir)(e)),
                };
            }
            Ok(meta) if meta.mode() & 0o200 == 0 => {
                // A sealed directory: moving it to another parent rewrites its `..`, which
                // needs write permission on it (for users other than root).
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
            }
            Ok(_) => {}
        }
        let staging = self.tmp_path("discard")?;
        match fs::rename(dir, &staging) {
            Ok(()) => remove_dir_all_force(&staging),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("move aside for deletion", dir)(e)),
        }
    }

    /// Compares checkout `dir` with `tree`, re-hashing every file and ignoring the seal: every
    /// problem found (empty if it matches), each naming the file or directory. For `verify`.
    pub(crate) fn check_checkout(&self, dir: &Path, tree: &Tree) -> Vec<String> {
        inspect(dir, tree, None, Hashing::All).problems()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A temp dir whose sealed checkouts are made writable before it is deleted, so the tests
    /// also clean up when not run as root.
    struct TestDir(tempfile::TempDir);

    impl Drop for TestDir {
        fn drop(&mut self) {
            crate::store::make_writable(self.0.path());
        }
    }

    fn setup(files: &[(&str, &[u8])]) -> (TestDir, Store, ArtifactId) {
        let dir = TestDir(tempfile::tempdir().unwrap());
        let s = Store::open(dir.0.path().join("store")).unwrap();
        let src = dir.0.path().join("src");
        for (p, bytes) in files {
            let path = src.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
        }
        fs::create_dir_all(&src).unwrap();
        let id = s.put_tree(&src).unwrap();
        (dir, s, id)
    }

    const FILES: &[(&str, &[u8])] = &[
        ("a.txt", b"alpha"),
        ("sub/b.txt", b"bravo"),
        ("sub/deep/c.txt", b"charlie"),
    ];

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// Writes to a checkout file the way root can (root ignores the 0444 mode; for other
    /// users the test makes the file writable first, which the check also notices).
    fn append(p: &Path, bytes: &[u8]) {
        use std::io::Write;
        if !is_root() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    /// Makes directory `p` writable for the duration of `f` (a no-op for root, who needs no
    /// permission), then seals it again.
    fn with_writable_dir(p: &Path, f: impl FnOnce()) {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        f();
        fs::set_permissions(p, fs::Permissions::from_mode(SEALED_DIR_MODE)).unwrap();
    }

    #[test]
    fn a_stage_output_is_adopted_as_a_sealed_checkout_without_copying() {
        let (dir, s, id) = setup(FILES);
        let src = dir.0.path().join("src");
        let inode = fs::metadata(src.join("a.txt")).unwrap().ino();
        let dest = s.adopt_checkout(&id, &src).unwrap();
        assert!(!src.exists(), "moved, not copied");
        assert_eq!(fs::metadata(dest.join("a.txt")).unwrap().ino(), inode);
        assert_eq!(mode(&dest), SEALED_DIR_MODE);
        assert_eq!(mode(&dest.join("sub/deep")), SEALED_DIR_MODE);
        assert_eq!(mode(&dest.join("sub/b.txt")), SEALED_FILE_MODE);
        // Sealed: the next use only stats, and damage is caught.
        assert!(matches!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            }
        ));
        append(&dest.join("sub/b.txt"), b"!");
        let damage = s.checkout_damage(&id).unwrap();
        assert!(
            damage[0].contains("\"sub/b.txt\" was modified"),
            "{damage:?}"
        );
        assert!(matches!(outcome(&s, &id), CheckoutOutcome::Rebuilt { .. }));

        // A second directory with the same artifact is dropped: the checkout exists already.
        let again = dir.0.path().join("again");
        for (p, bytes) in FILES {
            fs::create_dir_all(again.join(p).parent().unwrap()).unwrap();
            fs::write(again.join(p), bytes).unwrap();
        }
        assert_eq!(s.adopt_checkout(&id, &again).unwrap(), dest);
        assert!(!again.exists());

        // What a checkout cannot hold (an empty directory) is not adopted; the checkout is
        // made from the blobs on first use.
        let (dir, s, id) = setup(FILES);
        let src = dir.0.path().join("src");
        fs::create_dir(src.join("empty")).unwrap();
        let dest = s.adopt_checkout(&id, &src).unwrap();
        assert!(!src.exists() && !dest.exists());
        assert!(matches!(outcome(&s, &id), CheckoutOutcome::Created));
    }

    fn outcome(s: &Store, id: &ArtifactId) -> CheckoutOutcome {
        s.checkout_with_outcome(id).unwrap().1
    }

    #[test]
    fn checkouts_are_sealed_down_to_their_directories_and_still_removable() {
        let (dir, s, _) = setup(&[
            ("a.txt", b"alpha"),
            ("sub/deep/c.txt", b"charlie"),
            ("run.sh", b"#!/bin/sh\n"),
        ]);
        let src = dir.0.path().join("src");
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let id = s.put_tree(&src).unwrap();
        let co = s.artifact_path(&id).unwrap();
        for d in ["", "sub", "sub/deep"] {
            assert_eq!(mode(&join(&co, d)), 0o555, "directory {d:?}");
        }
        assert_eq!(mode(&co.join("a.txt")), 0o444);
        assert_eq!(mode(&co.join("run.sh")), 0o555);
        assert!(
            s.seal_path(&id).is_file(),
            "the seal sits next to the checkout"
        );
        if !is_root() {
            let err = fs::write(co.join("new"), b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            let err = fs::remove_file(co.join("a.txt")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        }
        s.remove_checkout(&id).unwrap();
        assert!(!co.exists() && !s.seal_path(&id).exists());
        // The low-level removal copes with sealed directories too (as non-root it must chmod).
        let co = s.artifact_path(&id).unwrap();
        remove_dir_all_force(&co).unwrap();
        assert!(!co.exists());
    }

    #[test]
    fn the_seal_records_every_file_and_directory_and_an_unchanged_checkout_is_not_rehashed() {
        let (_dir, s, id) = setup(FILES);
        assert_eq!(outcome(&s, &id), CheckoutOutcome::Created);
        let seal = s.read_seal(&id).expect("seal written on creation");
        assert_eq!(
            seal.files.keys().collect::<Vec<_>>(),
            ["a.txt", "sub/b.txt", "sub/deep/c.txt"]
        );
        assert_eq!(
            seal.dirs.keys().collect::<Vec<_>>(),
            ["", "sub", "sub/deep"]
        );
        let co = s.checkout_path(&id);
        let meta = fs::symlink_metadata(co.join("sub/b.txt")).unwrap();
        assert_eq!(seal.files["sub/b.txt"], Stamp::of(&meta));
        // Reuse: stat only.
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            }
        );
    }

    #[test]
    fn a_missing_or_unusable_seal_means_hash_everything_then_seal() {
        let (_dir, s, id) = setup(FILES);
        s.artifact_path(&id).unwrap();
        let seal_path = s.seal_path(&id);
        fs::remove_file(&seal_path).unwrap();
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 3,
                modes_fixed: 0
            }
        );
        assert!(
            seal_path.is_file(),
            "the seal is written after the full check"
        );
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            }
        );
        fs::write(&seal_path, b"{not json").unwrap();
        assert!(matches!(
            outcome(&s, &id),
            CheckoutOutcome::Reused { rehashed: 3, .. }
        ));
        // A seal of another artifact is not used either.
        let (_d2, s2, other) = setup(&[("x", b"x")]);
        s2.artifact_path(&other).unwrap();
        fs::copy(s2.seal_path(&other), &seal_path).unwrap();
        assert!(matches!(
            outcome(&s, &id),
            CheckoutOutcome::Reused { rehashed: 3, .. }
        ));
    }

    #[test]
    fn a_changed_stat_with_the_same_content_is_rehashed_and_resealed_not_rebuilt() {
        let (_dir, s, id) = setup(FILES);
        let co = s.artifact_path(&id).unwrap();
        let file = co.join("sub/b.txt");
        let ino = fs::metadata(&file).unwrap().ino();
        // A new mtime (and so ctime) over the same bytes, as `touch` would leave.
        if !is_root() {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        if !is_root() {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
        }
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 1,
                modes_fixed: 0
            }
        );
        assert_eq!(fs::metadata(&file).unwrap().ino(), ino, "not rebuilt");
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            },
            "the new stat was sealed"
        );
    }

    #[test]
    fn an_output_hard_linked_to_a_file_outside_is_copied_not_sealed_in_place() {
        let (dir, s, _) = setup(FILES);
        let outside = dir.0.path().join("secret");
        fs::write(&outside, b"mine").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
        let out = dir.0.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::hard_link(&outside, out.join("linked")).unwrap();
        let id = s.put_tree(&out).unwrap();
        let dest = s.adopt_checkout(&id, &out).unwrap();
        assert_eq!(
            mode(&outside),
            0o600,
            "the file outside the store keeps its mode"
        );
        assert_eq!(
            fs::metadata(&outside).unwrap().nlink(),
            1,
            "no link into the store"
        );
        let co = s.artifact_path(&id).unwrap();
        assert_eq!(co, dest);
        assert_eq!(fs::read(co.join("linked")).unwrap(), b"mine");
        assert_ne!(
            fs::metadata(co.join("linked")).unwrap().ino(),
            fs::metadata(&outside).unwrap().ino()
        );
    }

    #[test]
    fn a_checkout_changed_or_discarded_while_handed_over_counts_for_every_holder() {
        let (_dir, s, id) = setup(FILES);
        let (co, first) = s.hand_over_checkout(&id).unwrap();
        let (_, second) = s.hand_over_checkout(&id).unwrap();
        assert!(s.handed_checkout_damage(&first).unwrap().is_empty());
        // One holder changes a file: both see the damage.
        append(&co.join("a.txt"), b"!");
        for handed in [&first, &second] {
            let damage = s.handed_checkout_damage(handed).unwrap();
            assert!(damage[0].contains("\"a.txt\" was modified"), "{damage:?}");
        }
        // The first holder's check discards it: the second must not take the absence for
        // "intact", since it may have read the changed file.
        s.remove_checkout(&id).unwrap();
        let damage = s.handed_checkout_damage(&second).unwrap();
        assert!(
            damage[0].contains("was discarded while in use"),
            "{damage:?}"
        );
        // Rebuilt under the same path by a third user: still not the directory handed over.
        let (_, third) = s.hand_over_checkout(&id).unwrap();
        let damage = s.handed_checkout_damage(&second).unwrap();
        assert!(
            damage[0].contains("was replaced while in use"),
            "{damage:?}"
        );
        assert!(s.handed_checkout_damage(&third).unwrap().is_empty());
        // A change that leaves the content as it was (times only) is not damage.
        let a = co.join("a.txt");
        let bytes = fs::read(&a).unwrap();
        with_writable_dir(&co, || {
            fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(&a, &bytes).unwrap();
            fs::set_permissions(&a, fs::Permissions::from_mode(0o444)).unwrap();
        });
        assert!(s.handed_checkout_damage(&third).unwrap().is_empty());
    }

    #[test]
    fn an_edited_file_is_detected_and_the_checkout_rebuilt_from_the_blobs() {
        let (_dir, s, id) = setup(FILES);
        let co = s.artifact_path(&id).unwrap();
        append(&co.join("sub/deep/c.txt"), b"!");
        assert!(s.checkout_damage(&id).unwrap()[0].contains("sub/deep/c.txt"));
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("an edited checkout must be rebuilt");
        };
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert!(
            damage[0].contains("\"sub/deep/c.txt\" was modified")
                && damage[0].contains("8 bytes")
                && damage[0].contains("records 7"),
            "{damage:?}"
        );
        assert_eq!(fs::read(co.join("sub/deep/c.txt")).unwrap(), b"charlie");
        assert_eq!(mode(&co.join("sub/deep/c.txt")), 0o444);
        assert!(s.checkout_damage(&id).unwrap().is_empty());
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            }
        );

        // Same size, different bytes: found by the re-hash.
        let file = co.join("a.txt");
        if !is_root() {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::write(&file, b"ALPHA").unwrap();
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("a rewritten file must be detected");
        };
        assert!(
            damage[0].contains("\"a.txt\" was modified: its 5 bytes hash to"),
            "{damage:?}"
        );
        assert_eq!(fs::read(&file).unwrap(), b"alpha");
    }

    #[test]
    fn extra_missing_and_replaced_entries_are_damage() {
        let (_dir, s, id) = setup(FILES);
        let co = s.artifact_path(&id).unwrap();

        with_writable_dir(&co.join("sub"), || {
            fs::write(co.join("sub/extra"), b"x").unwrap()
        });
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("an extra file must be detected");
        };
        assert_eq!(
            damage,
            ["extra entry \"sub/extra\" (a regular file) is not in the artifact"]
        );
        assert!(!co.join("sub/extra").exists());

        with_writable_dir(&co, || fs::remove_file(co.join("a.txt")).unwrap());
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("a missing file must be detected");
        };
        assert_eq!(damage, ["file \"a.txt\" is missing"]);
        assert_eq!(fs::read(co.join("a.txt")).unwrap(), b"alpha");

        // A directory swapped for a link to an identical copy elsewhere: the content would
        // hash right, but the checkout no longer owns it.
        let elsewhere = _dir.0.path().join("elsewhere");
        with_writable_dir(&co, || {
            fs::set_permissions(co.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
            fs::rename(co.join("sub"), &elsewhere).unwrap();
            symlink(&elsewhere, co.join("sub")).unwrap();
        });
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("a replaced directory must be detected");
        };
        assert!(
            damage.contains(&"directory \"sub\" was replaced by a symbolic link".to_string()),
            "{damage:?}"
        );
        assert!(fs::symlink_metadata(co.join("sub")).unwrap().is_dir());

        // A file replaced by a link to a file with the right bytes.
        let twin = _dir.0.path().join("twin");
        fs::write(&twin, b"alpha").unwrap();
        with_writable_dir(&co, || {
            fs::remove_file(co.join("a.txt")).unwrap();
            symlink(&twin, co.join("a.txt")).unwrap();
        });
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("a replaced file must be detected");
        };
        assert!(
            damage.contains(&"file \"a.txt\" was replaced by a symbolic link".to_string()),
            "{damage:?}"
        );
        assert!(fs::symlink_metadata(co.join("a.txt")).unwrap().is_file());

        // The whole checkout replaced by a file.
        s.remove_checkout(&id).unwrap();
        fs::write(&co, b"not a checkout").unwrap();
        let CheckoutOutcome::Rebuilt { damage } = outcome(&s, &id) else {
            panic!("a file in place of the checkout must be replaced");
        };
        assert_eq!(damage, ["the checkout is a regular file, not a directory"]);
        assert!(co.is_dir());
    }

    #[test]
    fn loosened_modes_over_intact_content_are_tightened_in_place() {
        let (_dir, s, id) = setup(FILES);
        let co = s.artifact_path(&id).unwrap();
        let ino = fs::metadata(co.join("a.txt")).unwrap().ino();
        fs::set_permissions(co.join("a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(co.join("sub"), fs::Permissions::from_mode(0o775)).unwrap();
        let problems = s.checkout_damage(&id).unwrap();
        assert!(
            problems.contains(&"file \"a.txt\" has mode 0644; checkout files are 0444".to_string())
                && problems.contains(
                    &"directory \"sub\" has mode 0775; checkout directories are 0555".to_string()
                ),
            "{problems:?}"
        );
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 1,
                modes_fixed: 2
            }
        );
        assert_eq!(
            (mode(&co.join("a.txt")), mode(&co.join("sub"))),
            (0o444, 0o555)
        );
        assert_eq!(fs::metadata(co.join("a.txt")).unwrap().ino(), ino);
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 0,
                modes_fixed: 0
            }
        );
    }

    #[test]
    fn a_checkout_made_by_an_older_rise_is_checked_in_full_and_sealed() {
        // Older checkouts: writable directories, no seal.
        let (_dir, s, id) = setup(FILES);
        let co = s.artifact_path(&id).unwrap();
        fs::remove_file(s.seal_path(&id)).unwrap();
        for d in ["", "sub", "sub/deep"] {
            fs::set_permissions(join(&co, d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(
            outcome(&s, &id),
            CheckoutOutcome::Reused {
                rehashed: 3,
                modes_fixed: 3
            }
        );
        assert_eq!(mode(&co), 0o555);
        assert!(s.read_seal(&id).is_some());
    }

    #[test]
    fn layout_lists_each_directory_with_its_children() {
        let tree = Tree::new(
            ["a", "d/x", "d/e/y", "d/e/z"]
                .iter()
                .map(|p| TreeEntry {
                    path: p.to_string(),
                    blob: BlobId([0; 32]),
                    size: 0,
                    executable: false,
                })
                .collect(),
        )
        .unwrap();
        let l = layout(&tree);
        let names = |d: &str| l[d].iter().cloned().collect::<Vec<_>>();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["", "d", "d/e"]);
        assert_eq!(names(""), ["a", "d"]);
        assert_eq!(names("d"), ["e", "x"]);
        assert_eq!(names("d/e"), ["y", "z"]);
    }
}
