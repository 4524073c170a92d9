//! # inference-backend-tch
//!
//! Serves TorchScript models (`torch.jit.trace` / `torch.jit.script` output, the manifest's
//! `[files] tch = "model.pt"`) with libtorch through [`tch`], on CPU or CUDA.
//!
//! [`load`] returns a [`WorkerPool`]: `options.instances` worker threads that all run the
//! same [`tch::CModule`]. The module is loaded once and shared through an [`Arc`]: `CModule`
//! is `Send + Sync` and a TorchScript module in eval mode keeps no per-call state, so one
//! copy of the weights serves every worker; only the tensors (`Send`, not `Sync`) stay on
//! the worker thread that made them.
//!
//! ## Building
//!
//! tch 0.26 links against PyTorch 2.13.0: build with `LIBTORCH=<site-packages>/torch`
//! (or `LIBTORCH_USE_PYTORCH=1` and that Python on `PATH`). The build script puts
//! libtorch's lib dir on the rpath of this crate's tests and examples, and publishes it as
//! `DEP_INFERENCE_BACKEND_TCH_LIBDIR` so a dependent binary's build script can do the same;
//! no `LD_LIBRARY_PATH` is needed at run time. Feature `cuda` links `libtorch_cuda.so`,
//! without which libtorch reports no CUDA device even on a GPU machine.

use inference_core::{
    Backend, BackendFactory, Batch, DType, EngineError, EngineInfo, EngineOptions, ModelManifest,
    TensorSpec, WorkerPool,
};
use std::path::Path;
use std::sync::Arc;
use tch::{CModule, Device, IValue, Kind, TchError};

/// The name this backend goes by in manifests, configuration and [`EngineInfo::backend`].
pub const BACKEND_NAME: &str = "tch";

/// Loads `manifest.file_for("tch")` onto `options.device` and starts the workers.
///
/// `options.device` is `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `auto` (CUDA when libtorch
/// sees a device, else CPU); [`EngineInfo::device`] holds the device actually used.
/// `options.intra_op_threads` sets libtorch's process-wide intra-op thread count.
pub fn load(manifest: &ModelManifest, options: &EngineOptions) -> Result<WorkerPool, EngineError> {
    let device = resolve_device(&options.device)?;
    let path = manifest
        .file_for(BACKEND_NAME)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    if let Some(threads) = options.intra_op_threads {
        let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
        tch::set_num_threads(threads);
    }
    let module = Arc::new(load_module(&path, device)?);
    tracing::info!(path = %path.display(), device = ?device, "loaded TorchScript module");
    let info = EngineInfo {
        backend: BACKEND_NAME.into(),
        device: device_name(device),
        model: manifest.spec(),
        instances: options.instances,
    };
    let outputs = Arc::new(manifest.outputs.clone());
    // A rebuilt instance (after a panic) reuses the module: panics can only come from this
    // crate's Rust code, since libtorch's C++ exceptions arrive as `TchError`s.
    let factory: BackendFactory = Arc::new(move |_worker| {
        Ok(Box::new(TchBackend {
            module: Arc::clone(&module),
            device,
            outputs: Arc::clone(&outputs),
        }) as Box<dyn Backend>)
    });
    WorkerPool::start(info, factory)
}

/// Turns a configured device name into a libtorch device that exists on this machine.
pub fn resolve_device(requested: &str) -> Result<Device, EngineError> {
    let requested = requested.trim().to_ascii_lowercase();
    let ordinal = match requested.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "auto" => {
            return Ok(if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            });
        }
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                EngineError::Load(format!(
                    "unknown device '{requested}': expected cpu, cuda, cuda:N or auto"
                ))
            })?,
    };
    if !tch::Cuda::is_available() {
        return Err(EngineError::Load(format!(
            "device '{requested}' requested but libtorch sees no CUDA device{}; use device = \"cpu\" or \"auto\"",
            if cfg!(feature = "cuda") {
                ""
            } else {
                " (inference-backend-tch was built without feature `cuda`)"
            }
        )));
    }
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if ordinal >= count {
        return Err(EngineError::Load(format!(
            "device '{requested}' requested but libtorch sees only {count} CUDA device(s)"
        )));
    }
    Ok(Device::Cuda(ordinal))
}

