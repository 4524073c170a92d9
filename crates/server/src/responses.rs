//! The JSON documents the endpoints answer with, field for field as the seed page names them.

use crate::codec::Prediction;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ProcessingTime {
    pub preprocessing_ms: f64,
    pub inference_ms: f64,
    pub postprocessing_ms: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub model: String,
    pub backend: String,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Metadata {
    pub framework_version: &'static str,
    pub model_version: String,
    pub backend: String,
    pub device: String,
    pub input_shape: Vec<i64>,
    pub output_shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_processing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub individual_inference_times: Option<Vec<Option<f64>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<ProcessingTime>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchInfo {
    pub batch_size: usize,
    pub successful_predictions: usize,
    pub failed_predictions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_indices: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reasons: Option<Vec<String>>,
    pub processing_time: ProcessingTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    pub success: bool,
    pub result: Prediction,
    pub prediction: Prediction,
    pub model_name: String,
    pub inference_time_ms: f64,
    pub processing_time: ProcessingTime,
    pub timestamp: String,
    pub request_id: String,
    pub model_info: ModelInfo,
    pub metadata: Metadata,
}

/// A [`PredictResponse`] as it is written: borrowed, with `model_info` and `metadata`
/// serialized once per model (`crate::state::ConstantParts`). A test checks that both
/// write the same text, so the documented type stays the truth.
#[derive(Serialize)]
pub(crate) struct PredictBody<'a> {
    pub success: bool,
    pub result: &'a Prediction,
    pub prediction: &'a Prediction,
    pub model_name: &'a str,
    pub inference_time_ms: f64,
    pub processing_time: ProcessingTime,
    pub timestamp: &'a str,
    pub request_id: &'a str,
    pub model_info: &'a serde_json::value::RawValue,
    pub metadata: &'a serde_json::value::RawValue,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPredictResponse {
    pub success: bool,
    pub results: Vec<Option<Prediction>>,
    pub predictions: Vec<Option<Prediction>>,
    pub batch_size: usize,
    pub model_name: String,
    pub inference_time_ms: f64,
    pub processing_time: ProcessingTime,
    pub timestamp: String,
    pub request_id: String,
    pub batch_info: BatchInfo,
    pub model_info: ModelInfo,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExampleBatchInner {
    pub success: bool,
    pub predictions: Vec<Option<Prediction>>,
    pub model_name: String,
    pub inference_time_ms: f64,
    pub timestamp: String,
    pub request_id: String,
    pub batch_info: BatchInfo,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExampleBatchResponse {
    pub example: &'static str,
    pub input_count: usize,
    pub response: ExampleBatchInner,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExampleSimpleInner {
    pub success: bool,
    pub prediction: Prediction,
    pub model_name: String,
    pub inference_time_ms: f64,
    pub timestamp: String,
    pub request_id: String,
    pub metadata: Metadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExampleSimpleResponse {
    pub example: &'static str,
    /// The request's `input`, echoed.
    pub input: Value,
    pub response: ExampleSimpleInner,
}
