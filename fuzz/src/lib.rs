//! Fuzz targets for everything that parses client bytes. Each target is a plain function of
//! the input bytes, so the AFL binaries in `src/bin` are one line each and the tests below
//! replay the committed corpus without AFL.
//!
//! A target fails by panicking: on a panic inside the server's code, and on a result that
//! breaks the contract the server relies on (a decoded sample that does not fit its model,
//! a picture tensor of the wrong length or with non-finite values).

use inference_core::{DType, ModelSpec, Sample, TensorSpec};
use inference_server::codec::{Prediction, decode_sample, parse_json};
use inference_server::image_input::{self, ChannelOrder, ImagePreprocess, Layout};
use inference_server::routes::{PredictRequest, SimpleExampleRequest};
use serde_json::Value;

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

/// Decodes `value` for `model` the way the predict endpoints do, and checks what comes out.
fn decode_and_check(value: &Value, model: &ModelSpec) {
    let Ok(sample) = decode_sample(value, model) else {
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

/// A sample as `/predict` receives it in `inputs`; a list is also decoded element by
/// element, as `/predict/batch` does.
fn decode_inputs(inputs: &Value, models: &[ModelSpec]) {
    for model in models {
        decode_and_check(inputs, model);
        if let Value::Array(samples) = inputs {
            for sample in samples {
                decode_and_check(sample, model);
            }
        }
    }
}

/// The JSON sample decoder: the bytes are one sample (`inputs` of a predict body).
pub fn json_sample(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        decode_inputs(&value, &sample_models());
    }
}

/// The bodies of the seed endpoints: `/predict` and `/predict/batch` (a `PredictRequest`)
/// and `/examples/simple` (a `SimpleExampleRequest`), parsed by the body extractor's own
/// function and then decoded.
pub fn seed_bodies(data: &[u8]) {
    let example = [example_model()];
    if let Ok(request) = parse_json::<PredictRequest>(data)
        && let Ok(inputs) = serde_json::from_str::<Value>(request.inputs.get())
    {
        decode_inputs(&inputs, &example);
        decode_inputs(&inputs, &sample_models());
    }
    if let Ok(request) = parse_json::<SimpleExampleRequest>(data) {
        decode_and_check(&request.input, &example[0]);
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
