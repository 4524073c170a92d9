//! # inference-backend-candle
//!
//! The pure-Rust backend of the inference server, built on [candle]: it needs no runtime
//! library, so it is the one compiled in by default and the one to embed in other programs.
//!
//! candle reads weights, not graphs, so the model's architecture comes from the manifest's
//! `[candle]` table (`architecture = "mlp"` or `"resnet"`), and its weights from the
//! safetensors file named by `[files] candle`. Each architecture is one module that maps
//! its settings and the weights to a forward function: adding one is one new file and one
//! [`CandleSettings`] variant.
//!
//! ```no_run
//! use inference_core::{Batch, EngineOptions, InferenceEngine, ModelManifest, Sample, Tensor};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let manifest = ModelManifest::load("models/example".as_ref())?;
//! let engine = inference_backend_candle::load(&manifest, &EngineOptions::default())?;
//! let row = Sample::new(vec![Tensor::from_f32(vec![1], vec![2.0])?]);
//! let output = engine.infer(Batch::stack(&[row])?).await?;
//! println!("{:?}", output.tensors[0].as_f32());
//! # Ok(()) }
//! ```
//!
//! Devices: `cpu`; `cuda` / `cuda:N` when built with the `cuda` feature (which needs `nvcc`
//! and the CUDA toolkit at build time); `auto` picks CUDA device 0 when the feature is on and
//! a GPU is present, else the CPU.
//!
//! Threads: `options.instances` worker threads share one read-only copy of the weights and
//! each runs whole batches. candle's CPU kernels run on rayon; when `options.intra_op_threads` is set, each worker runs its
//! forward passes inside its own rayon pool of that many threads, otherwise inside rayon's
//! global pool, except a pass whose predecessor took under 1 ms, which runs on the calling
//! thread (handing it to the pool costs more than such a pass). (candle's matmul also reads
//! `RAYON_NUM_THREADS` on every call to split work and, when it is unset, counts the cores
//! by reading `/proc/cpuinfo`, every call again: a program embedding this crate should set
//! the variable before it starts threads, as the server binary does.)
//!
//! [candle]: https://github.com/huggingface/candle

mod mlp;
mod resnet;

use candle_core::{Device, Tensor as CandleTensor};
use inference_core::{
    Backend, BackendFactory, Batch, DType, EngineError, EngineInfo, EngineOptions, ModelManifest,
    Tensor, WorkerPool,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name this backend goes by in manifests (`[files] candle`, `[candle]`) and in
/// `EngineInfo`.
pub const BACKEND_NAME: &str = "candle";

/// The `[candle]` table: which architecture, with that architecture's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "architecture", rename_all = "lowercase")]
enum CandleSettings {
    Mlp(mlp::MlpSettings),
    Resnet(resnet::ResNetSettings),
}

/// A built network: one forward function from the input tensor to the output tensor.
enum Network {
    Mlp(mlp::Mlp),
    ResNet(resnet::ResNet),
}

impl Network {
    fn forward(&self, input: &CandleTensor) -> candle_core::Result<CandleTensor> {
        match self {
            Network::Mlp(model) => model.forward(input),
            Network::ResNet(model) => model.forward(input),
        }
    }
}

/// A network with its device, shared read-only by every worker.
struct Model {
    network: Network,
    device: Device,
}

/// Loads the model described by `manifest` into `options.instances` workers.
///
/// Every problem with the model, its files or the device is an [`EngineError::Load`] with a
/// sentence naming it; nothing here panics.
pub fn load(manifest: &ModelManifest, options: &EngineOptions) -> Result<WorkerPool, EngineError> {
    let (device, device_name) = resolve_device(&options.device)?;
    let model = Arc::new(build(manifest, &device)?);
    let threads = options.intra_op_threads;
    let factory: BackendFactory = Arc::new(move |index| {
        let pool = threads
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |t| format!("candle-{index}-op-{t}"))
                    .build()
                    .map_err(|e| EngineError::Load(format!("cannot start {n} op threads: {e}")))
            })
            .transpose()?;
        Ok(Box::new(CandleBackend {
            model: Arc::clone(&model),
            pool,
            last_pass: None,
        }) as Box<dyn Backend>)
    });
    let info = EngineInfo {
        backend: BACKEND_NAME.into(),
        device: device_name,
        model: manifest.spec(),
        instances: options.instances,
    };
    WorkerPool::start(info, factory)
}

