//! The scheduler's promises, one test each: batching, splitting, priority and aging,
//! deadlines, cancellation, admission control, failure isolation, shutdown and stats.
//!
//! Tests hold the fake engine's gate to build a queue and run on tokio's paused clock,
//! so nothing depends on real sleeps.
#![cfg(feature = "testing")]

use inference_core::testing::{FakeEngine, expected_output, row, sample};
use inference_core::{
    EngineError, InferenceEngine, InferenceRequest, InferenceResponse, Sample, Scheduler,
    SchedulerConfig,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

fn config(max_batch_size: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size,
        priority_aging: Duration::ZERO,
        ..SchedulerConfig::default()
    }
}

fn start(engine: &Arc<FakeEngine>, config: SchedulerConfig) -> Scheduler {
    Scheduler::start(Arc::clone(engine) as Arc<dyn InferenceEngine>, config)
}

fn request(values: &[f32], priority: i32) -> InferenceRequest {
    InferenceRequest {
        samples: values.iter().map(|&v| sample(v)).collect(),
        priority,
        timeout: None,
    }
}

fn outputs_for(values: &[f32]) -> Vec<Sample> {
    values.iter().map(|&v| expected_output(v)).collect()
}

fn spawn_submit(
    scheduler: &Scheduler,
    request: InferenceRequest,
) -> JoinHandle<Result<InferenceResponse, EngineError>> {
    let scheduler = scheduler.clone();
    tokio::spawn(async move { scheduler.submit(request).await })
}

/// Lets other tasks run until `condition` holds; the runtime is single-threaded, so this
/// is deterministic, and it fails loudly instead of hanging.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting until {what}");
}

/// Holds the engine with one running batch (value 0.0), so later requests queue up.
async fn occupy(
    engine: &Arc<FakeEngine>,
    scheduler: &Scheduler,
) -> JoinHandle<Result<InferenceResponse, EngineError>> {
    engine.hold();
    let running = spawn_submit(scheduler, request(&[0.0], 0));
    engine.wait_for_batches(1).await;
    running
}

/// Queues a request and waits until its rows are in the queue, so submission order is fixed.
async fn enqueue(
    scheduler: &Scheduler,
    request: InferenceRequest,
) -> JoinHandle<Result<InferenceResponse, EngineError>> {
    let expected = scheduler.queue_len() + request.samples.len();
    let handle = spawn_submit(scheduler, request);
    until("the request is queued", || {
        scheduler.queue_len() == expected
    })
    .await;
    handle
}

async fn answer(
    handle: JoinHandle<Result<InferenceResponse, EngineError>>,
) -> Result<InferenceResponse, EngineError> {
    handle.await.expect("the submitting task does not panic")
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_a_batch_is_split_and_reassembled_in_order() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(4));
    let values: Vec<f32> = (1..=10).map(|v| v as f32).collect();
    let response = scheduler.submit(request(&values, 0)).await.unwrap();
    assert_eq!(response.outputs, outputs_for(&values));
    assert_eq!(response.engine_batch_sizes, vec![4, 4, 2]);
    assert_eq!(response.row_latencies.len(), 10);
    assert_eq!(
        engine.batches(),
        vec![
            values[..4].to_vec(),
            values[4..8].to_vec(),
            values[8..].to_vec()
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_are_merged_into_one_engine_batch() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(32));
    let running = occupy(&engine, &scheduler).await;
    let mut waiting = Vec::new();
    for v in 1..=10 {
        waiting.push(enqueue(&scheduler, request(&[v as f32], 0)).await);
    }
    engine.release();
    answer(running).await.unwrap();
    for (v, handle) in (1..=10).zip(waiting) {
        let response = answer(handle).await.unwrap();
        assert_eq!(response.outputs, outputs_for(&[v as f32]));
        assert_eq!(response.engine_batch_sizes, vec![10]);
    }
    assert_eq!(engine.batch_sizes(), vec![1, 10]);
    let stats = scheduler.stats();
    assert_eq!(stats.max_batch_size_seen, 10);
    assert_eq!(
        stats.batch_size_histogram.into_iter().collect::<Vec<_>>(),
        vec![(1, 1), (10, 1)]
    );
    assert_eq!(stats.average_batch_size, 5.5);
}

