//! A model's own pre- and postprocessing, from the `[preprocess]` and `[postprocess]`
//! tables of its `model.toml`: what turns a picture into the input tensor, and what turns
//! logits into labelled classes.

use crate::image_input::{self, Class, ImagePreprocess};
use inference_core::{DType, ModelManifest, ModelSpec};
use serde::Deserialize;

/// `[preprocess]`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Preprocess {
    /// A picture (base64 in JSON, or raw bytes) becomes the model's one f32 input.
    Image(ImagePreprocess),
}

/// `[postprocess]`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PostprocessTable {
    Classification(ClassificationTable),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationTable {
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// One label per line, relative to the model's folder.
    pub labels: Option<String>,
    /// Keep the raw outputs next to the classes (default), or answer with the classes only.
    #[serde(default = "default_true")]
    pub raw_outputs: bool,
}

fn default_top_k() -> usize {
    5
}

fn default_true() -> bool {
    true
}

/// Classification, ready to apply: the labels are read once, at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub top_k: usize,
    pub labels: Vec<String>,
    pub raw_outputs: bool,
}

impl Classification {
    /// The top classes of one row's first output.
    pub fn classify(&self, logits: &[f32]) -> Vec<Class> {
        image_input::top_k(logits, self.top_k, &self.labels)
    }
}

/// What a model does before and after its forward pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Processing {
    pub preprocess: Option<Preprocess>,
    pub classification: Option<Classification>,
    /// `server.max_image_pixels`: larger pictures are refused before decoding.
    pub max_image_pixels: u64,
}

impl Processing {
    /// Reads and checks the tables against the model's inputs and outputs; the error is one
    /// sentence naming the table.
    pub fn from_manifest(
        manifest: &ModelManifest,
        spec: &ModelSpec,
        max_image_pixels: u64,
    ) -> Result<Self, String> {
        let preprocess = match manifest.tables.get("preprocess") {
            None => None,
            Some(_) => {
                let table: Preprocess = manifest.table("preprocess").map_err(|e| e.to_string())?;
                let Preprocess::Image(image) = &table;
                image.validate()?;
                let fits = match spec.inputs.as_slice() {
                    [input] => {
                        input.dtype == DType::F32
                            && input.check_parts(DType::F32, &image.sample_shape()).is_ok()
                    }
                    _ => false,
                };
                if !fits {
                    return Err(format!(
                        "[preprocess] makes one f32 input of shape {:?}, but the model takes {}",
                        image.sample_shape(),
                        describe(spec)
                    ));
                }
                Some(table)
            }
        };
        let classification = match manifest.tables.get("postprocess") {
            None => None,
            Some(_) => {
                let PostprocessTable::Classification(table) =
                    manifest.table("postprocess").map_err(|e| e.to_string())?;
                let labels = match &table.labels {
                    Some(file) => image_input::read_labels(&manifest.dir.join(file))
                        .map_err(|e| format!("[postprocess] labels: {e}"))?,
                    None => Vec::new(),
                };
                if spec.outputs.first().is_none_or(|o| o.dtype != DType::F32) {
                    return Err("[postprocess] classification needs an f32 first output".into());
                }
                Some(Classification {
                    top_k: table.top_k.max(1),
                    labels,
                    raw_outputs: table.raw_outputs,
                })
            }
        };
        Ok(Self {
            preprocess,
            classification,
            max_image_pixels,
        })
    }
}

fn describe(spec: &ModelSpec) -> String {
    let inputs: Vec<String> = spec
        .inputs
        .iter()
        .map(|i| format!("'{}' {} {:?}", i.name, i.dtype, i.shape))
        .collect();
    inputs.join(", ")
}
