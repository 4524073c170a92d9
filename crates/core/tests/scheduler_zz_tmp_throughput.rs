#![cfg(feature = "testing")]
use inference_core::testing::{FakeEngine, sample};
use inference_core::{InferenceEngine, InferenceRequest, Scheduler, SchedulerConfig};
use std::sync::Arc;
#[test]
fn throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let engine = Arc::new(FakeEngine::new());
        let s = Scheduler::start(engine.clone() as Arc<dyn InferenceEngine>, SchedulerConfig { instances: 1, ..Default::default() });
        let start = std::time::Instant::now();
        let clients = 64; let per = 2000;
        let tasks: Vec<_> = (0..clients).map(|c| { let s = s.clone(); tokio::spawn(async move {
            for i in 0..per { s.submit(InferenceRequest::new(vec![sample((c*per+i) as f32)])).await.unwrap(); } }) }).collect();
        for t in tasks { t.await.unwrap(); }
        let el = start.elapsed();
        let st = s.stats();
        println!("{} requests in {:?}: {:.0} req/s, avg batch {:.1}, p50 {:.3} ms p99 {:.3} ms", clients*per, el, (clients*per) as f64/el.as_secs_f64(), st.average_batch_size, st.latency_p50_ms, st.latency_p99_ms);
    });
}