#[tokio::test(start_paused = true)]
async fn higher_priority_runs_first_and_fifo_within_a_level() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(1));
    let running = occupy(&engine, &scheduler).await;
    let handles = vec![
        enqueue(&scheduler, request(&[1.0], 0)).await,
        enqueue(&scheduler, request(&[2.0], 0)).await,
        enqueue(&scheduler, request(&[3.0], 5)).await,
        enqueue(&scheduler, request(&[4.0], 2)).await,
        enqueue(&scheduler, request(&[5.0], -1)).await,
    ];
    engine.release();
    answer(running).await.unwrap();
    for handle in handles {
        answer(handle).await.unwrap();
    }
    assert_eq!(
        engine.batches(),
        vec![
            vec![0.0],
            vec![3.0],
            vec![4.0],
            vec![1.0],
            vec![2.0],
            vec![5.0]
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn aging_lets_a_long_waiting_low_priority_request_overtake() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            priority_aging: Duration::from_millis(10),
            ..config(1)
        },
    );
    let running = occupy(&engine, &scheduler).await;
    let low = enqueue(&scheduler, request(&[1.0], 0)).await;
    // 35 ms of waiting lift the low request to effective priority 3.
    tokio::time::advance(Duration::from_millis(35)).await;
    let high = enqueue(&scheduler, request(&[2.0], 2)).await;
    let highest = enqueue(&scheduler, request(&[3.0], 9)).await;
    engine.release();
    for handle in [running, low, high, highest] {
        answer(handle).await.unwrap();
    }
    assert_eq!(
        engine.batches(),
        vec![vec![0.0], vec![3.0], vec![1.0], vec![2.0]]
    );
}

#[tokio::test(start_paused = true)]
async fn at_equal_effective_priority_the_older_request_goes_first() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            priority_aging: Duration::from_millis(10),
            ..config(1)
        },
    );
    let running = occupy(&engine, &scheduler).await;
    let low = enqueue(&scheduler, request(&[1.0], 0)).await;
    // 25 ms lift the low request to effective priority 2, level with the newcomer.
    tokio::time::advance(Duration::from_millis(25)).await;
    let high = enqueue(&scheduler, request(&[2.0], 2)).await;
    engine.release();
    for handle in [running, low, high] {
        answer(handle).await.unwrap();
    }
    assert_eq!(engine.batches(), vec![vec![0.0], vec![1.0], vec![2.0]]);
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_fails_and_is_never_computed() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(1));
    let running = occupy(&engine, &scheduler).await;
    let late = InferenceRequest {
        timeout: Some(Duration::from_millis(50)),
        ..request(&[2.0], 0)
    };
    let err = scheduler.submit(late).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::DeadlineExceeded(Duration::from_millis(50))
    );
    assert_eq!(scheduler.queue_len(), 0, "its rows left the queue");
    engine.release();
    answer(running).await.unwrap();
    scheduler.submit(request(&[3.0], 0)).await.unwrap();
    assert!(!engine.computed(2.0));
    assert_eq!(engine.batches(), vec![vec![0.0], vec![3.0]]);
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.expired,
            stats.requests_failed,
            stats.requests_processed
        ),
        (1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_timeout_applies_to_requests_without_one() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            default_timeout: Some(Duration::from_millis(20)),
            ..config(1)
        },
    );
    let running = occupy(&engine, &scheduler).await;
    let err = scheduler.submit(request(&[2.0], 0)).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::DeadlineExceeded(Duration::from_millis(20))
    );
    engine.release();
    // The occupying request got the same default deadline and it has passed too, but it was
    // already computing: it is answered with whatever came first, here the deadline.
    let _ = answer(running).await;
    assert!(!engine.computed(2.0));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_while_a_batch_fills_drops_the_row_before_compute() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_delay: Duration::from_millis(100),
            ..config(8)
        },
    );
    let late = InferenceRequest {
        timeout: Some(Duration::from_millis(30)),
        ..request(&[2.0], 0)
    };
    let err = scheduler.submit(late).await.unwrap_err();
    assert!(matches!(err, EngineError::DeadlineExceeded(_)));
    // The worker had claimed the row and was waiting for the batch to fill.
    tokio::time::sleep(Duration::from_millis(100)).await;
    scheduler.submit(request(&[3.0], 0)).await.unwrap();
    assert_eq!(engine.batches(), vec![vec![3.0]]);
}

/// Polls a submit once, so its rows are queued, and leaves it waiting unpolled: then only
/// the workers can notice its deadline.
async fn queue_without_polling<F: std::future::Future>(submit: std::pin::Pin<&mut F>) {
    let polled_once = tokio::time::timeout(Duration::ZERO, submit).await;
    assert!(polled_once.is_err(), "the request is still waiting");
}

