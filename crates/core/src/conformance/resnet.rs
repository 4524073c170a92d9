//! ResNet-18 conformance: every backend must reproduce eager PyTorch's logits for the
//! torchvision ResNet-18 that `cargo xtask export-models --resnet18` writes to
//! `models/resnet18/` (not committed: 135 MB of weights in three formats).
//!
//! The references are in that folder's `golden.safetensors` (its `golden.toml` explains how
//! they were made): `inputs` and `logits` for the golden check at several batch sizes, and
//! `preprocessed`, `image_logits` and `image_top5` for real images. A backend crate's
//! `tests/resnet18.rs` is one line, [`resnet18_suite!`](crate::resnet18_suite):
//!
//! ```text
//! inference_core::resnet18_suite!(my_backend::load);
//! ```
//!
//! Without the export every test prints [`RESNET18_SKIPPED`] and passes, so a plain
//! `cargo test` needs no Python; `cargo xtask test` exports first and sets
//! `REQUIRE_RESNET18=1`, which turns a missing export into a failure.

use super::{GoldenError, test_device};
use crate::engine::InferenceEngine;
use crate::model::{Batch, ModelManifest, Sample};
use crate::tensor::{DType, Tensor};
use bytes::Bytes;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// Largest absolute logit difference allowed against the golden logits (the bound
/// `golden.toml` states). Looser than the example model's 1e-5: each logit ends some two
/// billion multiply-adds, summed in whatever order a backend's convolution kernels choose;
/// on logits of up to about 2 that drifts by a few 1e-6.
pub const RESNET18_TOLERANCE: f64 = 1e-4;

/// The batch sizes the ResNet-18 golden check runs at (rows cycle through the 32 inputs).
pub const RESNET18_BATCH_SIZES: [usize; 3] = [1, 8, 32];

/// Timed `infer` calls per batch size, after one untimed warmup call. Fewer than the example
/// model's: a batch of 32 takes seconds on a small CPU, and every call is also checked.
pub const RESNET18_TIMED_RUNS: usize = 2;

/// Overrides [`resnet18_dir`]. Not `INFERENCE_`-prefixed: the server reads every
/// `INFERENCE_*` variable as configuration.
pub const RESNET18_DIR_VAR: &str = "RESNET18_MODEL_DIR";

/// When `1`, a missing export fails the tests instead of skipping them (`cargo xtask test`).
pub const REQUIRE_RESNET18_VAR: &str = "REQUIRE_RESNET18";

/// What a test prints to stderr when it skips because the model is not exported.
pub const RESNET18_SKIPPED: &str =
    "skipped: ResNet-18 not exported; run cargo xtask export-models --resnet18";

/// The ResNet-18 model directory: `$RESNET18_MODEL_DIR`, else `models/resnet18` at the
/// workspace root this crate was built in.
pub fn resnet18_dir() -> PathBuf {
    match std::env::var_os(RESNET18_DIR_VAR).filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/resnet18"),
    }
}

/// The exported model's manifest; `None` when it is not exported, unless
/// `REQUIRE_RESNET18=1`, which makes that a panic naming the export command. A manifest that
/// exists but does not load always panics: a broken export must not pass as a skip.
pub fn resnet18_manifest() -> Option<ModelManifest> {
    let required = std::env::var(REQUIRE_RESNET18_VAR).is_ok_and(|value| value.trim() == "1");
    manifest_in(&resnet18_dir(), required)
}

fn manifest_in(dir: &Path, required: bool) -> Option<ModelManifest> {
    if !dir.join(ModelManifest::FILE_NAME).is_file() {
        assert!(
            !required,
            "ResNet-18 is not exported in {} and {REQUIRE_RESNET18_VAR}=1: run `cargo xtask \
             export-models --resnet18`",
            dir.display()
        );
        return None;
    }
    let manifest = ModelManifest::load(dir).unwrap_or_else(|e| {
        panic!(
            "the ResNet-18 manifest does not load ({e}): run `cargo xtask export-models --resnet18`"
        )
    });
    Some(manifest)
}

/// The reference tensors of `golden.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resnet18Golden {
    /// `[N, 3, 224, 224]` f32: seeded noise.
    pub inputs: Tensor,
    /// `[N, 1000]` f32: eager PyTorch's logits for `inputs`.
    pub logits: Tensor,
    /// `[M, 3, 224, 224]` f32: torchvision's preprocessing of the images in `images/`.
    pub preprocessed: Tensor,
    /// `[M, 1000]` f32: the logits for `preprocessed`.
    pub image_logits: Tensor,
    /// `[M, 5]` i64: the top-5 class indices of `image_logits`, best first.
    pub image_top5: Tensor,
}

