//! The one conformance suite every backend runs against the example model.
//!
//! Each check takes any [`InferenceEngine`] loaded from [`example_model_dir`] and panics with
//! a sentence naming what differs, so a backend crate's `tests/conformance.rs` is a few lines:
//!
//! ```text
//! inference_core::conformance_suite!(async {
//!     let manifest = inference_core::conformance::example_manifest();
//!     let options = EngineOptions { device: test_device(), ..EngineOptions::default() };
//!     my_backend::load(&manifest, &options).expect("example model loads")
//! });
//! ```
//!
//! The expected outputs come from `golden.toml`, written by `models/example/export.py` from
//! the eager PyTorch model, so every backend is compared with the same reference.
//!
//! The device comes from `CONFORMANCE_DEVICE` (default `cpu`), so the same tests run on a
//! GPU with `CONFORMANCE_DEVICE=cuda`. The golden check prints one `timing` line per batch
//! size to stderr (see [`TimingLine`]); those are measurements, never assertions.
//!
//! The same checks for torchvision's ResNet-18, when it is exported, are in `resnet.rs`
//! ([`resnet18_manifest`], [`check_resnet18_golden`], [`resnet18_suite!`](crate::resnet18_suite)).

use crate::engine::InferenceEngine;
use crate::error::ErrorKind;
use crate::model::{Batch, ModelManifest, Sample};
use crate::tensor::{DType, Tensor};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod resnet;
pub use resnet::*;

/// Largest absolute difference allowed between an engine's output and the golden output.
pub const TOLERANCE: f64 = 1e-5;

/// The batch sizes the golden check runs at: one row, a few, an odd size, and large ones.
pub const BATCH_SIZES: [usize; 5] = [1, 2, 7, 32, 64];

/// Names the device every backend's conformance suite loads its engine on.
pub const DEVICE_VAR: &str = "CONFORMANCE_DEVICE";

/// Overrides [`example_model_dir`], for test binaries run from another checkout (a GPU
/// machine that gets prebuilt binaries).
pub const MODEL_DIR_VAR: &str = "INFERENCE_EXAMPLE_MODEL_DIR";

/// Timed `infer` calls per batch size in the golden check, after one untimed warmup call.
pub const TIMED_RUNS: usize = 5;

/// The device the conformance suite runs on: `$CONFORMANCE_DEVICE`, else `cpu`.
pub fn test_device() -> String {
    device_from(std::env::var(DEVICE_VAR).ok())
}

fn device_from(value: Option<String>) -> String {
    value
        .map(|device| device.trim().to_owned())
        .filter(|device| !device.is_empty())
        .unwrap_or_else(|| "cpu".to_owned())
}

/// Whether an engine that reports `resolved` honours a request for `requested`: the same
/// kind (`cpu` or `cuda`), the same ordinal when one was named, and anything for `auto`.
pub fn device_satisfies(requested: &str, resolved: &str) -> bool {
    let requested = requested.to_ascii_lowercase();
    match requested.as_str() {
        "auto" => resolved == "cpu" || device_satisfies("cuda", resolved),
        "cuda" => resolved == "cuda" || resolved.starts_with("cuda:"),
        _ => resolved == requested,
    }
}

/// The example model directory: `$INFERENCE_EXAMPLE_MODEL_DIR`, else `models/example` at the
/// workspace root this crate was built in.
pub fn example_model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_VAR).filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/example"),
    }
}

/// The example model's manifest; panics if the committed files are missing.
pub fn example_manifest() -> ModelManifest {
    ModelManifest::load(&example_model_dir())
        .unwrap_or_else(|e| panic!("the example model's manifest does not load: {e}"))
}

/// The example model's golden cases; panics if the committed file is missing.
pub fn example_golden() -> Golden {
    let path = example_model_dir().join(Golden::FILE_NAME);
    Golden::load(&path).unwrap_or_else(|e| panic!("the example model's golden file: {e}"))
}

/// One input row and the output the reference implementation computed for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    pub input: Vec<f32>,
    pub output: Vec<f32>,
}

/// Reference outputs of a single-input, single-output f32 model (`golden.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub cases: Vec<GoldenCase>,
}

/// Why a golden file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid golden file: {0}")]
    Parse(String),
    #[error("the golden file has no cases")]
    NoCases,
    #[error("golden case {index} has {found} input and output values where case 0 has {expected}")]
    Ragged {
        index: usize,
        expected: String,
        found: String,
    },
}