#[tokio::test(start_paused = true)]
async fn a_worker_finding_an_expired_request_in_the_queue_answers_it_without_computing() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(2));
    let running = occupy(&engine, &scheduler).await;
    let late = scheduler.submit(InferenceRequest {
        timeout: Some(Duration::from_millis(30)),
        ..request(&[2.0], 0)
    });
    tokio::pin!(late);
    queue_without_polling(late.as_mut()).await;
    let others = [
        enqueue(&scheduler, request(&[3.0], 0)).await,
        enqueue(&scheduler, request(&[4.0], 0)).await,
    ];
    tokio::time::advance(Duration::from_millis(50)).await;
    engine.release();
    answer(running).await.unwrap();
    until("a worker drops the expired rows", || {
        scheduler.queue_len() == 0
    })
    .await;
    assert_eq!(
        late.await,
        Err(EngineError::DeadlineExceeded(Duration::from_millis(30)))
    );
    for handle in others {
        answer(handle).await.unwrap();
    }
    // The expired row took no place in the batch.
    assert_eq!(engine.batches(), vec![vec![0.0], vec![3.0, 4.0]]);
    assert_eq!(scheduler.stats().expired, 1);
}

#[tokio::test(start_paused = true)]
async fn a_worker_drops_rows_that_expired_while_their_batch_filled() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_delay: Duration::from_millis(100),
            ..config(8)
        },
    );
    let late = scheduler.submit(InferenceRequest {
        timeout: Some(Duration::from_millis(30)),
        ..request(&[2.0], 0)
    });
    tokio::pin!(late);
    queue_without_polling(late.as_mut()).await;
    // The worker claims the row and waits 100 ms for more; the deadline passes meanwhile.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        late.await,
        Err(EngineError::DeadlineExceeded(Duration::from_millis(30)))
    );
    scheduler.submit(request(&[3.0], 0)).await.unwrap();
    assert_eq!(engine.batches(), vec![vec![3.0]]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_is_withdrawn_and_never_computed() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(1));
    let running = occupy(&engine, &scheduler).await;
    let gone = enqueue(&scheduler, request(&[2.0, 2.5], 0)).await;
    let kept = enqueue(&scheduler, request(&[4.0], 0)).await;
    gone.abort();
    until("the dropped request leaves the queue", || {
        scheduler.queue_len() == 1
    })
    .await;
    assert!(gone.await.unwrap_err().is_cancelled());
    engine.release();
    answer(running).await.unwrap();
    answer(kept).await.unwrap();
    assert!(!engine.computed(2.0) && !engine.computed(2.5));
    assert_eq!(engine.batches(), vec![vec![0.0], vec![4.0]]);
    let stats = scheduler.stats();
    assert_eq!((stats.cancelled, stats.requests_failed), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_its_batch_fills_is_not_computed() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_delay: Duration::from_millis(100),
            ..config(8)
        },
    );
    let gone = spawn_submit(&scheduler, request(&[2.0], 0));
    // While this task sleeps the worker claims the row and waits for the batch to fill.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(scheduler.queue_len(), 0);
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(100)).await;
    scheduler.submit(request(&[3.0], 0)).await.unwrap();
    assert_eq!(engine.batches(), vec![vec![3.0]]);
    assert_eq!(scheduler.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_at_once_and_recovers_after_draining() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_size: 4,
            ..config(1)
        },
    );
    let running = occupy(&engine, &scheduler).await;
    let queued = enqueue(&scheduler, request(&[1.0, 2.0, 3.0, 4.0], 0)).await;
    // Time only moves if the submit waits; it must not.
    let rejected = tokio::time::timeout(
        Duration::from_millis(1),
        scheduler.submit(request(&[5.0], 0)),
    )
    .await
    .expect("a rejection does not wait");
    match rejected {
        Err(EngineError::Overloaded {
            queued,
            capacity,
            retry_after,
        }) => {
            assert_eq!((queued, capacity), (4, 4));
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    let too_big = scheduler.submit(request(&[1.0; 5], 0)).await.unwrap_err();
    assert!(
        matches!(too_big, EngineError::InvalidBatch(ref m) if m.contains("at most 4")),
        "{too_big}"
    );

    engine.release();
    answer(running).await.unwrap();
    answer(queued).await.unwrap();
    let recovered = scheduler.submit(request(&[5.0], 0)).await.unwrap();
    assert_eq!(recovered.outputs, outputs_for(&[5.0]));
    assert_eq!(scheduler.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_fails_only_its_requests_and_the_worker_continues() {
    let engine = Arc::new(FakeEngine::new().panic_on(13.0));
    let scheduler = start(&engine, config(1));
    let running = occupy(&engine, &scheduler).await;
    let doomed = enqueue(&scheduler, request(&[13.0], 0)).await;
    let fine = enqueue(&scheduler, request(&[5.0], 0)).await;
    engine.release();
    answer(running).await.unwrap();
    let err = answer(doomed).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Panicked(ref m) if m.contains("panic on 13")),
        "{err}"
    );
    assert_eq!(answer(fine).await.unwrap().outputs, outputs_for(&[5.0]));
    assert_eq!(
        scheduler.submit(request(&[6.0], 0)).await.unwrap().outputs,
        outputs_for(&[6.0])
    );
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.errors,
            stats.requests_failed,
            stats.requests_processed
        ),
        (1, 1, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_error_fails_only_the_request_whose_rows_fail_alone() {
    let engine = Arc::new(FakeEngine::new().fail_on(13.0));
    let scheduler = start(&engine, config(2));
    let running = occupy(&engine, &scheduler).await;
    let doomed = enqueue(&scheduler, request(&[13.0], 0)).await;
    let mate = enqueue(&scheduler, request(&[5.0], 0)).await;
    let next = enqueue(&scheduler, request(&[7.0], 0)).await;
    engine.release();
    answer(running).await.unwrap();
    assert!(matches!(answer(doomed).await, Err(EngineError::Backend(_))));
    assert_eq!(answer(mate).await.unwrap().outputs, outputs_for(&[5.0]));
    assert_eq!(answer(next).await.unwrap().outputs, outputs_for(&[7.0]));
    // The merged batch failed, then each request's rows ran on their own.
    assert_eq!(
        engine.batches(),
        vec![vec![0.0], vec![13.0, 5.0], vec![13.0], vec![5.0], vec![7.0]]
    );
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.errors,
            stats.requests_failed,
            stats.requests_processed
        ),
        (2, 1, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_fails_the_whole_split_request_and_its_queued_rows_are_not_computed() {
    let engine = Arc::new(FakeEngine::new().fail_on(2.0));
    let scheduler = start(&engine, config(2));
    let err = scheduler
        .submit(request(&[1.0, 2.0, 3.0, 4.0], 0))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Backend(_)));
    assert_eq!(engine.batches(), vec![vec![1.0, 2.0]]);
    assert_eq!(scheduler.queue_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn max_queue_delay_waits_for_a_batch_to_fill() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_delay: Duration::from_millis(50),
            ..config(8)
        },
    );
    let first = spawn_submit(&scheduler, request(&[1.0], 0));
    // While this task sleeps the worker claims the first row and waits for more.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let later: Vec<_> = (2..=4)
        .map(|v| spawn_submit(&scheduler, request(&[v as f32], 0)))
        .collect();
    let first = answer(first).await.unwrap();
    assert_eq!(first.engine_batch_sizes, vec![4]);
    // The batch left exactly when the oldest row had waited max_queue_delay.
    assert_eq!(first.queue_time, Duration::from_millis(50));
    for handle in later {
        assert_eq!(
            answer(handle).await.unwrap().queue_time,
            Duration::from_millis(40)
        );
    }
    assert_eq!(engine.batch_sizes(), vec![4]);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_does_not_wait_for_max_queue_delay() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(
        &engine,
        SchedulerConfig {
            max_queue_delay: Duration::from_secs(10),
            ..config(3)
        },
    );
    let response = scheduler
        .submit(request(&[1.0, 2.0, 3.0], 0))
        .await
        .unwrap();
    assert_eq!(response.queue_time, Duration::ZERO);
    assert_eq!(response.engine_batch_sizes, vec![3]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_new_work_and_finishes_what_is_queued() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(1));
    let running = occupy(&engine, &scheduler).await;
    let queued = [
        enqueue(&scheduler, request(&[1.0], 0)).await,
        enqueue(&scheduler, request(&[2.0], 0)).await,
    ];
    let stopping = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.shutdown().await })
    };
    until("the scheduler stops accepting", || {
        !scheduler.stats().running
    })
    .await;
    assert!(matches!(
        scheduler.submit(request(&[3.0], 0)).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the queue to drain"
    );
    engine.release();
    answer(running).await.unwrap();
    for (v, handle) in [1.0, 2.0].into_iter().zip(queued) {
        assert_eq!(answer(handle).await.unwrap().outputs, outputs_for(&[v]));
    }
    stopping.await.unwrap();
    scheduler.shutdown().await;
    assert_eq!(engine.batches(), vec![vec![0.0], vec![1.0], vec![2.0]]);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_sample_is_rejected_before_queueing() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    let mut bad = request(&[1.0, 2.0, 3.0], 0);
    bad.samples[1] = row(&[1.0, 2.0]);
    match scheduler.submit(bad).await {
        Err(EngineError::InvalidSample { index, reason }) => {
            assert_eq!(index, 1);
            assert!(reason.contains("shape"), "{reason}");
        }
        other => panic!("expected InvalidSample, got {other:?}"),
    }
    assert!(matches!(
        scheduler.submit(request(&[], 0)).await,
        Err(EngineError::InvalidBatch(_))
    ));
    assert!(engine.batches().is_empty());
    assert_eq!(
        scheduler.submit(request(&[4.0], 0)).await.unwrap().outputs,
        outputs_for(&[4.0])
    );
}

