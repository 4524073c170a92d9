//! The one place that knows which backends were compiled in.

use inference_core::{EngineError, EngineOptions, InferenceEngine, ModelManifest};
use std::sync::Arc;

/// Every backend this project has, compiled in or not.
pub const KNOWN: &[&str] = &["candle", "ort", "tch"];

/// The backends compiled into this binary.
pub const COMPILED: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
    #[cfg(feature = "ort")]
    "ort",
    #[cfg(feature = "tch")]
    "tch",
];

/// Loads `manifest` with the named backend.
pub fn load(
    backend: &str,
    manifest: &ModelManifest,
    options: &EngineOptions,
) -> Result<Arc<dyn InferenceEngine>, EngineError> {
    match backend {
        #[cfg(feature = "candle")]
        "candle" => Ok(Arc::new(inference_backend_candle::load(manifest, options)?)),
        #[cfg(feature = "ort")]
        "ort" => Ok(Arc::new(inference_backend_ort::load(manifest, options)?)),
        #[cfg(feature = "tch")]
        "tch" => Ok(Arc::new(inference_backend_tch::load(manifest, options)?)),
        other => {
            let _ = (manifest, options);
            Err(EngineError::Load(format!(
                "backend {other:?} is not compiled into this binary (compiled in: {})",
                COMPILED.join(", ")
            )))
        }
    }
}