impl Golden {
    pub const FILE_NAME: &'static str = "golden.toml";

    pub fn load(path: &Path) -> Result<Self, GoldenError> {
        let text = std::fs::read_to_string(path).map_err(|source| GoldenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses golden TOML, requiring at least one case and the same row sizes in every case.
    pub fn parse(text: &str) -> Result<Self, GoldenError> {
        let golden: Golden = toml::from_str(text).map_err(|e| GoldenError::Parse(e.to_string()))?;
        let first = golden.cases.first().ok_or(GoldenError::NoCases)?;
        let sizes = |case: &GoldenCase| format!("{}/{}", case.input.len(), case.output.len());
        let expected = sizes(first);
        if let Some((index, case)) = golden
            .cases
            .iter()
            .enumerate()
            .find(|(_, case)| sizes(case) != expected)
        {
            return Err(GoldenError::Ragged {
                index,
                expected,
                found: sizes(case),
            });
        }
        Ok(golden)
    }

    /// The first `size` cases, cycling through them as often as needed.
    pub fn cycled(&self, size: usize) -> Vec<&GoldenCase> {
        self.cases.iter().cycle().take(size).collect()
    }
}

/// A batch of the inputs of `cases`, each row shaped `[input.len()]`.
pub fn input_batch(cases: &[&GoldenCase]) -> Batch {
    let samples: Vec<Sample> = cases
        .iter()
        .map(|case| {
            let row = Tensor::from_f32(vec![case.input.len()], case.input.clone())
                .expect("a vector's shape is its length");
            Sample::new(vec![row])
        })
        .collect();
    Batch::stack(&samples).expect("golden rows have equal shapes")
}

/// Compares an engine's output batch with `cases` row by row; returns the largest absolute
/// error, or a sentence naming the first difference beyond [`TOLERANCE`].
pub fn compare_with_golden(output: &Batch, cases: &[&GoldenCase]) -> Result<f64, String> {
    if output.size != cases.len() {
        return Err(format!(
            "asked for {} rows, got a batch of {}",
            cases.len(),
            output.size
        ));
    }
    let [tensor] = output.tensors.as_slice() else {
        return Err(format!(
            "expected one output tensor, got {}",
            output.tensors.len()
        ));
    };
    let row_len = cases.first().map_or(0, |case| case.output.len());
    if tensor.shape() != [cases.len(), row_len] {
        return Err(format!(
            "expected output shape [{}, {row_len}], got {:?}",
            cases.len(),
            tensor.shape()
        ));
    }
    let Some(values) = tensor.as_f32() else {
        return Err(format!("expected f32 outputs, got {}", tensor.dtype()));
    };
    let mut max_error = 0.0_f64;
    for (row, (case, got)) in cases.iter().zip(values.chunks(row_len)).enumerate() {
        for (column, (&want, &have)) in case.output.iter().zip(got).enumerate() {
            let error = (f64::from(have) - f64::from(want)).abs();
            if error.is_nan() || error > TOLERANCE {
                return Err(format!(
                    "row {row} (input {:?}) column {column}: got {have}, golden {want}, \
                     error {error:e} exceeds {TOLERANCE:e}",
                    case.input
                ));
            }
            max_error = max_error.max(error);
        }
    }
    Ok(max_error)
}

/// One measurement of the golden check, printed as a single `key=value` line so that
/// scripts (`cargo xtask gpu-check`) can collect it from the test output.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingLine {
    pub backend: String,
    pub device: String,
    pub batch: usize,
    /// Median wall time of the timed `infer` calls.
    pub median: Duration,
    pub runs: usize,
    /// Largest absolute error against the golden outputs over every call.
    pub max_abs_error: f64,
}

impl TimingLine {
    pub const PREFIX: &'static str = "conformance-timing";
}

impl fmt::Display for TimingLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} backend={} device={} batch={} median_ms={:.4} runs={} max_abs_error={:e}",
            Self::PREFIX,
            self.backend,
            self.device,
            self.batch,
            self.median.as_secs_f64() * 1e3,
            self.runs,
            self.max_abs_error
        )
    }
}

