//! `rise store …` and `rise gc`: check, repair and prune the artifact store.
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rise_store::{ArtifactId, GcReport, ResultId, Store, VerifyReport};

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
gc refuses to run while a `rise run` holds the store and names the process.",
        after_help = "Examples:\n  rise gc --dry-run      # what would go, and how many bytes\n  rise gc\n  rise gc --json"
    )]
    Gc(GcArgs),
}

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Re-hash every blob; name each bad one and the artifacts and results that depend on it.
    #[command(
        long_about = "Re-hash every blob in the store and check every committed result, every artifact \
they or a pin reference, the index and the checkouts.\n\n\
Each damaged (corrupt, truncated, wrong size) or missing blob is printed with the artifacts that \
contain it, the results whose manifest, output or inputs contain it (with pipeline and stage), and \
the pins that keep it. Damaged data is never used by `rise run`: a damaged cached result counts as \
a miss and is recomputed.\n\n\
Exit status: 0 if everything is intact, 1 if anything is wrong, 2 if the check itself failed.",
        after_help = "Examples:\n  rise store verify\n  rise store verify --json | jq '.bad_blobs[].id'\n\n\
Fixes: an index problem -> `rise store reindex`; a bad checkout -> it is rebuilt after `rise gc` \
or deleting checkouts/<id>; a bad blob -> re-run the stages that produced it."
    )]
    Verify {
        /// Print the full report as one JSON object.
        #[arg(long)]
        json: bool,
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
        Command::Store(StoreCommand::Verify { json }) => verify(&store, json),
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

fn verify(store: &Store, json: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let report = store.verify().context("verify failed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_verify(store, &report, started.elapsed().as_secs_f64());
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_verify(store: &Store, r: &VerifyReport, secs: f64) {
    println!(
        "checked {} blobs ({}), {} results, {} artifacts in {secs:.2} s",
        r.blobs_checked,
        human_bytes(r.bytes_checked),
        r.results_checked,
        r.artifacts_checked
    );
    for b in &r.bad_blobs {
        let problem = match b.problem {
            rise_store::BlobProblem::Corrupt => "CORRUPT",
            rise_store::BlobProblem::Missing => "MISSING",
            rise_store::BlobProblem::WrongSize => "WRONG SIZE",
        };
        println!("\n{problem} blob {}\n  {}", b.id, b.detail);
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
        println!("\nBAD CHECKOUT {}", c.path.display());
        for p in &c.problems {
            println!("  {p}");
        }
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
        println!(
            "\n{} bad blobs, {} bad results, {} index problems, {} bad checkouts, {} stray files",
            r.bad_blobs.len(),
            r.bad_results.len(),
            r.index_problems.len(),
            r.bad_checkouts.len(),
            r.stray_files.len()
        );
    }
}

fn gc(store: &Store, args: GcArgs) -> Result<ExitCode> {
    let report: GcReport = store.gc(args.dry_run).context("gc failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
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
