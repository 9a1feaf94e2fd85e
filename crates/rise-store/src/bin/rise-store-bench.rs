//! Store throughput probe for `benches/store.sh` (not a user tool).
//!
//! `rise-store-bench STORE FILE` puts FILE into the store, then verifies the blob three ways,
//! and prints one JSON object of seconds:
//! `put_file` (copy + hash + fsync + rename), `check_blob` (full re-hash, what `rise store
//! verify` does per blob), `open_blob_read` (streaming verify-on-read, what consumers use).
use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

use rise_store::Store;

fn run() -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, file] = args.as_slice() else {
        return Err("usage: rise-store-bench STORE FILE".into());
    };
    let store = Store::open(store)?;
    let bytes = std::fs::metadata(file)?.len();

    let t = Instant::now();
    let id = store.put_file(std::path::Path::new(file))?;
    let put = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let size = store.check_blob(&id)?;
    let check = t.elapsed().as_secs_f64();
    assert_eq!(size, bytes);

    let t = Instant::now();
    let mut reader = store.open_blob(&id)?;
    let mut buf = vec![0u8; 1 << 20];
    while reader.read(&mut buf)? > 0 {}
    let stream = t.elapsed().as_secs_f64();

    Ok(serde_json::json!({
        "bytes": bytes,
        "blob": id.to_string(),
        "put_file": put,
        "check_blob": check,
        "open_blob_read": stream,
    }))
}

fn main() -> ExitCode {
    match run() {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rise-store-bench: {e}");
            ExitCode::from(2)
        }
    }
}
