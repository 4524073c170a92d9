//! # inference-backend-ort
//!
//! The ONNX Runtime engine: serves a model directory's `.onnx` file (`[files] ort = ...` in
//! its `model.toml`) through [`inference_core::InferenceEngine`].
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`), never downloaded or linked
//! at build time. The library is, in order: [`EngineOptions::runtime_library`], the
//! `ORT_DYLIB_PATH` environment variable, or the one `cargo xtask setup` installs (see
//! [`default_library_path`]). A missing or broken library is a one-line
//! [`EngineError::Load`], never a panic.
//!
//! ## Design: one session per worker
//!
//! `ort::session::Session::run` takes `&mut self`. Rather than share one session behind a
//! mutex, [`load`] returns a [`WorkerPool`] whose `instances` worker threads each own their
//! own session, so forward passes run in parallel without locks; `intra_op_threads` bounds
//! the threads each session uses inside one pass. ONNX Runtime allows one environment per
//! process, so it is created once and shared by every session and every engine.
//!
//! Devices: `cpu`; `cuda` / `cuda:N` (needs the crate feature `cuda` and a CUDA build of
//! ONNX Runtime, otherwise a load error); `auto` (CUDA device 0 when the feature is on and
//! the provider works, else CPU). [`inference_core::EngineInfo::device`] reports the
//! device actually used.

mod backend;
mod config;
mod runtime;

pub use config::GRAPH_OPTIMIZATION_LEVELS;
pub use runtime::{
    LIBRARY_ENV, RUNTIME_DIR_ENV, RUNTIME_VERSION, default_library_path, runtime_dir,
};

use backend::OrtBackend;
use config::SessionConfig;
use inference_core::{
    Backend, BackendFactory, EngineError, EngineInfo, EngineOptions, ModelManifest, WorkerPool,
};
use std::sync::{Arc, Mutex};

/// The name this backend reports in [`EngineInfo::backend`] and reads in `[files]`.
pub const BACKEND_NAME: &str = "ort";

/// Loads `manifest`'s ONNX file into `options.instances` sessions, one per worker thread.
///
/// Blocks while the runtime library and the sessions load; call it at startup.
pub fn load(manifest: &ModelManifest, options: &EngineOptions) -> Result<WorkerPool, EngineError> {
    let config = SessionConfig::new(manifest, options)?;
    let model = manifest
        .file_for(BACKEND_NAME)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    if !model.is_file() {
        return Err(EngineError::Load(format!(
            "ONNX model file {} of model '{}' does not exist",
            model.display(),
            manifest.name
        )));
    }
    let runtime = runtime::runtime(options.runtime_library.as_deref())?;
    let mut spec = manifest.spec();

    // The first session is built here so a bad model, manifest or device fails before any
    // thread starts, and so the device it resolved to can be reported.
    let first = OrtBackend::build(
        &runtime.environment,
        &model,
        &config,
        &spec.inputs,
        &spec.outputs,
    )?;
    spec.inputs.clone_from(&first.backend.inputs);
    spec.outputs.clone_from(&first.backend.outputs);
    tracing::info!(
        model = %manifest.name,
        device = %first.device.label(),
        library = %runtime.library.display(),
        "ONNX Runtime session ready"
    );
    let info = EngineInfo {
        backend: BACKEND_NAME.into(),
        device: first.device.label(),
        model: spec.clone(),
        instances: options.instances.max(1),
    };

    // Later sessions (other workers, and replacements after a panic) use the device the
    // first one resolved to, so `auto` cannot end up split across devices.
    let resolved = SessionConfig {
        device: first.device,
        ..config
    };
    let first_instance = Mutex::new(Some(first.backend));
    let factory: BackendFactory = Arc::new(move |_worker| {
        let taken = first_instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let backend = match taken {
            Some(backend) => backend,
            None => {
                OrtBackend::build(
                    &runtime.environment,
                    &model,
                    &resolved,
                    &spec.inputs,
                    &spec.outputs,
                )?
                .backend
            }
        };
        Ok(Box::new(backend) as Box<dyn Backend>)
    });
    WorkerPool::start(info, factory)
}

#[cfg(test)]
mod tests {
    //! Failures that must be reported before ONNX Runtime is ever loaded, so these tests do
    //! not need the library; the tests under `tests/` do.
    use super::*;
    use inference_core::ErrorKind;
    use std::path::{Path, PathBuf};

    fn example_manifest() -> ModelManifest {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/example");
        ModelManifest::load(&dir).expect("the example model's manifest loads")
    }

    fn load_error(manifest: &ModelManifest, options: &EngineOptions) -> String {
        let err = load(manifest, options).expect_err("load must fail");
        assert_eq!(err.kind(), ErrorKind::Load, "{err}");
        let message = err.to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        message
    }

    #[test]
    fn a_missing_runtime_library_is_a_one_line_error_naming_path_and_fix() {
        let options = EngineOptions {
            runtime_library: Some(PathBuf::from("/nonexistent/lib/libonnxruntime.so.1.31.1")),
            ..EngineOptions::default()
        };
        let message = load_error(&example_manifest(), &options);
        assert!(
            message.contains("/nonexistent/lib/libonnxruntime.so.1.31.1"),
            "{message}"
        );
        assert!(
            message.contains("run `cargo xtask setup` or set ORT_DYLIB_PATH"),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_a_load_error_not_a_crash() {
        let fake = std::env::temp_dir().join(format!(
            "inference-backend-ort-not-a-library-{}.so",
            std::process::id()
        ));
        std::fs::write(&fake, b"this is not a shared library").unwrap();
        let options = EngineOptions {
            runtime_library: Some(fake.clone()),
            ..EngineOptions::default()
        };
        let message = load_error(&example_manifest(), &options);
        std::fs::remove_file(&fake).unwrap();
        assert!(message.contains(&fake.display().to_string()), "{message}");
        assert!(message.contains("cargo xtask setup"), "{message}");
    }

    #[test]
    fn an_unknown_graph_optimization_names_the_allowed_values() {
        let mut manifest = example_manifest();
        manifest.tables.insert(
            BACKEND_NAME.into(),
            toml::from_str("graph_optimization = \"aggressive\"").unwrap(),
        );
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("'aggressive'"), "{message}");
        assert!(
            message.contains("disable, basic, extended, all"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_ort_setting_is_named() {
        let mut manifest = example_manifest();
        manifest.tables.insert(
            BACKEND_NAME.into(),
            toml::from_str("graph_optimisation = \"all\"").unwrap(),
        );
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(
            message.contains("[ort]") && message.contains("graph_optimisation"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_model_file_is_named() {
        let mut manifest = example_manifest();
        manifest.files.insert("ort".into(), "missing.onnx".into());
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("missing.onnx"), "{message}");
        assert!(message.contains("does not exist"), "{message}");
    }

    #[test]
    fn a_manifest_without_an_onnx_file_is_a_load_error() {
        let mut manifest = example_manifest();
        manifest.files.remove("ort");
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("'ort'"), "{message}");
    }

    #[test]
    fn an_unknown_device_is_a_load_error() {
        let options = EngineOptions {
            device: "tpu".into(),
            ..EngineOptions::default()
        };
        let message = load_error(&example_manifest(), &options);
        assert!(message.contains("'tpu'"), "{message}");
    }
}
