//! `rise doctor`: is this installation healthy? Engine side first (instant), then
//! the worker's view of libtorch, which costs one libtorch start-up.
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Global;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, global: &Global) -> Result<ExitCode> {
    let store = std::path::absolute(&global.store).unwrap_or_else(|_| global.store.clone());
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
            "worker": worker.as_ref().ok(),
            "torch": worker_report.as_ref().ok(),
            "torch_error": worker_report.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{report:#}");
    } else {
        println!("rise engine      {}", env!("CARGO_PKG_VERSION"));
        println!("store            {}", store.display());
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
