//! Compiles `csrc/rise_dist.cpp` against the headers of the libtorch torch-sys links (the
//! torch wheel in `.venv`), as torch-sys compiles its own wrapper.
//!
//! - `-DUSE_C10D_GLOO -DUSE_DISTRIBUTED`: the c10d headers hide the Gloo classes without them.
//! - Gloo's own headers are not in the wheel; Debian's `libgloo-dev` puts them in
//!   `/usr/include/gloo` (scripts/setup installs it). `GLOO_INCLUDE` overrides the place.
//! - NCCL: `ProcessGroupNCCL.hpp` needs the CUDA runtime headers, nvcc's `crt/`, CCCL's
//!   `nv/target` and `nccl.h`. They are looked for in `RISE_CUDA_INCLUDE` (`:`-separated),
//!   `CUDA_HOME/include`, the wheel's `nvidia/*/include` directories and
//!   `/usr/local/cuda/include`. The torch wheel's own nvidia packages lack `crt/` and CCCL
//!   (`nvidia-cuda-crt` and `nvidia-cuda-cccl` 13.0, or a CUDA toolkit, supply them). When any
//!   is missing the NCCL backend is compiled out (a build warning says so) and asking for it is
//!   a runtime error naming the cause, so the crate builds everywhere. Checked here: with those
//!   two wheels' headers in `RISE_CUDA_INCLUDE` it compiles and links against
//!   `libtorch_cuda.so`; it has not run on a GPU yet.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/rise_dist.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=RISE_CUDA_INCLUDE");
    println!("cargo:rustc-check-cfg=cfg(rise_dist_nccl)");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports its libtorch directory (DEP_TCH_LIBTORCH_LIB)"),
    );
    // `<torch>/lib` → `<torch>/include`, as torch-sys lays out a wheel or a libtorch zip.
    let root = lib.parent().expect("libtorch lib dir has a parent");
    let include = root.join("include");
    let gloo =
        std::env::var("GLOO_INCLUDE").map_or_else(|_| PathBuf::from("/usr/include"), PathBuf::from);
    if !gloo.join("gloo/context.h").is_file() {
        panic!(
            "rise-dist: the Gloo headers are missing ({} has no gloo/context.h); \
             run scripts/setup, or `apt-get install libgloo-dev`, or set GLOO_INCLUDE",
            gloo.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DUSE_DISTRIBUTED")
        .file("csrc/rise_dist.cpp");
    match nccl_includes(root, &lib) {
        Ok(dirs) => {
            build.includes(dirs);
            build.flag("-DUSE_C10D_NCCL").flag("-DRISE_DIST_NCCL");
            println!("cargo:rustc-cfg=rise_dist_nccl");
        }
        Err(why) => println!("cargo:warning=rise-dist: NCCL backend compiled out: {why}"),
    }
    build.compile("rise_dist");
    // The crate's own tests and examples run without LD_LIBRARY_PATH (the binaries that
    // depend on it get theirs from build/torch_link.rs).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The include directories the NCCL process group needs, or why they are not all there.
fn nccl_includes(torch_root: &Path, lib: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err("this libtorch has no libtorch_cuda.so".into());
    }
    // `<site-packages>/torch` → `<site-packages>/nvidia/*/include`.
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(extra) = std::env::var("RISE_CUDA_INCLUDE") {
        candidates.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    if let Ok(home) = std::env::var("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    if let Some(site) = torch_root.parent() {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut dirs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("include"))
                .filter(|p| p.is_dir())
                .collect();
            dirs.sort();
            candidates.extend(dirs);
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    let find = |file: &str| candidates.iter().find(|d| d.join(file).is_file()).cloned();
    let mut dirs = Vec::new();
    for file in [
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
        "nccl.h",
    ] {
        match find(file) {
            Some(d) => {
                if !dirs.contains(&d) {
                    dirs.push(d)
                }
            }
            None => {
                return Err(format!(
                "`{file}` not found (RISE_CUDA_INCLUDE, CUDA_HOME, the wheel's nvidia/*/include)"
            ))
            }
        }
    }
    // The first directory holding each file, then every other candidate: CUDA's headers
    // include each other across the packages (cublas, cusparse, ... in `cu13/include`).
    for d in candidates {
        if d.is_dir() && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    Ok(dirs)
}
