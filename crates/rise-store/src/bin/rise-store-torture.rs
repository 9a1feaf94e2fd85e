//! A helper process for rise-store's crash and concurrency tests (not a user tool).
//!
//! ```text
//! rise-store-torture commit STORE WORKDIR SEED ITERATIONS   put trees and commit results;
//!                                                           ITERATIONS 0 = forever
//! rise-store-torture hold-lock STORE KEYHEX                 lock a key, say "locked", hold until stdin closes
//! rise-store-torture lock STORE KEYHEX                      wait for a key (telling who holds it), say "acquired"
//! ```
//! `commit` prints `committed RESULT KEY OUTPUT` after each commit. The same SEED yields the
//! same trees, keys and manifests in every process, so two processes with one SEED race on
//! identical artifacts and results.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rise_store::{ResultManifest, StageKey, Store};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: tiny, deterministic, good enough to vary sizes and names.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn commit(
    store: &Path,
    work: &Path,
    seed: u64,
    iterations: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(store)?;
    let _run = store.run_lock_shared()?;
    let mut rng = Rng(seed);
    let mut i = 0u64;
    while iterations == 0 || i < iterations {
        let dir: PathBuf = work.join(format!("tree-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = 1 + rng.below(5);
        for f in 0..files {
            let sub = if rng.below(2) == 0 {
                format!("d{}/", rng.below(3))
            } else {
                String::new()
            };
            let path = dir.join(format!("{sub}f{f}"));
            std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
            let len = rng.below(300_000) as usize;
            let fill = rng.next();
            let bytes: Vec<u8> = (0..len)
                .map(|j| (fill.wrapping_add(j as u64 * 7) % 251) as u8)
                .collect();
            std::fs::write(&path, bytes)?;
        }
        let output = store.put_tree(&dir)?;
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&i.to_le_bytes());
        let manifest = ResultManifest {
            key: StageKey(key),
            pipeline: format!("torture-{seed}"),
            stage: format!("stage{}", i % 4),
            kind: "torture".into(),
            kind_version: 1,
            params: serde_json::json!({"i": i, "seed": seed}),
            inputs: Default::default(),
            output,
            metrics: serde_json::json!({}),
            engine_version: "test".into(),
            host: "test".into(),
            device: "cpu".into(),
            started_at: format!("2025-01-01T00:00:{:02}Z", i % 60),
            finished_at: format!(
                "2025-01-01T{:02}:{:02}:{:02}Z",
                i / 3600,
                (i / 60) % 60,
                i % 60
            ),
            run_id: format!("torture-{seed}"),
        };
        let id = store.commit_result(&manifest)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "committed {id} {} {output}", manifest.key)?;
        out.flush()?;
        std::fs::remove_dir_all(&dir)?;
        i += 1;
    }
    Ok(())
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        [cmd, store, work, seed, iterations] if cmd == "commit" => {
            commit(Path::new(store), Path::new(work), seed.parse()?, iterations.parse()?)
        }
        [cmd, store, key] if cmd == "hold-lock" => {
            let store = Store::open(store)?;
            let _lock = store.lock_key(&key.parse::<StageKey>()?, "holding for a test")?;
            println!("locked");
            std::io::stdout().flush()?;
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)?;
            Ok(())
        }
        [cmd, store, key] if cmd == "lock" => {
            let store = Store::open(store)?;
            let _lock = store.lock_key_with(&key.parse::<StageKey>()?, "waiting in a test", &mut |holder| match holder {
                Some(h) => eprintln!("waiting for {h}"),
                None => eprintln!("waiting for an unknown holder"),
            })?;
            println!("acquired");
            Ok(())
        }
        _ => Err("usage: rise-store-torture commit STORE WORKDIR SEED ITERATIONS | hold-lock STORE KEY | lock STORE KEY".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rise-store-torture: {e}");
            ExitCode::from(2)
        }
    }
}
