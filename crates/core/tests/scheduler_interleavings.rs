//! Whatever the interleaving of concurrent requests of any size and priority, every request
//! gets exactly its own rows back, in order, and every row is computed exactly once.
#![cfg(feature = "testing")]

use inference_core::testing::{FakeEngine, expected_output, sample};
use inference_core::{InferenceEngine, InferenceRequest, Scheduler, SchedulerConfig};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// One client: how many rows it sends, at which priority, after how many yields, and
/// whether through `submit_inline` (run at once when an engine slot is free).
#[derive(Debug, Clone)]
struct Client {
    rows: usize,
    priority: i32,
    yields_before: usize,
    alone: bool,
}

fn client() -> impl Strategy<Value = Client> {
    (1usize..=20, -2i32..=2, 0usize..6, any::<bool>()).prop_map(
        |(rows, priority, yields_before, alone)| Client {
            rows,
            priority,
            yields_before,
            alone,
        },
    )
}

/// Row `j` of client `i` carries the value `i * 100 + j`, unique across the run.
fn value(client: usize, row: usize) -> f32 {
    (client * 100 + row) as f32
}

/// Runs the clients concurrently and checks every answer and the engine's record.
async fn check(
    clients: Vec<Client>,
    config: SchedulerConfig,
    engine: FakeEngine,
    hold_first: bool,
) -> Result<(), TestCaseError> {
    let engine = Arc::new(engine);
    let scheduler = Scheduler::start(
        Arc::clone(&engine) as Arc<dyn InferenceEngine>,
        config.clone(),
    );
    if hold_first {
        engine.hold();
    }
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let scheduler = scheduler.clone();
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..client.yields_before {
                    tokio::task::yield_now().await;
                }
                let request = InferenceRequest {
                    samples: (0..client.rows).map(|j| sample(value(i, j))).collect(),
                    priority: client.priority,
                    timeout: None,
                };
                if client.alone {
                    scheduler.submit_inline(request).await
                } else {
                    scheduler.submit(request).await
                }
            })
        })
        .collect();
    if hold_first {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        engine.release();
    }

    let mut expected_values = Vec::new();
    for (i, (task, client)) in tasks.into_iter().zip(&clients).enumerate() {
        let response = task
            .await
            .expect("the client task does not panic")
            .map_err(|e| TestCaseError::fail(format!("client {i} failed: {e}")))?;
        let values: Vec<f32> = (0..client.rows).map(|j| value(i, j)).collect();
        let expected: Vec<_> = values.iter().map(|&v| expected_output(v)).collect();
        prop_assert_eq!(&response.outputs, &expected, "client {} got other rows", i);
        prop_assert_eq!(response.row_latencies.len(), client.rows);
        prop_assert!(
            response
                .engine_batch_sizes
                .iter()
                .all(|&s| s >= 1 && s <= config.max_batch_size)
        );
        prop_assert!(
            response.engine_batch_sizes.len() >= client.rows.div_ceil(config.max_batch_size)
        );
        expected_values.extend(values);
    }

    let sizes = engine.batch_sizes();
    prop_assert!(
        sizes.iter().all(|&s| s >= 1 && s <= config.max_batch_size),
        "{:?}",
        sizes
    );
    let mut computed: Vec<f32> = engine.batches().into_iter().flatten().collect();
    computed.sort_by(f32::total_cmp);
    expected_values.sort_by(f32::total_cmp);
    prop_assert_eq!(
        computed,
        expected_values,
        "every row is computed exactly once"
    );

    let stats = scheduler.stats();
    prop_assert_eq!(stats.requests_processed, clients.len() as u64);
    prop_assert_eq!(
        stats.rows_processed,
        clients.iter().map(|c| c.rows as u64).sum::<u64>()
    );
    prop_assert_eq!(stats.batches_processed, sizes.len() as u64);
    prop_assert_eq!(stats.queue_size, 0);
    prop_assert_eq!(
        (stats.errors, stats.requests_failed, stats.rejected),
        (0, 0, 0)
    );
    scheduler.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_request_gets_exactly_its_own_rows_in_order(
        clients in proptest::collection::vec(client(), 1..24),
        max_batch_size in 1usize..=8,
        instances in 1usize..=3,
        max_queue_delay_ms in prop_oneof![Just(0u64), 1u64..5],
        engine_delay_ms in 0u64..3,
        aging_ms in prop_oneof![Just(0u64), 1u64..5],
        hold_first in any::<bool>(),
    ) {
        let config = SchedulerConfig {
            max_batch_size,
            instances,
            max_queue_delay: Duration::from_millis(max_queue_delay_ms),
            priority_aging: Duration::from_millis(aging_ms),
            ..SchedulerConfig::default()
        };
        let engine = FakeEngine::new().with_delay(Duration::from_millis(engine_delay_ms));
        // One thread and the paused clock: the interleaving is a function of the inputs.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime starts");
        runtime.block_on(check(clients, config, engine, hold_first))?;
    }
}

/// The same promise with real threads racing, where the interleaving is up to the OS.
#[test]
fn submitters_on_many_threads_get_their_own_rows() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let clients: Vec<Client> = (0..64)
        .map(|i| Client {
            rows: 1 + (i * 7) % 19,
            priority: (i % 5) as i32 - 2,
            yields_before: i % 3,
            alone: i % 2 == 0,
        })
        .collect();
    let config = SchedulerConfig {
        max_batch_size: 8,
        instances: 3,
        ..SchedulerConfig::default()
    };
    runtime
        .block_on(check(clients, config, FakeEngine::new(), false))
        .expect("every client gets its own rows");
}