fn build(manifest: &ModelManifest, device: &Device) -> Result<Model, EngineError> {
    let load_error =
        |reason: String| EngineError::Load(format!("model '{}': {reason}", manifest.name));
    if !manifest.tables.contains_key(BACKEND_NAME) {
        return Err(load_error(format!(
            "the candle backend needs a [candle] table (architecture = \"mlp\" or \"resnet\") in {}",
            manifest.dir.join(ModelManifest::FILE_NAME).display()
        )));
    }
    let settings: CandleSettings = manifest
        .table(BACKEND_NAME)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    let [input] = manifest.inputs.as_slice() else {
        return Err(load_error(format!(
            "candle models take exactly one input, the manifest lists {}",
            manifest.inputs.len()
        )));
    };
    if input.dtype != DType::F32 || manifest.outputs.iter().any(|o| o.dtype != DType::F32) {
        return Err(load_error(
            "candle models compute in f32: inputs and outputs must be f32".into(),
        ));
    }
    let weights = manifest
        .file_for(BACKEND_NAME)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    let network = match &settings {
        CandleSettings::Mlp(mlp) => {
            Network::Mlp(mlp::Mlp::load(mlp, manifest, &weights, device).map_err(load_error)?)
        }
        CandleSettings::Resnet(settings) => {
            Network::ResNet(resnet::ResNet::load(settings, &weights, device).map_err(load_error)?)
        }
    };
    Ok(Model {
        network,
        device: device.clone(),
    })
}

impl Model {
    fn forward(&self, batch: &Batch) -> Result<Batch, EngineError> {
        let tensor = &batch.tensors[0];
        let values = tensor
            .as_f32()
            .ok_or_else(|| EngineError::Backend("the input is not f32".into()))?;
        let (shape, values) = match &self.network {
            Network::Mlp(mlp) if mlp.runs_on_host() => {
                let (shape, values) = mlp.forward_on_host(values).map_err(EngineError::Backend)?;
                (shape.to_vec(), values)
            }
            network => {
                let input = CandleTensor::from_slice(values, tensor.shape(), &self.device)
                    .map_err(backend_error)?;
                let output = network.forward(&input).map_err(backend_error)?;
                let values = output
                    .flatten_all()
                    .and_then(|flat| flat.to_vec1::<f32>())
                    .map_err(backend_error)?;
                (output.dims().to_vec(), values)
            }
        };
        let output = Tensor::from_f32(shape, values)
            .map_err(|e| EngineError::Backend(format!("unexpected output size: {e}")))?;
        Ok(Batch {
            size: batch.size,
            tensors: vec![output],
        })
    }
}

