//! The worker side as the primary sees it: initialization failure, SIGTERM,
//! and self-destroy (`docs/seed-mapping.md`: ClusterWorker; its defects 26,
//! 27, 31).
#![cfg(target_os = "linux")]

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::*;
use serde_json::json;
use tests_integration::{Log, Mode, exit_of, launch, primary, record, shut_down, wait_for};

#[tokio::test]
async fn a_failed_initialization_never_makes_the_worker_ready() {
    let log = Log::default();
    let primary = record!(primary(Mode::InitFail), log, [WorkerOnline, WorkerReady])
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let exit = wait_for(&mut events, exit_of).await;
    // `main` returned the initialize error: exit code 1, and no ready.
    assert_eq!(exit.code(), Some(1));
    shut_down(&primary).await;
    let entries = log.entries();
    assert!(
        entries.starts_with(&["on workerOnline".into(), "after workerOnline".into()]),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|e| e.contains("workerReady")),
        "{entries:?}"
    );
}

#[tokio::test]
async fn sigterm_makes_a_worker_leave_gracefully() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(worker.pid() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(
        (exit.code(), exit.signal(), exit.voluntary),
        (Some(0), None, true)
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_that_destroys_itself_exits_as_soon_as_it_is_done() {
    // The destroy timeout is 5 s; the exit must not wait for it (the shutdown
    // deadline of the test would still pass, so check the order of events:
    // the disconnect arrives first, then the exit, with no escalation).
    let log = Log::default();
    let (primary, mut events, [worker]) = launch::<1>(
        record!(
            primary(Mode::Echo),
            log,
            [WorkerDisconnect, WorkerSignal, WorkerExit]
        )
        .before::<WorkerExit>(|exit| exit.prevent()),
    )
    .await;
    primary
        .send(&worker, &json!({"type": "destroy"}))
        .await
        .expect("send");
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::WorkerDisconnect(_)).then_some(())
    })
    .await;
    shut_down(&primary).await;
    assert_eq!(
        log.entries(),
        [
            "on workerDisconnect",
            "after workerDisconnect",
            "on workerExit"
        ]
    );
}
