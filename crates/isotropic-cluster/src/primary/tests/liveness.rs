//! Liveness (`liveness.rs`) as flows: heartbeats out, silence reported,
//! the unresponsive worker stopped and replaced.

use super::*;
use crate::primary::{Restart, WorkerUnresponsive};

const PERIOD: Duration = Duration::from_secs(4);
const TICK: Duration = Duration::from_secs(1);

/// A primary watching with [`PERIOD`].
/// A primary watching its workers (and not sampling them: its only timer
/// is the watchdog's).
fn watching(builder: super::super::PrimaryBuilder) -> Harness {
    Harness::with(builder.watchdog(PERIOD).sample_interval(Duration::ZERO))
}

impl Harness {
    /// Worker `id` says hello, answering heartbeats, then ready.
    fn ready_with_heartbeats(&mut self, id: u64) {
        let hello = Frame::Hello {
            protocol: protocol::VERSION,
            heartbeat: true,
            served: false,
            segments: false,
        };
        self.frames(id, vec![hello, Frame::Ready]);
    }

    /// The frames worker `id` received so far (without waiting).
    fn received(&mut self, id: u64) -> Vec<Frame> {
        let mut bytes = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = self.peer(id).channel.try_read(&mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
        }
        let mut buffer = bytes::BytesMut::from(&bytes[..]);
        let mut codec = FrameCodec::new(1 << 20);
        std::iter::from_fn(|| codec.decode(&mut buffer).ok().flatten()).collect()
    }

    /// How many heartbeats worker `id` received so far.
    async fn heartbeats(&mut self, id: u64) -> usize {
        // Let the writer task write what was queued.
        tokio::task::yield_now().await;
        let frames = self.received(id);
        frames.iter().filter(|f| **f == Frame::Heartbeat).count()
    }

    /// Lets `ticks` ticks pass, one at a time (as the clock would), each
    /// heartbeat answered by the workers `answering`; then what is due at once.
    async fn ticks_answering(&mut self, ticks: u32, answering: &[u64]) {
        for _ in 0..ticks {
            self.advance(TICK).await;
            for id in answering {
                self.frames(*id, vec![Frame::Heartbeat]);
            }
        }
        self.advance(Duration::from_millis(1)).await;
    }

    async fn ticks(&mut self, ticks: u32) {
        self.ticks_answering(ticks, &[]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_stopped_with_sigterm_then_sigkill_and_replaced() {
    let mut primary = watching(ClusterPrimary::builder());
    primary.fork(2).expect("fork");
    primary.ready_with_heartbeats(1);
    primary.ready_with_heartbeats(2);
    primary.events();
    // Worker 2 answers each heartbeat; worker 1 none.
    primary.ticks_answering(3, &[2]).await;
    assert_eq!(primary.heartbeats(1).await, 3);
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.ticks_answering(1, &[2]).await;
    let events = primary.events();
    assert_eq!(
        events,
        ["workerUnresponsive", "removeWorker", "workerSignal"],
        "one period after its hello"
    );
    assert_eq!(primary.signals(1), [Signal::TERM]);
    assert_eq!(primary.ready_ids(), [2]);
    let sent = primary.frames_sent_until_closed(1).await;
    assert_eq!(sent.last(), Some(&Frame::Disconnect));
    primary.advance(KILL_GRACE).await;
    assert_eq!(primary.signals(1), [Signal::KILL]);
    primary.exit(1, 9);
    let events = primary.events();
    assert!(events.contains(&"fork"), "replaced: {events:?}");
    // Watching it ended with its stop: no second event.
    primary.ticks_answering(8, &[2]).await;
    assert!(!primary.events().contains(&"workerUnresponsive"));
    assert_eq!(primary.signals(2), Vec::<Signal>::new());
}

#[tokio::test(start_paused = true)]
async fn its_exit_is_a_failure_even_by_sigterm_under_on_failure_but_not_never() {
    for (restart, replaced) in [(Restart::OnFailure, true), (Restart::Never, false)] {
        let policy = RestartPolicy::default().restart(restart);
        let mut primary = watching(ClusterPrimary::builder().restart_policy(policy));
        primary.fork(1).expect("fork");
        primary.ready_with_heartbeats(1);
        primary.ticks(4).await;
        assert_eq!(primary.signals(1), [Signal::TERM]);
        primary.events();
        // Killed by SIGTERM: a clean exit for `OnFailure`, but stopped.
        let status = ExitStatus::from_raw(15);
        primary.input(Input::Exited(WorkerId::new(1), Some(status)));
        assert_eq!(primary.events().contains(&"fork"), replaced, "{restart:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn workers_that_give_no_sign_of_life_are_never_watched() {
    // A framed worker whose hello does not say it answers; workers without
    // our channel.
    for channel in [
        WorkerChannel::Frames,
        WorkerChannel::None,
        WorkerChannel::Node,
    ] {
        let mut primary = watching(ClusterPrimary::builder().channel(channel));
        primary.fork(1).expect("fork");
        if channel == WorkerChannel::Frames {
            primary.ready(1);
        }
        primary.events();
        primary.ticks(20).await;
        assert_eq!(primary.events(), Vec::<&str>::new(), "{channel:?}");
        assert_eq!(primary.signals(1), Vec::<Signal>::new(), "{channel:?}");
        assert!(primary.context.timers.is_empty(), "{channel:?}: no tick");
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_is_not_watched_before_it_is_online_nor_while_leaving() {
    let mut primary = watching(ClusterPrimary::builder());
    primary.fork(2).expect("fork");
    // Worker 1 never says hello: a heartbeat before it is a protocol error,
    // not a sign of life.
    primary.frames(1, vec![Frame::Heartbeat]);
    assert!(primary.events().contains(&"workerError"));
    primary.ready_with_heartbeats(2);
    primary.context.stop_worker(WorkerId::new(2)).expect("live");
    primary.settle();
    primary.events();
    primary.ticks(20).await;
    let events = primary.events();
    assert!(!events.contains(&"workerUnresponsive"), "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn preventing_it_keeps_the_worker_and_it_comes_again_after_another_period() {
    let mut primary = watching(ClusterPrimary::builder());
    let silences = Arc::new(Mutex::new(Vec::new()));
    let seen = silences.clone();
    (&mut primary.context).before::<WorkerUnresponsive>(move |event| {
        seen.lock().expect("lock").push(event.silent_for);
        event.prevent();
    });
    primary.fork(1).expect("fork");
    primary.ready_with_heartbeats(1);
    primary.ticks(8).await;
    assert_eq!(*silences.lock().expect("lock"), [PERIOD, PERIOD * 2]);
    assert_eq!(primary.ready_ids(), [1]);
    assert_eq!(primary.signals(1), Vec::<Signal>::new());
    // It answers again: no more.
    primary.frames(1, vec![Frame::Heartbeat]);
    primary.ticks_answering(12, &[1]).await;
    assert_eq!(silences.lock().expect("lock").len(), 2);
    assert!(primary.heartbeats(1).await >= 20);
}

#[tokio::test(start_paused = true)]
async fn a_sign_of_life_from_elsewhere_starts_the_watch_without_heartbeats() {
    // As `WATCHDOG=1` from a notify worker: nothing is sent to it.
    let mut primary = watching(ClusterPrimary::builder());
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.context.heard_from(WorkerId::new(1));
    primary.events();
    primary.ticks(4).await;
    assert_eq!(primary.heartbeats(1).await, 0);
    assert_eq!(primary.events()[0], "workerUnresponsive");
}
