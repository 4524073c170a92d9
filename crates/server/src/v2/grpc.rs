//! The protocol over gRPC: `inference.GRPCInferenceService` (tonic, generated from
//! `proto/grpc_predict_v2.proto` at build time) on its own port, on the same operations as
//! the REST routes (`service`, `tensors`), so the same rows reach the same schedulers.
//!
//! Inputs come as typed `contents` or as `raw_input_contents` (what tritonclient sends);
//! outputs always go back as `raw_output_contents`, as Triton answers and as tritonclient
//! reads them. Admission is the HTTP routes': no new request once draining, a slot of
//! `server.max_concurrent_requests` within `server.max_admission_wait_ms`, at most
//! `server.max_body_bytes` per message and `server.max_in_flight_bytes` held at once.

use super::V2Error;
use super::service;
use super::tensors::{self, InferRequest, NamedTensor, RequestedOutput};
use crate::state::AppState;
use bytes::Bytes;
use inference_core::{DType, Tensor};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The code generated from the proto file.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::{InferParameter, InferTensorContents};

impl From<V2Error> for Status {
    fn from(err: V2Error) -> Self {
        let message = err.to_string();
        match err {
            V2Error::BadRequest(_) => Status::invalid_argument(message),
            V2Error::NotFound(_) => Status::not_found(message),
            V2Error::Overloaded { .. } => Status::resource_exhausted(message),
            V2Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            V2Error::Unavailable(_) => Status::unavailable(message),
            V2Error::Internal(_) => Status::internal(message),
        }
    }
}

/// The service on the repository of `state`.
#[derive(Debug, Clone)]
pub struct InferenceService {
    state: AppState,
}

impl InferenceService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The tonic service, with the message size limit of the HTTP routes.
    pub fn into_server(self) -> GrpcInferenceServiceServer<Self> {
        let limit = self.state.config().server.max_body_bytes;
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Serves the service on `listener` until `shutdown` resolves, then lets the calls in
/// progress finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(InferenceService::new(state).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

impl InferenceService {
    /// With API keys configured (`server.api_keys`), refuses a call without the metadata
    /// `authorization: Bearer <key>`; the health calls never ask.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let keys = &self.state.config().server.api_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| crate::auth::presented_key(value.as_bytes()));
        match presented {
            Some(key) if crate::auth::key_matches(key, keys) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the API key is not valid")),
            None => Err(Status::unauthenticated(
                "this service needs an API key: send the metadata `authorization: Bearer <key>`",
            )),
        }
    }

    /// ModelInfer, admitted as the HTTP routes admit.
    async fn infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let state = &self.state;
        if state.is_draining() {
            return Err(V2Error::Unavailable("the server is shutting down".into()).into());
        }
        let request = request.into_inner();
        let limits = &state.config().server;
        let held_kib = request
            .raw_input_contents
            .iter()
            .map(Bytes::len)
            .sum::<usize>()
            .div_ceil(1024);
        let _bytes = state
            .try_reserve_body(u32::try_from(held_kib).unwrap_or(u32::MAX))
            .ok_or_else(|| V2Error::Overloaded {
                detail: format!(
                    "too many request bytes in progress (server.max_in_flight_bytes = {})",
                    limits.max_in_flight_bytes
                ),
                retry_after: Duration::from_secs(1),
            })?;
        let Some(_slot) = state
            .admit_within(state.config().max_admission_wait())
            .await
        else {
            return Err(V2Error::Overloaded {
                detail: format!(
                    "too many requests in progress (server.max_concurrent_requests = {}) for {} ms (server.max_admission_wait_ms)",
                    limits.max_concurrent_requests, limits.max_admission_wait_ms
                ),
                retry_after: Duration::from_secs(1),
            }
            .into());
        };
        let model = service::model(state, &request.model_name, version(&request.model_version))?;
        let infer = infer_request(request)?;
        let response = service::infer(state, &model, infer).await?;
        let mut outputs = Vec::with_capacity(response.outputs.len());
        let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
        for output in response.outputs {
            outputs.push(InferOutputTensor {
                name: output.name,
                datatype: output.tensor.dtype().kserve_name().into(),
                shape: output.tensor.shape().iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            });
            raw_output_contents.push(tensors::raw_contents(&output.tensor));
        }
        Ok(Response::new(proto::ModelInferResponse {
            model_name: response.model_name,
            model_version: response.model_version,
            id: response.id.unwrap_or_default(),
            parameters: HashMap::new(),
            outputs,
            raw_output_contents,
        }))
    }
}

