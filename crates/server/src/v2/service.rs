//! The protocol's operations on the model repository, independent of the transport: health,
//! server and model metadata, and inference through each model's scheduler, where v2 rows
//! share forward passes with the seed endpoints' rows.

use super::V2Error;
use super::tensors::{self, InferRequest, OutputTensor};
use crate::routes::FRAMEWORK_VERSION;
use crate::state::{AppState, ModelHandle, ModelState};
use inference_core::TensorSpec;
use inference_core::scheduler::InferenceRequest;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's name in its metadata.
pub const SERVER_NAME: &str = "inference-server";

/// The protocol extensions this server implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// `GET /v2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    #[schema(value_type = String)]
    pub name: &'static str,
    #[schema(value_type = String)]
    pub version: &'static str,
    #[schema(value_type = Vec<String>)]
    pub extensions: &'static [&'static str],
}

pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: SERVER_NAME,
        version: FRAMEWORK_VERSION,
        extensions: EXTENSIONS,
    }
}

/// One input or output of a model's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    #[schema(value_type = String)]
    pub datatype: &'static str,
    /// `-1` first: any number of rows; then the per-row shape (`-1`: any size).
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}[/versions/{version}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    /// The backend that serves the model (`candle`, `ort`, `tch`).
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

pub fn model_metadata(model: &ModelHandle) -> ModelMetadata {
    let info = model.info();
    let describe = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|spec| TensorMetadata {
                name: spec.name.clone(),
                datatype: spec.dtype.kserve_name(),
                shape: tensors::batch_shape(spec),
            })
            .collect()
    };
    ModelMetadata {
        name: info.model.name.clone(),
        versions: vec![model.version.clone()],
        platform: info.backend.clone(),
        inputs: describe(&info.model.inputs),
        outputs: describe(&info.model.outputs),
    }
}

fn state_name(state: &ModelState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Ready as Triton's strict readiness means it: not draining, and every model of the
/// repository ready. The error names the models that are not.
pub fn server_ready(state: &AppState) -> Result<(), V2Error> {
    if state.is_draining() {
        return Err(V2Error::Unavailable("the server is shutting down".into()));
    }
    let waiting: Vec<String> = state
        .entries()
        .into_iter()
        .filter(|entry| entry.state != ModelState::Ready)
        .map(|entry| format!("'{}' is {}", entry.name, state_name(&entry.state)))
        .collect();
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(V2Error::Unavailable(format!(
            "not every model is ready: {}",
            waiting.join(", ")
        )))
    }
}

fn unknown_version(name: &str, version: &str, served: &str) -> V2Error {
    V2Error::NotFound(format!(
        "model '{name}' has no version '{version}' (it serves version '{served}')"
    ))
}

/// The named model when it can serve, at `version` when one is given: unknown model or
/// version is `NotFound`, a model that is not loaded `Unavailable`.
pub fn model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ModelHandle>, V2Error> {
    if crate::repository::check_name(name).is_err() {
        return Err(V2Error::NotFound(format!("unknown model {name:?}")));
    }
    let handle = state.model(Some(name))?;
    match version {
        Some(version) if version != handle.version => {
            Err(unknown_version(name, version, &handle.version))
        }
        _ => Ok(handle),
    }
}

/// Whether the named model (at `version`) is ready for inference now: an unknown model or
/// version is `NotFound`; loading, failed (no live instance) or draining is `Unavailable`.
pub fn model_ready(state: &AppState, name: &str, version: Option<&str>) -> Result<(), V2Error> {
    let entry = state
        .entries()
        .into_iter()
        .find(|entry| entry.name == name)
        .ok_or_else(|| V2Error::NotFound(format!("unknown model {name:?}")))?;
    if let (Some(version), Some(handle)) = (version, &entry.handle)
        && version != handle.version
    {
        return Err(unknown_version(name, version, &handle.version));
    }
    if state.is_draining() {
        return Err(V2Error::Unavailable("the server is shutting down".into()));
    }
    if entry.state != ModelState::Ready {
        let why = entry.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(V2Error::Unavailable(format!(
            "model '{name}' is {}{why}",
            state_name(&entry.state)
        )));
    }
    Ok(())
}

/// A request's priority in Triton's terms (0 the default, 1 the highest, larger numbers
/// lower) as a level of this server's scheduler (0 the default and lowest, higher first):
/// 1 is the top level `levels - 1`, 2 the one below, and so on down to level 1.
pub fn priority_level(levels: u32, priority: u64) -> Result<i32, V2Error> {
    if priority == 0 {
        return Ok(0);
    }
    u32::try_from(priority)
        .ok()
        .filter(|&p| p < levels)
        .and_then(|p| i32::try_from(levels - p).ok())
        .ok_or_else(|| {
            V2Error::bad_request(format!(
                "priority must be 0 (the default) or from 1 (highest) to {} (batching.priority_levels = {levels}), got {priority}",
                levels.saturating_sub(1)
            ))
        })
}

/// What an inference produced, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub total_time: Duration,
}

/// Runs a request's rows through the model's scheduler as one request (so they share
/// forward passes with every other request's rows) and stacks the selected outputs back.
pub async fn infer(
    state: &AppState,
    model: &ModelHandle,
    request: InferRequest,
) -> Result<InferResponse, V2Error> {
    let started = Instant::now();
    let spec = &model.info().model;
    // Checked before any compute: a wrong output name must not cost a forward pass.
    let selected = tensors::select_outputs(spec, &request.outputs)?;
    let priority = priority_level(state.config().batching.priority_levels, request.priority)?;
    let samples = tensors::batch_rows(spec, request.inputs)?;
    let response = model
        .submit(InferenceRequest {
            samples,
            priority,
            timeout: request.timeout,
        })
        .await?;
    let outputs = tensors::stack_outputs(spec, &response.outputs, &selected)?;
    Ok(InferResponse {
        model_name: spec.name.clone(),
        model_version: model.version.clone(),
        id: request.id,
        outputs,
        queue_time: response.queue_time,
        inference_time: response.inference_time,
        total_time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_priorities_map_onto_the_levels_highest_first() {
        assert_eq!(priority_level(3, 0).unwrap(), 0);
        assert_eq!(priority_level(3, 1).unwrap(), 2);
        assert_eq!(priority_level(3, 2).unwrap(), 1);
        let err = priority_level(3, 3).unwrap_err().to_string();
        assert!(err.contains("from 1 (highest) to 2"), "{err}");
        assert!(priority_level(3, u64::MAX).is_err());
        assert!(priority_level(1, 1).is_err());
    }

    #[test]
    fn server_metadata_names_only_what_is_implemented() {
        let meta = server_metadata();
        assert_eq!(meta.name, "inference-server");
        assert_eq!(meta.extensions, ["binary_tensor_data"]);
    }
}
