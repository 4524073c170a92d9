//! Puts libtorch on the rpath of the server's binaries and tests when the tch backend is
//! compiled in, so they run without LD_LIBRARY_PATH. A library's link args never reach the
//! binaries that depend on it, so inference-backend-tch publishes what to link as `links`
//! metadata and this script applies it. Without the tch backend the variables are absent
//! and this script emits nothing.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libdir) = env::var_os("DEP_INFERENCE_BACKEND_TCH_LIBDIR") else {
        return;
    };
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libdir.to_string_lossy()
    );
    // Set (to libtorch_cuda.so's path) only when the backend was built with feature `cuda`:
    // nothing references that library's symbols, so --as-needed would drop it and libtorch
    // would never register its CUDA backend.
    if let Some(torch_cuda) = env::var_os("DEP_INFERENCE_BACKEND_TCH_CUDA") {
        println!(
            "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,{},--pop-state",
            torch_cuda.to_string_lossy()
        );
    }
}