fn version(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        let ready = service::server_ready(&self.state).is_ok();
        Ok(Response::new(proto::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        match service::model_ready(&self.state, &request.name, version(&request.version)) {
            Ok(()) => Ok(Response::new(proto::ModelReadyResponse { ready: true })),
            // As tritonclient's `is_model_ready` expects: an unknown model or version is
            // not ready, rather than an error to catch.
            Err(V2Error::Unavailable(_) | V2Error::NotFound(_)) => {
                Ok(Response::new(proto::ModelReadyResponse { ready: false }))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.authorize(&request)?;
        let metadata = service::server_metadata();
        Ok(Response::new(proto::ServerMetadataResponse {
            name: metadata.name.into(),
            version: metadata.version.into(),
            extensions: metadata.extensions.iter().map(|e| (*e).into()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let model = service::model(&self.state, &request.name, version(&request.version))?;
        let metadata = service::model_metadata(&model);
        let describe = |specs: Vec<service::TensorMetadata>| {
            specs
                .into_iter()
                .map(|t| proto::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(proto::ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform,
            inputs: describe(metadata.inputs),
            outputs: describe(metadata.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        let started = std::time::Instant::now();
        let requested = request.get_ref().model_name.clone();
        let answer = self.infer(request).await;
        // Only a name of the repository: a label per name a client makes up would grow
        // without bound.
        let known = self.state.model_names().contains(&requested);
        let model = if known { requested } else { String::new() };
        let code = answer
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        crate::metrics::record_grpc("ModelInfer", code, &model, started.elapsed());
        answer
    }
}

/// A request's tensors and parameters in the protocol's terms, whatever their encoding.
fn infer_request(request: proto::ModelInferRequest) -> Result<InferRequest, V2Error> {
    let parameters = &request.parameters;
    if let Some(id) = parameters.get("sequence_id")
        && !matches!(
            id.parameter_choice,
            None | Some(ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0))
        )
        && !matches!(&id.parameter_choice, Some(ParameterChoice::StringParam(s)) if s.is_empty())
    {
        return Err(V2Error::bad_request(
            "sequence_id: sequence batching is not supported",
        ));
    }
    let priority = uint_parameter(parameters, "priority", "the request")?.unwrap_or(0);
    let timeout = uint_parameter(parameters, "timeout", "the request")?
        .filter(|&us| us > 0)
        .map(Duration::from_micros);
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(V2Error::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs: it must have one per input, or none",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| input_tensor(input, raw.next()))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = request
        .outputs
        .into_iter()
        .map(|output| {
            let what = format!("output '{}'", output.name);
            refuse_shared_memory(&output.parameters, &what)?;
            if output.parameters.contains_key("classification") {
                return Err(V2Error::bad_request(format!(
                    "{what}: the classification extension is not supported"
                )));
            }
            Ok(RequestedOutput {
                name: output.name,
                binary_data: None,
            })
        })
        .collect::<Result<Vec<_>, V2Error>>()?;
    Ok(InferRequest {
        id: (!request.id.is_empty()).then_some(request.id),
        inputs,
        outputs,
        binary_data_output: true,
        priority,
        timeout,
    })
}

fn input_tensor(input: InferInputTensor, raw: Option<Bytes>) -> Result<NamedTensor, V2Error> {
    let what = format!("input '{}'", input.name);
    let dtype = tensors::datatype(&input.datatype)
        .map_err(|e| V2Error::bad_request(format!("{what}: {e}")))?;
    let shape = tensors::shape_from_dims(&input.shape, &what)?;
    refuse_shared_memory(&input.parameters, &what)?;
    let tensor = match (raw, input.contents) {
        (Some(raw), None) => tensors::tensor_from_raw(&input.name, dtype, shape, raw)?,
        (Some(_), Some(_)) => {
            return Err(V2Error::bad_request(format!(
                "{what} has both contents and raw_input_contents"
            )));
        }
        (None, Some(contents)) => typed_tensor(&what, dtype, shape, contents)?,
        (None, None) => {
            return Err(V2Error::bad_request(format!(
                "{what} has neither contents nor raw_input_contents"
            )));
        }
    };
    Ok(NamedTensor {
        name: input.name,
        tensor,
    })
}

/// A tensor from typed contents: the field of its datatype, one value per element, each in
/// the datatype's range.
fn typed_tensor(
    what: &str,
    dtype: DType,
    shape: Vec<usize>,
    contents: InferTensorContents,
) -> Result<Tensor, V2Error> {
    let count = tensors::element_count(&shape)
        .ok_or_else(|| V2Error::bad_request(format!("{what} has shape {shape:?}, too large")))?;
    let field = |len: usize, field: &str| {
        if len == count {
            Ok(())
        } else {
            Err(V2Error::bad_request(format!(
                "{what} of shape {shape:?} needs {count} value(s) in contents.{field}, got {len}"
            )))
        }
    };
    let narrow = |value: i64| {
        V2Error::bad_request(format!(
            "{what}: {value} is out of range for datatype {}",
            dtype.kserve_name()
        ))
    };
    let built = match dtype {
        DType::Bool => {
            field(contents.bool_contents.len(), "bool_contents")?;
            Tensor::from_bools(shape.clone(), &contents.bool_contents)
        }
        DType::U8 => {
            field(contents.uint_contents.len(), "uint_contents")?;
            let values = contents
                .uint_contents
                .iter()
                .map(|&v| u8::try_from(v).map_err(|_| narrow(i64::from(v))))
                .collect::<Result<Vec<u8>, _>>()?;
            Tensor::from_vec(shape.clone(), values)
        }
        DType::I8 | DType::I16 | DType::I32 => {
            field(contents.int_contents.len(), "int_contents")?;
            let ints = &contents.int_contents;
            match dtype {
                DType::I8 => ints
                    .iter()
                    .map(|&v| i8::try_from(v).map_err(|_| narrow(i64::from(v))))
                    .collect::<Result<Vec<i8>, _>>()
                    .map(|values| Tensor::from_vec(shape.clone(), values))?,
                DType::I16 => ints
                    .iter()
                    .map(|&v| i16::try_from(v).map_err(|_| narrow(i64::from(v))))
                    .collect::<Result<Vec<i16>, _>>()
                    .map(|values| Tensor::from_vec(shape.clone(), values))?,
                _ => Tensor::from_vec(shape.clone(), ints.clone()),
            }
        }
        DType::I64 => {
            field(contents.int64_contents.len(), "int64_contents")?;
            Tensor::from_vec(shape.clone(), contents.int64_contents)
        }
        DType::F32 => {
            field(contents.fp32_contents.len(), "fp32_contents")?;
            Tensor::from_vec(shape.clone(), contents.fp32_contents)
        }
        DType::F64 => {
            field(contents.fp64_contents.len(), "fp64_contents")?;
            Tensor::from_vec(shape.clone(), contents.fp64_contents)
        }
        DType::Bytes => {
            field(contents.bytes_contents.len(), "bytes_contents")?;
            Tensor::from_strings(shape.clone(), contents.bytes_contents)
        }
        DType::F16 | DType::BF16 => {
            return Err(V2Error::bad_request(format!(
                "{what}: datatype {} has no typed contents: send it in raw_input_contents",
                dtype.kserve_name()
            )));
        }
    };
    built.map_err(|e| V2Error::bad_request(format!("{what}: {e}")))
}

fn refuse_shared_memory(
    parameters: &HashMap<String, InferParameter>,
    what: &str,
) -> Result<(), V2Error> {
    if parameters.contains_key("shared_memory_region") {
        return Err(V2Error::bad_request(format!(
            "{what}: the shared memory extensions are not supported"
        )));
    }
    Ok(())
}

fn uint_parameter(
    parameters: &HashMap<String, InferParameter>,
    key: &str,
    what: &str,
) -> Result<Option<u64>, V2Error> {
    let Some(parameter) = parameters.get(key) else {
        return Ok(None);
    };
    match parameter.parameter_choice {
        Some(ParameterChoice::Uint64Param(value)) => Ok(Some(value)),
        Some(ParameterChoice::Int64Param(value)) if value >= 0 => Ok(Some(value as u64)),
        _ => Err(V2Error::bad_request(format!(
            "{what}: parameter {key} must be an integer of 0 or more, got {parameter:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32_input(name: &str, shape: Vec<i64>, values: Vec<f32>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape,
            parameters: HashMap::new(),
            contents: Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn typed_and_raw_contents_read_as_the_same_tensor() {
        let typed = input_tensor(fp32_input("x", vec![1, 2], vec![1.5, -2.0]), None).unwrap();
        let raw_bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut raw_input = fp32_input("x", vec![1, 2], vec![]);
        raw_input.contents = None;
        let raw = input_tensor(raw_input, Some(Bytes::from(raw_bytes))).unwrap();
        assert_eq!(typed, raw);
        assert_eq!(typed.tensor.shape(), &[1, 2]);
    }

    #[test]
    fn wrong_counts_ranges_and_encodings_are_invalid_arguments() {
        let short = input_tensor(fp32_input("x", vec![1, 3], vec![1.0]), None).unwrap_err();
        assert!(short.to_string().contains("needs 3 value(s)"), "{short}");
        let mut both = fp32_input("x", vec![1, 1], vec![1.0]);
        both.shape = vec![1, 1];
        let err = input_tensor(both, Some(Bytes::from_static(&[0; 4]))).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let mut out_of_range = fp32_input("x", vec![1], vec![]);
        out_of_range.datatype = "INT8".into();
        out_of_range.contents = Some(InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        });
        let err = input_tensor(out_of_range, None).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn raw_contents_must_match_the_inputs_one_to_one() {
        let request = proto::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                fp32_input("a", vec![1], vec![]),
                fp32_input("b", vec![1], vec![]),
            ],
            raw_input_contents: vec![Bytes::from_static(&[0; 4])],
            ..Default::default()
        };
        let err = infer_request(request).unwrap_err();
        assert!(err.to_string().contains("one per input"), "{err}");
    }

    #[test]
    fn priority_and_timeout_come_from_either_integer_parameter() {
        let parameter = |choice| InferParameter {
            parameter_choice: Some(choice),
        };
        let request = proto::ModelInferRequest {
            model_name: "m".into(),
            id: "req-7".into(),
            parameters: HashMap::from([
                (
                    "priority".into(),
                    parameter(ParameterChoice::Uint64Param(2)),
                ),
                (
                    "timeout".into(),
                    parameter(ParameterChoice::Int64Param(1500)),
                ),
            ]),
            inputs: vec![fp32_input("x", vec![1], vec![0.5])],
            ..Default::default()
        };
        let parsed = infer_request(request).unwrap();
        assert_eq!(parsed.priority, 2);
        assert_eq!(parsed.timeout, Some(Duration::from_micros(1500)));
        assert_eq!(parsed.id.as_deref(), Some("req-7"));
        let negative = proto::ModelInferRequest {
            parameters: HashMap::from([(
                "priority".into(),
                parameter(ParameterChoice::Int64Param(-1)),
            )]),
            ..Default::default()
        };
        assert!(infer_request(negative).is_err());
    }

    #[test]
    fn every_protocol_error_has_its_grpc_code() {
        let cases = [
            (V2Error::bad_request("x"), tonic::Code::InvalidArgument),
            (V2Error::NotFound("x".into()), tonic::Code::NotFound),
            (
                V2Error::Overloaded {
                    detail: "x".into(),
                    retry_after: Duration::from_secs(1),
                },
                tonic::Code::ResourceExhausted,
            ),
            (
                V2Error::DeadlineExceeded("x".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (V2Error::Unavailable("x".into()), tonic::Code::Unavailable),
            (V2Error::Internal("x".into()), tonic::Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }
}
