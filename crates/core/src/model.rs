//! What a model is: its named inputs and outputs, their shapes and types, and the manifest
//! (`model.toml`) that describes a model directory.

use crate::tensor::{DType, Tensor, TensorError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One named input or output of a model, per sample (without the batch dimension).
///
/// A dimension of `-1` accepts any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Checks one sample's tensor against this spec; the error is a sentence for a person.
    pub fn check(&self, tensor: &Tensor) -> Result<(), String> {
        self.check_parts(tensor.dtype(), tensor.shape())
    }

    /// Checks a per-sample element type and shape against this spec.
    pub fn check_parts(&self, dtype: DType, shape: &[usize]) -> Result<(), String> {
        if dtype != self.dtype {
            return Err(format!(
                "input '{}' must be of type {}, got {}",
                self.name, self.dtype, dtype
            ));
        }
        let fits = shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || usize::try_from(want) == Ok(got));
        if !fits {
            return Err(format!(
                "input '{}' must have shape {:?}, got {:?}",
                self.name, self.shape, shape
            ));
        }
        Ok(())
    }

    /// The per-sample element count when every dimension is fixed.
    pub fn fixed_element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .product()
    }

    /// A zero tensor of this spec (dynamic dimensions set to 1), used for warmup.
    pub fn zeros(&self) -> Tensor {
        let shape = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(1))
            .collect();
        Tensor::zeros(self.dtype, shape)
    }
}

/// What a served model is, independent of any backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelSpec {
    /// Checks that a sample has one tensor per input, in order, each fitting its spec.
    pub fn check_sample(&self, sample: &Sample) -> Result<(), String> {
        if sample.tensors.len() != self.inputs.len() {
            return Err(format!(
                "model '{}' takes {} input(s), got {}",
                self.name,
                self.inputs.len(),
                sample.tensors.len()
            ));
        }
        self.inputs
            .iter()
            .zip(&sample.tensors)
            .try_for_each(|(spec, tensor)| spec.check(tensor))
    }

    /// A sample of zeros that fits every input, for warmup and health probes.
    pub fn zero_sample(&self) -> Sample {
        Sample {
            tensors: self.inputs.iter().map(TensorSpec::zeros).collect(),
        }
    }
}

/// One sample (one row of a batch): a tensor per model input, in the model's input order,
/// without the batch dimension. Outputs of one row use the same type.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tensors: Vec<Tensor>,
}

impl Sample {
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Self { tensors }
    }
}

/// Several samples stacked: one tensor per input (or output), each with a leading batch
/// dimension of `size`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub size: usize,
    pub tensors: Vec<Tensor>,
}

impl Batch {
    /// Stacks samples that all have the same number of tensors of matching shapes.
    pub fn stack(samples: &[Sample]) -> Result<Batch, TensorError> {
        let first = samples.first().ok_or(TensorError::EmptyStack)?;
        let tensors = (0..first.tensors.len())
            .map(|i| {
                let column: Vec<&Tensor> = samples.iter().map(|s| &s.tensors[i]).collect();
                Tensor::stack(&column)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            size: samples.len(),
            tensors,
        })
    }

    /// Splits into one sample per row.
    pub fn unstack(&self) -> Result<Vec<Sample>, TensorError> {
        let mut columns = self
            .tensors
            .iter()
            .map(Tensor::unstack)
            .collect::<Result<Vec<_>, _>>()?;
        let mut samples: Vec<Sample> = (0..self.size)
            .map(|_| Sample {
                tensors: Vec::with_capacity(columns.len()),
            })
            .collect();
        for column in &mut columns {
            if column.len() != self.size {
                return Err(TensorError::ShapeDataMismatch {
                    shape: vec![self.size],
                    expected: self.size,
                    found: column.len(),
                });
            }
            for (sample, tensor) in samples.iter_mut().zip(column.drain(..)) {
                sample.tensors.push(tensor);
            }
        }
        Ok(samples)
    }
}

/// Errors of reading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid model manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model '{model}' has no file for backend '{backend}' in its manifest")]
    NoFileForBackend { model: String, backend: String },
    #[error("model '{model}': table [{table}] is invalid: {message}")]
    Table {
        model: String,
        table: String,
        message: String,
    },
}

/// Per-model dynamic batching; unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBatching {
    pub max_batch_size: Option<usize>,
    /// Milliseconds a forward pass may wait for more rows.
    pub max_queue_delay_ms: Option<f64>,
    pub max_queue_size: Option<usize>,
}

