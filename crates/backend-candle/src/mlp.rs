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

/// Multiply-adds per row up to which an MLP on the CPU runs on plain slices
/// ([`Mlp::forward_on_host`]) rather than through candle's tensors. Every candle op
/// allocates its output, shape and strides, and its matmul reads the thread count from the
/// environment, which on a small model costs more than the arithmetic. Larger models go to
/// candle's blocked, multi-threaded matmul. The choice is the model's, never the pass's: a
/// row's outputs must not depend on the rows it was batched with, and the two ways sum in a
/// different order.
const HOST_MAX_MACS_PER_ROW: usize = 4096;

/// A stack of linear layers, each followed by an activation, on one device.
#[derive(Debug)]
pub(crate) struct Mlp {
    layers: Vec<(Dense, Activation)>,
    /// Width of the input of the first layer.
    input_width: usize,
    /// Multiply-adds of one row through every layer.
    macs_per_row: usize,
    /// Whether the weights live in host memory, where slices can be read directly.
    on_cpu: bool,
}

/// A linear layer with its weight stored transposed, `[in, out]` and contiguous:
/// `candle_nn::Linear` transposes `[out, in]` on every call and multiplies by the strided
/// view, which on a small model costs more than the product itself.
#[derive(Debug)]
struct Dense {
    weight_t: CandleTensor,
    bias: CandleTensor,
    /// The same values as plain vectors, for a model that runs on slices (else empty).
    host_weight_t: Vec<f32>,
    host_bias: Vec<f32>,
}

impl Dense {
    /// From `weight` `[out, in]` and `bias` `[out]`, without host copies.
    fn new(weight: &CandleTensor, bias: CandleTensor) -> Result<Self, String> {
        let weight_t = weight
            .t()
            .and_then(|t| t.contiguous())
            .map_err(|e| format!("a weight cannot be transposed: {e}"))?;
        Ok(Self {
            weight_t,
            bias,
            host_weight_t: Vec::new(),
            host_bias: Vec::new(),
        })
    }

    /// Copies the weights into plain vectors, for a model that runs on slices.
    fn keep_host_values(&mut self) -> Result<(), String> {
        let values = |tensor: &CandleTensor| {
            tensor
                .flatten_all()
                .and_then(|flat| flat.to_vec1::<f32>())
                .map_err(|e| format!("a weight cannot be read: {e}"))
        };
        self.host_weight_t = values(&self.weight_t)?;
        self.host_bias = values(&self.bias)?;
        Ok(())
    }

    fn forward(&self, x: &CandleTensor) -> candle_core::Result<CandleTensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }

    /// `x` is `[in, rows]`, one column per row; returns `[out, rows]` with `activation`
    /// applied. Each row's products are summed in input order, the bias added last (as
    /// candle does), whatever the other rows: the inner loop runs across rows, where it
    /// vectorizes, and never reorders a row's sum.
    fn forward_on_host(&self, x: &[f32], rows: usize, activation: Activation) -> Vec<f32> {
        let out_width = self.host_bias.len();
        let mut y = vec![0.0f32; rows * out_width];
        for (column, weights) in x
            .chunks_exact(rows)
            .zip(self.host_weight_t.chunks_exact(out_width))
        {
            for (sums, &weight) in y.chunks_exact_mut(rows).zip(weights) {
                for (sum, &value) in sums.iter_mut().zip(column) {
                    *sum += value * weight;
                }
            }
        }
        for (sums, &bias) in y.chunks_exact_mut(rows).zip(&self.host_bias) {
            for sum in sums {
                *sum = activation.apply(*sum + bias);
            }
        }
        y
    }
}

/// `values` is `[rows, columns]` row-major; returns it as `[columns, rows]`.
fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    let mut transposed = vec![0.0f32; values.len()];
    for (r, row) in values.chunks_exact(columns).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            transposed[c * rows + r] = value;
        }
    }
    transposed
}

