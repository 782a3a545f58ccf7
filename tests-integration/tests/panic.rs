//! A worker whose handler panics (issue 12, item 3): the process exits with
//! the status of an uncaught panic (101), the primary replaces it, and a
//! shutdown needs no signal. The primary's side is tested without processes
//! (`primary::tests::panics` in the library).
#![cfg(target_os = "linux")]

use isotropic_cluster::EventStream;
use isotropic_cluster::primary::{PrimaryEvent, WorkerHandle};
use serde_json::json;
use tests_integration::{Mode, exit_of, launch, primary, ready, shut_down, wait_for};

/// Shuts the primary down; the signals it sent meanwhile (`workerSignal`).
async fn signals_during_shutdown(
    primary: &isotropic_cluster::primary::ClusterPrimary,
    events: &mut EventStream<PrimaryEvent>,
) -> Vec<String> {
    shut_down(primary).await;
    let mut signals = Vec::new();
    wait_for(events, |event| match event {
        PrimaryEvent::WorkerSignal(s) => {
            signals.push(format!("{} to worker {}", s.signal, s.worker.id()));
            None
        }
        PrimaryEvent::ShutDownComplete(_) => Some(()),
        _ => None,
    })
    .await;
    signals
}

/// Waits for `worker`'s exit; its exit code.
async fn exit_code(events: &mut EventStream<PrimaryEvent>, worker: &WorkerHandle) -> Option<i32> {
    let exit = wait_for(events, exit_of).await;
    assert_eq!(exit.worker.id(), worker.id());
    exit.code()
}

#[tokio::test]
async fn a_worker_whose_handler_panics_exits_with_101_is_replaced_and_shutdown_signals_none() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let mut shutdown_events = primary.events();
    let panic = json!({"type": "panic"});
    let sent = std::time::Instant::now();
    primary.send(&worker, &panic).await.expect("send");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(exit.worker.id(), worker.id());
    assert_eq!(exit.code(), Some(101), "the status of an uncaught panic");
    assert!(!exit.voluntary, "the worker did not disconnect");
    let [replacement] = ready(&mut events, 1).await.try_into().expect("one");
    assert_ne!(replacement.id(), worker.id(), "replaced");
    eprintln!(
        "a panicking handler: worker exited 101, replacement ready {:?} after the send",
        sent.elapsed()
    );
    let signals = signals_during_shutdown(&primary, &mut shutdown_events).await;
    assert!(
        signals.is_empty(),
        "no worker was left to kill: {signals:?}"
    );
}

#[tokio::test]
async fn a_worker_whose_async_cleanup_panics_exits_with_101() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::PanicInCleanup)).await;
    let mut shutdown_events = primary.events();
    primary.stop_worker(worker.id()).await.expect("stop");
    assert_eq!(exit_code(&mut events, &worker).await, Some(101));
    let [replacement] = ready(&mut events, 1).await.try_into().expect("one");
    let signals = signals_during_shutdown(&primary, &mut shutdown_events).await;
    assert!(signals.is_empty(), "{signals:?}");
    assert_eq!(exit_code(&mut events, &replacement).await, Some(101));
}