impl Resnet18Golden {
    pub const FILE_NAME: &'static str = "golden.safetensors";

    pub fn load(path: &Path) -> Result<Self, GoldenError> {
        let bytes = std::fs::read(path).map_err(|source| GoldenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(Bytes::from(bytes))
    }

    /// Reads the five tensors, sharing `bytes` (no copy when aligned), and checks that their
    /// dtypes and row counts agree with each other.
    pub fn parse(bytes: Bytes) -> Result<Self, GoldenError> {
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| GoldenError::Parse(format!("not a safetensors file: {e}")))?;
        let read = |name: &str, dtype: DType| -> Result<Tensor, GoldenError> {
            let view = file
                .tensor(name)
                .map_err(|e| GoldenError::Parse(format!("tensor '{name}': {e}")))?;
            let found = match view.dtype() {
                Dtype::F32 => Some(DType::F32),
                Dtype::I64 => Some(DType::I64),
                _ => None,
            };
            if found != Some(dtype) {
                return Err(GoldenError::Parse(format!(
                    "tensor '{name}' is {:?}, expected {dtype}",
                    view.dtype()
                )));
            }
            let data = bytes.slice_ref(view.data());
            Tensor::from_bytes(dtype, view.shape().to_vec(), data)
                .map_err(|e| GoldenError::Parse(format!("tensor '{name}': {e}")))
        };
        let golden = Self {
            inputs: read("inputs", DType::F32)?,
            logits: read("logits", DType::F32)?,
            preprocessed: read("preprocessed", DType::F32)?,
            image_logits: read("image_logits", DType::F32)?,
            image_top5: read("image_top5", DType::I64)?,
        };
        golden.check_shapes()?;
        Ok(golden)
    }

    fn check_shapes(&self) -> Result<(), GoldenError> {
        let rows = |tensor: &Tensor| tensor.shape().first().copied().unwrap_or(0);
        let pairs = [
            ("inputs", &self.inputs, "logits", &self.logits),
            (
                "preprocessed",
                &self.preprocessed,
                "image_logits",
                &self.image_logits,
            ),
            (
                "image_logits",
                &self.image_logits,
                "image_top5",
                &self.image_top5,
            ),
        ];
        for (name, tensor, other_name, other) in pairs {
            if rows(tensor) == 0 || rows(tensor) != rows(other) {
                return Err(GoldenError::Parse(format!(
                    "'{name}' has shape {:?} but '{other_name}' has shape {:?}: expected the \
                     same number of rows, at least one",
                    tensor.shape(),
                    other.shape()
                )));
            }
        }
        if self.inputs.shape()[1..] != self.preprocessed.shape()[1..]
            || self.logits.shape()[1..] != self.image_logits.shape()[1..]
            || self.image_top5.shape().len() != 2
        {
            return Err(GoldenError::Parse(format!(
                "row shapes disagree: inputs {:?}, preprocessed {:?}, logits {:?}, \
                 image_logits {:?}, image_top5 {:?}",
                self.inputs.shape(),
                self.preprocessed.shape(),
                self.logits.shape(),
                self.image_logits.shape(),
                self.image_top5.shape()
            )));
        }
        Ok(())
    }

    /// The number of `inputs` rows.
    pub fn input_rows(&self) -> usize {
        self.inputs.shape()[0]
    }

    /// The indices of `size` rows, cycling through the inputs: 0, 1, …, N-1, 0, 1, …
    pub fn cycled_rows(&self, size: usize) -> Vec<usize> {
        (0..self.input_rows()).cycle().take(size).collect()
    }

    /// A batch of the `inputs` rows at `rows`, in that order.
    pub fn input_batch(&self, rows: &[usize]) -> Batch {
        let all = self.inputs.unstack().expect("checked to have rows");
        let samples: Vec<Sample> = rows
            .iter()
            .map(|&row| Sample::new(vec![all[row].clone()]))
            .collect();
        Batch::stack(&samples).expect("golden rows have equal shapes")
    }

    /// The golden logits of the `inputs` rows at `rows`, in that order.
    pub fn logits_of(&self, rows: &[usize]) -> Vec<&[f32]> {
        let all = rows_of(&self.logits);
        rows.iter().map(|&row| all[row]).collect()
    }
}

/// The rows of an f32 golden tensor, each a slice of its buffer.
fn rows_of(tensor: &Tensor) -> Vec<&[f32]> {
    let values = tensor.as_f32().expect("read as f32");
    values
        .chunks(tensor.shape()[1..].iter().product())
        .collect()
}

