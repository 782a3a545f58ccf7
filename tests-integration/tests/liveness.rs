//! Liveness with real processes (`PrimaryBuilder::watchdog`): a worker whose
//! event loop blocks, or whose application watchdog goes stale, is stopped
//! and replaced; one busy in a spawned task or thread, or whose jobs
//! advance, is not; preventing `workerUnresponsive` keeps the worker.
#![cfg(target_os = "linux")]

use std::time::Duration;

use isotropic_cluster::Signal;
use isotropic_cluster::Subscribe as _;
use isotropic_cluster::primary::*;
use serde_json::{Value, json};
use tests_integration::{Mode, exit_of, launch, primary, shut_down, wait_for};
use tokio::sync::mpsc;

/// The fixture's echo workers, watched for `period` of silence, killed
/// 500 ms after SIGTERM.
fn watched(period: Duration) -> PrimaryBuilder {
    primary(Mode::Echo)
        .watchdog(period)
        .kill_grace(Duration::from_millis(500))
}

/// The next message from worker `from`, as JSON; panics on any
/// `workerUnresponsive` meanwhile.
async fn message_from(
    events: &mut isotropic_cluster::EventStream<PrimaryEvent>,
    from: &WorkerHandle,
) -> Value {
    wait_for(events, |event| match event {
        PrimaryEvent::WorkerUnresponsive(e) => {
            panic!("worker {} unresponsive: {e:?}", e.worker.id())
        }
        PrimaryEvent::WorkerMessage(m) if m.worker.id() == from.id() => m.message.decode().ok(),
        _ => None,
    })
    .await
}

/// Waits until `worker` is found unresponsive, exits, and a replacement
/// joins the pool; returns its exit.
async fn stopped_and_replaced(
    events: &mut isotropic_cluster::EventStream<PrimaryEvent>,
    worker: &WorkerHandle,
) -> WorkerExit {
    let silent_for = wait_for(events, |event| match event {
        PrimaryEvent::WorkerUnresponsive(e) if e.worker.id() == worker.id() => Some(e.silent_for),
        PrimaryEvent::WorkerUnresponsive(e) => panic!("worker {} unresponsive", e.worker.id()),
        _ => None,
    })
    .await;
    assert!(silent_for > Duration::ZERO);
    let exit = wait_for(events, exit_of).await;
    assert_eq!(exit.worker.id(), worker.id());
    assert!(!exit.voluntary && exit.replaced, "{exit:?}");
    let replacement = wait_for(events, |event| match event {
        PrimaryEvent::AddWorker(add) => Some(add.worker),
        _ => None,
    })
    .await;
    assert!(replacement.id() > worker.id());
    assert_eq!(replacement.slot(), worker.slot());
    exit
}

#[tokio::test]
async fn a_worker_whose_event_loop_blocks_is_stopped_sigkilled_and_replaced() {
    let (primary, mut events, [blocked, other]) =
        launch::<2>(watched(Duration::from_secs(1))).await;
    // Its handler sleeps: the event loop answers nothing, not even SIGTERM
    // (the worker library's handler runs on that loop).
    let block = json!({"type": "block", "ms": 120_000});
    primary.send(&blocked, &block).await.expect("send");
    let exit = stopped_and_replaced(&mut events, &blocked).await;
    assert_eq!(exit.signal(), Some(Signal::KILL), "{exit:?}");
    assert!(!tests_integration::alive(blocked.pid()));
    // The other one answered all along.
    assert!(primary.workers().contains(&other));
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_busy_in_a_spawned_task_and_thread_is_not_stopped() {
    let (primary, mut events, [busy]) = launch::<1>(watched(Duration::from_millis(1500))).await;
    // Four periods of two busy threads.
    let work = json!({"type": "busy", "ms": 6_000});
    primary.send(&busy, &work).await.expect("send");
    let done = message_from(&mut events, &busy).await;
    assert_eq!(done, json!({"busy": "done"}));
    assert_eq!(primary.workers(), [busy]);
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_whose_jobs_stop_advancing_is_stopped_and_replaced() {
    let (primary, mut events, [worker]) = launch::<1>(watched(Duration::from_secs(1))).await;
    // Its event loop runs on; only its watchdog knows that the jobs stopped.
    let jobs = json!({"type": "jobs", "within_ms": 500, "count": 4, "stall": true});
    primary.send(&worker, &jobs).await.expect("send");
    assert_eq!(message_from(&mut events, &worker).await, json!({"jobs": 4}));
    stopped_and_replaced(&mut events, &worker).await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_whose_jobs_advance_is_not_stopped() {
    let (primary, mut events, [worker]) = launch::<1>(watched(Duration::from_millis(1500))).await;
    // 100 jobs of 50 ms: over three periods, progress within 500 ms each.
    let jobs = json!({"type": "jobs", "within_ms": 500, "count": 100, "stall": false});
    primary.send(&worker, &jobs).await.expect("send");
    assert_eq!(
        message_from(&mut events, &worker).await,
        json!({"jobs": 100})
    );
    assert_eq!(primary.workers(), [worker]);
    shut_down(&primary).await;
}

#[tokio::test]
async fn preventing_worker_unresponsive_keeps_the_worker() {
    let (seen, mut unresponsive) = mpsc::unbounded_channel();
    let builder = watched(Duration::from_millis(500)).before::<WorkerUnresponsive>(move |e| {
        let _ = seen.send(e.worker.id());
        e.prevent();
    });
    let (primary, mut events, [worker]) = launch::<1>(builder).await;
    let block = json!({"type": "block", "ms": 3_000});
    primary.send(&worker, &block).await.expect("send");
    let id = tokio::time::timeout(tests_integration::DEADLINE, unresponsive.recv())
        .await
        .expect("unresponsive in time");
    assert_eq!(id, Some(worker.id()));
    // Once its loop runs again, it answers as before: the same process.
    primary
        .send(&worker, &json!({"after": "block"}))
        .await
        .expect("send");
    let echo = wait_for(&mut events, |event| match event {
        PrimaryEvent::WorkerMessage(m) => Some((m.worker.id(), m.message.decode::<Value>().ok()?)),
        PrimaryEvent::WorkerExit(exit) => panic!("exited: {exit:?}"),
        _ => None,
    })
    .await;
    assert_eq!(echo, (worker.id(), json!({"echo": {"after": "block"}})));
    assert_eq!(primary.workers(), [worker]);
    shut_down(&primary).await;
}
