//! Shutdown completion, escalation and destroy (`docs/seed-mapping.md`:
//! `shutDown`, `destroy`; its defects 4-8).
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use isotropic_cluster::{Signal, Subscribe};
use tests_integration::{
    DEADLINE, Log, Mode, alive, launch, primary, ready, record, shut_down, wait_for,
};

#[tokio::test]
async fn shutdown_completes_only_when_every_worker_has_exited() {
    let (primary, mut events, workers) = launch::<4>(primary(Mode::Echo)).await;
    shut_down(&primary).await;
    for worker in &workers {
        assert!(!alive(worker.pid()), "worker {} still running", worker.id());
    }
    let mut exits = 0;
    while wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerExit(_) => Some(true),
        PrimaryEvent::ShutDownComplete(_) => Some(false),
        _ => None,
    })
    .await
    {
        exits += 1;
    }
    assert_eq!(exits, 4, "every exit comes before shutDownComplete");
}

#[tokio::test]
async fn a_hung_worker_is_terminated_then_killed_and_shutdown_still_completes() {
    let (primary, mut events, [worker]) = launch::<1>(tests_integration::hung_primary()).await;
    let started = std::time::Instant::now();
    shut_down(&primary).await;
    eprintln!(
        "hung worker: shutdown complete after {:?} (grace 100 ms, then SIGTERM, 100 ms, then SIGKILL)",
        started.elapsed()
    );
    let mut steps = Vec::new();
    while steps.len() < 2 {
        steps.push(
            wait_for(&mut events, |e| match e {
                PrimaryEvent::WorkerSignal(s) => Some(s.signal),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(steps, [Signal::TERM, Signal::KILL]);
    let exit = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerExit(x) => Some(x),
        _ => None,
    })
    .await;
    assert_eq!(exit.signal(), Some(Signal::KILL));
    assert!(!alive(worker.pid()));
}

#[tokio::test]
async fn a_vetoed_shutdown_is_an_error_and_a_later_one_still_runs() {
    let mut veto = true;
    let builder = primary(Mode::Echo).before::<ShutDown>(move |event| {
        if std::mem::take(&mut veto) {
            event.prevent();
        }
    });
    let (primary, _events, [_worker]) = launch::<1>(builder).await;
    let error = primary.shut_down().await.expect_err("vetoed");
    assert!(matches!(
        error,
        isotropic_cluster::Error::Prevented { event: "shutDown" }
    ));
    assert_eq!(primary.workers().len(), 1);
    shut_down(&primary).await;
}

#[tokio::test]
async fn destroy_of_an_active_primary_shuts_down_then_runs_every_stage() {
    let log = Log::default();
    let primary = record!(
        primary(Mode::Echo),
        log,
        [Destroy, ShutDown, ShutDownComplete, DestroyComplete]
    )
    .start()
    .await
    .expect("start");
    let mut events = primary.events();
    primary.fork(2).await.expect("fork");
    ready(&mut events, 2).await;
    tokio::time::timeout(DEADLINE, primary.destroy())
        .await
        .expect("in time")
        .expect("destroy");
    assert_eq!(
        log.entries(),
        [
            "on destroy",
            "on shutDown",
            "after shutDown",
            "after destroy",
            "on shutDownComplete",
            "after shutDownComplete",
            "on destroyComplete",
            "after destroyComplete",
        ]
    );
    // The stream ends, later calls are typed errors, and destroy is idempotent.
    let mut names = Vec::new();
    while let Some(event) = events.next().await {
        names.push(event.name());
    }
    assert_eq!(names.last(), Some(&"destroyComplete"));
    assert!(matches!(
        primary.fork(1).await,
        Err(isotropic_cluster::Error::Destroyed)
    ));
    primary.destroy().await.expect("second destroy");
}

#[tokio::test]
async fn destroy_during_a_shutdown_waits_for_it() {
    let (primary, _events, workers) = launch::<3>(primary(Mode::Echo)).await;
    let shutting = primary.clone();
    let shutdown = tokio::spawn(async move { shutting.shut_down().await });
    tokio::time::timeout(DEADLINE, primary.destroy())
        .await
        .expect("in time")
        .expect("destroy");
    shutdown
        .await
        .expect("join")
        .expect("shutdown completes too");
    assert!(workers.iter().all(|w| !alive(w.pid())));
}

#[tokio::test]
async fn dropping_every_handle_stops_the_workers() {
    let (primary, mut events, workers) = launch::<2>(primary(Mode::Echo)).await;
    drop(primary);
    // The stream ends when the primary is torn down, after every worker exited.
    tokio::time::timeout(DEADLINE, async { while events.next().await.is_some() {} })
        .await
        .expect("the primary tears down");
    assert!(workers.iter().all(|w| !alive(w.pid())));
}
