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

/// candle's CPU matmul looks up its thread count on every call: `RAYON_NUM_THREADS`, else
/// the physical core count, which it counts by reading `/proc/cpuinfo` anew each time (about
/// 20 µs, more than a small model's whole pass). Setting the variable to that same count once
/// makes every lookup an environment read and changes nothing else. The server and the
/// benchmarks call it first thing.
///
/// # Safety
///
/// It sets an environment variable: call it before the process starts any other thread,
/// so that nothing reads the environment meanwhile.
#[cfg(feature = "candle")]
#[allow(unsafe_code)]
pub unsafe fn fix_candle_thread_count() {
    const VARIABLE: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(VARIABLE).is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var(VARIABLE, num_cpus::get_physical().to_string()) };
    }
}

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
