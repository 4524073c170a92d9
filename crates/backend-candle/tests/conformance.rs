//! The shared conformance suite (inference_core::conformance) against the candle backend.

inference_core::conformance_suite!(async {
    let manifest = inference_core::conformance::example_manifest();
    inference_backend_candle::load(&manifest, &Default::default()).expect("example model loads")
});
