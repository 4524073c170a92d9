//! Puts libtorch's lib dir on the rpath of this crate's tests and examples, forces
//! libtorch_cuda.so into the link with feature `cuda`, and publishes both facts as `links`
//! metadata (`DEP_INFERENCE_BACKEND_TCH_LIBDIR`, `DEP_INFERENCE_BACKEND_TCH_CUDA`) for the
//! build scripts of binaries that depend on this crate.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let libdir = libtorch_lib_dir();
    // libtorch_cpu.so finds the nvidia CUDA runtime libs through its own $ORIGIN-relative
    // RPATH, so its lib dir is the only one the binaries need.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
    println!("cargo:libdir={}", libdir.display());

    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let torch_cuda = libdir.join("libtorch_cuda.so");
        if !torch_cuda.is_file() {
            panic!(
                "feature `cuda` needs a CUDA build of libtorch, but {} does not exist",
                torch_cuda.display()
            );
        }
        // Nothing references its symbols, so --as-needed would drop it; it registers the
        // CUDA backend from its static initialisers.
        println!(
            "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,{},--pop-state",
            torch_cuda.display()
        );
        println!("cargo:cuda={}", torch_cuda.display());
    }
}

/// The lib dir torch-sys linked against (its `links = "tch"` metadata), else the one the
/// same environment variables torch-sys reads point at.
fn libtorch_lib_dir() -> PathBuf {
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = env::var_os("DEP_TCH_LIBTORCH_LIB") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env::var_os("LIBTORCH_LIB").or_else(|| env::var_os("LIBTORCH")) {
        return PathBuf::from(dir).join("lib");
    }
    panic!(
        "cannot find libtorch: torch-sys published no DEP_TCH_LIBTORCH_LIB and LIBTORCH is \
         not set; run `cargo xtask setup` and build with LIBTORCH=<site-packages>/torch"
    );
}