/// The middle value (the upper one of the two middles for an even count); `None` if empty.
pub fn median(durations: &[Duration]) -> Option<Duration> {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// Runs `batch` once to warm up, then `runs` more times under a clock, checking every
/// output with `check` (which returns the largest absolute error or says what differs);
/// panics naming `what` on any failure. Returns the timing line of the timed calls.
pub(crate) async fn timed_golden_runs(
    engine: &dyn InferenceEngine,
    what: &str,
    batch: &Batch,
    runs: usize,
    check: impl Fn(&Batch) -> Result<f64, String>,
) -> TimingLine {
    let mut max_error = 0.0_f64;
    let mut timings = Vec::with_capacity(runs);
    for run in 0..=runs {
        // Cloning shares the rows' buffers; only the engine's output is new.
        let started = Instant::now();
        let output = engine
            .infer(batch.clone())
            .await
            .unwrap_or_else(|e| panic!("{what} failed (call {run}): {e}"));
        let took = started.elapsed();
        let error = check(&output).unwrap_or_else(|reason| panic!("{what} (call {run}): {reason}"));
        max_error = max_error.max(error);
        // Call 0 pays for lazy initialisation (kernels, allocators), so it is not timed.
        if run > 0 {
            timings.push(took);
        }
    }
    TimingLine {
        backend: engine.info().backend.clone(),
        device: engine.info().device.clone(),
        batch: batch.size,
        median: median(&timings).unwrap_or_default(),
        runs: timings.len(),
        max_abs_error: max_error,
    }
}

/// Runs `batch_size` rows cycled from the golden cases once to warm up, then
/// [`TIMED_RUNS`] more times under a clock, checking every row of every call; prints a
/// [`TimingLine`] to stderr and returns the largest absolute error seen.
pub async fn check_golden_outputs(engine: &dyn InferenceEngine, batch_size: usize) -> f64 {
    let golden = example_golden();
    let cases = golden.cycled(batch_size);
    let what = format!("batch of {batch_size}");
    let line = timed_golden_runs(engine, &what, &input_batch(&cases), TIMED_RUNS, |output| {
        compare_with_golden(output, &cases)
    })
    .await;
    eprintln!("{line}");
    line.max_abs_error
}

/// Several batches in flight at once each get their own rows back.
pub async fn check_concurrent_batches(engine: &dyn InferenceEngine) {
    let golden = example_golden();
    let all = golden.cycled(golden.cases.len() * 2);
    // Different offsets and sizes, so a mixed-up reply cannot match by accident.
    let slices = [&all[0..3], &all[3..4], &all[4..11], &all[7..19]];
    let (a, b, c, d) = tokio::join!(
        engine.infer(input_batch(slices[0])),
        engine.infer(input_batch(slices[1])),
        engine.infer(input_batch(slices[2])),
        engine.infer(input_batch(slices[3])),
    );
    for (index, (result, cases)) in [a, b, c, d].into_iter().zip(slices).enumerate() {
        let output = result.unwrap_or_else(|e| panic!("concurrent batch {index} failed: {e}"));
        if let Err(reason) = compare_with_golden(&output, cases) {
            panic!("concurrent batch {index}: {reason}");
        }
    }
}

/// Asserts that `batch` is refused as invalid input, naming `what` was wrong with it.
async fn expect_invalid_input(engine: &dyn InferenceEngine, batch: Batch, what: &str) {
    match engine.infer(batch).await {
        Ok(output) => panic!("a batch with {what} was accepted (output {output:?})"),
        Err(err) => assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "a batch with {what} must be invalid input, got: {err}"
        ),
    }
}

/// Rows of the wrong shape (and a tensor without the batch dimension) are invalid input.
pub async fn check_rejects_wrong_row_shape(engine: &dyn InferenceEngine) {
    let two_values_per_row = Batch {
        size: 2,
        tensors: vec![Tensor::from_f32(vec![2, 2], vec![1.0; 4]).expect("valid tensor")],
    };
    expect_invalid_input(engine, two_values_per_row, "rows of shape [2]").await;
    let no_batch_dim = Batch {
        size: 1,
        tensors: vec![Tensor::from_f32(vec![1], vec![1.0]).expect("valid tensor")],
    };
    expect_invalid_input(engine, no_batch_dim, "no batch dimension").await;
    let rows_disagree_with_size = Batch {
        size: 3,
        tensors: vec![Tensor::from_f32(vec![2, 1], vec![1.0; 2]).expect("valid tensor")],
    };
    expect_invalid_input(engine, rows_disagree_with_size, "2 rows but size 3").await;
}