/// The device as configuration and the API spell it: `cpu` or `cuda:N`.
fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(ordinal) => format!("cuda:{ordinal}"),
        Device::Cpu => "cpu".into(),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

fn load_module(path: &Path, device: Device) -> Result<CModule, EngineError> {
    if !path.is_file() {
        return Err(EngineError::Load(format!(
            "TorchScript file {} does not exist",
            path.display()
        )));
    }
    let load_error = |err: TchError| {
        EngineError::Load(format!(
            "cannot load TorchScript file {}: {}",
            path.display(),
            first_line(&err.to_string())
        ))
    };
    let mut module = CModule::load_on_device(path, device).map_err(load_error)?;
    module.f_set_eval().map_err(load_error)?;
    Ok(module)
}

/// libtorch messages carry a C++ backtrace after the first line; a load error is one line.
fn first_line(message: &str) -> &str {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(message)
}

fn backend_error(err: TchError) -> EngineError {
    EngineError::Backend(err.to_string().trim_end().to_string())
}

/// One worker's handle on the shared module.
struct TchBackend {
    module: Arc<CModule>,
    device: Device,
    outputs: Arc<Vec<TensorSpec>>,
}

impl Backend for TchBackend {
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
        tch::no_grad(|| {
            let inputs = batch
                .tensors
                .iter()
                .map(|tensor| to_tch(tensor, self.device).map(IValue::Tensor))
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend_error)?;
            let returned = self.module.forward_is(&inputs).map_err(backend_error)?;
            let tensors = output_tensors(returned)?;
            if tensors.len() != self.outputs.len() {
                return Err(EngineError::Backend(format!(
                    "the model returned {} tensor(s) but its manifest declares {} output(s)",
                    tensors.len(),
                    self.outputs.len()
                )));
            }
            let tensors = self
                .outputs
                .iter()
                .zip(&tensors)
                .map(|(spec, tensor)| from_tch(tensor, spec, batch.size))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Batch {
                size: batch.size,
                tensors,
            })
        })
    }
}

/// The tensors of `forward`'s return value, in order: one tensor, or a tuple or list of them.
fn output_tensors(returned: IValue) -> Result<Vec<tch::Tensor>, EngineError> {
    match returned {
        IValue::Tensor(tensor) => Ok(vec![tensor]),
        IValue::TensorList(tensors) => Ok(tensors),
        IValue::Tuple(values) | IValue::GenericList(values) => values
            .into_iter()
            .map(|value| match value {
                IValue::Tensor(tensor) => Ok(tensor),
                other => Err(unexpected_output(&other)),
            })
            .collect(),
        other => Err(unexpected_output(&other)),
    }
}

fn unexpected_output(value: &IValue) -> EngineError {
    let kind = format!("{value:?}");
    let kind = kind.split(['(', ' ']).next().unwrap_or("value");
    EngineError::Backend(format!(
        "the model's forward returned a {kind}, expected a tensor or a tuple of tensors"
    ))
}

fn to_tch(tensor: &inference_core::Tensor, device: Device) -> Result<tch::Tensor, TchError> {
    let (Some(bytes), Some(kind)) = (tensor.raw_bytes(), kind_of(tensor.dtype())) else {
        return Err(TchError::Kind(format!(
            "{} tensors are not supported by the tch backend",
            tensor.dtype()
        )));
    };
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    // Core guarantees the buffer holds exactly shape × element size bytes.
    let shaped = tch::Tensor::f_from_data_size(bytes, &shape, kind)?;
    if device == Device::Cpu {
        Ok(shaped)
    } else {
        shaped.f_to_device(device)
    }
}

