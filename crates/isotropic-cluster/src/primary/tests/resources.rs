//! Sampling what workers use, the memory limit, and the figures snapshot.

use super::*;
use crate::primary::{WorkerFigures, WorkerOverMemory, WorkerPhase};

const MIB: u64 = 1 << 20;

/// A primary with a limit of 100 MiB, sampled every second.
fn limited(builder: super::super::PrimaryBuilder) -> Harness {
    Harness::with(
        builder
            .max_memory(100 * MIB)
            .sample_interval(Duration::from_secs(1)),
    )
}

/// Worker `id` (a fake one: pid 100 000 + id) uses `bytes` from now on.
fn uses(primary: &Harness, id: u32, bytes: u64) {
    let mut memory = primary.spawner.memory.lock().expect("memory");
    memory.insert(100_000 + id, bytes);
}

fn figures_of(primary: &Harness, id: u64) -> WorkerFigures {
    let figures = primary.context.figures();
    let found = figures.into_iter().find(|f| f.id.get() == id);
    found.expect("a live worker")
}

#[tokio::test(start_paused = true)]
async fn a_worker_over_the_limit_is_recycled_once_and_one_under_it_is_not() {
    let mut primary = limited(ClusterPrimary::builder());
    primary.fork(2).expect("fork");
    primary.ready(1);
    primary.ready(2);
    primary.events();
    uses(&primary, 1, 100 * MIB + 1);
    uses(&primary, 2, 100 * MIB);
    primary.advance(Duration::from_secs(1)).await;
    // Drained: its replacement first, in its slot; it leaves once that one
    // is ready.
    assert_eq!(primary.events(), ["workerOverMemory", "fork", "workerFork"]);
    assert_eq!(primary.ready_ids(), [1, 2]);
    primary.ready(3);
    assert_eq!(primary.ready_ids(), [2, 3]);
    let asked = primary.frames_sent_until_closed(1).await;
    assert_eq!(asked.last(), Some(&Frame::Disconnect), "asked to leave");
    // Still over it while it leaves: not raised again.
    primary.events();
    primary.advance(Duration::from_secs(3)).await;
    assert!(!primary.events().contains(&"workerOverMemory"));
    // Its exit is not replaced again.
    primary.input(Input::Closed(WorkerId::new(1), None));
    primary.exit(1, 0);
    assert_eq!(primary.events(), ["workerDisconnect", "workerExit"]);
    let replacement = figures_of(&primary, 3);
    assert_eq!((replacement.slot, replacement.restarts), (0, 1));
    assert_eq!(figures_of(&primary, 2).restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn preventing_the_event_keeps_the_worker_and_it_is_not_raised_again() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let builder = ClusterPrimary::builder().before::<WorkerOverMemory>(move |event| {
        let (memory, limit) = (event.memory, event.limit);
        log.lock().expect("log").push((memory, limit));
        event.prevent();
    });
    let mut primary = limited(builder);
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    uses(&primary, 1, 300 * MIB);
    primary.advance(Duration::from_secs(6)).await;
    // (A prevented event is not streamed.)
    assert_eq!(primary.events(), Vec::<&str>::new());
    assert_eq!(primary.ready_ids(), [1]);
    assert_eq!(*seen.lock().expect("log"), [(300 * MIB, 100 * MIB)]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_already_leaving_is_not_raised() {
    let mut primary = limited(ClusterPrimary::builder());
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary
        .context
        .stop_worker(WorkerId::new(1))
        .expect("a live worker");
    primary.events();
    uses(&primary, 1, 300 * MIB);
    primary.advance(Duration::from_secs(2)).await;
    assert!(!primary.events().contains(&"workerOverMemory"));
    assert_eq!(figures_of(&primary, 1).phase, WorkerPhase::Leaving);
}

#[tokio::test(start_paused = true)]
async fn figures_follow_the_phase_and_keep_the_last_sample_with_its_age() {
    let mut primary = limited(ClusterPrimary::builder());
    primary.fork(1).expect("fork");
    let figures = figures_of(&primary, 1);
    assert_eq!(figures.phase, WorkerPhase::Starting);
    assert_eq!(
        (figures.pid, figures.slot, figures.restarts),
        (100_001, 0, 0)
    );
    assert_eq!(figures.usage, None, "not sampled yet");
    primary.hello(1);
    assert_eq!(figures_of(&primary, 1).phase, WorkerPhase::Online);
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(figures_of(&primary, 1).phase, WorkerPhase::Ready);
    uses(&primary, 1, 7 * MIB);
    primary.advance(Duration::from_secs(1)).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    let figures = figures_of(&primary, 1);
    let usage = figures.usage.expect("sampled");
    assert_eq!(
        (usage.memory, usage.age),
        (7 * MIB, Duration::from_millis(300))
    );
    assert_eq!(figures.uptime, Duration::from_millis(1300));
    // Gone from /proc (the fake says nothing): the last sample stays.
    primary.spawner.memory.lock().expect("memory").clear();
    primary.advance(Duration::from_secs(1)).await;
    assert_eq!(
        figures_of(&primary, 1).usage.map(|u| u.memory),
        Some(7 * MIB)
    );
}

#[tokio::test(start_paused = true)]
async fn without_workers_or_with_sampling_off_nothing_is_sampled() {
    let mut primary = limited(ClusterPrimary::builder());
    assert!(primary.context.timers.is_empty(), "no worker, no timer");
    primary.fork(1).expect("fork");
    assert_eq!(primary.context.timers.len(), 1, "one timer for all workers");
    primary.fork(2).expect("fork");
    assert_eq!(primary.context.timers.len(), 1);
    let mut off = Harness::with(ClusterPrimary::builder().sample_interval(Duration::ZERO));
    off.fork(1).expect("fork");
    uses(&off, 1, MIB);
    off.advance(Duration::from_secs(5)).await;
    assert_eq!(figures_of(&off, 1).usage, None);
}

#[tokio::test]
async fn a_memory_limit_without_sampling_is_refused() {
    let started = ClusterPrimary::builder()
        .max_memory(MIB)
        .sample_interval(Duration::ZERO)
        .start()
        .await;
    assert!(matches!(started, Err(Error::InvalidConfig { .. })));
}
