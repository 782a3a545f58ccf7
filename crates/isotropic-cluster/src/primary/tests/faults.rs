//! Faults found by an adversarial review of the supervision engine (issue
//! 14): each test failed before its fix.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use super::{Harness, RestartPolicy, pool};
use crate::error::ProtocolError;
use crate::primary::input::Input;
use crate::primary::{ClusterPrimary, Restart};
use crate::protocol::Frame;
use crate::{Signal, Subscribe as _, WorkerId};

fn id(n: u64) -> WorkerId {
    WorkerId::new(n)
}

#[tokio::test(start_paused = true)]
async fn a_worker_stopped_for_a_failure_is_replaced_under_on_failure_whatever_its_status() {
    // (It was not: stopped by SIGTERM, or exiting 0 once told it broke the
    // protocol, it counted as a normal exit, and the pool shrank.)
    let on_failure = RestartPolicy::default().restart(Restart::OnFailure);
    let builder = ClusterPrimary::builder()
        .restart_policy(on_failure)
        .ready_timeout(Duration::from_secs(1));
    let mut primary = Harness::with(builder);
    primary.fork(2).expect("fork");
    primary.hello(1);
    primary.ready(2);
    primary.advance(Duration::from_secs(1)).await;
    assert_eq!(primary.signals(1), [Signal::TERM], "not ready in time");
    primary.events();
    let by_sigterm = ExitStatus::from_raw(15);
    primary.input(Input::Exited(id(1), Some(by_sigterm)));
    let events = primary.events();
    assert!(
        events.ends_with(&["workerExit", "fork", "workerFork"]),
        "{events:?}"
    );

    let error = ProtocolError::InvalidMessage("garbage".into());
    primary.input(Input::Closed(id(2), Some(error)));
    primary.events();
    primary.exit(2, 0);
    let events = primary.events();
    assert!(
        events.ends_with(&["workerExit", "fork", "workerFork"]),
        "{events:?}"
    );
    assert_eq!(primary.context.pool_size(), 2);

    // `Never` still replaces nothing.
    let never = RestartPolicy::default().restart(Restart::Never);
    let mut primary = pool(ClusterPrimary::builder().restart_policy(never), 1);
    let error = ProtocolError::InvalidMessage("garbage".into());
    primary.input(Input::Closed(id(1), Some(error)));
    primary.exit(1, 1);
    assert!(!primary.events().contains(&"fork"));
}

#[tokio::test(start_paused = true)]
async fn a_replacement_kept_out_of_the_pool_gives_its_recycle_up_and_the_next_goes_on() {
    // (The recycle waited for it to join the pool forever: no other worker
    // was ever recycled again, and its slot held two workers.)
    let mut primary = pool(ClusterPrimary::builder(), 2);
    (&mut primary.context).on::<crate::primary::AddWorker>(|event| {
        if event.worker.id().get() == 3 {
            event.prevent();
        }
    });
    primary.context.recycle_worker(id(1)).expect("live");
    primary.context.recycle_worker(id(2)).expect("live");
    primary.settle();
    primary.ready(3);
    assert_eq!(primary.ready_ids(), [1, 2], "worker 1 keeps working");
    let sent = primary.frames_sent_until_closed(3).await;
    assert!(
        matches!(sent[..], [Frame::Disconnect]),
        "3 leaves: {sent:?}"
    );
    let events = primary.events();
    assert!(
        events.ends_with(&["fork", "workerFork"]),
        "2's turn: {events:?}"
    );
    assert_eq!(
        primary.context.registry.get(id(4)).map(|e| e.worker.slot()),
        Some(1)
    );
    primary.exit(3, 0);
    assert!(!primary.events().contains(&"fork"), "3 is not replaced");
    primary.ready(4);
    assert_eq!(primary.ready_ids(), [1, 4]);
    assert_eq!(primary.context.pool_size(), 2);
}

#[tokio::test(start_paused = true)]
async fn retiring_either_worker_of_a_recycle_under_way_shrinks_the_pool() {
    // (It did not: retiring the recycled worker left its replacement in the
    // slot; retiring the replacement left the recycled worker, recycled
    // again later. The pool kept its size.)
    for retired in [1, 3] {
        let mut primary = pool(ClusterPrimary::builder(), 2);
        primary.context.recycle_worker(id(1)).expect("live");
        primary.settle();
        primary.events();
        assert_eq!(primary.context.pool_size(), 2, "3 shares 1's slot");
        primary.context.retire_worker(id(retired)).expect("live");
        primary.settle();
        assert_eq!(primary.context.pool_size(), 1, "retired {retired}");
        primary.ready(3);
        for n in [1, 3] {
            primary.exit(n, 0);
        }
        primary.advance(Duration::from_secs(60)).await;
        let events = primary.events();
        assert!(!events.contains(&"fork"), "retired {retired}: {events:?}");
        assert_eq!(primary.ready_ids(), [2], "retired {retired}");
        // The next recycle is not held up.
        primary.context.recycle_worker(id(2)).expect("live");
        primary.settle();
        assert!(primary.events().contains(&"fork"), "retired {retired}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_replacement_over_the_memory_limit_before_it_joins_is_recycled_once_it_has() {
    // (Its `workerOverMemory`, raised once per worker, came while it was a
    // recycle's replacement, whose recycle could not be asked for: it was
    // never recycled, however much it grew.)
    const MIB: u64 = 1 << 20;
    let builder = ClusterPrimary::builder()
        .max_memory(100 * MIB)
        .sample_interval(Duration::from_secs(1));
    let mut primary = pool(builder, 1);
    primary.context.recycle_worker(id(1)).expect("live");
    primary.settle();
    let over = |primary: &Harness, pid: u32| {
        let mut memory = primary.spawner.memory.lock().expect("memory");
        memory.insert(100_000 + pid, 200 * MIB);
    };
    over(&primary, 2);
    primary.advance(Duration::from_secs(1)).await;
    primary.events();
    primary.ready(2);
    assert_eq!(primary.ready_ids(), [2]);
    primary.exit(1, 0);
    primary.events();
    primary.advance(Duration::from_secs(1)).await;
    let events = primary.events();
    assert_eq!(
        events,
        ["workerOverMemory", "fork", "workerFork"],
        "{events:?}"
    );
}
