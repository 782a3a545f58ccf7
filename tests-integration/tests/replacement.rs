//! Replacement of exited workers, its order, its veto, and its backoff
//! (`docs/seed-mapping.md`: replacement, under "Events of the primary"; its
//! defects 9, 10).
#![cfg(target_os = "linux")]

use std::time::Duration;

use isotropic_cluster::primary::*;
use isotropic_cluster::{Error, EventStream, Signal, Subscribe};
use serde_json::json;
use tests_integration::{Log, Mode, exit_of, launch, primary, ready, record, shut_down, wait_for};

#[tokio::test]
async fn a_crashed_worker_is_replaced_depth_first() {
    let log = Log::default();
    let (primary, mut events, [first]) = launch::<1>(record!(
        primary(Mode::Echo),
        log,
        [WorkerExit, Fork, WorkerFork]
    ))
    .await;
    let before = log.entries().len();
    primary
        .send(&first, &json!({"type": "exit", "code": 1}))
        .await
        .expect("send");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(
        (exit.worker.id(), exit.code(), exit.signal(), exit.voluntary),
        (first.id(), Some(1), None, false)
    );
    let [second] = ready(&mut events, 1)
        .await
        .try_into()
        .expect("a replacement");
    assert_ne!(second.id(), first.id());
    assert_eq!(
        log.entries()[before..],
        [
            "on workerExit",
            "on fork",
            "after fork",
            "after workerExit",
            "on workerFork",
            "after workerFork",
        ]
    );
    assert_eq!(primary.workers(), [second]);
    shut_down(&primary).await;
}

#[tokio::test]
async fn every_kind_of_exit_is_replaced_while_active() {
    let (primary, mut events, workers) = launch::<3>(primary(Mode::Echo)).await;
    // A stream of its own for the replacements, which may become ready while
    // the other stream is waiting for an exit.
    let mut replacements = primary.events();
    // A voluntary exit (the worker destroys itself), a clean exit, and a kill.
    primary
        .send(&workers[0], &json!({"type": "destroy"}))
        .await
        .expect("send");
    let exit = wait_for(&mut events, exit_of).await;
    assert!(exit.voluntary && exit.code() == Some(0), "{exit:?}");
    primary
        .send(&workers[1], &json!({"type": "exit", "code": 0}))
        .await
        .expect("send");
    let exit = wait_for(&mut events, exit_of).await;
    assert!(!exit.voluntary && exit.code() == Some(0), "{exit:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(workers[2].pid() as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(
        (exit.worker.id(), exit.code(), exit.signal()),
        (workers[2].id(), None, Some(Signal::KILL))
    );
    let replacements = ready(&mut replacements, 3).await;
    assert!(replacements.iter().all(|w| w.id().get() > 3));
    assert_eq!(primary.workers().len(), 3);
    shut_down(&primary).await;
}

#[tokio::test]
async fn preventing_the_exit_event_prevents_removal_and_replacement() {
    let (primary, _events, [worker]) = launch::<1>(
        primary(Mode::Echo)
            .before::<WorkerExit>(|event| event.prevent())
            .before::<WorkerDisconnect>(|event| event.prevent()),
    )
    .await;
    let forks = primary.events();
    primary
        .send(&worker, &json!({"type": "exit", "code": 2}))
        .await
        .expect("send");
    // The prevented exit is not in the stream (it never reached its default
    // action); the shutdown that follows completes with no fork in between.
    shut_down(&primary).await;
    let mut forks = forks;
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(1), forks.next()).await {
        seen.push(event.name());
    }
    assert!(!seen.contains(&"fork"), "{seen:?}");
    assert!(!seen.contains(&"workerExit"), "{seen:?}");
}

#[tokio::test]
async fn no_replacement_and_no_fork_after_shutdown() {
    let log = Log::default();
    let (primary, _events, _) = launch::<2>(record!(primary(Mode::Echo), log, [Fork])).await;
    shut_down(&primary).await;
    assert_eq!(log.entries(), ["on fork", "after fork"]);
    assert_eq!(primary.fork(1).await.expect("fork after shutdown"), 0);
    assert_eq!(log.entries(), ["on fork", "after fork"]);
}

