//! The KServe v2 gRPC service on a real port (127.0.0.1:0) through tonic's own client: health,
//! metadata, inference on the example model with typed and with raw contents (against its
//! golden outputs), and the status codes of the error cases.

mod common;

use common::{assert_rows_close, example_state, f32s};
use inference_server::v2::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use inference_server::v2::grpc::proto::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use inference_server::v2::grpc::proto::{self, InferTensorContents};
use inference_server::v2::grpc::serve;
use std::collections::HashMap;
use tonic::Code;
use tonic::transport::Channel;

const MODEL: &str = "example_model";

/// Serves the example model's state over gRPC on a free port; returns a connected client.
async fn client() -> GrpcInferenceServiceClient<Channel> {
    client_of(example_state().await).await
}

async fn client_of(state: inference_server::AppState) -> GrpcInferenceServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

fn input(shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape,
        parameters: HashMap::new(),
        contents,
    }
}

/// An infer request of one row, `value`, in typed contents.
fn one_row(value: f32) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![input(
            vec![1, 1],
            Some(InferTensorContents {
                fp32_contents: vec![value],
                ..Default::default()
            }),
        )],
        ..Default::default()
    }
}

#[tokio::test]
async fn health_and_metadata() {
    let mut client = client().await;
    let live = client
        .server_live(proto::ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.into_inner().live);
    let ready = client
        .server_ready(proto::ServerReadyRequest {})
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let server = client
        .server_metadata(proto::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "inference-server");
    assert!(server.extensions.iter().any(|e| e == "binary_tensor_data"));

    let model = client
        .model_metadata(proto::ModelMetadataRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.name, MODEL);
    assert_eq!(model.versions, ["v1.0"]);
    assert_eq!(model.inputs[0].name, "input");
    assert_eq!(model.inputs[0].datatype, "FP32");
    assert_eq!(model.inputs[0].shape, [-1, 1]);
    assert_eq!(model.outputs[0].shape, [-1, 3]);

    let ready = |name: &str, version: &str| proto::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        client
            .model_ready(ready(MODEL, ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        client
            .model_ready(ready(MODEL, "v1.0"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let unknown = client.model_ready(ready("nope", "")).await.unwrap();
    assert!(!unknown.into_inner().ready);
    let wrong_version = client.model_ready(ready(MODEL, "v9")).await.unwrap();
    assert!(!wrong_version.into_inner().ready);
    let metadata = |name: &str, version: &str| proto::ModelMetadataRequest {
        name: name.into(),
        version: version.into(),
    };
    let wrong_version = client
        .model_metadata(metadata(MODEL, "v9"))
        .await
        .unwrap_err();
    assert_eq!(wrong_version.code(), Code::NotFound);
    assert!(wrong_version.message().contains("v1.0"), "{wrong_version}");
}

#[tokio::test]
async fn infer_with_typed_and_raw_contents_matches_the_golden_outputs() {
    let mut client = client().await;
    let typed = proto::ModelInferRequest {
        model_name: MODEL.into(),
        id: "req-1".into(),
        inputs: vec![input(
            vec![3, 1],
            Some(InferTensorContents {
                fp32_contents: vec![1.0, 2.0, 3.0],
                ..Default::default()
            }),
        )],
        ..Default::default()
    };
    let reply = client.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(reply.model_name, MODEL);
    assert_eq!(reply.model_version, "v1.0");
    assert_eq!(reply.id, "req-1");
    assert_eq!(reply.outputs.len(), 1);
    assert_eq!(reply.outputs[0].name, "output");
    assert_eq!(reply.outputs[0].datatype, "FP32");
    assert_eq!(reply.outputs[0].shape, [3, 3]);
    assert_eq!(reply.raw_output_contents.len(), 1);
    assert_rows_close(&f32s(&reply.raw_output_contents[0]), &[1.0, 2.0, 3.0]);

    let raw: Vec<u8> = [4.0f32, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let raw_request = proto::ModelInferRequest {
        model_name: MODEL.into(),
        model_version: "v1.0".into(),
        inputs: vec![input(vec![2, 1], None)],
        outputs: vec![InferRequestedOutputTensor {
            name: "output".into(),
            parameters: HashMap::new(),
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let reply = client.model_infer(raw_request).await.unwrap().into_inner();
    assert_eq!(reply.id, "");
    assert_eq!(reply.outputs[0].shape, [2, 3]);
    assert_rows_close(&f32s(&reply.raw_output_contents[0]), &[4.0, 5.0]);
}

#[tokio::test]
async fn errors_have_the_protocol_codes() {
    let mut client = client().await;
    let request = |model: &str, shape: Vec<i64>, values: Vec<f32>| proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input(
            shape,
            Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
        )],
        ..Default::default()
    };
    let unknown = client
        .model_infer(request("nope", vec![1, 1], vec![1.0]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    let wrong_row = client
        .model_infer(request(MODEL, vec![1, 2], vec![1.0, 2.0]))
        .await
        .unwrap_err();
    assert_eq!(wrong_row.code(), Code::InvalidArgument, "{wrong_row}");
    let short = client
        .model_infer(request(MODEL, vec![2, 1], vec![1.0]))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short}");
    assert!(short.message().contains("needs 2 value(s)"), "{short}");
    let mut wrong_output = request(MODEL, vec![1, 1], vec![1.0]);
    wrong_output.outputs = vec![InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: HashMap::new(),
    }];
    let err = client.model_infer(wrong_output).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // The server is still there after every refusal.
    let fine = client
        .model_infer(request(MODEL, vec![1, 1], vec![1.0]))
        .await
        .unwrap()
        .into_inner();
    assert_rows_close(&f32s(&fine.raw_output_contents[0]), &[1.0]);
}

#[tokio::test]
async fn with_api_keys_metadata_and_inference_need_one_and_health_stays_open() {
    let mut config = common::test_config();
    config.server.api_keys = vec!["grpc-secret".into()];
    let state = inference_server::AppState::from_config(config)
        .await
        .unwrap();
    let mut client = client_of(state).await;
    let infer = || one_row(2.0);

    let refused = client.model_infer(infer()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = client
        .server_metadata(proto::ServerMetadataRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut wrong = tonic::Request::new(infer());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-it".parse().unwrap());
    let refused = client.model_infer(wrong).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("not valid"), "{refused:?}");

    let live = client
        .server_live(proto::ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.into_inner().live);
    let ready = client
        .model_ready(proto::ModelReadyRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);

    let mut keyed = tonic::Request::new(infer());
    keyed
        .metadata_mut()
        .insert("authorization", "Bearer grpc-secret".parse().unwrap());
    let reply = client.model_infer(keyed).await.unwrap().into_inner();
    assert_rows_close(&f32s(&reply.raw_output_contents[0]), &[2.0]);
}

#[tokio::test]
async fn infer_calls_are_counted_by_method_code_and_model() {
    let mut client = client().await;
    client.model_infer(one_row(3.0)).await.unwrap();
    let unknown = proto::ModelInferRequest {
        model_name: "made_up_9d2e".into(),
        ..Default::default()
    };
    let refused = client.model_infer(unknown).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    let text = inference_server::metrics::install()
        .expect("the server's recorder")
        .render();
    let served = r#"grpc_requests_total{method="ModelInfer",code="Ok",model="example_model"}"#;
    assert!(text.contains(served), "{text}");
    let not_found = r#"grpc_requests_total{method="ModelInfer",code="NotFound",model=""}"#;
    assert!(text.contains(not_found), "{text}");
    assert!(!text.contains("9d2e"), "made-up names are not labels");
    assert!(
        text.contains("grpc_request_duration_seconds_bucket{"),
        "{text}"
    );
}
