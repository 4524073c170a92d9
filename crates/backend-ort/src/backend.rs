//! One ONNX Runtime session and the conversion between core tensors and ORT values.

use crate::config::{DeviceRequest, SessionConfig};
use crate::runtime::one_line;
use inference_core::{Backend, Batch, DType, EngineError, Tensor, TensorSpec, with_element_type};
use ort::session::{Session, SessionInputValue, builder::SessionBuilder};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::path::Path;

/// A worker's own session. `Session::run` takes `&mut self` and the worker thread owns
/// this value, so no lock guards the session.
#[derive(Debug)]
pub(crate) struct OrtBackend {
    session: Session,
    pub(crate) inputs: Vec<TensorSpec>,
    pub(crate) outputs: Vec<TensorSpec>,
}

/// A built session and the device it resolved to (never [`DeviceRequest::Auto`]).
pub(crate) struct Built {
    pub(crate) backend: OrtBackend,
    pub(crate) device: DeviceRequest,
}

impl OrtBackend {
    /// Builds a session for `model` on the requested device and checks the graph's inputs
    /// and outputs against the manifest; empty `inputs` (`outputs`) are read from the graph.
    pub(crate) fn build(
        environment: &ort::environment::Environment,
        model: &Path,
        config: &SessionConfig,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
    ) -> Result<Built, EngineError> {
        if !model.is_file() {
            return Err(EngineError::Load(format!(
                "ONNX model file {} does not exist",
                model.display()
            )));
        }
        let (session, device) = match config.device {
            DeviceRequest::Cpu => (
                commit(environment, model, config, None)?,
                DeviceRequest::Cpu,
            ),
            DeviceRequest::Cuda(ordinal) => (
                commit(environment, model, config, Some(ordinal))?,
                DeviceRequest::Cuda(ordinal),
            ),
            DeviceRequest::Auto if cuda_provider_available() => {
                match commit(environment, model, config, Some(0)) {
                    Ok(session) => (session, DeviceRequest::Cuda(0)),
                    Err(err) => {
                        tracing::warn!(%err, "CUDA unusable for device \"auto\"; using the CPU");
                        (
                            commit(environment, model, config, None)?,
                            DeviceRequest::Cpu,
                        )
                    }
                }
            }
            DeviceRequest::Auto => (
                commit(environment, model, config, None)?,
                DeviceRequest::Cpu,
            ),
        };
        // A manifest without inputs (outputs) takes them from the graph, as Triton
        // completes a model configuration; one that lists them must agree with the graph.
        let inputs = if inputs.is_empty() {
            specs_of("input", session.inputs(), model)?
        } else {
            check_outlets("input", session.inputs(), inputs, model)?;
            inputs.to_vec()
        };
        let outputs = if outputs.is_empty() {
            specs_of("output", session.outputs(), model)?
        } else {
            check_outlets("output", session.outputs(), outputs, model)?;
            outputs.to_vec()
        };
        Ok(Built {
            backend: OrtBackend {
                session,
                inputs,
                outputs,
            },
            device,
        })
    }
}

/// Whether this build and the loaded library offer the CUDA execution provider.
fn cuda_provider_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
    #[cfg(not(feature = "cuda"))]
    false
}

fn commit(
    environment: &ort::environment::Environment,
    model: &Path,
    config: &SessionConfig,
    cuda_ordinal: Option<i32>,
) -> Result<Session, EngineError> {
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        EngineError::Load(format!(
            "{what} for {}: {}",
            model.display(),
            one_line(&err.to_string())
        ))
    };
    let mut builder = Session::builder(environment)
        .map_err(|e| fail("cannot create an ONNX Runtime session builder", &e))?
        .with_optimization_level(config.optimization)
        .map_err(|e| fail("cannot set the graph optimization level", &e))?;
    if let Some(threads) = config.intra_op_threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| fail("cannot set intra-op threads", &e))?;
    }
    if let Some(ordinal) = cuda_ordinal {
        builder = with_cuda(builder, ordinal).map_err(|e| fail("CUDA is unavailable", &e))?;
    }
    builder
        .commit_from_file(model)
        .map_err(|e| fail("ONNX Runtime cannot load the model", &e))
}