/// A tensor of another element type than the input's spec is invalid input.
pub async fn check_rejects_wrong_dtype(engine: &dyn InferenceEngine) {
    for dtype in [DType::F64, DType::I64, DType::I32] {
        let batch = Batch {
            size: 2,
            tensors: vec![Tensor::zeros(dtype, vec![2, 1])],
        };
        expect_invalid_input(engine, batch, &format!("{dtype} input")).await;
    }
}

/// Too many or too few tensors for the model's inputs are invalid input.
pub async fn check_rejects_wrong_tensor_count(engine: &dyn InferenceEngine) {
    let row = || Tensor::from_f32(vec![1, 1], vec![1.0]).expect("valid tensor");
    let two = Batch {
        size: 1,
        tensors: vec![row(), row()],
    };
    expect_invalid_input(engine, two, "two input tensors").await;
    let none = Batch {
        size: 1,
        tensors: vec![],
    };
    expect_invalid_input(engine, none, "no input tensors").await;
}

/// A batch of zero rows is invalid input, not an empty success.
pub async fn check_rejects_empty_batch(engine: &dyn InferenceEngine) {
    let empty = Batch {
        size: 0,
        tensors: vec![Tensor::from_f32(vec![0, 1], vec![]).expect("valid tensor")],
    };
    expect_invalid_input(engine, empty, "zero rows").await;
}

/// The engine reports itself healthy and its warmup succeeds.
pub async fn check_health_and_warmup(engine: &dyn InferenceEngine) {
    if let Err(e) = engine.warmup().await {
        panic!("warmup failed: {e}");
    }
    let report = engine.health().await;
    assert!(
        report.healthy && report.error.is_none(),
        "engine is unhealthy: {report:?}"
    );
}

/// `info()` names the example model and its exact input and output specs.
pub async fn check_info(engine: &dyn InferenceEngine) {
    let info = engine.info();
    let manifest = example_manifest();
    assert_eq!(info.model.name, "example_model");
    assert_eq!(info.model.version, "v1.0");
    assert_eq!(
        info.model,
        manifest.spec(),
        "info() must carry the manifest's spec"
    );
    let [input] = info.model.inputs.as_slice() else {
        panic!("expected one input, got {:?}", info.model.inputs);
    };
    assert_eq!(
        (input.name.as_str(), input.dtype, input.shape.as_slice()),
        ("input", DType::F32, [1_i64].as_slice())
    );
    let [output] = info.model.outputs.as_slice() else {
        panic!("expected one output, got {:?}", info.model.outputs);
    };
    assert_eq!(
        (output.name.as_str(), output.dtype, output.shape.as_slice()),
        ("output", DType::F32, [3_i64].as_slice())
    );
    assert!(!info.backend.is_empty(), "info().backend is empty");
    let requested = test_device();
    assert!(
        device_satisfies(&requested, &info.device),
        "info().device must be the resolved device for the requested '{requested}' \
         ({DEVICE_VAR}), got '{}'",
        info.device
    );
    assert!(info.instances >= 1, "info().instances is 0");
}

/// Lets the suite accept an engine however the backend hands it out.
pub trait AsEngine {
    fn as_engine(&self) -> &dyn InferenceEngine;
}

impl<E: InferenceEngine> AsEngine for E {
    fn as_engine(&self) -> &dyn InferenceEngine {
        self
    }
}

impl AsEngine for Box<dyn InferenceEngine> {
    fn as_engine(&self) -> &dyn InferenceEngine {
        self.as_ref()
    }
}

impl AsEngine for Arc<dyn InferenceEngine> {
    fn as_engine(&self) -> &dyn InferenceEngine {
        self.as_ref()
    }
}