/// Copies a model output back to a plain tensor, checking it against its manifest spec:
/// a leading batch dimension of `rows`, then the declared per-sample shape and type.
fn from_tch(
    tensor: &tch::Tensor,
    spec: &TensorSpec,
    rows: usize,
) -> Result<inference_core::Tensor, EngineError> {
    let shape = tensor
        .size()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| EngineError::Backend("the model returned a negative dimension".into()))?;
    let mismatch = |reason: String| {
        EngineError::Backend(format!(
            "output '{}' does not match the manifest: {reason}",
            spec.name
        ))
    };
    let dtype = dtype_of(tensor.kind())
        .ok_or_else(|| mismatch(format!("unsupported element type {:?}", tensor.kind())))?;
    match shape.split_first() {
        Some((&leading, row_shape)) if leading == rows => {
            spec.check_parts(dtype, row_shape).map_err(mismatch)?;
        }
        _ => {
            return Err(mismatch(format!(
                "shape {shape:?} has no leading batch dimension of {rows}"
            )));
        }
    }
    let flat = tensor
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(backend_error)?;
    let numel: usize = shape.iter().product();
    let mut raw = vec![0u8; numel * dtype.size().unwrap_or(1)];
    flat.f_copy_data_u8(&mut raw, numel)
        .map_err(backend_error)?;
    inference_core::Tensor::from_bytes(dtype, shape, bytes::Bytes::from(raw))
        .map_err(|e| EngineError::Backend(e.to_string()))
}

/// The libtorch element kind of each core element type (none for `BYTES`).
const KINDS: [(DType, Kind); 10] = [
    (DType::Bool, Kind::Bool),
    (DType::U8, Kind::Uint8),
    (DType::I8, Kind::Int8),
    (DType::I16, Kind::Int16),
    (DType::I32, Kind::Int),
    (DType::I64, Kind::Int64),
    (DType::F16, Kind::Half),
    (DType::BF16, Kind::BFloat16),
    (DType::F32, Kind::Float),
    (DType::F64, Kind::Double),
];

fn kind_of(dtype: DType) -> Option<Kind> {
    KINDS.iter().find(|(d, _)| *d == dtype).map(|&(_, k)| k)
}

