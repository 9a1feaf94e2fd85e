//! `rise store …` and `rise gc`: check, repair and prune the artifact store.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rise_store::{ArtifactId, GcReport, ResultId, RunPruneReport, Store, VerifyReport};

use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check, repair or pin things in the artifact store.
    #[command(subcommand)]
    Store(StoreCommand),

    /// Delete what no root reaches (roots: the latest result of each pipeline stage, and pins).
    #[command(
        long_about = "Delete everything in the store that no root reaches.\n\n\
Roots are the latest result of each (pipeline, stage) and every pinned artifact (`rise store pin`). \
A kept result keeps its manifest, its output and input artifacts and, transitively, the results that \
produced its inputs, so `rise lineage` stays complete. Superseded results, their blobs and checkouts \
go; scratch directories of stages that have committed go; scratch of unfinished stages (resumable \
work) is kept.\n\n\
Run records and logs (`runs/`, `logs/`) are history, not artifacts: gc keeps them unless \
`--runs-older-than` says how old they may get.\n\n\
gc refuses to run while a `rise run` holds the store and names the process.",
        after_help = "Examples:\n  rise gc --dry-run      # what would go, and how many bytes\n  rise gc\n  \
rise gc --runs-older-than 30d   # also delete run records and logs last written over 30 days ago\n  rise gc --json"
    )]
    Gc(GcArgs),
}

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Re-hash every blob; name each bad one and the artifacts and results that depend on it.
    #[command(
        long_about = "Re-hash every blob in the store and check every committed result, every artifact \
they or a pin reference, the index, the result markers and the checkouts.\n\n\
Each damaged (corrupt, truncated, wrong size) or missing blob is printed with the artifacts that \
contain it, the results whose manifest, output or inputs contain it (with pipeline and stage), and \
the pins that keep it. Damaged data is never used by `rise run`: a damaged cached result counts as \
a miss and is recomputed.\n\n\
Checkouts (checkouts/<artifact>/, the read-only copies handed to stages as $RISE_IN_<NAME> and \
shown by `rise show`) are re-hashed in full: a changed, extra, missing or replaced file, or a \
loosened mode, is printed with the results that use the artifact. `rise run` and `rise show` also \
check a checkout (cheaply, by its recorded stat) before every use and rebuild a damaged one; \
`--repair` rebuilds them now.\n\n\
Exit status: 0 if everything is intact (with --repair: once the checkouts are repaired), 1 if \
anything is wrong, 2 if the check itself failed.",
        after_help = "Examples:\n  rise store verify\n  rise store verify --repair\n  rise store verify --json | jq '.bad_blobs[].id'\n\n\
Fixes: an index problem -> `rise store reindex`; a damaged checkout -> `rise store verify --repair` \
(or let the next `rise run`/`rise show` that uses it rebuild it); a bad blob -> re-run the stages \
that produced it; a bad marker -> remove or empty it as printed."
    )]
    Verify {
        /// Print the full report as one JSON object (with --repair, plus a "repairs" list).
        #[arg(long)]
        json: bool,
        /// Rebuild every damaged checkout from the blobs (and remove entries of checkouts/
        /// that are not checkouts). Nothing else is changed.
        #[arg(long)]
        repair: bool,
    },

    /// Rebuild the index from the committed result manifests.
    #[command(
        long_about = "Rebuild the store's index (stage key -> result, artifact -> producer, \
pipeline/stage -> latest) from the result manifests under results/.\n\n\
The index is only a cache: every entry in it is derived from the manifests, so rebuilding loses \
nothing. Run this if `rise store verify` reports an index problem or the index directory was \
deleted. Results whose manifest is damaged are left out and listed.",
        after_help = "Example:\n  rise store reindex"
    )]
    Reindex {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },

    /// Keep an artifact through `rise gc` under a name.
    #[command(after_help = "Example:\n  rise store pin best-model 3f2a…(64 hex digits)")]
    Pin {
        /// Pin name: ASCII letters, digits and `-_.+@`.
        name: String,
        /// The artifact id (64 hex digits), e.g. from `rise show`.
        artifact: ArtifactId,
    },

    /// Remove a pin (the artifact goes at the next `rise gc` unless something else keeps it).
    Unpin {
        /// Pin name.
        name: String,
    },

    /// List pins.
    Pins {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also delete the records and logs of runs last written longer ago than this (e.g. `30d`,
    /// `12h`, `90min`; `0s` deletes every run's).
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    runs_older_than: Option<std::time::Duration>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Opens an existing store; unlike the engine, maintenance commands never create one.
fn open_existing(path: &Path) -> Result<Store> {
    if !path.join("STORE").is_file() {
        bail!(
            "no rise store at {} (set --store or RISE_STORE; a store is created by the first `rise run`)",
            path.display()
        );
    }
    Store::open(path).with_context(|| format!("cannot open store {}", path.display()))
}

pub fn run(cmd: Command, global: &Global) -> Result<ExitCode> {
    let store = open_existing(&global.store)?;
    match cmd {
        Command::Store(StoreCommand::Verify { json, repair }) => verify(&store, json, repair),
        Command::Store(StoreCommand::Reindex { json }) => {
            let report = store.reindex().context("reindex failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "reindexed {} results ({} stage keys, {} artifacts, {} pipeline stages); previous index: {}",
                    report.results, report.keys, report.artifacts, report.stages, report.previous
                );
                for s in &report.skipped {
                    println!("skipped result {}: {}", s.id, s.problem);
                }
            }
            Ok(if report.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Store(StoreCommand::Pin { name, artifact }) => {
            store
                .pin(&name, &artifact)
                .with_context(|| format!("cannot pin {artifact} as {name:?}"))?;
            println!("pinned {artifact} as {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Unpin { name }) => {
            store.unpin(&name)?;
            println!("unpinned {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Pins { json }) => {
            let pins = store.pins()?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = pins
                    .iter()
                    .map(|(n, a)| (n.clone(), serde_json::Value::String(a.to_hex())))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else if pins.is_empty() {
                println!("no pins");
            } else {
                for (n, a) in &pins {
                    println!("{n:<24} {a}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc(args) => gc(&store, args),
    }
}

/// "pipeline/stage" of a result, for tables; the id alone if its manifest is unreadable.
fn describe_result(store: &Store, id: &ResultId) -> String {
    match store.read_result(id) {
        Ok(m) => format!("{id} ({} / {})", m.pipeline, m.stage),
        Err(_) => format!("{id} (manifest unreadable)"),
    }
}

/// The outcome of repairing one damaged checkout (`rise store verify --repair`).
#[derive(serde::Serialize)]
struct Repair {
    path: PathBuf,
    artifact: Option<ArtifactId>,
    /// "rebuilt", "removed" (not a checkout), or "failed".
    outcome: &'static str,
    error: Option<String>,
}

fn repair_checkouts(store: &Store, report: &VerifyReport) -> Vec<Repair> {
    report
        .bad_checkouts
        .iter()
        .map(|c| {
            let done = match &c.artifact {
                Some(id) => store.rebuild_checkout(id).map(|_| "rebuilt"),
                None => store.remove_stray_checkout(&c.path).map(|_| "removed"),
            };
            match done {
                Ok(outcome) => Repair {
                    path: c.path.clone(),
                    artifact: c.artifact,
                    outcome,
                    error: None,
                },
                Err(e) => Repair {
                    path: c.path.clone(),
                    artifact: c.artifact,
                    outcome: "failed",
                    error: Some(e.to_string()),
                },
            }
        })
        .collect()
}

fn verify(store: &Store, json: bool, repair: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let report = store.verify().context("verify failed")?;
    let secs = started.elapsed().as_secs_f64();
    let repairs = if repair {
        repair_checkouts(store, &report)
    } else {
        Vec::new()
    };
    if json {
        let mut value = serde_json::to_value(&report)?;
        if repair {
            value["repairs"] = serde_json::to_value(&repairs)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_verify(store, &report, secs, repair);
        for r in &repairs {
            match &r.error {
                None => println!("{} checkout {}", r.outcome, r.path.display()),
                Some(e) => println!("could not repair checkout {}: {e}", r.path.display()),
            }
        }
    }
    let unrepaired = report.problem_count() - repairs.iter().filter(|r| r.error.is_none()).count();
    Ok(if unrepaired == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_verify(store: &Store, r: &VerifyReport, secs: f64, repairing: bool) {
    println!(
        "checked {} blobs ({}), {} results, {} artifacts in {secs:.2} s",
        r.blobs_checked,
        human_bytes(r.bytes_checked),
        r.results_checked,
        r.artifacts_checked
    );
    for b in &r.bad_blobs {
        let problem = match b.problem {
            rise_store::BlobProblem::Corrupt => "CORRUPT blob",
            rise_store::BlobProblem::Missing => "MISSING blob",
            // The id is the tree's: its blob is intact, the tree records the wrong size.
            rise_store::BlobProblem::WrongSize => "WRONG SIZE recorded by tree",
        };
        println!("\n{problem} {}\n  {}", b.id, b.detail);
        for a in &b.artifacts {
            println!("  in artifact  {a}");
        }
        for res in &b.results {
            println!("  used by      {}", describe_result(store, res));
        }
        for p in &b.pins {
            println!("  pinned as    {p}");
        }
    }
    for res in &r.bad_results {
        println!("\nBAD RESULT {}\n  {}", res.id, res.problem);
    }
    for p in &r.index_problems {
        println!("\nINDEX {}: {} (fix: rise store reindex)", p.kind, p.detail);
    }
    for c in &r.bad_checkouts {
        match &c.artifact {
            Some(a) => println!("\nDAMAGED CHECKOUT {} (artifact {a})", c.path.display()),
            None => println!("\nSTRAY CHECKOUT ENTRY {}", c.path.display()),
        }
        for p in &c.problems {
            println!("  {p}");
        }
        for res in &c.results {
            println!("  used by      {}", describe_result(store, res));
        }
        if !repairing {
            match c.artifact {
                Some(_) => println!(
                    "  fix: rise store verify --repair (rebuilds it from the blobs; the next \
                     `rise run` or `rise show` that uses it would too)"
                ),
                None => println!("  fix: rise store verify --repair (removes it)"),
            }
        }
    }
    for m in &r.bad_markers {
        println!("\nBAD MARKER {}\n  {}", m.path.display(), m.problem);
    }
    for s in &r.stray_files {
        println!("\nSTRAY FILE {} (not a blob name)", s.display());
    }
    if r.results_not_yet_indexed > 0 {
        println!(
            "{} committed results are not indexed yet (normal: the next lookup indexes them)",
            r.results_not_yet_indexed
        );
    }
    if r.is_clean() {
        println!("store is intact");
    } else {
        let checkout_users: std::collections::BTreeSet<&ResultId> =
            r.bad_checkouts.iter().flat_map(|c| &c.results).collect();
        println!(
            "\n{} problems: {} bad blobs, {} bad results, {} index problems, {} damaged checkouts \
             (used by {} results), {} bad markers, {} stray files",
            r.problem_count(),
            r.bad_blobs.len(),
            r.bad_results.len(),
            r.index_problems.len(),
            r.bad_checkouts.len(),
            checkout_users.len(),
            r.bad_markers.len(),
            r.stray_files.len()
        );
    }
}

/// `30d` -> 30 days: humantime's units (s, min, h, d, w, …), as a clap value parser.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as `30d`, `12h` or `90min`"))
}

fn gc(store: &Store, args: GcArgs) -> Result<ExitCode> {
    let report: GcReport = store.gc(args.dry_run).context("gc failed")?;
    let pruned: Option<RunPruneReport> = args
        .runs_older_than
        .map(|age| store.prune_runs(age, args.dry_run))
        .transpose()
        .context("pruning run records failed")?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(pruned), Some(object)) = (&pruned, value.as_object_mut()) {
            object.insert("pruned_runs".into(), serde_json::to_value(pruned)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    println!(
        "roots: {} latest results, {} pins; keeping {} results and {} blobs",
        report.roots.len(),
        report.pins.len(),
        report.kept_results,
        report.kept_blobs
    );
    println!(
        "{verb} {} results, {} blobs ({}), {} checkouts, {} scratch directories",
        report.removed_results.len(),
        report.removed_blobs,
        human_bytes(report.removed_bytes),
        report.removed_checkouts,
        report.removed_scratch.len()
    );
    for r in &report.removed_results {
        println!("  {verb} result {r}");
    }
    if !report.kept_scratch.is_empty() {
        println!(
            "kept {} scratch directories of unfinished stages (resumable)",
            report.kept_scratch.len()
        );
    }
    if let Some(p) = &pruned {
        println!(
            "{verb} the records and logs of {} runs last written over {} ago ({}); kept {} runs",
            p.removed_runs.len(),
            humantime::format_duration(std::time::Duration::from_secs(p.older_than_seconds)),
            human_bytes(p.removed_bytes),
            p.kept_runs
        );
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
