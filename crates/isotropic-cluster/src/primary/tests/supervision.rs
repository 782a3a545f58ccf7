//! Drained recycles, scaling, and expiry by use and age.

use std::time::Duration;

use super::{Harness, RestartPolicy, pool};
use crate::WorkerId;
use crate::error::Error;
use crate::primary::{ClusterPrimary, WorkerChannel};
use crate::protocol::Frame;

fn id(n: u64) -> WorkerId {
    WorkerId::new(n)
}

fn slot_of(primary: &Harness, n: u64) -> Option<u32> {
    let entry = primary.context.registry.get(id(n));
    entry.map(|entry| entry.worker.slot())
}

#[tokio::test(start_paused = true)]
async fn a_drained_recycle_leaves_the_pool_full_and_goes_one_worker_at_a_time() {
    let mut primary = pool(ClusterPrimary::builder(), 2);
    primary.context.recycle_worker(id(1)).expect("live");
    primary.context.recycle_worker(id(2)).expect("live");
    primary
        .context
        .recycle_worker(id(1))
        .expect("asking twice is harmless");
    primary.settle();
    assert_eq!(primary.events(), ["fork", "workerFork"], "one replacement");
    assert_eq!(slot_of(&primary, 3), Some(0), "in worker 1's slot");
    assert_eq!(primary.ready_ids(), [1, 2], "nobody left yet");
    assert!(primary.signals(1).is_empty());

    primary.ready(3);
    assert_eq!(primary.ready_ids(), [2, 3], "1 left once 3 joined");
    let events = primary.events();
    assert!(events.starts_with(&["workerOnline", "workerReady", "addWorker"]));
    assert!(events.ends_with(&["removeWorker", "fork", "workerFork"]));
    let sent = primary.frames_sent_until_closed(1).await;
    assert!(matches!(sent[..], [Frame::Disconnect]), "{sent:?}");
    assert_eq!(slot_of(&primary, 4), Some(1), "then worker 2's");
    primary.exit(1, 0);
    let events = primary.events();
    assert!(
        !events.contains(&"fork"),
        "its replacement runs: {events:?}"
    );

    primary.ready(4);
    assert_eq!(primary.ready_ids(), [3, 4]);
    primary.exit(2, 0);
    primary.events();
    assert_eq!(primary.context.pool_size(), 2);
    let unknown = primary.context.recycle_worker(id(2));
    assert!(matches!(unknown, Err(Error::NoSuchWorker { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_dies_before_it_is_ready_leaves_the_old_worker_working() {
    let mut primary = pool(ClusterPrimary::builder(), 1);
    primary.context.recycle_worker(id(1)).expect("live");
    primary.settle();
    assert_eq!(primary.events(), ["fork", "workerFork"]);
    primary.hello(2);
    primary.exit(2, 1);
    let events = primary.events();
    assert!(
        !events.contains(&"fork"),
        "no replacement of the replacement: {events:?}"
    );
    assert_eq!(primary.ready_ids(), [1], "still working");
    primary.advance(Duration::from_secs(60)).await;
    assert_eq!(slot_of(&primary, 3), Some(0), "tried again");
    primary.ready(3);
    assert_eq!(primary.ready_ids(), [3]);
}

#[tokio::test(start_paused = true)]
async fn a_recycled_worker_that_dies_meanwhile_is_replaced_by_the_replacement_only() {
    let mut primary = pool(ClusterPrimary::builder(), 1);
    primary.context.recycle_worker(id(1)).expect("live");
    primary.settle();
    assert_eq!(primary.events(), ["fork", "workerFork"]);
    primary.exit(1, 1);
    let events = primary.events();
    assert!(!events.contains(&"fork"), "{events:?}");
    assert!(!events.contains(&"restartScheduled"), "{events:?}");
    primary.ready(2);
    assert_eq!(primary.ready_ids(), [2]);
    assert_eq!(primary.context.pool_size(), 1);
    // Should the replacement die too, the slot is replaced as usual.
    primary.exit(2, 1);
    assert!(primary.events().contains(&"fork"));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_a_recycle_and_nothing_is_started_after() {
    let mut primary = pool(ClusterPrimary::builder(), 2);
    primary.context.recycle_worker(id(1)).expect("live");
    primary.context.recycle_worker(id(2)).expect("live");
    primary.context.shut_down();
    primary.settle();
    primary.ready(3);
    for n in 1..=3 {
        primary.exit(n, 0);
    }
    let events = primary.events();
    assert_eq!(
        events.iter().filter(|e| **e == "fork").count(),
        1,
        "{events:?}"
    );
    assert!(events.ends_with(&["shutDownComplete"]), "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn scale_to_forks_or_retires_the_highest_slots_for_good() {
    let mut primary = pool(ClusterPrimary::builder(), 2);
    primary.context.scale_to(4).expect("fork");
    primary.settle();
    assert_eq!(primary.context.pool_size(), 4);
    assert_eq!([3, 4].map(|n| slot_of(&primary, n)), [Some(2), Some(3)]);
    primary.ready(3);
    primary.ready(4);
    primary.events();

    primary.context.scale_to(1).expect("shrink");
    primary.settle();
    assert_eq!(primary.ready_ids(), [1], "slots 3, 2, 1 asked to leave");
    assert_eq!(primary.context.pool_size(), 1);
    for n in 2..=4 {
        primary.exit(n, 0);
    }
    let events = primary.events();
    assert!(!events.contains(&"fork"), "not replaced: {events:?}");
    let retired = primary.context.retire_worker(id(1));
    assert!(retired.is_ok());
    assert_eq!(primary.context.pool_size(), 0);
    assert!(matches!(
        primary.context.retire_worker(id(1)),
        Err(Error::NoSuchWorker { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn scaling_down_cancels_delayed_replacements_first() {
    let policy = RestartPolicy::default()
        .stable_after(Duration::from_secs(3600))
        .initial_delay(Duration::from_secs(1));
    let mut primary = pool(ClusterPrimary::builder().restart_policy(policy), 2);
    primary.exit(1, 1);
    primary.exit(3, 1); // its first replacement died at once too: delayed
    let events = primary.events();
    assert!(events.contains(&"restartScheduled"), "{events:?}");
    assert_eq!(primary.context.pool_size(), 2, "worker 2 and one owed");
    primary.context.scale_to(1).expect("shrink");
    primary.advance(Duration::from_secs(60)).await;
    let events = primary.events();
    assert!(!events.contains(&"fork"), "cancelled: {events:?}");
    assert_eq!(primary.ready_ids(), [2], "the live worker stays");
}

#[tokio::test(start_paused = true)]
async fn a_worker_past_its_requests_expires_once_and_is_recycled_drained() {
    let builder = ClusterPrimary::builder().max_requests(3);
    let mut primary = pool(builder, 1);
    let reply = |n| Frame::Reply {
        id: n,
        result: Err("done".into()),
    };
    primary.frames(1, vec![reply(1), reply(2)]);
    assert!(primary.events().is_empty());
    primary.frames(1, vec![reply(3), reply(4)]);
    let events = primary.events();
    assert_eq!(events, ["workerExpired", "fork", "workerFork"]);
    primary.ready(2);
    assert_eq!(primary.ready_ids(), [2]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_past_its_age_expires_and_a_prevented_expiry_keeps_it() {
    use crate::Subscribe as _;
    let builder = ClusterPrimary::builder()
        .max_age(Duration::from_secs(100))
        .channel(WorkerChannel::Frames);
    let mut primary = pool(builder, 1);
    primary.advance(Duration::from_secs(99)).await;
    assert!(primary.events().is_empty());
    primary.advance(Duration::from_secs(11)).await;
    assert_eq!(primary.events(), ["workerExpired", "fork", "workerFork"]);
    primary.ready(2);
    assert_eq!(primary.ready_ids(), [2]);

    let expired = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = expired.clone();
    let kept = ClusterPrimary::builder()
        .max_age(Duration::from_secs(100))
        .before::<crate::primary::WorkerExpired>(move |event| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        event.prevent();
    });
    let mut primary = pool(kept, 1);
    primary.advance(Duration::from_secs(500)).await;
    assert_eq!(expired.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(primary.events().is_empty(), "nothing follows");
    assert_eq!(primary.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_replacement_keeps_its_slot_when_a_lower_one_frees_up() {
    let policy = RestartPolicy::default()
        .stable_after(Duration::from_secs(3600))
        .initial_delay(Duration::from_secs(1))
        .restart(crate::primary::Restart::OnFailure);
    let mut primary = pool(ClusterPrimary::builder().restart_policy(policy), 2);
    primary.exit(2, 1);
    primary.exit(3, 1); // slot 1 again: its next replacement waits
    primary.exit(1, 0); // slot 0 is done (not replaced)
    primary.context.scale_to(2).expect("one more");
    primary.settle();
    assert_eq!(slot_of(&primary, 4), Some(0), "slot 1 is owed");
    primary.advance(Duration::from_secs(60)).await;
    assert_eq!(
        slot_of(&primary, 5),
        Some(1),
        "the delayed replacement's own"
    );
}
