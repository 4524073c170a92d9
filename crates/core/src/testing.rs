//! Deterministic fake engines for the tests of core, the server and the benchmarks
//! (compiled with the `testing` feature).
//!
//! [`FakeEngine`] computes `[s, 2s, 3s]` for a row whose input values sum to `s`, records
//! every batch it is handed, and can hold batches at a gate, sleep, fail or panic on
//! demand, so that queueing tests need no timing guesses.

use crate::engine::{EngineInfo, InferenceEngine, validate_batch};
use crate::error::EngineError;
use crate::model::{Batch, ModelSpec, Sample, TensorSpec};
use crate::tensor::{DType, Tensor};
use async_trait::async_trait;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The fake model's input name.
pub const INPUT: &str = "input";
/// The fake model's output name.
pub const OUTPUT: &str = "output";

/// A fake engine: input `"input"` f32 `[1]` (or `[-1]`, see [`FakeEngine::variable_length`])
/// to output `"output"` f32 `[3]`, where a row summing to `s` gives `[s, 2s, 3s]`.
#[derive(Debug)]
pub struct FakeEngine {
    info: EngineInfo,
    delay: Duration,
    panic_on: Option<f32>,
    fail_on: Option<f32>,
    hang_on: Option<f32>,
    /// Extra sleep for batches of exactly this many rows.
    slow_batch: Option<(usize, Duration)>,
    /// `true` while batches may pass; closed, they wait inside `infer` after being recorded.
    gate: watch::Sender<bool>,
    /// How many batches have entered `infer`.
    entered: watch::Sender<usize>,
    /// Per batch handed to the engine, the first input value of each row.
    seen: Mutex<Vec<Vec<f32>>>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEngine {
    /// One instance, no delay, the gate open.
    pub fn new() -> Self {
        Self::with_input_shape(vec![1])
    }

    /// The same model with a dynamic input length (`[-1]`): rows of different lengths
    /// cannot share a batch.
    pub fn variable_length() -> Self {
        Self::with_input_shape(vec![-1])
    }

    fn with_input_shape(shape: Vec<i64>) -> Self {
        Self {
            info: EngineInfo {
                backend: "fake".into(),
                device: "cpu".into(),
                model: ModelSpec {
                    name: "fake".into(),
                    version: "1".into(),
                    inputs: vec![TensorSpec {
                        name: INPUT.into(),
                        dtype: DType::F32,
                        shape,
                    }],
                    outputs: vec![TensorSpec {
                        name: OUTPUT.into(),
                        dtype: DType::F32,
                        shape: vec![3],
                    }],
                },
                instances: 1,
            },
            delay: Duration::ZERO,
            panic_on: None,
            fail_on: None,
            hang_on: None,
            slow_batch: None,
            gate: watch::Sender::new(true),
            entered: watch::Sender::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Serves under another model name.
    pub fn with_model_name(mut self, name: &str) -> Self {
        self.info.model.name = name.into();
        self
    }

    /// Reports `instances` in its [`EngineInfo`] (batches may run concurrently either way).
    pub fn with_instances(mut self, instances: usize) -> Self {
        self.info.instances = instances;
        self
    }

    /// Sleeps (on the tokio clock) this long in every batch.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Panics in any batch holding a row whose first value is `value`.
    pub fn panic_on(mut self, value: f32) -> Self {
        self.panic_on = Some(value);
        self
    }

    /// Fails with [`EngineError::Backend`] any batch holding a row whose first value is `value`.
    pub fn fail_on(mut self, value: f32) -> Self {
        self.fail_on = Some(value);
        self
    }

    /// Never finishes a batch holding a row whose first value is `value`: it waits for ever
    /// (until the runtime stops), as a hung backend does.
    pub fn hang_on(mut self, value: f32) -> Self {
        self.hang_on = Some(value);
        self
    }

    /// Sleeps `delay` more in batches of exactly `rows` rows, and only in those.
    pub fn slow_for_batch_size(mut self, rows: usize, delay: Duration) -> Self {
        self.slow_batch = Some((rows, delay));
        self
    }

    /// Closes the gate: batches handed over from now on wait until [`Self::release`].
    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// Opens the gate and lets every waiting batch through.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until at least `count` batches have been handed to the engine (held or not).
    pub async fn wait_for_batches(&self, count: usize) {
        let mut entered = self.entered.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = entered.wait_for(|&n| n >= count).await;
    }

    /// Per batch handed to the engine, in order, the first input value of each row.
    pub fn batches(&self) -> Vec<Vec<f32>> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches().iter().map(Vec::len).collect()
    }

    /// Whether a row whose first value is `value` was ever handed to the engine.
    pub fn computed(&self, value: f32) -> bool {
        self.batches().iter().flatten().any(|&v| v == value)
    }
}

#[async_trait]
impl InferenceEngine for FakeEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    async fn infer(&self, batch: Batch) -> Result<Batch, EngineError> {
        validate_batch(&self.info.model, &batch)?;
        let input = &batch.tensors[0];
        let values = input
            .as_f32()
            .ok_or_else(|| EngineError::Backend("the fake engine takes f32".into()))?;
        let row_len = input.shape()[1..].iter().product::<usize>();
        let rows: Vec<&[f32]> = if row_len == 0 {
            vec![&[][..]; batch.size]
        } else {
            values.chunks(row_len).collect()
        };
        let firsts: Vec<f32> = rows
            .iter()
            .map(|row| row.first().copied().unwrap_or(f32::NAN))
            .collect();
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(firsts.clone());
        self.entered.send_modify(|n| *n += 1);

        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|&open| open).await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some((rows, delay)) = self.slow_batch
            && rows == batch.size
        {
            tokio::time::sleep(delay).await;
        }
        if let Some(trigger) = self.hang_on
            && firsts.contains(&trigger)
        {
            std::future::pending::<()>().await;
        }
        if let Some(trigger) = self.panic_on
            && firsts.contains(&trigger)
        {
            panic!("fake engine told to panic on {trigger}");
        }
        if let Some(trigger) = self.fail_on
            && firsts.contains(&trigger)
        {
            return Err(EngineError::Backend(format!(
                "fake engine told to fail on {trigger}"
            )));
        }
        let outputs = rows
            .iter()
            .flat_map(|row| {
                let sum: f32 = row.iter().sum();
                [sum, 2.0 * sum, 3.0 * sum]
            })
            .collect();
        Ok(Batch {
            size: batch.size,
            tensors: vec![Tensor::from_f32(vec![batch.size, 3], outputs)?],
        })
    }
}

