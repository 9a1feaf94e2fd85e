//! `rise doctor`: is this installation healthy? Engine side first (instant): the store's
//! filesystem, whether its locks hold across hosts, where its index lives; then the worker's
//! view of libtorch, which costs one libtorch start-up.
use std::path::Path;
use std::process::ExitCode;

use rise_store::{FlockCoherence, FsInfo, IndexPlacement, Store};

use anyhow::{Context, Result};

use super::Global;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What doctor says about the store's filesystem.
struct StoreFs {
    /// The filesystem (of the store, or of its nearest existing parent if it does not exist).
    fs: Option<FsInfo>,
    /// Where the index is, when the store exists (opening does not create one here).
    index: Option<(std::path::PathBuf, IndexPlacement)>,
    /// Why `fs` or `index` is missing.
    note: Option<String>,
}

fn store_fs(store: &Path) -> StoreFs {
    let probed = store
        .ancestors()
        .find(|p| p.exists())
        .map(|p| FsInfo::probe(p).map_err(|e| format!("cannot probe {}: {e}", p.display())));
    let (fs, mut note) = match probed {
        Some(Ok(fs)) => (Some(fs), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, Some("no part of the store path exists".to_string())),
    };
    let index = if Store::cache_dir(store).is_some() {
        match Store::open(store) {
            Ok(s) => {
                let loc = s.index_location();
                Some((loc.path.clone(), loc.reason.clone()))
            }
            Err(e) => {
                note.get_or_insert(format!("cannot open the store: {e}"));
                None
            }
        }
    } else {
        note.get_or_insert("the store does not exist yet".to_string());
        None
    };
    StoreFs { fs, index, note }
}

/// `(status, detail)` of flock's coherence between hosts; status is what `--json` prints.
fn flock_status(fs: &FsInfo) -> (&'static str, String) {
    match fs.flock() {
        FlockCoherence::OneHost => (
            "one-host",
            "local filesystem: only this host opens the store".to_string(),
        ),
        FlockCoherence::Coherent(why) => ("coherent", why),
        FlockCoherence::NotCoherent(why) => ("not-coherent", why),
        FlockCoherence::Unknown(why) => ("unknown", why),
    }
}

/// The filesystem and index lines of the table.
fn store_fs_lines(s: &StoreFs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(fs) = &s.fs {
        let kind = if fs.shared {
            "shared between hosts"
        } else {
            "local"
        };
        let mount = fs
            .mount
            .as_ref()
            .map(|m| {
                format!(
                    "; {} on {}, {}",
                    m.source,
                    m.mount_point.display(),
                    m.options.join(",")
                )
            })
            .unwrap_or_default();
        let line = format!("store fs         {} ({kind}{mount})", fs.fstype);
        out.push(line);
        let (status, why) = flock_status(fs);
        out.push(match status {
            "not-coherent" => format!(
                "flock            WARNING: not coherent across hosts: {why}. Use this store \
                 from one host at a time, or remount"
            ),
            "unknown" => format!("flock            coherence across hosts unknown: {why}"),
            _ => format!("flock            {status}: {why}"),
        });
    }
    if let Some((path, why)) = &s.index {
        let why = match why {
            IndexPlacement::InStore => "in the store".to_string(),
            IndexPlacement::Configured => format!("under {}", rise_store::INDEX_DIR_VAR),
            IndexPlacement::LocalBecauseShared(t) => {
                format!(
                    "on local disk: the store is on {t} (set {} to move it)",
                    rise_store::INDEX_DIR_VAR
                )
            }
        };
        out.push(format!("index            {} ({why})", path.display()));
    }
    if let Some(note) = &s.note {
        out.push(format!("store note       {note}"));
    }
    out
}

fn store_fs_json(s: &StoreFs) -> serde_json::Value {
    let fs = s.fs.as_ref().map(|fs| {
        let (status, why) = flock_status(fs);
        serde_json::json!({
            "type": fs.fstype,
            "statfs_magic": fs.magic.map(|m| format!("{m:#x}")),
            "shared": fs.shared,
            "source": fs.mount.as_ref().map(|m| &m.source),
            "mount_point": fs.mount.as_ref().map(|m| &m.mount_point),
            "options": fs.mount.as_ref().map(|m| &m.options),
            "flock": status,
            "flock_detail": why,
        })
    });
    serde_json::json!({
        "filesystem": fs,
        "index": s.index.as_ref().map(|(path, why)| serde_json::json!({
            "path": path,
            "placement": match why {
                IndexPlacement::InStore => "store",
                IndexPlacement::Configured => "configured",
                IndexPlacement::LocalBecauseShared(_) => "local",
            },
        })),
        "note": s.note,
    })
}