#[tokio::test(start_paused = true)]
async fn rows_of_different_shapes_never_share_a_batch() {
    let engine = Arc::new(FakeEngine::variable_length());
    let scheduler = start(&engine, config(8));
    let running = {
        engine.hold();
        let handle = spawn_submit(&scheduler, InferenceRequest::new(vec![row(&[0.0])]));
        engine.wait_for_batches(1).await;
        handle
    };
    let mixed = enqueue(
        &scheduler,
        InferenceRequest::new(vec![
            row(&[1.0, 1.0]),
            row(&[2.0, 2.0]),
            row(&[3.0, 3.0, 3.0]),
        ]),
    )
    .await;
    let pair = enqueue(&scheduler, InferenceRequest::new(vec![row(&[4.0, 4.0])])).await;
    engine.release();
    answer(running).await.unwrap();
    assert_eq!(
        answer(mixed).await.unwrap().outputs,
        outputs_for(&[2.0, 4.0, 9.0])
    );
    assert_eq!(answer(pair).await.unwrap().outputs, outputs_for(&[8.0]));
    assert_eq!(
        engine.batches(),
        vec![vec![0.0], vec![1.0, 2.0], vec![3.0], vec![4.0]]
    );
}

#[tokio::test(start_paused = true)]
async fn instances_run_engine_batches_in_parallel() {
    let engine = Arc::new(FakeEngine::new().with_instances(2));
    let scheduler = start(&engine, config(1));
    assert_eq!(scheduler.config().instances, 2);
    engine.hold();
    let a = spawn_submit(&scheduler, request(&[1.0], 0));
    let b = spawn_submit(&scheduler, request(&[2.0], 0));
    // Both batches are inside the engine at once while the gate is closed.
    engine.wait_for_batches(2).await;
    engine.release();
    answer(a).await.unwrap();
    answer(b).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stats_report_measured_times_and_counts() {
    let engine = Arc::new(FakeEngine::new().with_delay(Duration::from_millis(10)));
    let scheduler = start(&engine, config(4));
    let running = occupy(&engine, &scheduler).await;
    let mut handles = Vec::new();
    for v in 1..=4 {
        handles.push(enqueue(&scheduler, request(&[v as f32], 0)).await);
    }
    tokio::time::advance(Duration::from_millis(5)).await;
    engine.release();
    let first = answer(running).await.unwrap();
    assert!(
        first.inference_time >= Duration::from_millis(15),
        "{first:?}"
    );
    for handle in handles {
        let response = answer(handle).await.unwrap();
        assert!(
            response.queue_time >= Duration::from_millis(15),
            "{response:?}"
        );
        assert!(
            response.inference_time >= Duration::from_millis(10),
            "{response:?}"
        );
        assert_eq!(
            response.total_time,
            response.queue_time + response.inference_time
        );
        assert_eq!(response.row_latencies, vec![response.total_time]);
    }
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.requests_processed,
            stats.rows_processed,
            stats.batches_processed
        ),
        (5, 5, 2)
    );
    assert_eq!(stats.average_batch_size, 2.5);
    assert!(stats.average_inference_time_ms >= 10.0, "{stats:?}");
    assert!(stats.average_queue_time_ms > 0.0 && stats.average_row_latency_ms > 0.0);
    assert!(stats.latency_p50_ms > 0.0);
    assert!(
        stats.latency_p50_ms <= stats.latency_p95_ms
            && stats.latency_p95_ms <= stats.latency_p99_ms
    );
    assert!(stats.uptime >= Duration::from_millis(25));
    assert!(stats.requests_per_second > 0.0 && stats.rows_per_second > 0.0);
    assert!(stats.running && stats.queue_size == 0);
}

