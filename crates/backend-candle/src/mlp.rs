//! `architecture = "mlp"`: a stack of linear layers, each followed by an activation.
//!
//! Each named layer is a linear layer whose `{name}.weight` (`[out, in]`) and `{name}.bias`
//! (`[out]`) tensors are read from the safetensors file, followed by its activation.

use candle_core::{DType as CandleDType, Device, Tensor as CandleTensor};
use inference_core::{DType, ModelManifest, TensorSpec};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The `[candle]` table of an MLP: `layers[i]` is followed by `activations[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MlpSettings {
    pub(crate) layers: Vec<String>,
    pub(crate) activations: Vec<Activation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Activation {
    Relu,
    Sigmoid,
    Tanh,
    Identity,
}

/// A stack of linear layers, each followed by an activation, on one device.
#[derive(Debug)]
pub(crate) struct Mlp {
    layers: Vec<(Dense, Activation)>,
}

/// A linear layer with its weight stored transposed, `[in, out]` and contiguous:
/// `candle_nn::Linear` transposes `[out, in]` on every call and multiplies by the strided
/// view, which on a small model costs more than the product itself.
#[derive(Debug)]
struct Dense {
    weight_t: CandleTensor,
    bias: CandleTensor,
}

impl Dense {
    fn forward(&self, x: &CandleTensor) -> candle_core::Result<CandleTensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

impl Mlp {
    pub(crate) fn load(
        settings: &MlpSettings,
        manifest: &ModelManifest,
        weights: &Path,
        device: &Device,
    ) -> Result<Self, String> {
        let MlpSettings {
            layers,
            activations,
        } = settings;
        if layers.is_empty() || layers.len() != activations.len() {
            return Err(format!(
                "the architecture has {} layer(s) and {} activation(s); it needs one \
                 activation per layer and at least one layer",
                layers.len(),
                activations.len()
            ));
        }
        let input = single_f32_spec(&manifest.inputs, "input")?;
        let output = single_f32_spec(&manifest.outputs, "output")?;
        let mut tensors = crate::read_safetensors(weights, device)?;

        let mut width = input.len;
        let mut stack = Vec::with_capacity(layers.len());
        for (name, &activation) in layers.iter().zip(activations) {
            let (linear, out) = take_linear(&mut tensors, name, width, weights)?;
            stack.push((linear, activation));
            width = out;
        }
        if width != output.len {
            return Err(format!(
                "the last layer has {width} outputs but output '{}' has {} elements per row",
                output.name, output.len
            ));
        }
        Ok(Self { layers: stack })
    }

    /// `input` is `[rows, ...]`; it is flattened to `[rows, in]` first.
    pub(crate) fn forward(&self, input: &CandleTensor) -> candle_core::Result<CandleTensor> {
        let mut x = match input.rank() {
            2 => input.clone(),
            _ => input.flatten_from(1)?,
        };
        for (dense, activation) in &self.layers {
            x = dense.forward(&x)?;
            x = match activation {
                Activation::Relu => x.relu()?,
                Activation::Sigmoid => candle_nn::ops::sigmoid(&x)?,
                Activation::Tanh => x.tanh()?,
                Activation::Identity => x,
            };
        }
        Ok(x)
    }
}

/// The one input or output of an MLP: f32 with a fixed shape.
struct FlatSpec {
    name: String,
    len: usize,
}

fn single_f32_spec(specs: &[TensorSpec], role: &str) -> Result<FlatSpec, String> {
    let [spec] = specs else {
        return Err(format!(
            "an MLP has exactly one {role}, the manifest lists {}",
            specs.len()
        ));
    };
    if spec.dtype != DType::F32 {
        return Err(format!(
            "{role} '{}' is {}; the candle MLP computes in f32",
            spec.name, spec.dtype
        ));
    }
    let len = spec.fixed_element_count().ok_or_else(|| {
        format!(
            "{role} '{}' has shape {:?}; an MLP needs fixed dimensions",
            spec.name, spec.shape
        )
    })?;
    Ok(FlatSpec {
        name: spec.name.clone(),
        len,
    })
}

/// Takes layer `name`'s weight `[out, in]` and bias `[out]`, checking `in` against the width
/// of the previous layer; returns the layer and its output width.
fn take_linear(
    tensors: &mut HashMap<String, CandleTensor>,
    name: &str,
    in_width: usize,
    path: &Path,
) -> Result<(Dense, usize), String> {
    let mut take = |suffix: &str| {
        let key = format!("{name}.{suffix}");
        let tensor = tensors
            .remove(&key)
            .ok_or_else(|| format!("{} has no tensor '{key}'", path.display()))?;
        let dims = tensor.dims().to_vec();
        // Weights stored in another float type are computed in f32 like the inputs.
        let tensor = tensor
            .to_dtype(CandleDType::F32)
            .map_err(|e| format!("tensor '{key}' cannot be converted to f32: {e}"))?;
        Ok::<_, String>((tensor, dims, key))
    };
    let (weight, weight_dims, weight_key) = take("weight")?;
    let (bias, bias_dims, bias_key) = take("bias")?;
    let &[out, inputs] = weight_dims.as_slice() else {
        return Err(format!(
            "'{weight_key}' has shape {weight_dims:?}, expected [out, in]"
        ));
    };
    if inputs != in_width {
        return Err(format!(
            "'{weight_key}' has shape {weight_dims:?}: it takes {inputs} inputs but the \
             previous layer gives {in_width}"
        ));
    }
    if bias_dims != [out] {
        return Err(format!(
            "'{bias_key}' has shape {bias_dims:?}, expected [{out}] to match '{weight_key}'"
        ));
    }
    let weight_t = weight
        .t()
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("tensor '{weight_key}' cannot be transposed: {e}"))?;
    Ok((Dense { weight_t, bias }, out))
}