/// Maps the configured device name to a candle device and the name it reports.
fn resolve_device(requested: &str) -> Result<(Device, String), EngineError> {
    match requested {
        "cpu" => Ok((Device::Cpu, "cpu".into())),
        "auto" => Ok(auto_device()),
        "cuda" => cuda_device(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda_device(ordinal),
            _ => Err(EngineError::Load(format!(
                "unknown device '{other}'; use cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

#[cfg(feature = "cuda")]
fn auto_device() -> (Device, String) {
    match Device::new_cuda(0) {
        Ok(device) => (device, "cuda:0".into()),
        Err(_) => (Device::Cpu, "cpu".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn auto_device() -> (Device, String) {
    (Device::Cpu, "cpu".into())
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<(Device, String), EngineError> {
    Device::new_cuda(ordinal)
        .map(|device| (device, format!("cuda:{ordinal}")))
        .map_err(|e| EngineError::Load(format!("cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<(Device, String), EngineError> {
    Err(EngineError::Load(
        "candle was built without CUDA support; rebuild with --features cuda".into(),
    ))
}

fn backend_error(err: candle_core::Error) -> EngineError {
    EngineError::Backend(err.to_string())
}

pub(crate) fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, CandleTensor>, String> {
    if !path.is_file() {
        return Err(format!("weights file {} does not exist", path.display()));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| format!("cannot read weights file {}: {e}", path.display()))
}

/// One worker's handle on the shared, read-only weights.
struct CandleBackend {
    model: Arc<Model>,
    /// This worker's op threads, when `intra_op_threads` is set; otherwise its passes run
    /// in rayon's global pool.
    pool: Option<rayon::ThreadPool>,
    /// How long this worker's last pass took, hand-off to the pool included.
    last_pass: Option<Duration>,
}

/// A pass whose predecessor took less than this runs on the calling thread, not in a
/// pool: handing it over wakes a pool thread and then the caller, which cost 60 to 150 µs
/// per pass on a 2-core machine, many times a small model's whole pass, and a pass that
/// short has too little work to share between threads anyway.
const POOL_AT_LEAST: Duration = Duration::from_millis(1);

fn runs_in_pool(last_pass: Option<Duration>) -> bool {
    last_pass.is_none_or(|took| took >= POOL_AT_LEAST)
}

impl Backend for CandleBackend {
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
        let started = Instant::now();
        let output = match &self.pool {
            _ if !runs_in_pool(self.last_pass) => self.model.forward(batch),
            Some(pool) => pool.install(|| self.model.forward(batch)),
            // Without a pool of its own, the pass runs on a thread of rayon's global pool,
            // where candle's kernels run theirs. From this worker's thread, each of the
            // pass's parallel kernels was handed to that pool and waited for, and its serial
            // parts ran here while the pool's threads spun for more work on the same cores:
            // a ResNet-18 pass at batch 1 took 116 to 124 ms served, against 103 to 108 ms
            // inside a pool. (A GPU pass stays on the worker's thread.)
            None if self.model.device.is_cpu() => rayon::scope(|_| self.model.forward(batch)),
            None => self.model.forward(batch),
        };
        self.last_pass = Some(started.elapsed());
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType as CandleDType;
    use inference_core::ErrorKind;
    use inference_core::conformance::{self, example_manifest};

    /// The example manifest pointing at a fresh directory of its own, removed on drop.
    struct ScratchModel {
        manifest: ModelManifest,
    }

    impl ScratchModel {
        /// With no weights file at all.
        fn empty(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "inference-backend-candle-{}-{test}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut manifest = example_manifest();
            manifest.dir = dir;
            Self { manifest }
        }

        /// With a safetensors file of zero tensors of the given names and shapes.
        fn with_weights(test: &str, tensors: &[(&str, &[usize])]) -> Self {
            let scratch = Self::empty(test);
            let tensors: HashMap<String, CandleTensor> = tensors
                .iter()
                .map(|&(name, shape)| {
                    let tensor =
                        CandleTensor::zeros(shape, CandleDType::F32, &Device::Cpu).unwrap();
                    (name.to_string(), tensor)
                })
                .collect();
            let path = scratch.manifest.file_for(BACKEND_NAME).unwrap();
            candle_core::safetensors::save(&tensors, path).unwrap();
            scratch
        }
    }

    impl Drop for ScratchModel {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.manifest.dir);
        }
    }

    fn load_error(manifest: &ModelManifest, options: &EngineOptions) -> String {
        match load(manifest, options) {
            Ok(engine) => panic!("loaded unexpectedly: {engine:?}"),
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Load, "{err}");
                err.to_string()
            }
        }
    }

    const EXAMPLE_SHAPES: [(&str, &[usize]); 4] = [
        ("fc1.weight", &[16, 1]),
        ("fc1.bias", &[16]),
        ("fc2.weight", &[3, 16]),
        ("fc2.bias", &[3]),
    ];

    #[test]
    fn only_a_pass_after_a_long_one_goes_to_the_op_pool() {
        assert!(runs_in_pool(None));
        assert!(runs_in_pool(Some(Duration::from_millis(3))));
        assert!(runs_in_pool(Some(POOL_AT_LEAST)));
        assert!(!runs_in_pool(Some(Duration::from_micros(40))));
    }

    #[test]
    fn passes_in_the_op_pool_and_on_the_caller_give_the_same_outputs() {
        let model = Arc::new(build(&example_manifest(), &Device::Cpu).unwrap());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut pooled = CandleBackend {
            model: Arc::clone(&model),
            pool: Some(pool),
            last_pass: None,
        };
        let mut plain = CandleBackend {
            model,
            pool: None,
            last_pass: None,
        };
        let batch = Batch {
            size: 4,
            tensors: vec![Tensor::from_f32(vec![4, 1], vec![-1.0, 0.0, 2.0, 7.5]).unwrap()],
        };
        let expected = plain.forward(&batch).unwrap();
        // The first pass runs in the pool; the example model's pass is far under the
        // threshold, so the next ones run on this thread.
        for _ in 0..3 {
            assert_eq!(pooled.forward(&batch).unwrap(), expected);
        }
        assert!(!runs_in_pool(pooled.last_pass), "{:?}", pooled.last_pass);
    }

    #[test]
    fn missing_weights_file_names_the_path() {
        let scratch = ScratchModel::empty("missing-file");
        let message = load_error(&scratch.manifest, &EngineOptions::default());
        assert!(
            message.contains("model.safetensors") && message.contains("does not exist"),
            "{message}"
        );
    }

    #[test]
    fn manifest_without_candle_table_is_refused() {
        let mut manifest = example_manifest();
        manifest.tables.remove(BACKEND_NAME);
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("[candle]"), "{message}");
    }

    #[test]
    fn unknown_architecture_or_setting_is_refused() {
        let mut manifest = example_manifest();
        manifest.tables.insert(
            BACKEND_NAME.into(),
            toml::from_str("architecture = \"transformer\"").unwrap(),
        );
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("transformer"), "{message}");
        manifest.tables.insert(
            BACKEND_NAME.into(),
            toml::from_str(
                "architecture = \"mlp\"\nlayers = [\"fc1\"]\nactivations = [\"relu\"]\nlayres = 1",
            )
            .unwrap(),
        );
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("layres"), "{message}");
    }

    #[test]
    fn manifest_without_candle_file_is_refused() {
        let mut manifest = example_manifest();
        manifest.files.remove(BACKEND_NAME);
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(message.contains("'candle'"), "{message}");
    }

    #[test]
    fn weights_of_the_right_shapes_load() {
        let scratch = ScratchModel::with_weights("right-shapes", &EXAMPLE_SHAPES);
        assert!(load(&scratch.manifest, &EngineOptions::default()).is_ok());
    }

    #[test]
    fn mismatched_weight_shapes_name_the_tensor() {
        let cases: [(&str, usize, &[usize], &str); 4] = [
            (
                "first-layer-input",
                0,
                &[16, 2],
                "'fc1.weight' has shape [16, 2]",
            ),
            ("bias", 1, &[15], "'fc1.bias' has shape [15]"),
            ("chain", 2, &[3, 8], "'fc2.weight' has shape [3, 8]"),
            (
                "rank",
                2,
                &[48],
                "'fc2.weight' has shape [48], expected [out, in]",
            ),
        ];
        for (test, index, shape, expected) in cases {
            let mut shapes = EXAMPLE_SHAPES;
            shapes[index].1 = shape;
            let scratch = ScratchModel::with_weights(test, &shapes);
            let message = load_error(&scratch.manifest, &EngineOptions::default());
            assert!(message.contains(expected), "{test}: {message}");
        }
    }

    #[test]
    fn last_layer_must_match_the_output_spec() {
        let mut shapes = EXAMPLE_SHAPES;
        shapes[2].1 = &[4, 16];
        shapes[3].1 = &[4];
        let scratch = ScratchModel::with_weights("output-width", &shapes);
        let message = load_error(&scratch.manifest, &EngineOptions::default());
        assert!(
            message.contains("4 outputs") && message.contains("'output'"),
            "{message}"
        );
    }

    #[test]
    fn missing_tensor_is_named() {
        let scratch = ScratchModel::with_weights("missing-tensor", &EXAMPLE_SHAPES[..3]);
        let message = load_error(&scratch.manifest, &EngineOptions::default());
        assert!(message.contains("no tensor 'fc2.bias'"), "{message}");
    }

    #[test]
    fn activation_count_must_match_layers() {
        let mut manifest = example_manifest();
        manifest.tables.insert(
            BACKEND_NAME.into(),
            toml::from_str(
                "architecture = \"mlp\"\nlayers = [\"fc1\", \"fc2\"]\nactivations = [\"relu\"]",
            )
            .unwrap(),
        );
        let message = load_error(&manifest, &EngineOptions::default());
        assert!(
            message.contains("2 layer(s) and 1 activation(s)"),
            "{message}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        for device in ["cuda", "cuda:1"] {
            let options = EngineOptions {
                device: device.into(),
                ..EngineOptions::default()
            };
            assert_eq!(
                load_error(&example_manifest(), &options),
                "cannot load model: candle was built without CUDA support; \
                 rebuild with --features cuda"
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_resolves_to_cpu_without_cuda() {
        let options = EngineOptions {
            device: "auto".into(),
            ..EngineOptions::default()
        };
        let engine = load(&example_manifest(), &options).unwrap();
        assert_eq!(inference_core::InferenceEngine::info(&engine).device, "cpu");
    }

    #[test]
    fn unknown_device_is_refused() {
        for device in ["gpu", "cuda:x", ""] {
            let options = EngineOptions {
                device: device.into(),
                ..EngineOptions::default()
            };
            let message = load_error(&example_manifest(), &options);
            assert!(message.contains("unknown device"), "{device}: {message}");
        }
    }

    #[tokio::test]
    async fn several_instances_with_op_thread_pools_match_golden() {
        let options = EngineOptions {
            instances: 3,
            intra_op_threads: Some(2),
            ..EngineOptions::default()
        };
        let engine = load(&example_manifest(), &options).unwrap();
        assert_eq!(inference_core::InferenceEngine::info(&engine).instances, 3);
        conformance::check_concurrent_batches(&engine).await;
        conformance::check_golden_outputs(&engine, 64).await;
    }
}