/// Polls a future once; on this single-threaded runtime no other task runs meanwhile.
async fn poll_once<F: std::future::Future>(
    future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    let mut future = Some(future);
    std::future::poll_fn(|cx| {
        let future = future.take().expect("polled once");
        std::task::Poll::Ready(future.poll(cx))
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn submit_inline_runs_at_once_on_the_callers_task_when_the_scheduler_is_idle() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    // A queued request waits for the worker task, which cannot run inside this one poll.
    let mut queued = std::pin::pin!(scheduler.submit(request(&[1.0], 0)));
    assert!(poll_once(queued.as_mut()).await.is_pending());
    queued.await.unwrap();

    let mut alone = std::pin::pin!(scheduler.submit_inline(request(&[2.0, 3.0], 0)));
    let std::task::Poll::Ready(answered) = poll_once(alone.as_mut()).await else {
        panic!("an idle scheduler runs the request within the caller's poll");
    };
    let response = answered.unwrap();
    assert_eq!(response.outputs, outputs_for(&[2.0, 3.0]));
    assert_eq!(response.engine_batch_sizes, vec![2]);
    assert_eq!(response.row_latencies.len(), 2);
    assert_eq!(engine.batches(), vec![vec![1.0], vec![2.0, 3.0]]);
    let stats = scheduler.stats();
    assert_eq!(stats.requests_processed, 2);
    assert_eq!(stats.batches_processed, 2);
    assert_eq!(stats.rows_processed, 3);
}

#[tokio::test(start_paused = true)]
async fn submit_inline_takes_every_free_engine_slot_then_queues() {
    let engine = Arc::new(FakeEngine::new().with_instances(2));
    let scheduler = start(&engine, config(8));
    engine.hold();
    let mut first = Box::pin(scheduler.submit_inline(request(&[1.0], 0)));
    let mut second = Box::pin(scheduler.submit_inline(request(&[2.0], 0)));
    assert!(poll_once(first.as_mut()).await.is_pending());
    assert!(poll_once(second.as_mut()).await.is_pending());
    // Both run on their callers' tasks, each in an engine slot of its own.
    assert_eq!(engine.batches(), vec![vec![1.0], vec![2.0]]);
    assert_eq!(scheduler.queue_len(), 0);
    // Every slot is taken: the next request waits in the queue for a worker.
    let third = enqueue_inline(&scheduler, request(&[3.0], 0)).await;
    assert_eq!(engine.batches().len(), 2);
    engine.release();
    assert_eq!(first.await.unwrap().outputs, outputs_for(&[1.0]));
    assert_eq!(second.await.unwrap().outputs, outputs_for(&[2.0]));
    // Bounded: a worker left asleep would never answer.
    let third = tokio::time::timeout(Duration::from_secs(60), answer(third))
        .await
        .expect("the queued row runs once an inline batch frees its slot");
    assert_eq!(third.unwrap().outputs, outputs_for(&[3.0]));
    assert_eq!(engine.batches(), vec![vec![1.0], vec![2.0], vec![3.0]]);
}

/// Spawns `submit_inline` and waits until its rows are queued.
async fn enqueue_inline(
    scheduler: &Scheduler,
    request: InferenceRequest,
) -> JoinHandle<Result<InferenceResponse, EngineError>> {
    let queued = scheduler.queue_len() + request.samples.len();
    let handle = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.submit_inline(request).await })
    };
    until("the request is queued", || scheduler.queue_len() == queued).await;
    handle
}

