//! Handlers that act on a worker while it comes up (found by review).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_worker_asked_to_leave_while_it_comes_online_never_joins_the_pool() {
    for ask in ["stop_worker", "shut_down"] {
        let mut primary = Harness::new(WorkerChannel::None);
        (&mut primary.context).on::<crate::primary::WorkerOnline>(move |event| {
            let id = event.worker.id();
            match ask {
                "stop_worker" => event.context().stop_worker(id).expect("live"),
                _ => event.context().shut_down(),
            }
        });
        let mut ready = primary.context.fork_ready(1).expect("fork");
        primary.settle();
        let events = primary.events();
        assert!(!events.contains(&"workerReady"), "{ask}: {events:?}");
        assert!(primary.ready_ids().is_empty(), "{ask}");
        primary.exit(1, 0);
        let outcome = ready.try_recv().expect("told");
        assert!(
            matches!(outcome, Err(Error::NotReady { .. })),
            "{ask}: {outcome:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_recycled_by_a_ready_handler_stays_out_of_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    (&mut primary.context).on::<crate::primary::WorkerReady>(|event| {
        let id = event.worker.id();
        event.context().stop_worker(id).expect("live");
    });
    let mut ready = primary.context.fork_ready(1).expect("fork");
    primary.settle();
    primary.ready(1);
    assert!(primary.ready_ids().is_empty());
    let outcome = ready.try_recv().expect("told at once");
    assert!(
        matches!(outcome, Err(Error::NotReady { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fork_ready_is_told_when_a_handler_keeps_the_worker_out_of_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    (&mut primary.context).on::<crate::primary::AddWorker>(|event| event.prevent());
    let mut ready = primary.context.fork_ready(1).expect("fork");
    primary.settle();
    primary.ready(1);
    let outcome = ready.try_recv().expect("told at once");
    assert!(
        matches!(outcome, Err(Error::NotReady { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fork_ready_waits_for_its_own_workers_not_those_a_fork_handler_started() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let nested = Arc::new(AtomicBool::new(false));
    let once = nested.clone();
    (&mut primary.context).on::<crate::primary::Fork>(move |event| {
        if !once.swap(true, Ordering::SeqCst) {
            let _ = event.context().fork(1);
        }
    });
    let mut ready = primary.context.fork_ready(1).expect("fork");
    primary.settle();
    // The handler's fork ran first and took id 1; this call's worker is 2.
    primary.ready(1);
    assert!(ready.try_recv().is_err(), "worker 2 is not ready yet");
    primary.ready(2);
    let ids: Vec<u64> = ready
        .try_recv()
        .expect("told")
        .expect("ready")
        .iter()
        .map(|w| w.id().get())
        .collect();
    assert_eq!(ids, [2]);
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_worker_is_terminated_even_if_a_handler_prevents_the_disconnect() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    (&mut primary.context).on::<crate::primary::WorkerDisconnect>(|event| event.prevent());
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.input(Input::Closed(WorkerId::new(1), None));
    primary.advance(GRACE).await;
    assert_eq!(primary.signals(1), [Signal::TERM]);
}

#[tokio::test(start_paused = true)]
async fn workers_forked_while_initializing_are_started_before_their_first_input() {
    let spawner = Arc::new(FakeSpawner::default());
    let builder = ClusterPrimary::builder()
        .channel(WorkerChannel::Node)
        .spawner(spawner.clone())
        .on::<crate::primary::Initialize>(|event| {
            event.context().fork(1).expect("fork");
        });
    let (mailbox, commands) = Mailbox::new();
    let (mut context, _) = builder.into_context(mailbox.downgrade());
    let mut events = context.stream.subscribe();
    events::publish(&mut context, crate::primary::Initialize);
    // The worker's first message is already waiting when the actor starts.
    let permit = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a permit");
    let message = crate::Message::from_json("1").expect("json");
    let frames = vec![Inbound::Frame(Frame::Message(message))];
    context
        .inputs
        .try_send(Input::Frames(WorkerId::new(1), frames, permit, None))
        .expect("queued");
    let actor = tokio::spawn(crate::actor::run(context, commands));
    let mut names = Vec::new();
    while names.last() != Some(&"workerMessage") && names.len() < 10 {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("an event")
            .expect("open");
        names.push(event.name());
    }
    // (The stream sees the nested `fork` before `initialize` reaches its
    // default action.)
    assert_eq!(
        names,
        [
            "fork",
            "initialize",
            "workerFork",
            "workerOnline",
            "workerMessage"
        ]
    );
    drop(mailbox);
    actor.abort();
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_says_ready_after_being_asked_to_leave_stays_out_of_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.hello(1);
    primary.context.shut_down();
    primary.settle();
    primary.events();
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(primary.events(), Vec::<&str>::new());
    assert!(primary.ready_ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restart_requested_during_a_restart_never_takes_two_workers_out() {
    // (issue 12: two SIGHUPs 300 ms apart left 0 of 2 workers ready.)
    let builder = ClusterPrimary::builder().min_uptime(Duration::ZERO);
    let mut primary = Harness::with(builder.channel(WorkerChannel::Frames));
    primary.fork(2).expect("fork");
    primary.ready(1);
    primary.ready(2);
    primary.events();
    primary.context.restart_workers();
    primary.context.restart_workers();
    primary.settle();
    // The second restarts the first: its new worker, not ready, leaves.
    let events = primary.events();
    assert_eq!(events.iter().filter(|e| **e == "workerFork").count(), 2);
    let staying = |p: &Harness| {
        let entries = p.context.registry.entries();
        entries.iter().filter(|e| e.state.staying()).count()
    };
    assert_eq!(staying(&primary), 3, "1, 2 and 4: a surge of one");
    assert_eq!(primary.ready_ids(), [1, 2], "nobody left yet");
    primary.exit(3, 0);
    primary.ready(4);
    assert_eq!(primary.ready_ids(), [2, 4], "1 left once 4 joined");
    primary.exit(1, 0);
    primary.ready(5);
    assert_eq!(primary.ready_ids(), [4, 5], "then 2, once 5 joined");
    primary.exit(2, 0);
    assert_eq!(primary.ready_ids(), [4, 5]);
}
