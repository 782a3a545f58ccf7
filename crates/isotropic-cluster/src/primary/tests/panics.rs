//! Handlers that panic (issue 12, item 3): the panic is caught and reported
//! as `handlerPanicked`, the event goes on as if the handler had returned,
//! and the primary keeps supervising.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::Stage;
use crate::primary::{HandlerPanicked, PrimaryBuilder, WorkerExit, WorkerOnline};

/// What a `handlerPanicked` handler saw: event, stage, message.
type Reported = Arc<Mutex<Vec<(&'static str, Stage, String)>>>;

/// The `handlerPanicked` events seen by a handler.
fn reported(primary: &mut Harness) -> Reported {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    (&mut primary.context).on::<HandlerPanicked>(move |event| {
        let entry = (event.event, event.stage, event.message.clone());
        log.lock().expect("log").push(entry);
    });
    seen
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_handler_is_reported_and_the_worker_still_joins_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let seen = reported(&mut primary);
    (&mut primary.context).on::<WorkerOnline>(|event| {
        if event.worker.id().get() == 1 {
            panic!("bug in workerOnline");
        }
    });
    primary.fork(1).expect("fork");
    primary.ready(1);
    assert_eq!(
        primary.events(),
        [
            "initialize",
            "fork",
            "workerFork",
            "handlerPanicked",
            "workerOnline",
            "workerReady",
            "addWorker"
        ],
        "reported inside the event, which then completed"
    );
    assert_eq!(
        *seen.lock().expect("log"),
        [("workerOnline", Stage::On, "bug in workerOnline".to_owned())]
    );
    assert_eq!(primary.ready_ids(), [1]);
    assert_eq!(primary.fork(1).expect("fork still works"), 1);
    primary.ready(2);
    assert_eq!(primary.ready_ids(), [1, 2]);
    primary.context.shut_down();
    primary.exit(1, 0);
    primary.exit(2, 0);
    assert!(primary.events().contains(&"shutDownComplete"));
}

#[tokio::test(start_paused = true)]
async fn the_default_action_goes_on_after_a_panic_in_before() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let seen = reported(&mut primary);
    (&mut primary.context).before::<WorkerExit>(|_| panic!("bug in before workerExit"));
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.exit(1, 1);
    primary.advance(Duration::from_secs(1)).await;
    let events = primary.events();
    assert!(
        events.ends_with(&["handlerPanicked", "workerExit", "fork", "workerFork"]),
        "replaced: {events:?}"
    );
    assert_eq!(seen.lock().expect("log")[0].1, Stage::Before);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_handler_of_handler_panicked_is_logged_only() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    (&mut primary.context).on::<HandlerPanicked>(|_| panic!("bug in the panic handler"));
    (&mut primary.context).after::<WorkerOnline>(|_| panic!("bug in after workerOnline"));
    primary.fork(1).expect("fork");
    primary.ready(1);
    let events = primary.events();
    let panics = events.iter().filter(|e| **e == "handlerPanicked").count();
    assert_eq!(panics, 1, "no loop: {events:?}");
    assert_eq!(primary.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_initializer_fails_start_and_is_reported() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let started = ClusterPrimary::builder()
        .spawner(Arc::new(FakeSpawner::default()))
        .on::<HandlerPanicked>(move |event| log.lock().expect("log").push(event.event))
        .initialize(|| async {
            tokio::task::yield_now().await;
            panic!("bug in the initializer");
            #[allow(unreachable_code)]
            Ok::<(), Error>(())
        })
        .start()
        .await;
    let Err(Error::Initialize(error)) = started else {
        panic!("start must fail: {started:?}");
    };
    assert_eq!(
        error.to_string(),
        "the initializer panicked: bug in the initializer"
    );
    assert_eq!(*seen.lock().expect("log"), ["initialize"]);
}

/// Waits for the next signal the primary sends this peer.
async fn signal(peer: &mut Peer) -> Signal {
    tokio::time::timeout(Duration::from_secs(60), peer.signals.recv())
        .await
        .expect("a signal in time")
        .expect("a signal")
}

#[tokio::test(start_paused = true)]
async fn a_running_primary_whose_handler_panics_keeps_supervising_until_its_end() {
    let spawner = Arc::new(FakeSpawner::default());
    let primary = ClusterPrimary::builder()
        .channel(WorkerChannel::None)
        .shutdown_grace(GRACE)
        .kill_grace(KILL_GRACE)
        .spawner(spawner.clone())
        .on::<WorkerOnline>(|event| {
            if event.worker.id().get() == 1 {
                panic!("bug in workerOnline");
            }
        })
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    let first = primary.fork(1).ready().await.expect("worker 1 is ready");
    assert_eq!(first[0].id().get(), 1);
    let second = primary.fork(1).ready().await.expect("fork still works");
    assert_eq!(second[0].id().get(), 2);
    let mut peers: Vec<_> = spawner.peers.lock().expect("peers").drain(..).collect();
    assert_eq!(peers.len(), 2);
    let shutdown = tokio::spawn({
        let primary = primary.clone();
        async move { primary.shut_down().await }
    });
    for (id, peer) in &mut peers {
        assert_eq!(signal(peer).await, Signal::TERM, "worker {id}");
        let status = ExitStatus::from_raw(0);
        let exited = peer.inputs.send(Input::Exited(*id, Some(status))).await;
        exited.expect("the primary hears its workers");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), shutdown).await;
    outcome.expect("in time").expect("join").expect("shut down");
    primary.destroy().await.expect("destroyed");
    let mut names = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            names.push(event.name());
        }
    });
    drained.await.expect("the event stream ends");
    let panics = names.iter().filter(|e| **e == "handlerPanicked").count();
    assert_eq!(panics, 1, "{names:?}");
    assert_eq!(names.last(), Some(&"destroyComplete"), "{names:?}");
}

