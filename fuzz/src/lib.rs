//! Fuzz targets for everything that parses client bytes. Each target is a plain function of
//! the input bytes, so the AFL binaries in `src/bin` are one line each and the tests below
//! replay the committed corpus without AFL.
//!
//! A target fails by panicking: on a panic inside the server's code, and on a result that
//! breaks the contract the server relies on (a decoded sample that does not fit its model,
//! a picture tensor of the wrong length or with non-finite values).

use bytes::Bytes;
use inference_core::{DType, ModelSpec, Sample, TensorSpec};
use inference_server::codec::{Prediction, decode_sample_raw, parse_json, raw_kind};
use inference_server::image_input::{self, ChannelOrder, ImagePreprocess, Layout};
use inference_server::routes::{PredictRequest, SimpleExampleRequest};
use inference_server::v2::service::InferResponse;
use inference_server::v2::tensors::{self, OutputTensor};
use inference_server::v2::{encode_response, parse_binary_request};
use serde_json::value::RawValue;

/// Pixel budget of the image target: small enough that the fuzzer does not spend its time
/// on huge allocations, large enough that every code path stays reachable.
pub const MAX_PIXELS: u64 = 4_000_000;

fn tensor(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

fn model(name: &str, inputs: Vec<TensorSpec>) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        version: "1".into(),
        inputs,
        outputs: vec![tensor("output", DType::F32, &[3])],
    }
}

/// The models samples are decoded for: fixed, dynamic and nested shapes, every family of
/// element type, and a model with several inputs (which takes an object).
pub fn sample_models() -> Vec<ModelSpec> {
    vec![
        model("vector", vec![tensor("input", DType::F32, &[3])]),
        model("any_length", vec![tensor("input", DType::F32, &[-1])]),
        model("ids", vec![tensor("ids", DType::I64, &[2, 2])]),
        model("half", vec![tensor("input", DType::F16, &[-1, -1])]),
        model(
            "two_inputs",
            vec![
                tensor("a", DType::U8, &[2]),
                tensor("mask", DType::Bool, &[-1, 2]),
            ],
        ),
    ]
}

/// The example model's input, what `POST /examples/simple` decodes its `input` for.
pub fn example_model() -> ModelSpec {
    model("example_model", vec![tensor("input", DType::F32, &[1])])
}

/// The preprocessing of a typical classifier and of an unusual one (a crop larger than the
/// resize, so the crop is padded; BGR; channels last), both small so each run is cheap.
pub fn image_specs() -> [ImagePreprocess; 2] {
    [
        ImagePreprocess {
            resize: 20,
            crop: 16,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            channels: ChannelOrder::Rgb,
            layout: Layout::Nchw,
        },
        ImagePreprocess {
            resize: 7,
            crop: 9,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
            channels: ChannelOrder::Bgr,
            layout: Layout::Nhwc,
        },
    ]
}

/// Decodes one sample's JSON text for `model` as the predict endpoints do, and checks what
/// comes out.
fn decode_and_check(raw: &RawValue, model: &ModelSpec) {
    let Ok(sample) = decode_sample_raw(raw, model) else {
        return;
    };
    if let Err(reason) = model.check_sample(&sample) {
        panic!(
            "decoded sample does not fit model '{}': {reason}",
            model.name
        );
    }
    assert_finite(&sample);
    // The same tensors written back as JSON, as a response writes outputs.
    let echo = ModelSpec {
        outputs: model.inputs.clone(),
        ..model.clone()
    };
    serde_json::to_vec(&Prediction::new(&echo, sample))
        .expect("a decoded sample serializes as JSON");
}

fn assert_finite(sample: &Sample) {
    for tensor in &sample.tensors {
        let values = tensor.to_f64_vec().unwrap_or_default();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "decoded a non-finite value: {values:?}"
        );
    }
}

/// `inputs` as `/predict` decodes it, one sample; a list is also split into samples and
/// each decoded, as `/predict/batch` does. A string sample is a picture in base64 for an
/// image model, decoded here up to its bytes (the image target takes it from there).
fn decode_inputs(inputs: &RawValue, models: &[ModelSpec]) {
    for model in models {
        decode_and_check(inputs, model);
    }
    if raw_kind(inputs) != "a list" {
        return;
    }
    let Ok(samples) = serde_json::from_str::<Vec<Box<RawValue>>>(inputs.get()) else {
        return;
    };
    for sample in &samples {
        if raw_kind(sample) == "a string" {
            if let Ok(text) = serde_json::from_str::<String>(sample.get()) {
                let _ = image_input::decode_base64(&text);
            }
            continue;
        }
        for model in models {
            decode_and_check(sample, model);
        }
    }
}

/// The JSON sample decoder: the bytes are one sample (`inputs` of a predict body).
pub fn json_sample(data: &[u8]) {
    if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(data) {
        decode_inputs(&raw, &sample_models());
    }
}

/// The bodies of the seed endpoints: `/predict` and `/predict/batch` (a `PredictRequest`)
/// and `/examples/simple` (a `SimpleExampleRequest`), parsed by the body extractor's own
/// function and then decoded.
pub fn seed_bodies(data: &[u8]) {
    let example = [example_model()];
    if let Ok(request) = parse_json::<PredictRequest>(data) {
        decode_inputs(&request.inputs, &example);
        decode_inputs(&request.inputs, &sample_models());
    }
    if let Ok(request) = parse_json::<SimpleExampleRequest>(data)
        && let Ok(input) = serde_json::value::to_raw_value(&request.input)
    {
        decode_and_check(&input, &example[0]);
    }
}