/// The contents of a model directory's `model.toml`.
///
/// Core reads what every backend shares. Every other table is kept as parsed TOML and read
/// by its owner: `[candle]`, `[ort]`, `[tch]` by that backend, `[preprocess]` and
/// `[postprocess]` by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// May be omitted when the backend reads them from the graph (ONNX).
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Weights file per backend name (`candle`, `ort`, `tch`), relative to the directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The backend that serves this model; unset: the server's default.
    #[serde(default)]
    pub backend: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`; unset: the server's default.
    #[serde(default)]
    pub device: Option<String>,
    /// Engine workers; unset: the server's default.
    #[serde(default)]
    pub instances: Option<usize>,
    #[serde(default)]
    pub batching: ModelBatching,
    /// Batch sizes of the zero batches run before the model is ready (default `[1]`).
    #[serde(default)]
    pub warmup_batch_sizes: Option<Vec<usize>>,
    /// Every other table, by name: backend settings, pre- and postprocessing.
    #[serde(flatten)]
    pub tables: BTreeMap<String, toml::Table>,
    /// The directory the manifest was read from (not part of the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_version() -> String {
    "1".into()
}

impl ModelManifest {
    pub const FILE_NAME: &'static str = "model.toml";

    /// Reads `<dir>/model.toml`.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(Self::FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let mut manifest = Self::parse(&text).map_err(|message| ManifestError::Parse {
            path: path.clone(),
            message,
        })?;
        manifest.dir = dir.to_path_buf();
        Ok(manifest)
    }

    /// Parses manifest text; the error is one line.
    pub fn parse(text: &str) -> Result<Self, String> {
        const KEYS: [&str; 11] = [
            "name",
            "version",
            "description",
            "inputs",
            "outputs",
            "files",
            "backend",
            "device",
            "instances",
            "batching",
            "warmup_batch_sizes",
        ];
        let one_line = |e: toml::de::Error| e.to_string().replace('\n', " ");
        let table: toml::Table = text.parse().map_err(one_line)?;
        // Every other key is a table read by its owner; a stray scalar is a typo to name.
        if let Some(key) = table
            .iter()
            .find(|(key, value)| !KEYS.contains(&key.as_str()) && !value.is_table())
            .map(|(key, _)| key)
        {
            return Err(format!(
                "unknown key '{key}' (known keys: {}; other entries must be tables such as [candle])",
                KEYS.join(", ")
            ));
        }
        table.try_into().map_err(one_line)
    }

    /// A minimal manifest for a model known only by its name and folder (e.g. a folder that
    /// holds just a `model.onnx`).
    pub fn bare(name: &str, dir: &Path) -> Self {
        Self {
            name: name.into(),
            version: default_version(),
            description: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            files: BTreeMap::new(),
            backend: None,
            device: None,
            instances: None,
            batching: ModelBatching::default(),
            warmup_batch_sizes: None,
            tables: BTreeMap::new(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.name.clone(),
            version: self.version.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }

    /// The absolute path of the weights file for `backend`.
    pub fn file_for(&self, backend: &str) -> Result<PathBuf, ManifestError> {
        self.files
            .get(backend)
            .map(|file| self.dir.join(file))
            .ok_or_else(|| ManifestError::NoFileForBackend {
                model: self.name.clone(),
                backend: backend.to_string(),
            })
    }

    /// Deserializes table `[name]` into its owner's settings type; an absent table reads
    /// as an empty one, so settings with defaults need no table at all.
    pub fn table<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ManifestError> {
        let table = self.tables.get(name).cloned().unwrap_or_default();
        table
            .try_into()
            .map_err(|e: toml::de::Error| ManifestError::Table {
                model: self.name.clone(),
                table: name.into(),
                message: e.to_string().replace('\n', " ").trim().to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            version: "v1".into(),
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![2, -1],
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn check_sample_accepts_dynamic_dims_and_rejects_the_rest() {
        let spec = spec();
        let ok = Sample::new(vec![Tensor::from_f32(vec![2, 5], vec![0.0; 10]).unwrap()]);
        assert_eq!(spec.check_sample(&ok), Ok(()));
        let wrong_rank = Sample::new(vec![Tensor::from_f32(vec![2], vec![0.0; 2]).unwrap()]);
        assert!(
            spec.check_sample(&wrong_rank)
                .unwrap_err()
                .contains("shape")
        );
        let wrong_count = Sample::new(vec![]);
        assert!(
            spec.check_sample(&wrong_count)
                .unwrap_err()
                .contains("takes 1")
        );
        let wrong_type = Sample::new(vec![Tensor::zeros(DType::I64, vec![2, 1])]);
        assert!(
            spec.check_sample(&wrong_type)
                .unwrap_err()
                .contains("type f32")
        );
    }

    #[test]
    fn batch_round_trips_samples() {
        let samples: Vec<Sample> = (0..3)
            .map(|i| {
                Sample::new(vec![
                    Tensor::from_f32(vec![2], vec![i as f32, -(i as f32)]).unwrap(),
                ])
            })
            .collect();
        let batch = Batch::stack(&samples).unwrap();
        assert_eq!(batch.size, 3);
        assert_eq!(batch.tensors[0].shape(), &[3, 2]);
        assert_eq!(batch.unstack().unwrap(), samples);
    }

    #[test]
    fn manifest_parses_and_resolves_files() {
        let text = r#"
            name = "example_model"
            version = "v1.0"
            [[inputs]]
            name = "input"
            dtype = "f32"
            shape = [1]
            [[outputs]]
            name = "output"
            dtype = "f32"
            shape = [3]
            [files]
            candle = "model.safetensors"
            [candle]
            architecture = "mlp"
            layers = ["fc1", "fc2"]
            [batching]
            max_batch_size = 8
        "#;
        let mut manifest = ModelManifest::parse(text).unwrap();
        manifest.dir = PathBuf::from("/models/example");
        assert_eq!(
            manifest.file_for("candle").unwrap(),
            PathBuf::from("/models/example/model.safetensors")
        );
        assert!(matches!(
            manifest.file_for("tch"),
            Err(ManifestError::NoFileForBackend { .. })
        ));
        assert_eq!(manifest.spec().inputs[0].shape, vec![1]);
        assert_eq!(manifest.batching.max_batch_size, Some(8));
        assert_eq!(
            manifest.tables["candle"]["architecture"].as_str(),
            Some("mlp")
        );
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Ort {
            graph_optimization: Option<String>,
        }
        let ort: Ort = manifest.table("ort").unwrap();
        assert!(ort.graph_optimization.is_none());
        let err = manifest.table::<Ort>("candle").unwrap_err().to_string();
        assert!(
            err.contains("[candle]") && err.contains("architecture"),
            "{err}"
        );
    }

    #[test]
    fn a_top_level_key_that_is_not_a_table_is_refused() {
        let err = ModelManifest::parse("name = \"m\"\nwarmup = true\n").unwrap_err();
        assert!(err.contains("unknown key 'warmup'"), "{err}");
    }
}
