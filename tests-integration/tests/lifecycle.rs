//! Event sequences of one worker's life, fork to shutdown
//! (`docs/seed-mapping.md`, "Events of the primary").
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use tests_integration::{Log, Mode, primary, ready, record, shut_down};

#[tokio::test]
async fn one_worker_from_fork_to_shutdown_in_exact_order() {
    let log = Log::default();
    let builder = record!(
        primary(Mode::Echo),
        log,
        [
            Fork,
            WorkerFork,
            WorkerOnline,
            WorkerReady,
            AddWorker,
            RemoveWorker,
            WorkerDisconnect,
            WorkerExit,
            ShutDown,
            ShutDownComplete
        ]
    );
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    assert_eq!(primary.fork(1).await.expect("fork"), 1);
    let workers = ready(&mut events, 1).await;
    assert_eq!(primary.workers(), workers);
    shut_down(&primary).await;
    assert!(primary.workers().is_empty());
    assert_eq!(
        log.entries(),
        [
            "on fork",
            "after fork",
            "on workerFork",
            "after workerFork",
            "on workerOnline",
            "after workerOnline",
            "on workerReady",
            "on addWorker",
            "after addWorker",
            "after workerReady",
            "on shutDown",
            "after shutDown",
            "on workerDisconnect",
            "on removeWorker",
            "after removeWorker",
            "after workerDisconnect",
            "on workerExit",
            "after workerExit",
            "on shutDownComplete",
            "after shutDownComplete",
        ]
    );
    primary.destroy().await.expect("destroy");
}

#[tokio::test]
async fn two_primaries_in_one_process_are_independent() {
    // Defect 12: Node's cluster module is one per process; ours are not.
    let (first, _, [one]) = tests_integration::launch::<1>(primary(Mode::Echo)).await;
    let (second, mut events, [other]) = tests_integration::launch::<1>(primary(Mode::Echo)).await;
    assert_ne!(one.pid(), other.pid());
    shut_down(&first).await;
    // The second's worker is neither disconnected nor replaced by the first.
    assert!(first.workers().is_empty());
    let pool: Vec<_> = second.workers().iter().map(WorkerHandle::id).collect();
    assert_eq!(pool, [other.id()]);
    let square: u64 = other
        .request(&serde_json::json!({"type": "square", "n": 7}))
        .await
        .expect("the other primary's worker still answers");
    assert_eq!(square, 49);
    shut_down(&second).await;
    // Its own shutdown is the only one it saw.
    let exit = tests_integration::wait_for(&mut events, tests_integration::exit_of).await;
    assert_eq!(exit.worker, other);
}