/// The golden file of the exported model; panics naming the file and the export command.
pub fn resnet18_golden() -> Resnet18Golden {
    let path = resnet18_dir().join(Resnet18Golden::FILE_NAME);
    Resnet18Golden::load(&path).unwrap_or_else(|e| {
        panic!("the ResNet-18 golden file: {e}; run `cargo xtask export-models --resnet18`")
    })
}

/// Compares an engine's logits with `expected` row by row; `rows` names the golden row each
/// output row stands for. Returns the largest absolute error, or a sentence naming the
/// first row, column and values beyond [`RESNET18_TOLERANCE`].
pub fn compare_logits(output: &Batch, rows: &[usize], expected: &[&[f32]]) -> Result<f64, String> {
    let row_len = expected.first().map_or(0, |row| row.len());
    let [tensor] = output.tensors.as_slice() else {
        return Err(format!(
            "expected one output tensor, got {}",
            output.tensors.len()
        ));
    };
    if output.size != expected.len() || tensor.shape() != [expected.len(), row_len] {
        return Err(format!(
            "expected output shape [{}, {row_len}], got a batch of {} shaped {:?}",
            expected.len(),
            output.size,
            tensor.shape()
        ));
    }
    let Some(values) = tensor.as_f32() else {
        return Err(format!("expected f32 logits, got {}", tensor.dtype()));
    };
    let mut max_error = 0.0_f64;
    for (row, (want_row, got_row)) in expected.iter().zip(values.chunks(row_len)).enumerate() {
        for (column, (&want, &have)) in want_row.iter().zip(got_row).enumerate() {
            let error = (f64::from(have) - f64::from(want)).abs();
            if error.is_nan() || error > RESNET18_TOLERANCE {
                return Err(format!(
                    "row {row} (golden row {}) column {column}: got {have}, golden {want}, \
                     error {error:e} exceeds {RESNET18_TOLERANCE:e}",
                    rows[row]
                ));
            }
            max_error = max_error.max(error);
        }
    }
    Ok(max_error)
}

/// The indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..values.len()).collect();
    indices.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    indices.truncate(k);
    indices
}

/// Runs `batch_size` rows cycled from the golden inputs once to warm up, then
/// [`RESNET18_TIMED_RUNS`] more times under a clock, checking every row of every call
/// against the golden logits; prints a `resnet18-conformance-timing` line to stderr and
/// returns the largest absolute error seen.
pub async fn check_resnet18_golden(engine: &dyn InferenceEngine, batch_size: usize) -> f64 {
    let golden = resnet18_golden();
    let rows = golden.cycled_rows(batch_size);
    let batch = golden.input_batch(&rows);
    let expected = golden.logits_of(&rows);
    let what = format!("ResNet-18 batch of {batch_size}");
    let line = super::timed_golden_runs(engine, &what, &batch, RESNET18_TIMED_RUNS, |output| {
        compare_logits(output, &rows, &expected)
    })
    .await;
    // Prefixed, so that collectors of the example model's timing lines never mix the two.
    eprintln!("resnet18-{line}");
    line.max_abs_error
}

/// Feeds every `preprocessed` image as one batch; checks the logits against
/// `image_logits` within [`RESNET18_TOLERANCE`] and that each image's top-5 classes are
/// `image_top5`, in order. Returns the largest absolute logit error.
pub async fn check_resnet18_images(engine: &dyn InferenceEngine) -> f64 {
    let golden = resnet18_golden();
    let count = golden.preprocessed.shape()[0];
    let rows: Vec<usize> = (0..count).collect();
    let batch = Batch {
        size: count,
        tensors: vec![golden.preprocessed.clone()],
    };
    let output = engine
        .infer(batch)
        .await
        .unwrap_or_else(|e| panic!("ResNet-18: the batch of {count} images failed: {e}"));
    let names = image_names(count);
    let expected = rows_of(&golden.image_logits);
    let max_error = compare_logits(&output, &rows, &expected)
        .unwrap_or_else(|reason| panic!("ResNet-18 images (rows: {}): {reason}", names.join(", ")));
    let logits = rows_of(&output.tensors[0]);
    let want_top5 = golden.image_top5.as_slice::<i64>().expect("read as i64");
    let k = golden.image_top5.shape()[1];
    for ((name, got), want) in names.iter().zip(logits).zip(want_top5.chunks(k)) {
        let got: Vec<i64> = top_k(got, k)
            .into_iter()
            .map(|index| i64::try_from(index).expect("a class index fits i64"))
            .collect();
        assert_eq!(
            got, want,
            "ResNet-18 image {name}: top-{k} classes {got:?}, golden {want:?}"
        );
    }
    eprintln!(
        "resnet18-images backend={} device={} images={count} max_abs_error={max_error:e} top{k}=ok",
        engine.info().backend,
        engine.info().device,
    );
    max_error
}