/// Panics when dropped: what a handler owns runs user code as it goes.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("bug in a destructor");
    }
}

/// A running primary on the fake spawner with `builder`'s handlers, and its
/// `handlerPanicked` events (by the panic's message).
async fn running(
    builder: PrimaryBuilder,
) -> (ClusterPrimary, Arc<FakeSpawner>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let spawner = Arc::new(FakeSpawner::default());
    let primary = builder
        .channel(WorkerChannel::None)
        .shutdown_grace(GRACE)
        .kill_grace(KILL_GRACE)
        .spawner(spawner.clone())
        .on::<HandlerPanicked>(move |event| log.lock().expect("log").push(event.message.clone()))
        .start()
        .await
        .expect("start");
    (primary, spawner, seen)
}

#[tokio::test(start_paused = true)]
async fn a_handler_whose_drop_panics_is_reported_however_it_goes() {
    // (issue 12 review: a panic in the `Drop` of a handler's capture, when
    // it was unsubscribed, replaced or torn down, killed the actor.)
    let bomb = Bomb;
    let in_handler = Bomb;
    let (primary, spawner, seen) =
        running(ClusterPrimary::builder().on::<WorkerOnline>(move |event| {
            let _ = &in_handler;
            event.unsubscribe();
        }))
        .await;
    let subscription = (&primary).on::<WorkerExit>(move |_| {
        let _ = &bomb;
    });
    subscription.unsubscribe();
    let route = Bomb;
    let _ = (&primary).route::<serde_json::Value>("job", move |_, _| {
        let _ = &route;
    });
    let _ = (&primary).route::<serde_json::Value>("job", |_, _| {});
    let torn_down = Bomb;
    let _ = (&primary).on::<WorkerExit>(move |_| {
        let _ = &torn_down;
    });
    let mut events = primary.events();
    let ready = tokio::time::timeout(Duration::from_secs(60), primary.fork(1).ready());
    ready.await.expect("in time").expect("still supervising");
    let (id, mut peer) = spawner
        .peers
        .lock()
        .expect("peers")
        .pop_front()
        .expect("a peer");
    let destroying = tokio::spawn({
        let primary = primary.clone();
        async move { primary.destroy().await }
    });
    assert_eq!(signal(&mut peer).await, Signal::TERM);
    let exited = peer
        .inputs
        .send(Input::Exited(id, Some(ExitStatus::from_raw(0))))
        .await;
    exited.expect("the primary hears its worker");
    let destroyed = tokio::time::timeout(Duration::from_secs(60), destroying);
    let destroyed = destroyed.await.expect("in time").expect("join");
    destroyed.expect("destroyed, not prevented");
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while events.next().await.is_some() {}
    });
    drained.await.expect("the event stream ends");
    assert_eq!(
        *seen.lock().expect("log"),
        vec!["bug in a destructor".to_owned(); 3],
        "unsubscribed by its handle, replaced, unsubscribed by itself (the teardown's comes after the last handler)"
    );
}