impl Activation {
    /// The same formulas as candle's ops.
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => (1.0 + (-x).exp()).recip(),
            Activation::Tanh => x.tanh(),
            Activation::Identity => x,
        }
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

        let on_cpu = device.is_cpu();
        let mut width = input.len;
        let mut macs_per_row = 0usize;
        let mut stack = Vec::with_capacity(layers.len());
        for (name, &activation) in layers.iter().zip(activations) {
            let (linear, out) = take_linear(&mut tensors, name, width, weights)?;
            stack.push((linear, activation));
            macs_per_row = macs_per_row.saturating_add(width.saturating_mul(out));
            width = out;
        }
        if width != output.len {
            return Err(format!(
                "the last layer has {width} outputs but output '{}' has {} elements per row",
                output.name, output.len
            ));
        }
        let mut mlp = Self {
            layers: stack,
            input_width: input.len,
            macs_per_row,
            on_cpu,
        };
        mlp.keep_host_values_if_used()?;
        Ok(mlp)
    }

    /// Host copies of the weights only for a model that runs on slices: a larger one would
    /// hold its weights twice for nothing.
    fn keep_host_values_if_used(&mut self) -> Result<(), String> {
        if self.runs_on_host() {
            for (dense, _) in &mut self.layers {
                dense.keep_host_values()?;
            }
        }
        Ok(())
    }

    /// Whether this model's passes run on plain slices ([`Self::forward_on_host`]).
    pub(crate) fn runs_on_host(&self) -> bool {
        self.on_cpu && self.macs_per_row <= HOST_MAX_MACS_PER_ROW
    }

    /// The pass on plain slices: `input` holds whole rows of the input width, row-major;
    /// returns `[rows, out]` as its shape and values. Only for weights on the CPU.
    pub(crate) fn forward_on_host(&self, input: &[f32]) -> Result<([usize; 2], Vec<f32>), String> {
        if !self.on_cpu {
            return Err("the weights are not in host memory".into());
        }
        if self.input_width == 0 || !input.len().is_multiple_of(self.input_width) {
            return Err(format!(
                "{} input values are not whole rows of {}",
                input.len(),
                self.input_width
            ));
        }
        let rows = input.len() / self.input_width;
        if rows == 0 {
            return Err("the pass has no rows".into());
        }
        let mut x = transpose(input, rows, self.input_width);
        for (dense, activation) in &self.layers {
            x = dense.forward_on_host(&x, rows, *activation);
        }
        let out_width = x.len() / rows;
        Ok(([rows, out_width], transpose(&x, out_width, rows)))
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
    let dense = Dense::new(&weight, bias).map_err(|e| format!("layer '{name}': {e}"))?;
    Ok((dense, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An MLP of the given widths with weights drawn from `values` (cycled).
    fn mlp(widths: &[usize], activations: &[Activation], values: &[f32]) -> Mlp {
        let mut next = values.iter().copied().cycle();
        let layers = widths
            .windows(2)
            .zip(activations)
            .map(|(pair, &activation)| {
                let (inputs, out) = (pair[0], pair[1]);
                let weight: Vec<f32> = next.by_ref().take(out * inputs).collect();
                let bias: Vec<f32> = next.by_ref().take(out).collect();
                let weight = CandleTensor::from_vec(weight, (out, inputs), &Device::Cpu).unwrap();
                let bias = CandleTensor::from_vec(bias, out, &Device::Cpu).unwrap();
                (Dense::new(&weight, bias).unwrap(), activation)
            })
            .collect();
        let mut model = Mlp {
            layers,
            input_width: widths[0],
            macs_per_row: widths.windows(2).map(|pair| pair[0] * pair[1]).sum(),
            on_cpu: true,
        };
        model.keep_host_values_if_used().unwrap();
        model
    }

    /// The pass with every input, weight and bias by its absolute value and no activation
    /// (each is at most 1-Lipschitz): what each output's rounding error scales with.
    fn magnitudes(model: &Mlp, input: &[f32]) -> Vec<f64> {
        let mut x: Vec<f64> = input.iter().map(|v| f64::from(v.abs())).collect();
        for (dense, _) in &model.layers {
            let out = dense.host_bias.len();
            let inputs = dense.host_weight_t.len() / out;
            x = x
                .chunks_exact(inputs)
                .flat_map(|row| {
                    (0..out).map(move |j| {
                        let sum: f64 = row
                            .iter()
                            .enumerate()
                            .map(|(k, v)| v * f64::from(dense.host_weight_t[k * out + j].abs()))
                            .sum();
                        sum + f64::from(dense.host_bias[j].abs())
                    })
                })
                .collect();
        }
        x
    }

    fn activation() -> impl Strategy<Value = Activation> {
        prop_oneof![
            Just(Activation::Relu),
            Just(Activation::Sigmoid),
            Just(Activation::Tanh),
            Just(Activation::Identity),
        ]
    }

    proptest! {
        /// The pass on slices computes what candle's ops compute, to float rounding.
        #[test]
        fn host_pass_matches_candle(
            widths in prop::collection::vec(1usize..24, 2..5),
            activations in prop::collection::vec(activation(), 4),
            weights in prop::collection::vec(-2.0f32..2.0, 1..64),
            rows in 1usize..9,
            inputs in prop::collection::vec(-5.0f32..5.0, 1..32),
        ) {
            let model = mlp(&widths, &activations, &weights);
            let input: Vec<f32> = inputs.iter().copied().cycle().take(rows * widths[0]).collect();
            let (shape, host) = model.forward_on_host(&input).unwrap();
            let tensor = CandleTensor::from_slice(&input, (rows, widths[0]), &Device::Cpu).unwrap();
            let reference = model.forward(&tensor).unwrap();
            prop_assert_eq!(shape.to_vec(), reference.dims().to_vec());
            let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Summed in another order, each output may differ by a few float epsilons of the
            // magnitudes that went into it, which can be far larger than the output itself.
            let bounds = magnitudes(&model, &input);
            for ((got, want), bound) in host.iter().zip(&reference).zip(&bounds) {
                let tolerance = 1e-5 * (1.0 + bound);
                prop_assert!(f64::from((got - want).abs()) <= tolerance, "{got} against {want} (±{tolerance})");
            }
        }
    }

    #[test]
    fn only_small_passes_on_the_cpu_run_on_slices() {
        let mut model = mlp(
            &[1, 16, 3],
            &[Activation::Relu, Activation::Sigmoid],
            &[0.5],
        );
        assert_eq!(model.macs_per_row, 64);
        assert!(model.runs_on_host());
        let wide = mlp(
            &[64, 64, 2],
            &[Activation::Relu, Activation::Identity],
            &[0.5],
        );
        assert!(wide.macs_per_row > HOST_MAX_MACS_PER_ROW);
        assert!(!wide.runs_on_host());
        assert!(
            wide.layers
                .iter()
                .all(|(dense, _)| dense.host_weight_t.is_empty())
        );
        model.on_cpu = false;
        assert!(!model.runs_on_host());
        assert!(model.forward_on_host(&[1.0]).is_err());
    }

    proptest! {
        /// A row's outputs are the same, bit for bit, alone and among other rows.
        #[test]
        fn host_pass_does_not_depend_on_the_other_rows(
            widths in prop::collection::vec(1usize..12, 2..4),
            activations in prop::collection::vec(activation(), 3),
            weights in prop::collection::vec(-2.0f32..2.0, 1..64),
            inputs in prop::collection::vec(-5.0f32..5.0, 1..200),
        ) {
            let model = mlp(&widths, &activations, &weights);
            let rows = inputs.len() / widths[0];
            prop_assume!(rows > 0);
            let input = &inputs[..rows * widths[0]];
            let (_, together) = model.forward_on_host(input).unwrap();
            let out = together.len() / rows;
            for (row, expected) in input.chunks_exact(widths[0]).zip(together.chunks_exact(out)) {
                let (_, alone) = model.forward_on_host(row).unwrap();
                prop_assert_eq!(alone.as_slice(), expected);
            }
        }
    }

    #[test]
    fn host_pass_refuses_partial_rows() {
        let model = mlp(&[3, 2], &[Activation::Identity], &[1.0]);
        let err = model.forward_on_host(&[1.0, 2.0, 3.0, 4.0]).unwrap_err();
        assert!(err.contains("whole rows of 3"), "{err}");
    }
}
