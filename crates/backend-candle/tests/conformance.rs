//! The shared conformance suite (inference_core::conformance) against the candle backend, on
//! the device that `CONFORMANCE_DEVICE` names (default `cpu`).

use inference_core::EngineOptions;
use inference_core::conformance::{example_manifest, test_device};

inference_core::conformance_suite!(async {
    let options = EngineOptions {
        device: test_device(),
        ..EngineOptions::default()
    };
    inference_backend_candle::load(&example_manifest(), &options).expect("example model loads")
});