#[cfg(feature = "cuda")]
fn with_cuda(builder: SessionBuilder, ordinal: i32) -> Result<SessionBuilder, String> {
    use ort::ep::ExecutionProvider;
    if !ort::ep::CUDA::is_available().unwrap_or(false) {
        return Err("the loaded ONNX Runtime has no CUDA execution provider: point ORT_DYLIB_PATH at the libonnxruntime.so of an onnxruntime-gpu install".into());
    }
    builder
        .with_execution_providers([ort::ep::CUDA::default()
            .with_device_id(ordinal)
            .build()
            .error_on_failure()])
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(_builder: SessionBuilder, _ordinal: i32) -> Result<SessionBuilder, String> {
    Err("inference-backend-ort was built without its `cuda` feature".into())
}

/// Checks that the graph has every input (output) the manifest names, with its element
/// type and a compatible shape, so a wrong manifest fails at load rather than per request.
fn check_outlets(
    role: &str,
    graph: &[ort::value::Outlet],
    specs: &[TensorSpec],
    model: &Path,
) -> Result<(), EngineError> {
    let mismatch = |message: String| {
        EngineError::Load(format!(
            "{} does not match its manifest: {message}",
            model.display()
        ))
    };
    if role == "input" && graph.len() != specs.len() {
        let names: Vec<&str> = graph.iter().map(|o| o.name()).collect();
        return Err(mismatch(format!(
            "the graph takes {} input(s) {names:?}, the manifest declares {}",
            graph.len(),
            specs.len()
        )));
    }
    for spec in specs {
        let outlet = graph
            .iter()
            .find(|o| o.name() == spec.name)
            .ok_or_else(|| {
                let names: Vec<&str> = graph.iter().map(|o| o.name()).collect();
                mismatch(format!(
                    "the graph has no {role} named '{}' (it has {names:?})",
                    spec.name
                ))
            })?;
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            return Err(mismatch(format!("{role} '{}' is not a tensor", spec.name)));
        };
        if element_type(spec.dtype) != *ty {
            return Err(mismatch(format!(
                "{role} '{}' is {ty} in the graph but {} in the manifest",
                spec.name, spec.dtype
            )));
        }
        // The graph's leading dimension is the batch; the rest must agree where both are fixed.
        let fits = shape.len() == spec.shape.len() + 1
            && shape[1..]
                .iter()
                .zip(&spec.shape)
                .all(|(&graph_dim, &spec_dim)| {
                    graph_dim < 0 || spec_dim < 0 || graph_dim == spec_dim
                });
        if !fits {
            return Err(mismatch(format!(
                "{role} '{}' has shape {:?} in the graph, the manifest declares [batch] + {:?}",
                spec.name,
                &shape[..],
                spec.shape
            )));
        }
    }
    Ok(())
}

fn element_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::Bool => TensorElementType::Bool,
        DType::U8 => TensorElementType::Uint8,
        DType::I8 => TensorElementType::Int8,
        DType::I16 => TensorElementType::Int16,
        DType::I32 => TensorElementType::Int32,
        DType::I64 => TensorElementType::Int64,
        DType::F16 => TensorElementType::Float16,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::F32 => TensorElementType::Float32,
        DType::F64 => TensorElementType::Float64,
        DType::Bytes => TensorElementType::String,
    }
}

/// The core element type of an ONNX tensor element type, when core has one.
pub(crate) fn core_dtype(ty: TensorElementType) -> Option<DType> {
    DType::ALL.iter().copied().find(|&d| element_type(d) == ty)
}

