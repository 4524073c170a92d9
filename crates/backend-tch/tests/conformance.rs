//! The core conformance suite (golden outputs of the eager PyTorch model at several batch
//! sizes, concurrent batches, input validation, health) against the tch engine.

use inference_core::EngineOptions;
use inference_core::conformance::example_manifest;

inference_core::conformance_suite!(async {
    inference_backend_tch::load(&example_manifest(), &EngineOptions::default())
        .expect("example model loads")
});

/// Several workers sharing one `CModule` and a fixed intra-op thread count.
mod shared_module_workers {
    use super::*;

    inference_core::conformance_suite!(async {
        let options = EngineOptions {
            instances: 3,
            intra_op_threads: Some(1),
            ..EngineOptions::default()
        };
        inference_backend_tch::load(&example_manifest(), &options).expect("example model loads")
    });
}
