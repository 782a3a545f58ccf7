//! The metrics as rendered: a series per live worker, counters that move
//! with exits and replacements, the request latency histogram, readiness.

use serde_json::json;

use super::*;
use crate::message::Message;
use crate::primary::PoolStatus;

/// The value of the sample `series` (name and labels, as rendered), if
/// there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    let line = text.lines().find(|line| {
        line.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    })?;
    line.rsplit(' ').next()?.parse().ok()
}

fn worker_series(name: &str, slot: u32, id: u64) -> String {
    format!("{name}{{pool=\"default\",slot=\"{slot}\",worker_id=\"{id}\",generation=\"1\"}}")
}

fn status(primary: &Harness) -> PoolStatus {
    let metrics = primary.context.metrics();
    metrics.pools().remove(0)
}

#[tokio::test(start_paused = true)]
async fn each_live_worker_has_its_series_and_an_exit_moves_the_counters() {
    let mut primary = pool(ClusterPrimary::builder(), 2);
    let text = primary.context.metrics().render();
    for (slot, id) in [(0, 1), (1, 2)] {
        let sent = worker_series("isotropic_cluster_worker_messages_sent_total", slot, id);
        assert!(sample(&text, &sent).is_some(), "{sent} in {text}");
    }
    let pool_series = |name: &str| format!("{name}{{pool=\"default\"}}");
    assert_eq!(
        sample(&text, &pool_series("isotropic_cluster_workers_ready")),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, &pool_series("isotropic_cluster_restarts_total")),
        Some(0.0)
    );
    let ready = "isotropic_cluster_workers{pool=\"default\",state=\"ready\"}";
    assert_eq!(sample(&text, ready), Some(2.0));

    // Worker 1 is killed: counted by its reason, replaced in its slot.
    primary.input(Input::Closed(WorkerId::new(1), None));
    let killed = ExitStatus::from_raw(Signal::KILL.as_raw());
    primary.input(Input::Exited(WorkerId::new(1), Some(killed)));
    assert_eq!(primary.peers.last().map(|(id, _)| id.get()), Some(3));
    let text = primary.context.metrics().render();
    let exits = "isotropic_cluster_exits_total{pool=\"default\",reason=\"signal\"}";
    assert_eq!(sample(&text, exits), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &pool_series("isotropic_cluster_restarts_total")),
        Some(1.0)
    );
    assert!(!text.contains("worker_id=\"1\""), "{text}");
    let replacement = worker_series("isotropic_cluster_worker_messages_sent_total", 0, 3);
    assert!(sample(&text, &replacement).is_some(), "{text}");
    // Short of one ready worker until the replacement is ready.
    let short = status(&primary);
    assert_eq!((short.size, short.ready, short.minimum), (2, 1, 2));
    assert_eq!(
        short.to_string(),
        "pool default: 1 of 2 workers ready (at least 2 needed)"
    );
    primary.ready(3);
    let full = status(&primary);
    assert_eq!((full.size, full.ready, full.minimum), (2, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_sample_gives_each_worker_its_memory_series() {
    let mut primary = pool(
        ClusterPrimary::builder().sample_interval(Duration::from_secs(1)),
        1,
    );
    primary
        .spawner
        .memory
        .lock()
        .expect("memory")
        .insert(100_001, 4096);
    let memory = worker_series("isotropic_cluster_worker_memory_bytes", 0, 1);
    assert_eq!(sample(&primary.context.metrics().render(), &memory), None);
    primary.advance(Duration::from_secs(1)).await;
    let text = primary.context.metrics().render();
    assert_eq!(sample(&text, &memory), Some(4096.0), "{text}");
}

#[tokio::test]
async fn the_latency_histogram_counts_answered_requests() {
    let mut primary = pool(ClusterPrimary::builder().pool_name("web"), 1);
    let worker = primary.context.workers().remove(0);
    let asking = tokio::spawn(async move { worker.request::<u64, _>(&json!("ping")).await });
    // The worker's side: read the request.
    let mut codec = FrameCodec::new(1 << 20);
    let mut buffer = bytes::BytesMut::new();
    let id = loop {
        if let Some(Frame::Request { id, .. }) = codec.decode(&mut buffer).expect("a frame") {
            break id;
        }
        let read = primary.peer(1).channel.read_buf(&mut buffer);
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the request comes")
            .expect("read");
    };
    let in_flight = "isotropic_cluster_worker_requests_in_flight{pool=\"web\",slot=\"0\",worker_id=\"1\",generation=\"1\"}";
    let text = primary.context.metrics().render();
    assert_eq!(sample(&text, in_flight), Some(1.0), "{text}");
    let result = Ok(Message::encode(&json!(7)).expect("encodes"));
    primary.frames(1, vec![Frame::Reply { id, result }]);
    assert_eq!(asking.await.expect("join").expect("a reply"), 7);
    let text = primary.context.metrics().render();
    let count = "isotropic_cluster_request_duration_seconds_count{pool=\"web\"}";
    assert_eq!(sample(&text, count), Some(1.0), "{text}");
    let all = "isotropic_cluster_request_duration_seconds_bucket{pool=\"web\",le=\"+Inf\"}";
    assert_eq!(sample(&text, all), Some(1.0), "{text}");
    assert_eq!(sample(&text, in_flight), Some(0.0), "{text}");
}