fn dtype_of(kind: Kind) -> Option<DType> {
    KINDS.iter().find(|(_, k)| *k == kind).map(|&(d, _)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_core::{ErrorKind, InferenceEngine, Sample, Tensor, bf16, f16};
    use std::path::PathBuf;

    fn example_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/example")
    }

    fn options(device: &str) -> EngineOptions {
        EngineOptions {
            device: device.into(),
            ..EngineOptions::default()
        }
    }

    #[test]
    fn a_missing_model_file_is_a_load_error_naming_the_file() {
        let mut manifest = ModelManifest::load(&example_dir()).unwrap();
        manifest
            .files
            .insert(BACKEND_NAME.into(), "no-such-model.pt".into());
        let err = load(&manifest, &options("cpu")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Load);
        assert!(err.to_string().contains("no-such-model.pt"), "{err}");
    }

    #[test]
    fn a_manifest_without_a_tch_file_is_a_load_error() {
        let mut manifest = ModelManifest::load(&example_dir()).unwrap();
        manifest.files.remove(BACKEND_NAME);
        let err = load(&manifest, &options("cpu")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Load);
        assert!(err.to_string().contains("'tch'"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_torchscript_is_a_one_line_load_error() {
        let mut manifest = ModelManifest::load(&example_dir()).unwrap();
        manifest
            .files
            .insert(BACKEND_NAME.into(), "model.toml".into());
        let err = load(&manifest, &options("cpu")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Load);
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn cuda_is_used_when_present_and_a_clear_error_otherwise() {
        let manifest = ModelManifest::load(&example_dir()).unwrap();
        for device in ["cuda", "cuda:0"] {
            match load(&manifest, &options(device)) {
                Ok(engine) => {
                    assert!(tch::Cuda::is_available());
                    assert_eq!(engine.info().device, "cuda:0");
                }
                Err(err) => {
                    assert!(!tch::Cuda::is_available(), "{err}");
                    assert_eq!(err.kind(), ErrorKind::Load);
                    let message = err.to_string();
                    assert!(message.contains("no CUDA device"), "{message}");
                    assert!(!message.contains('\n'), "{message}");
                }
            }
        }
    }

    #[test]
    fn auto_resolves_to_what_libtorch_sees_and_bad_names_are_rejected() {
        let expected = if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        assert_eq!(resolve_device("auto").unwrap(), expected);
        assert_eq!(resolve_device(" CPU ").unwrap(), Device::Cpu);
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            let err = resolve_device(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Load, "{bad}");
        }
        let beyond = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        assert!(resolve_device(&format!("cuda:{beyond}")).is_err());
    }

    #[tokio::test]
    async fn outputs_keep_batch_order_and_declared_shape() {
        let manifest = ModelManifest::load(&example_dir()).unwrap();
        let engine = load(&manifest, &options("cpu")).unwrap();
        assert_eq!(engine.info().backend, "tch");
        assert_eq!(engine.info().device, "cpu");
        let samples: Vec<Sample> = [3.0f32, -1.0]
            .iter()
            .map(|&x| Sample::new(vec![Tensor::from_f32(vec![1], vec![x]).unwrap()]))
            .collect();
        let both = engine.infer(Batch::stack(&samples).unwrap()).await.unwrap();
        assert_eq!(both.tensors[0].shape(), &[2, 3]);
        let rows = both.unstack().unwrap();
        for (sample, row) in samples.iter().zip(&rows) {
            let alone = engine
                .infer(Batch::stack(std::slice::from_ref(sample)).unwrap())
                .await
                .unwrap();
            let alone = alone.tensors[0].as_f32().unwrap();
            let batched = row.tensors[0].as_f32().unwrap();
            // Kernels may pick another summation order for another batch size: allow an ulp.
            for (a, b) in alone.iter().zip(batched) {
                assert!((a - b).abs() <= 1e-6, "{alone:?} vs {batched:?}");
            }
        }
        assert_ne!(rows[0], rows[1]);
    }

    #[test]
    fn a_shape_that_differs_from_the_manifest_is_a_backend_error() {
        let spec = TensorSpec {
            name: "output".into(),
            dtype: DType::F32,
            shape: vec![3],
        };
        let wrong_width = tch::Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let err = from_tch(&wrong_width, &spec, 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
        let wrong_rows = tch::Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
        assert!(from_tch(&wrong_rows, &spec, 2).is_err());
        let wrong_type = tch::Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu));
        assert!(from_tch(&wrong_type, &spec, 2).is_err());
        let right = tch::Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let converted = from_tch(&right, &spec, 2).unwrap();
        assert_eq!(converted.shape(), &[2, 3]);
        assert_eq!(converted.as_f32().unwrap(), &[1.0; 6]);
    }

    #[test]
    fn every_core_dtype_round_trips_through_tch() {
        let cases = [
            Tensor::from_vec(vec![2, 1], vec![1.5f32, -2.0]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![1.5f64, -2.0]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![7i32, -8]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![7i64, -8]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![0u8, 255]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![-7i8, 8]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![-7i16, 8]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![f16::from_f32(1.5), f16::from_f32(-2.0)]).unwrap(),
            Tensor::from_vec(vec![2, 1], vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]).unwrap(),
            Tensor::from_bools(vec![2, 1], &[true, false]).unwrap(),
        ];
        for tensor in cases {
            let spec = TensorSpec {
                name: "x".into(),
                dtype: tensor.dtype(),
                shape: vec![1],
            };
            let back = from_tch(&to_tch(&tensor, Device::Cpu).unwrap(), &spec, 2).unwrap();
            assert_eq!(back, tensor);
        }
    }
}