/// Picture decoding and preprocessing: the bytes are a PNG or JPEG file as
/// `/models/{name}/predict` receives it, or, when they are text, the base64 string (or data
/// URL) a JSON sample carries.
pub fn image(data: &[u8]) {
    preprocess_and_check(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = image_input::decode_base64(text)
    {
        preprocess_and_check(&bytes);
    }
}

fn preprocess_and_check(bytes: &[u8]) {
    for spec in image_specs() {
        let Ok(values) = image_input::preprocess(bytes, &spec, MAX_PIXELS) else {
            continue;
        };
        let expected: usize = spec.sample_shape().iter().product();
        assert_eq!(values.len(), expected, "tensor length for {spec:?}");
        assert!(
            values.iter().all(|v| v.is_finite()),
            "non-finite value in the picture tensor"
        );
    }
}

/// The KServe v2 REST body with the binary tensor data extension. The first 4 bytes are
/// the `Inference-Header-Content-Length` (little-endian; `u32::MAX`: no such header), the
/// rest is the body. What parses must hold what its shapes say, split into rows that fit
/// the sample models, and come back unchanged through a binary response.
pub fn v2_binary(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let header_len = match u32::from_le_bytes(*length) {
        u32::MAX => None,
        n => Some(n as usize),
    };
    let Ok(request) = parse_binary_request(&Bytes::copy_from_slice(body), header_len) else {
        return;
    };
    for input in &request.inputs {
        let tensor = &input.tensor;
        let count = tensors::element_count(tensor.shape()).expect("a parsed shape fits usize");
        match tensor.dtype().size() {
            Some(size) => assert_eq!(tensor.raw_bytes().map(Bytes::len), Some(count * size)),
            None => assert_eq!(tensor.strings().map(<[Bytes]>::len), Some(count)),
        }
    }
    for model in sample_models() {
        let Ok(rows) = tensors::batch_rows(&model, request.inputs.clone()) else {
            continue;
        };
        for row in &rows {
            if let Err(reason) = model.check_sample(row) {
                panic!("a v2 row does not fit model '{}': {reason}", model.name);
            }
        }
    }
    let outputs: Vec<OutputTensor> = request
        .inputs
        .iter()
        .map(|input| OutputTensor {
            name: input.name.clone(),
            tensor: input.tensor.clone(),
            binary_data: None,
        })
        .collect();
    let response = InferResponse {
        model_name: "echo".into(),
        model_version: "1".into(),
        id: request.id.clone(),
        outputs,
        queue_time: Default::default(),
        inference_time: Default::default(),
        total_time: Default::default(),
    };
    // JSON may refuse (a BYTES element that is not UTF-8) but must not panic.
    let _ = encode_response(&response, false);
    let (body, header_len) = encode_response(&response, true).expect("binary always encodes");
    let header_len = header_len.expect("binary outputs have a header length");
    let header: serde_json::Value =
        serde_json::from_slice(&body[..header_len]).expect("the response header is JSON");
    let mut offset = header_len;
    for (index, input) in request.inputs.iter().enumerate() {
        let size = header["outputs"][index]["parameters"]["binary_data_size"]
            .as_u64()
            .expect("every binary output has its size") as usize;
        let raw = body.slice(offset..offset + size);
        let back = tensors::tensor_from_raw(
            &input.name,
            input.tensor.dtype(),
            input.tensor.shape().to_vec(),
            raw,
        )
        .expect("a response's contents read back");
        assert_eq!(
            back, input.tensor,
            "output '{}' changed on the way",
            input.name
        );
        offset += size;
    }
    assert_eq!(offset, body.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Runs every file of `corpus/<target>` through the target: the corpus must not crash.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "{} is empty", dir.display());
    }

    #[test]
    fn the_json_sample_corpus_runs_clean() {
        replay("json_sample", json_sample);
    }

    #[test]
    fn the_seed_bodies_corpus_runs_clean() {
        replay("seed_bodies", seed_bodies);
    }

    #[test]
    fn the_v2_binary_corpus_runs_clean() {
        replay("v2_binary", v2_binary);
    }

    /// The hand-written seeds (not the fuzzers' finds) are requests the server accepts, so
    /// fuzzing starts from the parser's success paths.
    #[test]
    fn the_v2_binary_seeds_are_valid_requests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/v2_binary");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("found-") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let (length, body) = data.split_first_chunk::<4>().unwrap();
            let header_len = match u32::from_le_bytes(*length) {
                u32::MAX => None,
                n => Some(n as usize),
            };
            if let Err(err) = parse_binary_request(&Bytes::copy_from_slice(body), header_len) {
                panic!("seed {name} is refused: {err}");
            }
        }
    }

    #[test]
    fn the_image_corpus_runs_clean() {
        replay("image", image);
    }

    #[test]
    fn the_image_specs_are_valid() {
        for spec in image_specs() {
            spec.validate().unwrap();
        }
    }
}
