//! What filesystem a store lives on, and whether it gives the store what it needs when several
//! hosts share it.
//!
//! The store relies on three properties of its filesystem (ARCHITECTURE.md, "What the store
//! needs from its filesystem"): `rename` within one directory is atomic, `flock` is coherent
//! between every host that opens the store, and a file closed on one host is seen whole by the
//! next `open` on another (close-to-open consistency). The first and last hold on local
//! filesystems and on NFS, Lustre, GPFS and CephFS; `flock` is where network filesystems differ,
//! often by mount option, so [`FsInfo::flock`] reads the mount options.
//!
//! Two sources: `statfs(2)`'s filesystem magic (authoritative for "is this a network
//! filesystem", and available everywhere) and the `/proc/mounts` entry of the store's mount
//! (the type's name, the FUSE subtype and the options). Both are parsed by pure functions
//! ([`FsInfo::from_parts`]) so that every rule is tested without an NFS server.
use std::path::{Path, PathBuf};

/// `statfs` magic numbers of filesystems that other hosts may mount at the same time (network
/// and shared-disk cluster filesystems), with the name Linux gives the type.
const SHARED_MAGIC: &[(u64, &str)] = &[
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x0BD0_0BD0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x00C3_6400, "ceph"),
    (0x5346_414F, "afs"),
    (0x6B41_4653, "afs"),
    (0x7375_7245, "coda"),
    (0x0102_1997, "9p"),
    (0x1983_0326, "beegfs"),
    (0xAAD7_AAEA, "panfs"),
    (0x0116_1970, "gfs2"),
    (0x7461_636F, "ocfs2"),
    (0x2003_0528, "pvfs2"),
];

/// `statfs` magic of FUSE: local or remote depending on the daemon, told by the subtype.
const FUSE_MAGIC: u64 = 0x6573_5546;

/// FUSE subtypes (`fuse.NAME` in `/proc/mounts`) that serve files from other machines.
const SHARED_FUSE: &[&str] = &[
    "sshfs",
    "glusterfs",
    "ceph-fuse",
    "s3fs",
    "gcsfuse",
    "rclone",
    "juicefs",
    "beegfs",
    "lustre",
    "cvmfs2",
];

/// Filesystem type names (as `/proc/mounts` spells them) that are shared between hosts; used
/// when `statfs` gave no magic we know.
const SHARED_NAMES: &[&str] = &[
    "nfs",
    "nfs4",
    "smb",
    "smb3",
    "cifs",
    "lustre",
    "gpfs",
    "ceph",
    "afs",
    "coda",
    "9p",
    "beegfs",
    "panfs",
    "gfs2",
    "ocfs2",
    "pvfs2",
    "orangefs",
    "glusterfs",
];

/// One line of `/proc/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted (`server:/export`, `/dev/sda1`, ...).
    pub source: String,
    /// Where.
    pub mount_point: PathBuf,
    /// The filesystem type (`nfs4`, `lustre`, `fuse.sshfs`, ...).
    pub fstype: String,
    /// The mount options, split at commas.
    pub options: Vec<String>,
}

/// The filesystem a path lives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// The type's name: from `/proc/mounts` when the path's mount is listed there, else from
    /// the `statfs` magic, else the magic in hex.
    pub fstype: String,
    /// `statfs`'s `f_type`, when `statfs` succeeded.
    pub magic: Option<u64>,
    /// The mount the path is on, if `/proc/mounts` lists it.
    pub mount: Option<MountEntry>,
    /// True for a network or shared-disk cluster filesystem: one other hosts may have mounted.
    pub shared: bool,
}

/// Whether a `flock` taken on one host is seen by every other host that mounts the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlockCoherence {
    /// A local filesystem: only this host opens the store, so the question does not arise.
    OneHost,
    /// Coherent across hosts; the reason names the mechanism.
    Coherent(String),
    /// Not coherent: two hosts can hold the same lock at once. The reason names the mount
    /// option or setting responsible.
    NotCoherent(String),
    /// Cannot be told from the mount options; the reason says what to check.
    Unknown(String),
}