/// A one-value row for [`FakeEngine::new`].
pub fn sample(value: f32) -> Sample {
    row(&[value])
}

/// A row of the given values, for [`FakeEngine::variable_length`].
pub fn row(values: &[f32]) -> Sample {
    Sample::new(vec![
        Tensor::from_f32(vec![values.len()], values.to_vec())
            .expect("a vector's shape matches its length"),
    ])
}

/// What [`FakeEngine`] answers for a row whose values sum to `sum`.
pub fn expected_output(sum: f32) -> Sample {
    Sample::new(vec![
        Tensor::from_f32(vec![3], vec![sum, 2.0 * sum, 3.0 * sum])
            .expect("three values fit shape [3]"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn computes_records_and_triggers() {
        let engine = FakeEngine::new().fail_on(9.0);
        let batch = Batch::stack(&[sample(1.0), sample(-2.0)]).unwrap();
        let out = engine.infer(batch).await.unwrap();
        assert_eq!(
            out.unstack().unwrap(),
            vec![expected_output(1.0), expected_output(-2.0)]
        );
        let failing = Batch::stack(&[sample(9.0)]).unwrap();
        assert!(matches!(
            engine.infer(failing).await,
            Err(EngineError::Backend(_))
        ));
        assert_eq!(engine.batches(), vec![vec![1.0, -2.0], vec![9.0]]);
        assert!(engine.computed(-2.0) && !engine.computed(3.0));
    }

    #[tokio::test]
    async fn variable_length_rows_sum() {
        let engine = FakeEngine::variable_length();
        let batch = Batch::stack(&[row(&[1.0, 2.0]), row(&[3.0, 4.0])]).unwrap();
        let out = engine.infer(batch).await.unwrap();
        assert_eq!(
            out.unstack().unwrap(),
            vec![expected_output(3.0), expected_output(7.0)]
        );
    }
}