/// The image file names of `golden.toml`'s `images` list, for messages; `#i` where the
/// file cannot say (the tensors alone are enough to check).
fn image_names(count: usize) -> Vec<String> {
    let path = resnet18_dir().join("golden.toml");
    let listed: Vec<String> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("images")?.as_array().cloned())
        .map(|images| {
            images
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (0..count)
        .map(|i| listed.get(i).cloned().unwrap_or_else(|| format!("#{i}")))
        .collect()
}

/// The device and options every backend's ResNet-18 tests load with.
pub fn resnet18_engine_options() -> crate::EngineOptions {
    crate::EngineOptions {
        device: test_device(),
        ..crate::EngineOptions::default()
    }
}

/// Expands to one `#[tokio::test]` per ResNet-18 check (golden logits at each of
/// [`RESNET18_BATCH_SIZES`], and the images), each loading the exported model with
/// `$load(&ModelManifest, &EngineOptions) -> Result<engine, EngineError>` on the test
/// device, or printing [`RESNET18_SKIPPED`] and passing when it is not exported. The calling
/// crate needs `tokio` as a dev-dependency.
#[macro_export]
macro_rules! resnet18_suite {
    ($load:expr) => {
        $crate::resnet18_suite!(@tests $load;
            resnet18_golden_batch_of_1 => |e| { $crate::conformance::check_resnet18_golden(e, 1).await; },
            resnet18_golden_batch_of_8 => |e| { $crate::conformance::check_resnet18_golden(e, 8).await; },
            resnet18_golden_batch_of_32 => |e| { $crate::conformance::check_resnet18_golden(e, 32).await; },
            resnet18_images_match_logits_and_top5 => |e| { $crate::conformance::check_resnet18_images(e).await; },
        );
    };
    (@tests $load:expr; $($name:ident => |$engine:ident| $body:block),+ $(,)?) => {
        $(
            #[::tokio::test]
            async fn $name() {
                let Some(manifest) = $crate::conformance::resnet18_manifest() else {
                    ::std::eprintln!("{}", $crate::conformance::RESNET18_SKIPPED);
                    return;
                };
                let options = $crate::conformance::resnet18_engine_options();
                let built = ($load)(&manifest, &options)
                    .unwrap_or_else(|e| ::std::panic!("ResNet-18 does not load: {e}"));
                let $engine = $crate::conformance::AsEngine::as_engine(&built);
                $body
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineInfo;
    use crate::error::EngineError;
    use crate::worker::{Backend, BackendFactory, WorkerPool};
    use std::sync::Arc;

    #[test]
    fn a_missing_export_is_none_unless_required() {
        assert!(manifest_in(Path::new("/nonexistent/resnet18"), false).is_none());
    }

    #[test]
    #[should_panic(expected = "run `cargo xtask export-models --resnet18`")]
    fn a_missing_export_panics_when_required() {
        manifest_in(Path::new("/nonexistent/resnet18"), true);
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        let values = [0.5, 2.0, -1.0, 2.0, 0.75, f32::MIN];
        assert_eq!(top_k(&values, 3), [1, 3, 4]);
        assert_eq!(top_k(&values, 10).len(), values.len());
    }

    fn batch_of(rows: usize, values: Vec<f32>) -> Batch {
        let columns = values.len() / rows;
        Batch {
            size: rows,
            tensors: vec![Tensor::from_f32(vec![rows, columns], values).unwrap()],
        }
    }

    #[test]
    fn comparison_names_row_golden_row_column_and_values() {
        let expected: [&[f32]; 2] = [&[1.0, 2.0], &[3.0, 4.0]];
        let exact = batch_of(2, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(compare_logits(&exact, &[5, 6], &expected), Ok(0.0));
        let close = batch_of(2, vec![1.0, 2.0, 3.0, 4.00005]);
        let error = compare_logits(&close, &[5, 6], &expected).unwrap();
        assert!(error > 0.0 && error < RESNET18_TOLERANCE, "{error}");
        let off = batch_of(2, vec![1.0, 2.0, 3.001, 4.0]);
        let reason = compare_logits(&off, &[5, 6], &expected).unwrap_err();
        assert!(
            reason.starts_with("row 1 (golden row 6) column 0: got 3.001, golden 3"),
            "{reason}"
        );
        let nan = batch_of(2, vec![f32::NAN; 4]);
        assert!(compare_logits(&nan, &[5, 6], &expected).is_err());
        let short = batch_of(1, vec![1.0, 2.0]);
        let reason = compare_logits(&short, &[5, 6], &expected).unwrap_err();
        assert!(reason.contains("[2, 2]"), "{reason}");
    }

    #[test]
    fn golden_parse_rejects_what_is_not_the_golden_layout() {
        let err = Resnet18Golden::parse(Bytes::from_static(b"not safetensors")).unwrap_err();
        assert!(err.to_string().contains("not a safetensors file"), "{err}");
        let missing = Resnet18Golden::load(Path::new("/nonexistent/golden.safetensors"));
        assert!(matches!(missing, Err(GoldenError::Read { .. })));
    }

    /// The exported golden file has the layout `golden.toml` describes; skipped (like the
    /// backends' tests) when the model is not exported.
    #[test]
    fn exported_golden_file_matches_the_manifest() {
        let Some(manifest) = resnet18_manifest() else {
            eprintln!("{RESNET18_SKIPPED}");
            return;
        };
        let golden = resnet18_golden();
        assert_eq!(golden.inputs.shape(), [32, 3, 224, 224]);
        assert_eq!(golden.logits.shape(), [32, 1000]);
        let [input] = manifest.inputs.as_slice() else {
            panic!("one input expected: {:?}", manifest.inputs);
        };
        assert_eq!(input.shape, [3, 224, 224]);
        let images = golden.preprocessed.shape()[0];
        assert_eq!(image_names(images)[0], "gradient.png");
        // The stored top-5 are the top-5 of the stored logits.
        let logits = rows_of(&golden.image_logits);
        let top5 = golden.image_top5.as_slice::<i64>().unwrap();
        for (row, want) in logits.iter().zip(top5.chunks(5)) {
            let got: Vec<i64> = top_k(row, 5).into_iter().map(|i| i as i64).collect();
            assert_eq!(got, want);
        }
        let batch = golden.input_batch(&golden.cycled_rows(33));
        assert_eq!(batch.tensors[0].shape(), [33, 3, 224, 224]);
        let rows = golden.inputs.unstack().unwrap();
        let stacked = batch.unstack().unwrap();
        assert_eq!(stacked[32].tensors[0], rows[0]);
        assert_eq!(stacked[31].tensors[0], rows[31]);
    }

    /// Answers each row with the golden logits of the identical golden input (noise or
    /// image), plus `offset`; fails on a row it does not know.
    struct GoldenLookup {
        golden: Resnet18Golden,
        offset: f32,
    }

    impl Backend for GoldenLookup {
        fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
            let known = [
                (&self.golden.inputs, &self.golden.logits),
                (&self.golden.preprocessed, &self.golden.image_logits),
            ];
            let mut values = Vec::new();
            for row in batch.tensors[0].unstack()? {
                let logits = known
                    .iter()
                    .find_map(|(inputs, logits)| {
                        let index = inputs.unstack().ok()?.iter().position(|r| *r == row)?;
                        Some(rows_of(logits)[index])
                    })
                    .ok_or_else(|| EngineError::Backend("not a golden input".into()))?;
                values.extend(logits.iter().map(|v| v + self.offset));
            }
            let width = values.len() / batch.size;
            Ok(Batch {
                size: batch.size,
                tensors: vec![Tensor::from_f32(vec![batch.size, width], values)?],
            })
        }
    }

    fn lookup_load(manifest: &ModelManifest, offset: f32) -> Result<WorkerPool, EngineError> {
        let info = EngineInfo {
            backend: "golden-lookup".into(),
            device: "cpu".into(),
            model: manifest.spec(),
            instances: 1,
        };
        let factory: BackendFactory = Arc::new(move |_| {
            let golden = resnet18_golden();
            Ok(Box::new(GoldenLookup { golden, offset }) as Box<dyn Backend>)
        });
        WorkerPool::start(info, factory)
    }

    // The whole suite passes against an engine that reproduces the golden file exactly.
    crate::resnet18_suite!(|manifest, _options| lookup_load(manifest, 0.0));

    #[tokio::test]
    async fn golden_check_fails_for_an_engine_that_is_off() {
        let Some(manifest) = resnet18_manifest() else {
            eprintln!("{RESNET18_SKIPPED}");
            return;
        };
        let engine = lookup_load(&manifest, 2e-4).unwrap();
        // A task, so that the check's panic comes back as a value to inspect.
        let checked = tokio::spawn(async move { check_resnet18_golden(&engine, 8).await });
        let panic = checked.await.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("batch of 8 (call 0): row 0 (golden row 0) column 0")
                && message.contains("exceeds 1e-4"),
            "{message}"
        );
    }
}