#[tokio::test(start_paused = true)]
async fn submit_inline_queues_behind_a_running_batch_and_is_batched_with_others() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    let running = occupy(&engine, &scheduler).await;
    let alone = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.submit_inline(request(&[1.0], 0)).await })
    };
    until("the request is queued", || scheduler.queue_len() == 1).await;
    let other = enqueue(&scheduler, request(&[2.0], 0)).await;
    engine.release();
    answer(running).await.unwrap();
    assert_eq!(answer(alone).await.unwrap().engine_batch_sizes, vec![2]);
    answer(other).await.unwrap();
    assert_eq!(engine.batches(), vec![vec![0.0], vec![1.0, 2.0]]);
}

#[tokio::test(start_paused = true)]
async fn submit_inline_splits_a_request_larger_than_a_batch_through_the_queue() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(2));
    let mut alone = std::pin::pin!(scheduler.submit_inline(request(&[1.0, 2.0, 3.0], 0)));
    assert!(poll_once(alone.as_mut()).await.is_pending());
    let response = alone.await.unwrap();
    assert_eq!(response.outputs, outputs_for(&[1.0, 2.0, 3.0]));
    assert_eq!(engine.batch_sizes(), vec![2, 1]);
}

#[tokio::test(start_paused = true)]
async fn submit_inline_keeps_deadlines_failures_and_cancellation() {
    let engine = Arc::new(
        FakeEngine::new()
            .with_delay(Duration::from_millis(10))
            .fail_on(7.0)
            .panic_on(8.0),
    );
    let scheduler = start(&engine, config(8));
    let mut late = request(&[1.0], 0);
    late.timeout = Some(Duration::from_millis(5));
    assert!(matches!(
        scheduler.submit_inline(late).await,
        Err(EngineError::DeadlineExceeded(t)) if t == Duration::from_millis(5)
    ));
    assert!(matches!(
        scheduler.submit_inline(request(&[7.0], 0)).await,
        Err(EngineError::Backend(_))
    ));
    assert!(matches!(
        scheduler.submit_inline(request(&[8.0], 0)).await,
        Err(EngineError::Panicked(_))
    ));

    // A caller that stops waiting is counted as cancelled, and the scheduler is idle again.
    engine.hold();
    let mut dropped = Box::pin(scheduler.submit_inline(request(&[2.0], 0)));
    assert!(poll_once(dropped.as_mut()).await.is_pending());
    drop(dropped);
    engine.release();
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.expired,
            stats.errors,
            stats.requests_failed,
            stats.cancelled
        ),
        (1, 2, 3, 1)
    );
    assert_eq!(
        scheduler
            .submit_inline(request(&[3.0], 0))
            .await
            .unwrap()
            .outputs,
        outputs_for(&[3.0])
    );
    assert_eq!(scheduler.stats().requests_processed, 1);
}

