//! Shared build script for the crates that link libtorch (rise-model, rise-worker).
//!
//! Two things tch's own build does not do for us:
//! - an rpath to the libtorch directory, so the binaries run without `LD_LIBRARY_PATH`;
//! - `--no-as-needed` around `torch_cuda`: nothing references its symbols directly, so
//!   the linker would otherwise drop it and CUDA would be silently unavailable.
//!
//! `DEP_TCH_LIBTORCH_LIB` is exported by torch-sys (`links = "tch"`), which is why both
//! crates depend on torch-sys directly.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-cfg=rise_torch_cuda");
    }
    println!("cargo:rustc-check-cfg=cfg(rise_torch_cuda)");
}
