//! Turning the backend-agnostic [`EngineOptions`] strings into ONNX Runtime settings.

use inference_core::{EngineError, EngineOptions, ModelManifest};
use ort::session::builder::GraphOptimizationLevel;
use serde::Deserialize;

/// The accepted `graph_optimization` values, in increasing order of effort.
pub const GRAPH_OPTIMIZATION_LEVELS: [&str; 4] = ["disable", "basic", "extended", "all"];

/// Where sessions run, as requested by the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    Cpu,
    /// CUDA on this device ordinal; an error if unavailable.
    Cuda(i32),
    /// CUDA device 0 if the `cuda` feature is on and the provider works, else CPU.
    Auto,
}

impl DeviceRequest {
    /// The name reported in `EngineInfo::device`.
    pub(crate) fn label(self) -> String {
        match self {
            DeviceRequest::Cpu => "cpu".into(),
            DeviceRequest::Cuda(ordinal) => format!("cuda:{ordinal}"),
            DeviceRequest::Auto => "auto".into(),
        }
    }
}

/// The `[ort]` table of a model's `model.toml`: ONNX Runtime's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrtSettings {
    /// `disable`, `basic`, `extended` or `all` (default).
    pub(crate) graph_optimization: Option<String>,
}

/// Everything needed to build one session, shared by every worker.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) optimization: GraphOptimizationLevel,
    pub(crate) intra_op_threads: Option<usize>,
    pub(crate) device: DeviceRequest,
}

impl SessionConfig {
    pub(crate) fn new(
        manifest: &ModelManifest,
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let settings: OrtSettings = manifest
            .table(crate::BACKEND_NAME)
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let level = settings.graph_optimization.as_deref().unwrap_or("all");
        let config = Self {
            optimization: parse_graph_optimization(level)?,
            intra_op_threads: options.intra_op_threads,
            device: parse_device(&options.device)?,
        };
        if let DeviceRequest::Cuda(_) = config.device
            && !cfg!(feature = "cuda")
        {
            return Err(EngineError::Load(format!(
                "device '{}' needs inference-backend-ort built with its `cuda` feature; rebuild with it or use device \"cpu\"",
                options.device
            )));
        }
        Ok(config)
    }
}

pub(crate) fn parse_graph_optimization(value: &str) -> Result<GraphOptimizationLevel, EngineError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "disable" => Ok(GraphOptimizationLevel::Disable),
        "basic" => Ok(GraphOptimizationLevel::Level1),
        "extended" => Ok(GraphOptimizationLevel::Level2),
        "all" => Ok(GraphOptimizationLevel::All),
        _ => Err(EngineError::Load(format!(
            "unknown graph_optimization '{value}': expected one of {}",
            GRAPH_OPTIMIZATION_LEVELS.join(", ")
        ))),
    }
}

pub(crate) fn parse_device(value: &str) -> Result<DeviceRequest, EngineError> {
    let normalized = value.trim().to_ascii_lowercase();
    match normalized.as_str() {
        "cpu" => return Ok(DeviceRequest::Cpu),
        "auto" => return Ok(DeviceRequest::Auto),
        "cuda" => return Ok(DeviceRequest::Cuda(0)),
        _ => {}
    }
    normalized
        .strip_prefix("cuda:")
        .and_then(|ordinal| ordinal.parse::<i32>().ok())
        .filter(|ordinal| *ordinal >= 0)
        .map(DeviceRequest::Cuda)
        .ok_or_else(|| {
            EngineError::Load(format!(
                "unknown device '{value}': expected cpu, cuda, cuda:N or auto"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_optimization_accepts_the_four_levels_and_names_them_on_error() {
        for level in GRAPH_OPTIMIZATION_LEVELS {
            assert!(parse_graph_optimization(level).is_ok(), "{level}");
        }
        assert!(parse_graph_optimization(" ALL ").is_ok());
        let err = parse_graph_optimization("max").unwrap_err();
        assert_eq!(err.kind(), inference_core::ErrorKind::Load);
        let message = err.to_string();
        assert!(message.contains("'max'"), "{message}");
        assert!(
            message.contains("disable, basic, extended, all"),
            "{message}"
        );
    }

    #[test]
    fn devices_parse_with_ordinals() {
        assert_eq!(parse_device("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(parse_device("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(parse_device("cuda").unwrap(), DeviceRequest::Cuda(0));
        assert_eq!(parse_device("CUDA:3").unwrap(), DeviceRequest::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let err = parse_device(bad).unwrap_err();
            assert_eq!(err.kind(), inference_core::ErrorKind::Load, "{bad}");
        }
    }

    #[test]
    fn cuda_without_the_feature_is_a_load_error() {
        let options = EngineOptions {
            device: "cuda:1".into(),
            ..EngineOptions::default()
        };
        let manifest = ModelManifest::bare("m", std::path::Path::new("."));
        let outcome = SessionConfig::new(&manifest, &options);
        if cfg!(feature = "cuda") {
            assert_eq!(outcome.unwrap().device, DeviceRequest::Cuda(1));
        } else {
            let message = outcome.unwrap_err().to_string();
            assert!(message.contains("`cuda` feature"), "{message}");
        }
    }
}