impl FsInfo {
    /// Probes the filesystem of `path` (which must exist): `statfs(2)` and `/proc/mounts`.
    /// Either may be unavailable (not Linux, no `/proc`); what is known is reported.
    pub fn probe(path: &Path) -> std::io::Result<FsInfo> {
        let magic = statfs_magic(path)?;
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let canonical = std::fs::canonicalize(path)?;
        Ok(FsInfo::from_parts(Some(magic), &mounts, &canonical))
    }

    /// The filesystem of `path` (canonical, absolute) given `statfs`'s magic and the text of
    /// `/proc/mounts`.
    pub fn from_parts(magic: Option<u64>, mounts: &str, path: &Path) -> FsInfo {
        let mount = mount_of(mounts, path);
        let by_magic = magic.and_then(|m| {
            SHARED_MAGIC
                .iter()
                .find(|(k, _)| *k == m)
                .map(|(_, name)| *name)
        });
        let fuse_subtype = mount
            .as_ref()
            .and_then(|m| m.fstype.strip_prefix("fuse."))
            .map(str::to_string);
        let name_shared = |name: &str| {
            SHARED_NAMES.contains(&name)
                || name
                    .strip_prefix("fuse.")
                    .is_some_and(|sub| SHARED_FUSE.contains(&sub))
        };
        let shared = match magic {
            Some(_) if by_magic.is_some() => true,
            Some(FUSE_MAGIC) => fuse_subtype
                .as_deref()
                .is_some_and(|s| SHARED_FUSE.contains(&s)),
            // A magic we do not list is a local filesystem (ext4, xfs, btrfs, tmpfs, overlay,
            // ...), unless its mount's type is one we know to be shared (a kernel that reports
            // an unusual magic for it).
            Some(_) => mount.as_ref().is_some_and(|m| name_shared(&m.fstype)),
            None => mount.as_ref().is_some_and(|m| name_shared(&m.fstype)),
        };
        let fstype = match (&mount, by_magic, magic) {
            (Some(m), _, _) => m.fstype.clone(),
            (None, Some(name), _) => name.to_string(),
            (None, None, Some(m)) => format!("{m:#x}"),
            (None, None, None) => "unknown".to_string(),
        };
        FsInfo {
            fstype,
            magic,
            mount,
            shared,
        }
    }

    fn has_option(&self, opt: &str) -> bool {
        self.mount
            .as_ref()
            .is_some_and(|m| m.options.iter().any(|o| o == opt))
    }

    fn option_value(&self, key: &str) -> Option<&str> {
        self.mount.as_ref().and_then(|m| {
            m.options
                .iter()
                .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        })
    }

    /// Whether `flock` on this filesystem is coherent between hosts, from the type and the
    /// mount options.
    pub fn flock(&self) -> FlockCoherence {
        use FlockCoherence::*;
        if !self.shared {
            return OneHost;
        }
        let base = self
            .fstype
            .strip_prefix("fuse.")
            .unwrap_or(&self.fstype)
            .to_string();
        match base.as_str() {
            "nfs" | "nfs4" => {
                if self.has_option("nolock") {
                    return NotCoherent(
                        "NFS mounted with `nolock`: locks are kept by each host's kernel only"
                            .into(),
                    );
                }
                if let Some(v @ ("flock" | "all")) = self.option_value("local_lock") {
                    return NotCoherent(format!(
                        "NFS mounted with `local_lock={v}`: flock is kept by each host's kernel \
                         only"
                    ));
                }
                let v4 = base == "nfs4"
                    || self
                        .option_value("vers")
                        .or_else(|| self.option_value("nfsvers"))
                        .is_some_and(|v| v.starts_with('4'));
                if v4 {
                    Coherent(
                        "NFSv4: the server keeps the locks (Linux sends flock as a whole-file lock)"
                            .into(),
                    )
                } else {
                    Coherent(
                        "NFSv2/3: locks go through the NLM protocol (rpc.statd must run on every \
                         host and on the server)"
                            .into(),
                    )
                }
            }
            "lustre" => {
                if self.has_option("localflock") {
                    NotCoherent(
                        "Lustre mounted with `localflock`: flock is kept by each client only; \
                         mount with `flock`"
                            .into(),
                    )
                } else if self.has_option("noflock") {
                    NotCoherent(
                        "Lustre mounted with `noflock`: flock fails; mount with `flock`".into(),
                    )
                } else if self.has_option("flock") {
                    Coherent("Lustre mounted with `flock`: the MDS keeps the locks".into())
                } else {
                    Unknown(
                        "Lustre mount options name neither `flock` nor `localflock`; the default \
                         depends on the Lustre version: mount with `flock` to be sure"
                            .into(),
                    )
                }
            }
            "ceph" | "ceph-fuse" => Coherent("CephFS: the MDS keeps the locks".into()),
            "cifs" | "smb" | "smb2" | "smb3" => {
                if self.has_option("nobrl") {
                    NotCoherent("SMB mounted with `nobrl`: locks are not sent to the server".into())
                } else {
                    Unknown(
                        "SMB: flock reaches the server only on recent kernels' cifs client".into(),
                    )
                }
            }
            "beegfs" => Unknown(
                "BeeGFS: flock is coherent only with `tuneUseGlobalFileLocks = true` in \
                 beegfs-client.conf"
                    .into(),
            ),
            "afs" => match self.option_value("flock") {
                Some("local") => NotCoherent("AFS mounted with `flock=local`".into()),
                _ => Unknown("AFS: whole-file locks depend on the `flock=` mount mode".into()),
            },
            "pvfs2" | "orangefs" => NotCoherent("OrangeFS/PVFS2 implements no locks".into()),
            "sshfs" => NotCoherent("sshfs: locks are kept by each host's kernel only".into()),
            other => Unknown(format!(
                "{other}: rise does not know whether flock is coherent across hosts on it"
            )),
        }
    }
}