/// Expands to one `#[tokio::test]` per conformance check, each building a fresh engine with
/// the given `async` block (which returns an engine, a `Box<dyn InferenceEngine>` or an
/// `Arc<dyn InferenceEngine>`). The calling crate needs `tokio` as a dev-dependency.
#[macro_export]
macro_rules! conformance_suite {
    ($build:expr) => {
        $crate::conformance_suite!(@tests $build;
            golden_outputs_batch_of_1 => |e| { $crate::conformance::check_golden_outputs(e, 1).await; },
            golden_outputs_batch_of_2 => |e| { $crate::conformance::check_golden_outputs(e, 2).await; },
            golden_outputs_batch_of_7 => |e| { $crate::conformance::check_golden_outputs(e, 7).await; },
            golden_outputs_batch_of_32 => |e| { $crate::conformance::check_golden_outputs(e, 32).await; },
            golden_outputs_batch_of_64 => |e| { $crate::conformance::check_golden_outputs(e, 64).await; },
            concurrent_batches_get_their_own_rows => |e| { $crate::conformance::check_concurrent_batches(e).await; },
            rejects_wrong_row_shape => |e| { $crate::conformance::check_rejects_wrong_row_shape(e).await; },
            rejects_wrong_dtype => |e| { $crate::conformance::check_rejects_wrong_dtype(e).await; },
            rejects_wrong_tensor_count => |e| { $crate::conformance::check_rejects_wrong_tensor_count(e).await; },
            rejects_empty_batch => |e| { $crate::conformance::check_rejects_empty_batch(e).await; },
            healthy_and_warms_up => |e| { $crate::conformance::check_health_and_warmup(e).await; },
            info_names_the_example_model => |e| { $crate::conformance::check_info(e).await; },
        );
    };
    (@tests $build:expr; $($name:ident => |$engine:ident| $body:block),+ $(,)?) => {
        $(
            #[::tokio::test]
            async fn $name() {
                let built = $build.await;
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

    #[test]
    fn parses_cases_in_order() {
        let golden = Golden::parse(
            "[[cases]]\ninput = [1.0]\noutput = [0.5, 0.25]\n\
             [[cases]]\ninput = [-3.25]\noutput = [1.2198219678793976e-07, 1.0]\n",
        )
        .unwrap();
        assert_eq!(golden.cases.len(), 2);
        assert_eq!(golden.cases[1].input, vec![-3.25]);
        assert_eq!(golden.cases[1].output, vec![1.219_822e-7_f32, 1.0]);
    }

    #[test]
    fn rejects_empty_ragged_and_malformed_files() {
        assert!(matches!(
            Golden::parse("cases = []"),
            Err(GoldenError::NoCases)
        ));
        let ragged = "[[cases]]\ninput = [1.0]\noutput = [1.0, 2.0]\n\
                      [[cases]]\ninput = [1.0]\noutput = [1.0]\n";
        assert!(matches!(
            Golden::parse(ragged),
            Err(GoldenError::Ragged { index: 1, .. })
        ));
        assert!(matches!(
            Golden::parse("[[cases]]\ninput = [1.0]\n"),
            Err(GoldenError::Parse(_))
        ));
        assert!(matches!(
            Golden::parse("[[cases]]\ninput = [1.0]\noutput = [1.0]\nextra = 1\n"),
            Err(GoldenError::Parse(_))
        ));
        let missing = Golden::load(Path::new("/nonexistent/golden.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/golden.toml"));
    }

    #[test]
    fn example_golden_matches_the_example_model_specs() {
        let golden = example_golden();
        let manifest = example_manifest();
        assert_eq!(golden.cases.len(), 11);
        let inputs: Vec<f32> = golden.cases.iter().map(|c| c.input[0]).collect();
        assert_eq!(
            inputs,
            [1.0, 2.0, 3.0, 4.0, 5.0, 0.0, -1.0, 0.5, 10.0, -3.25, 100.0]
        );
        let output_len = manifest.outputs[0].fixed_element_count();
        assert!(
            golden
                .cases
                .iter()
                .all(|c| Some(c.output.len()) == output_len)
        );
        // Sigmoid outputs lie strictly inside (0, 1) for these inputs.
        assert!(
            golden
                .cases
                .iter()
                .flat_map(|c| &c.output)
                .all(|&v| v > 0.0 && v < 1.0)
        );
    }

    #[test]
    fn cycled_repeats_cases_in_order() {
        let golden = example_golden();
        let cycled = golden.cycled(25);
        assert_eq!(cycled.len(), 25);
        assert_eq!(cycled[11], &golden.cases[0]);
        assert_eq!(cycled[24], &golden.cases[2]);
    }

    #[test]
    fn comparison_reports_the_first_row_out_of_tolerance() {
        let golden = example_golden();
        let cases = golden.cycled(3);
        let mut values: Vec<f32> = cases.iter().flat_map(|c| c.output.clone()).collect();
        let exact = Batch {
            size: 3,
            tensors: vec![Tensor::from_f32(vec![3, 3], values.clone()).unwrap()],
        };
        assert_eq!(compare_with_golden(&exact, &cases), Ok(0.0));
        values[7] += 1e-3;
        let off = Batch {
            size: 3,
            tensors: vec![Tensor::from_f32(vec![3, 3], values).unwrap()],
        };
        let reason = compare_with_golden(&off, &cases).unwrap_err();
        assert!(
            reason.contains("row 2") && reason.contains("column 1"),
            "{reason}"
        );
        let nan = Batch {
            size: 1,
            tensors: vec![Tensor::from_f32(vec![1, 3], vec![f32::NAN; 3]).unwrap()],
        };
        assert!(compare_with_golden(&nan, &cases[..1]).is_err());
    }

    #[test]
    fn test_device_defaults_to_cpu_and_trims() {
        assert_eq!(device_from(None), "cpu");
        assert_eq!(device_from(Some(String::new())), "cpu");
        assert_eq!(device_from(Some("  ".into())), "cpu");
        assert_eq!(device_from(Some(" cuda:1\n".into())), "cuda:1");
    }

    #[test]
    fn device_satisfies_needs_the_requested_kind_and_ordinal() {
        assert!(device_satisfies("cpu", "cpu"));
        assert!(!device_satisfies("cpu", "cuda:0"));
        assert!(device_satisfies("cuda", "cuda:0"));
        assert!(device_satisfies("CUDA", "cuda:3"));
        assert!(
            !device_satisfies("cuda", "cpu"),
            "a CPU fallback is not CUDA"
        );
        assert!(!device_satisfies("cuda", "cudax"));
        assert!(device_satisfies("cuda:1", "cuda:1"));
        assert!(!device_satisfies("cuda:1", "cuda:0"));
        assert!(device_satisfies("auto", "cpu"));
        assert!(device_satisfies("auto", "cuda:0"));
        assert!(!device_satisfies("auto", "tpu"));
    }

    #[test]
    fn median_takes_the_middle_of_the_sorted_values() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(4)]), Some(ms(4)));
        assert_eq!(median(&[ms(9), ms(1), ms(5), ms(3), ms(7)]), Some(ms(5)));
        assert_eq!(median(&[ms(4), ms(1), ms(3), ms(2)]), Some(ms(3)));
    }

    #[test]
    fn timing_line_is_one_line_of_key_value_pairs() {
        let line = TimingLine {
            backend: "candle".into(),
            device: "cuda:0".into(),
            batch: 64,
            median: Duration::from_micros(1250),
            runs: TIMED_RUNS,
            max_abs_error: 2.5e-7,
        };
        assert_eq!(
            line.to_string(),
            "conformance-timing backend=candle device=cuda:0 batch=64 median_ms=1.2500 runs=5 \
             max_abs_error=2.5e-7"
        );
    }

    /// Answers from the golden table, plus `offset`; fails on inputs it does not know.
    struct GoldenLookup {
        golden: Golden,
        offset: f32,
    }

    impl Backend for GoldenLookup {
        fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
            let inputs = batch.tensors[0].as_f32().expect("validated as f32");
            let mut values = Vec::with_capacity(inputs.len() * 3);
            for x in inputs {
                let case = self
                    .golden
                    .cases
                    .iter()
                    .find(|c| c.input[0] == *x)
                    .ok_or_else(|| EngineError::Backend(format!("unknown input {x}")))?;
                values.extend(case.output.iter().map(|v| v + self.offset));
            }
            Ok(Batch {
                size: batch.size,
                tensors: vec![Tensor::from_f32(vec![batch.size, 3], values)?],
            })
        }
    }

    fn lookup_engine(offset: f32) -> WorkerPool {
        let info = EngineInfo {
            backend: "golden-lookup".into(),
            device: "cpu".into(),
            model: example_manifest().spec(),
            instances: 2,
        };
        let factory: BackendFactory = Arc::new(move |_| {
            Ok(Box::new(GoldenLookup {
                golden: example_golden(),
                offset,
            }) as Box<dyn Backend>)
        });
        WorkerPool::start(info, factory).unwrap()
    }

    // The whole suite passes against an engine that reproduces the golden file exactly.
    conformance_suite!(async { lookup_engine(0.0) });

    #[tokio::test]
    #[should_panic(expected = "exceeds")]
    async fn golden_check_fails_for_an_engine_that_is_off() {
        check_golden_outputs(&lookup_engine(1e-4), 7).await;
    }

    #[tokio::test]
    async fn the_suite_accepts_shared_engines() {
        let shared: Arc<dyn InferenceEngine> = Arc::new(lookup_engine(0.0));
        check_info(shared.as_engine()).await;
        let boxed: Box<dyn InferenceEngine> = Box::new(lookup_engine(0.0));
        check_health_and_warmup(boxed.as_engine()).await;
    }
}
