//! The core conformance suite against the example model on ONNX Runtime, on the device that
//! `CONFORMANCE_DEVICE` names (default `cpu`).
//!
//! Needs the ONNX Runtime library (`ORT_DYLIB_PATH`, or what `cargo xtask setup` installs);
//! without it every test fails with the load error, which names the fix.

use inference_backend_ort::load;
use inference_core::conformance::{example_manifest, test_device};
use inference_core::{EngineOptions, WorkerPool};

fn example_engine() -> WorkerPool {
    let options = EngineOptions {
        device: test_device(),
        // Two sessions, so the suite's concurrent batches really run side by side.
        instances: 2,
        intra_op_threads: Some(1),
        ..EngineOptions::default()
    };
    load(&example_manifest(), &options)
        .unwrap_or_else(|e| panic!("the example model must load on ONNX Runtime: {e}"))
}

inference_core::conformance_suite!(async { example_engine() });
