//! Generates the KServe v2 gRPC service from `proto/` with the protoc that the
//! `protoc-bin-vendored` crate ships (nothing installed, nothing downloaded), and puts
//! libtorch on the rpath of the server's binaries and tests when the tch backend is
//! compiled in, so they run without LD_LIBRARY_PATH. A library's link args never reach the
//! binaries that depend on it, so inference-backend-tch publishes what to link as `links`
//! metadata and this script applies it. Without the tch backend the variables are absent
//! and this script emits nothing.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    generate_grpc();
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

const PROTO: &str = "proto/grpc_predict_v2.proto";

fn generate_grpc() {
    println!("cargo:rerun-if-changed={PROTO}");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has no protoc");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Every `bytes` field is `Bytes`: raw contents are shared with the request, not copied.
    config.bytes(["."]);
    tonic_prost_build::configure()
        // The client (for tests and embedders) without `connect`: that needs tonic's
        // channel feature, which the server does not build.
        .build_transport(false)
        .compile_with_config(config, &[PROTO], &["proto"])
        .expect("cannot generate the gRPC service from proto/");
}
