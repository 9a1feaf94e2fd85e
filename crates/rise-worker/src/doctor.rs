//! `rise-worker doctor`: what libtorch this process sees, as one JSON object.
use anyhow::Result;

pub fn run() -> Result<()> {
    let cuda_devices: Vec<serde_json::Value> = (0..tch::Cuda::device_count())
        .map(|i| serde_json::json!({ "index": i }))
        .collect();
    let report = serde_json::json!({
        "libtorch_version": libtorch_version(),
        "cuda_available": tch::Cuda::is_available(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "cuda_device_count": tch::Cuda::device_count(),
        "cuda_devices": cuda_devices,
        "threads": tch::get_num_threads(),
        "linked_torch_cuda": cfg!(rise_torch_cuda),
    });
    println!("{report}");
    Ok(())
}

/// The version of the libtorch this process actually loaded: find `libtorch_cpu.so` in
/// our own memory map and read the `version.py` of the torch package around it. This is
/// right on a machine whose libtorch differs from the build machine's.
fn libtorch_version() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let lib_dir = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| std::path::Path::new(path).parent().map(|p| p.to_path_buf()));
    lib_dir
        .as_deref()
        .and_then(|lib| lib.parent())
        .and_then(|dir| std::fs::read_to_string(dir.join("version.py")).ok())
        .and_then(|py| {
            py.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown (libtorch_cpu.so not found in /proc/self/maps)".to_string())
}
