//! The core conformance suite (golden outputs of the eager PyTorch model at several batch
//! sizes, concurrent batches, input validation, health) against the tch engine, on the
//! device that `CONFORMANCE_DEVICE` names (default `cpu`).

use inference_core::EngineOptions;
use inference_core::conformance::{example_manifest, test_device};

inference_core::conformance_suite!(async {
    let options = EngineOptions {
        device: test_device(),
        ..EngineOptions::default()
    };
    inference_backend_tch::load(&example_manifest(), &options).expect("example model loads")
});

/// Several workers sharing one `CModule` and a fixed intra-op thread count.
mod shared_module_workers {
    use super::*;

    inference_core::conformance_suite!(async {
        let options = EngineOptions {
            device: test_device(),
            instances: 3,
            intra_op_threads: Some(1),
            ..EngineOptions::default()
        };
        inference_backend_tch::load(&example_manifest(), &options).expect("example model loads")
    });
}
