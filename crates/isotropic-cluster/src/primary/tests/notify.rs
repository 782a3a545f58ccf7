//! Readiness over `NOTIFY_SOCKET` (datagrams as the socket's reader reports
//! them, from fake pids: worker `n` has pid 100 000 + n), and the ready
//! timeout in every readiness mode.

use std::time::Duration;

use super::super::notify::{Notice, Sender};
use super::*;

/// A datagram saying `text`, from `pid` of process group `group`.
fn datagram(pid: u32, group: u32, text: &str) -> Input {
    let sender = Sender {
        pid,
        group: Some(group),
    };
    Input::Notify(sender, Notice::parse(text.as_bytes()))
}

const fn pid(id: u32) -> u32 {
    100_000 + id
}

fn notify_primary(channel: WorkerChannel) -> Harness {
    let builder = ClusterPrimary::builder()
        .channel(channel)
        .readiness(Readiness::Notify);
    Harness::with(builder)
}

#[tokio::test(start_paused = true)]
async fn a_worker_is_ready_on_its_own_ready_and_no_one_elses() {
    let mut primary = notify_primary(WorkerChannel::None);
    primary.fork(2).expect("fork");
    assert!(primary.events().contains(&"workerOnline"));
    // Not a worker, nor in a worker's group: dropped.
    primary.input(datagram(7, 7, "READY=1"));
    // A process of worker 2's group speaks for worker 2 only.
    primary.input(datagram(555, pid(2), "READY=1"));
    assert_eq!(primary.events(), ["workerReady", "addWorker"]);
    assert_eq!(primary.ready_ids(), [2]);
    // Said again (a reload): nothing happens.
    primary.input(datagram(pid(2), pid(2), "READY=1"));
    assert_eq!(primary.events(), Vec::<&str>::new());
    assert_eq!(primary.context.notify_dropped_total(), 1);
    primary.input(datagram(pid(1), pid(1), "READY=1"));
    assert_eq!(primary.ready_ids(), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn status_and_stopping_are_events_and_the_status_is_kept() {
    let mut primary = notify_primary(WorkerChannel::None);
    primary.fork(1).expect("fork");
    primary.events();
    primary.input(datagram(pid(1), pid(1), "STATUS=warming up\nWATCHDOG=1"));
    assert_eq!(primary.events(), ["workerStatus"]);
    primary.input(datagram(
        pid(1),
        pid(1),
        "STATUS=serving\nREADY=1\nSTOPPING=1",
    ));
    assert_eq!(
        primary.events(),
        ["workerStatus", "workerReady", "addWorker", "workerStopping"]
    );
    let entry = primary
        .context
        .registry
        .get(WorkerId::new(1))
        .expect("live");
    assert_eq!(entry.status.as_deref(), Some("serving"));
}

#[tokio::test(start_paused = true)]
async fn ready_before_the_hello_counts_at_the_hello() {
    let mut primary = notify_primary(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.events();
    primary.input(datagram(pid(1), pid(1), "READY=1"));
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.hello(1);
    assert_eq!(
        primary.events(),
        ["workerOnline", "workerReady", "addWorker"]
    );
}

#[tokio::test(start_paused = true)]
async fn ready_is_ignored_unless_readiness_is_notify() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.hello(1);
    primary.events();
    primary.input(datagram(pid(1), pid(1), "READY=1\nSTATUS=up"));
    assert_eq!(primary.events(), ["workerStatus"]);
    assert_eq!(primary.ready_ids(), Vec::<u64>::new());
}

#[tokio::test(start_paused = true)]
async fn the_ready_timeout_stops_a_worker_in_every_readiness_but_once_started() {
    let modes = [
        (WorkerChannel::Frames, Readiness::Message, true),
        (WorkerChannel::None, Readiness::Listening, true),
        (WorkerChannel::None, Readiness::Notify, true),
        (WorkerChannel::Frames, Readiness::Notify, true),
        (WorkerChannel::None, Readiness::Started, false),
    ];
    for (channel, readiness, times_out) in modes {
        let builder = ClusterPrimary::builder()
            .channel(channel)
            .readiness(readiness)
            .ready_timeout(Duration::from_secs(1));
        let mut primary = Harness::with(builder);
        primary.fork(1).expect("fork");
        primary.advance(Duration::from_millis(999)).await;
        assert!(!primary.events().contains(&"workerError"), "{readiness:?}");
        primary.advance(Duration::from_millis(1)).await;
        let events = primary.events();
        assert_eq!(
            events.contains(&"workerError"),
            times_out,
            "{readiness:?}: {events:?}"
        );
    }
}