pub fn run(args: Args, global: &Global) -> Result<ExitCode> {
    let store = std::path::absolute(&global.store).unwrap_or_else(|_| global.store.clone());
    let fs = store_fs(&store);
    let worker = super::worker::path();
    let worker_report: Result<serde_json::Value> = worker
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|_| {
            let output = super::worker::command(["doctor"])?
                .output()
                .context("cannot start rise-worker")?;
            if !output.status.success() {
                anyhow::bail!(
                    "rise-worker doctor failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            serde_json::from_slice(&output.stdout)
                .context("rise-worker doctor printed invalid JSON")
        });
    if args.json {
        let report = serde_json::json!({
            "engine_version": env!("CARGO_PKG_VERSION"),
            "store": store,
            "store_fs": store_fs_json(&fs),
            "worker": worker.as_ref().ok(),
            "torch": worker_report.as_ref().ok(),
            "torch_error": worker_report.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{report:#}");
    } else {
        println!("rise engine      {}", env!("CARGO_PKG_VERSION"));
        println!("store            {}", store.display());
        for line in store_fs_lines(&fs) {
            println!("{line}");
        }
        match &worker {
            Ok(path) => println!("worker           {}", path.display()),
            Err(err) => println!("worker           MISSING: {err:#}"),
        }
        match &worker_report {
            Ok(t) => {
                println!(
                    "libtorch         {}",
                    t["libtorch_version"].as_str().unwrap_or("?")
                );
                println!("torch threads    {}", t["threads"]);
                println!(
                    "CUDA             {} device(s){}",
                    t["cuda_device_count"],
                    if t["linked_torch_cuda"].as_bool() == Some(true) {
                        ""
                    } else {
                        " (worker built without torch_cuda)"
                    }
                );
                if let Some(devices) = t["cuda_devices"].as_array() {
                    for d in devices {
                        println!(
                            "  cuda:{}        {}",
                            d["index"],
                            d["name"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            Err(err) => println!("libtorch         UNAVAILABLE: {err:#}"),
        }
    }
    Ok(if worker_report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(magic: u64, mounts: &str, path: &str) -> StoreFs {
        StoreFs {
            fs: Some(FsInfo::from_parts(Some(magic), mounts, Path::new(path))),
            index: None,
            note: None,
        }
    }

    #[test]
    fn doctor_names_the_filesystem_and_warns_where_flock_is_local_to_each_host() {
        let lustre = report(
            0x0BD0_0BD0,
            "10.0.0.1@o2ib:/lfs /lustre lustre rw,localflock 0 0\n",
            "/lustre/store",
        );
        let lines = store_fs_lines(&lustre).join("\n");
        assert!(lines.contains("store fs         lustre (shared between hosts; 10.0.0.1@o2ib:/lfs on /lustre, rw,localflock)"), "{lines}");
        assert!(
            lines.contains("WARNING: not coherent across hosts: Lustre mounted with `localflock`"),
            "{lines}"
        );
        assert_eq!(
            store_fs_json(&lustre)["filesystem"]["flock"],
            "not-coherent"
        );

        let nfs = report(0x6969, "srv:/e /nfs nfs rw,vers=3,nolock 0 0\n", "/nfs/s");
        let lines = store_fs_lines(&nfs).join("\n");
        assert!(lines.contains("store fs         nfs (shared"), "{lines}");
        assert!(
            lines.contains("WARNING") && lines.contains("nolock"),
            "{lines}"
        );

        let nfs4 = report(0x6969, "srv:/e /nfs nfs4 rw,vers=4.2 0 0\n", "/nfs/s");
        let lines = store_fs_lines(&nfs4).join("\n");
        assert!(!lines.contains("WARNING"), "{lines}");
        assert!(
            lines.contains("flock            coherent: NFSv4"),
            "{lines}"
        );

        let local = report(0xEF53, "/dev/sda1 / ext4 rw 0 0\n", "/home/s");
        let lines = store_fs_lines(&local).join("\n");
        assert!(lines.contains("store fs         ext4 (local;"), "{lines}");
        assert!(lines.contains("flock            one-host"), "{lines}");
    }
}