#[tokio::test]
async fn a_worker_that_keeps_dying_at_start_is_replaced_with_growing_delays() {
    let policy = RestartPolicy::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(80))
        .stable_after(Duration::from_secs(60));
    let (primary, mut events) = tests_integration::crash_looping(policy).await;
    let mut delays = Vec::new();
    while delays.len() < 5 {
        delays.push(
            wait_for(&mut events, |e| match e {
                PrimaryEvent::RestartScheduled(r) => Some((r.delay.as_millis(), r.failures)),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(delays, [(20, 2), (40, 3), (80, 4), (80, 5), (80, 6)]);
    shut_down(&primary).await;
}

/// A crash loop under an intensity limit: the event, then what it says.
async fn crash_loop(then: OnIntensity) -> (ClusterPrimary, EventStream<PrimaryEvent>) {
    let policy = RestartPolicy::default()
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(30))
        .intensity(3, Duration::from_secs(60), then);
    let (primary, mut events) = tests_integration::crash_looping(policy).await;
    let exceeded = wait_for(&mut events, |e| match e {
        PrimaryEvent::RestartIntensityExceeded(x) => Some(x),
        _ => None,
    })
    .await;
    assert_eq!(
        (exceeded.restarts, exceeded.period, exceeded.then),
        (4, Duration::from_secs(60), then)
    );
    (primary, events)
}

#[tokio::test]
async fn a_crash_loop_over_the_intensity_shuts_the_cluster_down() {
    let (primary, mut events) = crash_loop(OnIntensity::ShutDown).await;
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::ShutDownComplete(_)).then_some(())
    })
    .await;
    assert!(primary.workers().is_empty());
    primary.destroy().await.expect("destroy");
}

#[tokio::test]
async fn a_crash_loop_over_the_intensity_slows_down_to_the_longest_delay() {
    let (primary, mut events) = crash_loop(OnIntensity::SlowDown).await;
    let next = wait_for(&mut events, |e| match e {
        PrimaryEvent::RestartScheduled(r) => Some(r.delay),
        _ => None,
    })
    .await;
    assert_eq!(next, Duration::from_millis(30));
    // Still trying: another worker starts, and exceeds again.
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::RestartIntensityExceeded(_)).then_some(())
    })
    .await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_program_that_cannot_start_is_a_typed_error() {
    let primary = ClusterPrimary::builder()
        .program("/nonexistent/worker")
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    let error = primary.fork(2).await.expect_err("spawn fails");
    assert!(
        matches!(error, isotropic_cluster::Error::Spawn { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("/nonexistent/worker"));
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::ForkError(_)).then_some(())
    })
    .await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_stopped_worker_leaves_the_pool_exits_voluntarily_and_is_replaced() {
    let (primary, mut events, [first, second]) = launch::<2>(primary(Mode::Echo)).await;
    primary.stop_worker(first.id()).await.expect("stop");
    let pool: Vec<_> = primary.workers().iter().map(WorkerHandle::id).collect();
    assert_eq!(pool, [second.id()], "out of the pool at once");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(exit.worker, first);
    assert!(exit.voluntary);
    assert_eq!(exit.code(), Some(0));
    let [replacement] = ready(&mut events, 1).await.try_into().expect("one");
    let pool: Vec<_> = primary.workers().iter().map(WorkerHandle::id).collect();
    assert_eq!(pool, [second.id(), replacement.id()]);
    // Recycling a young worker again is no crash loop: no backoff.
    primary.stop_worker(replacement.id()).await.expect("stop");
    let next = wait_for(&mut events, |e| match e {
        PrimaryEvent::RestartScheduled(_) => Some(None),
        PrimaryEvent::AddWorker(add) => Some(Some(add.worker)),
        _ => None,
    })
    .await;
    assert!(
        next.is_some(),
        "the recycled worker's replacement was delayed"
    );
    let again = primary.stop_worker(first.id()).await;
    assert!(
        matches!(again, Err(Error::NoSuchWorker { worker_id }) if worker_id == first.id()),
        "{again:?}"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_stopped_worker_that_ignores_it_is_terminated_then_killed() {
    let (primary, mut events, [worker]) = launch::<1>(tests_integration::hung_primary()).await;
    primary.stop_worker(worker.id()).await.expect("stop");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(exit.worker, worker);
    assert_eq!(exit.signal(), Some(Signal::KILL));
    ready(&mut events, 1).await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_rolling_restart_replaces_every_worker_and_the_pool_is_never_short() {
    use std::sync::{Arc, Mutex};
    // The smallest pool seen once a worker has left it.
    let smallest = Arc::new(Mutex::new(usize::MAX));
    let seen = smallest.clone();
    let builder = primary(Mode::Echo).after::<RemoveWorker>(move |event| {
        let size = event.context().workers().len();
        let mut smallest = seen.lock().expect("lock");
        *smallest = (*smallest).min(size);
    });
    let (primary, _events, old) = launch::<3>(builder).await;
    let restarted = tokio::time::timeout(tests_integration::DEADLINE, primary.restart_workers())
        .await
        .expect("the restart ends in time")
        .expect("restart");
    assert_eq!(restarted, 3);
    let pool: Vec<_> = primary.workers().iter().map(WorkerHandle::id).collect();
    assert_eq!(pool.len(), 3, "{pool:?}");
    assert!(old.iter().all(|w| !pool.contains(&w.id())), "{pool:?}");
    assert_eq!(
        *smallest.lock().expect("lock"),
        3,
        "a worker leaves the pool once its replacement joined"
    );
    shut_down(&primary).await;
    // Nothing to restart once shut down.
    assert_eq!(primary.restart_workers().await.expect("restart"), 0);
}