/// The graph's inputs or outputs as specs: the leading dimension is the batch, and the rest
/// is per sample (`-1` where the graph leaves a dimension free).
pub(crate) fn specs_of(
    role: &str,
    graph: &[ort::value::Outlet],
    model: &Path,
) -> Result<Vec<TensorSpec>, EngineError> {
    graph
        .iter()
        .map(|outlet| {
            let unusable = |why: String| {
                EngineError::Load(format!(
                    "{}: {role} '{}' {why}; describe it in model.toml",
                    model.display(),
                    outlet.name()
                ))
            };
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(unusable("is not a tensor".into()));
            };
            let dtype =
                core_dtype(*ty).ok_or_else(|| unusable(format!("has element type {ty}")))?;
            let Some((_, per_sample)) = shape.split_first() else {
                return Err(unusable("has no batch dimension".into()));
            };
            Ok(TensorSpec {
                name: outlet.name().to_string(),
                dtype,
                shape: per_sample
                    .iter()
                    .map(|&d| if d < 0 { -1 } else { d })
                    .collect(),
            })
        })
        .collect()
}

impl Backend for OrtBackend {
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
        let inputs = self
            .inputs
            .iter()
            .zip(&batch.tensors)
            .map(|(spec, tensor)| Ok((Cow::Borrowed(spec.name.as_str()), to_ort(tensor)?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| EngineError::Backend(one_line(&e.to_string())))?;
        let tensors = self
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    EngineError::Backend(format!("the model returned no output '{}'", spec.name))
                })?;
                from_ort(value, spec, batch.size)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            size: batch.size,
            tensors,
        })
    }
}

/// Borrows a core tensor as an ORT tensor without copying its data (booleans are copied
/// once: core stores them as bytes, ORT wants `bool`).
fn to_ort(tensor: &Tensor) -> Result<SessionInputValue<'_>, EngineError> {
    let shape = tensor.shape().to_vec();
    let fail = |e: &dyn std::fmt::Display| {
        EngineError::Backend(format!("cannot pass a tensor to ONNX Runtime: {e}"))
    };
    if let Some(bools) = tensor.bools() {
        let values: Vec<bool> = bools.collect();
        return ort::value::Tensor::from_array((shape, values))
            .map(Into::into)
            .map_err(|e| fail(&e));
    }
    with_element_type!(tensor.dtype(), T => {
        let values = tensor
            .as_slice::<T>()
            .ok_or_else(|| fail(&"the tensor's buffer does not match its type"))?;
        TensorRef::from_array_view((shape, values))
            .map(Into::into)
            .map_err(|e| fail(&e))
    }, bytes => Err(fail(&"BYTES inputs are not supported by the ort backend")))
}

/// Copies an ORT output into a core tensor, checking its type and its shape
/// (`[batch] + spec.shape`, dynamic dimensions free).
fn from_ort(value: &DynValue, spec: &TensorSpec, rows: usize) -> Result<Tensor, EngineError> {
    let wrong = |what: String| EngineError::Backend(format!("output '{}' {what}", spec.name));
    let extract_err = |e: ort::Error| wrong(format!("cannot be read: {e}"));
    let dims = |shape: &ort::value::Shape| -> Result<Vec<usize>, EngineError> {
        shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| wrong(format!("has a negative dimension in {:?}", &shape[..])))
    };
    let tensor = if spec.dtype == DType::Bool {
        let (shape, v) = value.try_extract_tensor::<bool>().map_err(extract_err)?;
        Tensor::from_bools(dims(shape)?, v)
    } else {
        with_element_type!(spec.dtype, T => {
            let (shape, v) = value.try_extract_tensor::<T>().map_err(extract_err)?;
            Tensor::from_vec(dims(shape)?, v.to_vec())
        }, bytes => {
            let (shape, v) = value.try_extract_strings().map_err(extract_err)?;
            let items = v.into_iter().map(bytes::Bytes::from).collect();
            Tensor::from_strings(dims(shape)?, items)
        })
    }
    .map_err(|e| wrong(e.to_string()))?;
    let fits = tensor.shape().first() == Some(&rows)
        && spec.check_parts(spec.dtype, &tensor.shape()[1..]).is_ok();
    if !fits {
        return Err(wrong(format!(
            "has shape {:?}, expected [{rows}] + {:?}",
            tensor.shape(),
            spec.shape
        )));
    }
    Ok(tensor)
}
