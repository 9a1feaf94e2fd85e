//! The worker starts without LD_LIBRARY_PATH (rpath) and reports the libtorch it loaded.
//! Also makes `cargo test --workspace` build the `rise-worker` binary, which the root
//! package's end-to-end tests spawn.
use std::process::Command;

#[test]
fn doctor_reports_the_loaded_libtorch_without_ld_library_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_rise-worker"))
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("spawn rise-worker");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let version = report["libtorch_version"]
        .as_str()
        .expect("libtorch_version");
    assert!(
        version.starts_with("2.11.0"),
        "tch 0.24 needs libtorch 2.11.0, loaded {version}"
    );
    assert!(report["threads"].as_u64().unwrap_or(0) >= 1, "{report}");
    assert!(report["cuda_device_count"].is_u64(), "{report}");
}