#[tokio::test(start_paused = true)]
async fn submit_inline_after_shutdown_is_refused() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    scheduler.shutdown().await;
    assert!(matches!(
        scheduler.submit_inline(request(&[1.0], 0)).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(engine.batches().is_empty());
}

#[tokio::test(start_paused = true)]
async fn rows_queued_while_an_inline_batch_runs_wait_for_its_slot_and_batch_together() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    engine.hold();
    let alone = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.submit_inline(request(&[1.0], 0)).await })
    };
    engine.wait_for_batches(1).await;
    // The inline batch holds the engine's one slot: the worker leaves these queued.
    let first = enqueue(&scheduler, request(&[2.0], 0)).await;
    let second = enqueue(&scheduler, request(&[3.0], 0)).await;
    engine.release();
    assert_eq!(answer(alone).await.unwrap().engine_batch_sizes, vec![1]);
    assert_eq!(answer(first).await.unwrap().engine_batch_sizes, vec![2]);
    answer(second).await.unwrap();
    assert_eq!(engine.batches(), vec![vec![1.0], vec![2.0, 3.0]]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_inline_batch_frees_its_slot_for_the_rows_queued_behind_it() {
    let engine = Arc::new(FakeEngine::new());
    let scheduler = start(&engine, config(8));
    engine.hold();
    let mut alone = Box::pin(scheduler.submit_inline(request(&[1.0], 0)));
    assert!(poll_once(alone.as_mut()).await.is_pending());
    let queued = enqueue(&scheduler, request(&[2.0], 0)).await;
    drop(alone);
    engine.release();
    // Bounded: a worker left asleep would never answer.
    let response = tokio::time::timeout(Duration::from_secs(60), answer(queued))
        .await
        .expect("the queued row runs once the inline batch is gone")
        .unwrap();
    assert_eq!(response.outputs, outputs_for(&[2.0]));
    assert_eq!(scheduler.stats().cancelled, 1);
}