/// `statfs(2)`'s `f_type` for `path`.
pub fn statfs_magic(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    // SAFETY: `buf` is a plain C struct that statfs fills; `c` is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `f_type`'s integer type differs between libc targets; magics are 32-bit values.
    #[allow(clippy::unnecessary_cast)]
    Ok((buf.f_type as i64 as u64) & 0xFFFF_FFFF)
}

/// `/proc/mounts` escapes space, tab, newline and backslash as three octal digits.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entry of `mounts` (the text of `/proc/mounts`) whose mount point contains `path`: the
/// longest such mount point, and among equal ones the last listed (a later mount hides an
/// earlier one at the same place).
pub fn mount_of(mounts: &str, path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        let entry = MountEntry {
            source: unescape(fields[0]),
            mount_point: PathBuf::from(unescape(fields[1])),
            fstype: fields[2].to_string(),
            options: fields[3].split(',').map(str::to_string).collect(),
        };
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let longer = best.as_ref().is_none_or(|b| {
            entry.mount_point.components().count() >= b.mount_point.components().count()
        });
        if longer {
            best = Some(entry);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
overlay / overlay rw,relatime,lowerdir=/a,upperdir=/b 0 0
proc /proc proc rw,nosuid 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
fs1:/export /shared nfs4 rw,relatime,vers=4.2,rsize=1048576,sec=sys 0 0
fs2:/old /old nfs rw,vers=3,nolock,proto=tcp 0 0
fs3:/v3 /v3 nfs rw,vers=3,local_lock=flock 0 0
fs4:/v3ok /v3ok nfs rw,vers=3,local_lock=none 0 0
10.0.0.1@o2ib:/lfs /lustre lustre rw,localflock,lazystatfs 0 0
10.0.0.1@o2ib:/lfs2 /lustre2 lustre rw,flock,lazystatfs 0 0
10.0.0.1@o2ib:/lfs3 /lustre3 lustre rw,lazystatfs 0 0
gpfs0 /gpfs gpfs rw,relatime 0 0
user@host:/x /home/me/remote fuse.sshfs rw,nosuid,user_id=0 0 0
/dev/sdb1 /shared/local\\040disk ext4 rw 0 0
//srv/share /smb cifs rw,vers=3.1.1,nobrl 0 0
";

    fn info(magic: Option<u64>, path: &str) -> FsInfo {
        FsInfo::from_parts(magic, MOUNTS, Path::new(path))
    }

    #[test]
    fn the_longest_mount_point_wins_and_escapes_are_decoded() {
        assert_eq!(
            mount_of(MOUNTS, Path::new("/shared/store")).unwrap().fstype,
            "nfs4"
        );
        let disk = mount_of(MOUNTS, Path::new("/shared/local disk/store")).unwrap();
        assert_eq!(disk.fstype, "ext4");
        assert_eq!(disk.mount_point, Path::new("/shared/local disk"));
        // A name that only starts like a mount point is not under it.
        assert_eq!(
            mount_of(MOUNTS, Path::new("/sharedother")).unwrap().fstype,
            "overlay"
        );
        assert_eq!(
            mount_of(MOUNTS, Path::new("/tmp/x")).unwrap().fstype,
            "tmpfs"
        );
        // A later mount at the same place hides the earlier one.
        let twice = "a /m ext4 rw 0 0\nb:/x /m nfs4 rw 0 0\n";
        assert_eq!(mount_of(twice, Path::new("/m/s")).unwrap().source, "b:/x");
    }

    #[test]
    fn statfs_magic_decides_what_is_shared() {
        // NFS by magic even where /proc/mounts is unreadable.
        let nfs = FsInfo::from_parts(Some(0x6969), "", Path::new("/x"));
        assert!(nfs.shared);
        assert_eq!(nfs.fstype, "nfs");
        assert!(info(Some(0x0BD0_0BD0), "/lustre/s").shared);
        assert!(info(Some(0x4750_4653), "/gpfs/s").shared);
        // ext4 (0xEF53) and tmpfs (0x01021994) are local.
        assert!(!info(Some(0xEF53), "/shared/local disk/s").shared);
        assert!(!info(Some(0x0102_1994), "/tmp/s").shared);
        // FUSE: the subtype decides.
        assert!(info(Some(FUSE_MAGIC), "/home/me/remote/s").shared);
        let local_fuse = FsInfo::from_parts(
            Some(FUSE_MAGIC),
            "x /f fuse.bindfs rw 0 0",
            Path::new("/f/s"),
        );
        assert!(!local_fuse.shared);
        // No magic: the type name decides.
        assert!(info(None, "/shared/s").shared);
        assert!(!info(None, "/tmp/s").shared);
        assert_eq!(
            FsInfo::from_parts(Some(0xEF53), "", Path::new("/s")).fstype,
            "0xef53"
        );
    }

    #[test]
    fn flock_coherence_follows_the_mount_options() {
        use FlockCoherence::*;
        let nfs = 0x6969;
        let lustre = 0x0BD0_0BD0;
        assert!(matches!(info(Some(nfs), "/shared/s").flock(), Coherent(r) if r.contains("NFSv4")));
        assert!(
            matches!(info(Some(nfs), "/old/s").flock(), NotCoherent(r) if r.contains("nolock"))
        );
        assert!(
            matches!(info(Some(nfs), "/v3/s").flock(), NotCoherent(r) if r.contains("local_lock=flock"))
        );
        assert!(matches!(info(Some(nfs), "/v3ok/s").flock(), Coherent(r) if r.contains("NLM")));
        assert!(
            matches!(info(Some(lustre), "/lustre/s").flock(), NotCoherent(r) if r.contains("localflock"))
        );
        assert!(matches!(
            info(Some(lustre), "/lustre2/s").flock(),
            Coherent(_)
        ));
        assert!(matches!(
            info(Some(lustre), "/lustre3/s").flock(),
            Unknown(_)
        ));
        assert!(
            matches!(info(Some(0x4750_4653), "/gpfs/s").flock(), Unknown(r) if r.starts_with("gpfs"))
        );
        assert!(matches!(
            info(Some(FUSE_MAGIC), "/home/me/remote/s").flock(),
            NotCoherent(_)
        ));
        assert!(
            matches!(info(Some(0xFF53_4D42), "/smb/s").flock(), NotCoherent(r) if r.contains("nobrl"))
        );
        assert_eq!(info(Some(0xEF53), "/shared/local disk/s").flock(), OneHost);
        assert_eq!(info(Some(0x0102_1994), "/tmp/s").flock(), OneHost);
    }

    #[test]
    fn probing_a_real_directory_works() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsInfo::probe(dir.path()).unwrap();
        assert!(fs.magic.is_some());
        assert_ne!(fs.fstype, "unknown");
        assert!(statfs_magic(&dir.path().join("missing")).is_err());
    }
}
