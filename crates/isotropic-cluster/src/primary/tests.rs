//! The primary's lifecycle without processes: a fake spawner starts workers
//! that are only channels, the test plays their part (frames, the end of the
//! channel, exits), and the clock is tokio's paused one. Each test asserts the
//! events published and the actions taken (frames sent, signals, replacements).

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Decoder as _;

use super::context::{PrimaryContext, PrimaryEvent};
use super::input::Input;
use super::spawner::{Spawn, Spawned};
use super::{ClusterPrimary, Readiness, RestartPolicy, WorkerChannel, WorkerHandle};
use crate::actor::Mailbox;
use crate::channel::{Outbox, QueueLimits};
use crate::error::{Error, ProtocolError};
use crate::events::{self, EventStream};
use crate::protocol::{self, Frame, FrameCodec, Wire};
use crate::{Signal, Subscribe as _, WorkerId};

const GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The other side of a fake worker: its end of the channel, and the signals
/// the primary sent it.
struct Peer {
    channel: UnixStream,
    signals: mpsc::UnboundedReceiver<Signal>,
}

/// Starts workers that are channels only; fails a start when told to.
#[derive(Debug, Default)]
struct FakeSpawner {
    peers: Mutex<VecDeque<(WorkerId, Peer)>>,
    /// The id of a worker whose start fails.
    fail: AtomicU64,
    listening: AtomicBool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

impl Spawn for FakeSpawner {
    fn spawn(&self, id: WorkerId, _inputs: mpsc::Sender<Input>) -> Result<Spawned, Error> {
        if self.fail.load(Ordering::SeqCst) == id.get() {
            return Err(Error::Spawn {
                program: "fake".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound).into(),
            });
        }
        let (ours, theirs) = UnixStream::pair().map_err(|source| Error::Spawn {
            program: "fake".into(),
            source: source.into(),
        })?;
        let outbox = Outbox::spawn(ours.into_split().1, QueueLimits::default(), Some(id));
        let pid = 100_000 + u32::try_from(id.get()).unwrap_or(0);
        let worker = WorkerHandle::new(id, pid, outbox, 1 << 20, GRACE, Wire::Frames);
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let peer = Peer {
            channel: theirs,
            signals: signal_rx,
        };
        self.peers.lock().expect("peers").push_back((id, peer));
        Ok(Spawned { worker, signals })
    }

    fn is_listening(&self, _pid: u32) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
}

/// A primary's context driven by hand, with the events it published.
struct Harness {
    context: PrimaryContext,
    spawner: Arc<FakeSpawner>,
    events: EventStream<PrimaryEvent>,
    peers: Vec<(WorkerId, Peer)>,
    _mailbox: Mailbox<PrimaryContext>,
}

impl Harness {
    fn new(channel: WorkerChannel) -> Self {
        Self::with(ClusterPrimary::builder().channel(channel))
    }

    fn with(builder: super::PrimaryBuilder) -> Self {
        let spawner = Arc::new(FakeSpawner::default());
        let builder = builder
            .shutdown_grace(GRACE)
            .kill_grace(KILL_GRACE)
            .spawner(spawner.clone());
        let (mailbox, _commands) = Mailbox::new();
        let (mut context, _) = builder.into_context(mailbox.downgrade());
        let events = context.stream.subscribe();
        events::publish(&mut context, super::Initialize);
        Self {
            context,
            spawner,
            events,
            peers: Vec::new(),
            _mailbox: mailbox,
        }
    }

    /// The names of the events published since the last call.
    fn events(&mut self) -> Vec<&'static str> {
        std::iter::from_fn(|| self.events.next().now_or_never().flatten())
            .map(|event| event.name())
            .collect()
    }

    /// Forks `count` workers and ends the turn (`workerFork` is published).
    fn fork(&mut self, count: usize) -> Result<usize, Error> {
        let forked = self.context.fork(count);
        self.settle();
        forked
    }

    fn settle(&mut self) {
        self.context.settle();
        let mut started = self.spawner.peers.lock().expect("peers");
        self.peers.extend(started.drain(..));
    }

    fn input(&mut self, input: Input) {
        self.context.input(input);
        self.settle();
    }

    fn frames(&mut self, id: u64, frames: Vec<Frame>) {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a permit");
        self.input(Input::Frames(WorkerId::new(id), frames, permit));
    }

    /// Worker `id` says hello, then ready.
    fn ready(&mut self, id: u64) {
        let hello = Frame::Hello {
            protocol: protocol::VERSION,
        };
        self.frames(id, vec![hello, Frame::Ready]);
    }

    fn exit(&mut self, id: u64, code: i32) {
        let status = ExitStatus::from_raw(code << 8);
        self.input(Input::Exited(WorkerId::new(id), Some(status)));
    }

    /// Lets `duration` pass and fires the timers that are due.
    async fn advance(&mut self, duration: Duration) {
        tokio::time::advance(duration).await;
        while let Some(Some(expired)) = self.context.timers.next().now_or_never() {
            self.context.timer(expired.into_inner());
            self.settle();
        }
    }

    fn peer(&mut self, id: u64) -> &mut Peer {
        let id = WorkerId::new(id);
        &mut self
            .peers
            .iter_mut()
            .find(|(peer, _)| *peer == id)
            .expect("a started worker")
            .1
    }

    /// The signals worker `id` was sent so far.
    fn signals(&mut self, id: u64) -> Vec<Signal> {
        let peer = self.peer(id);
        std::iter::from_fn(|| peer.signals.try_recv().ok()).collect()
    }

    /// What worker `id` was sent until its channel closed for sending.
    async fn frames_sent_until_closed(&mut self, id: u64) -> Vec<Frame> {
        let mut bytes = Vec::new();
        let read = self.peer(id).channel.read_to_end(&mut bytes);
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the channel closes")
            .expect("read");
        let mut buffer = bytes::BytesMut::from(&bytes[..]);
        let mut codec = FrameCodec::new(1 << 20);
        std::iter::from_fn(|| codec.decode(&mut buffer).ok().flatten()).collect()
    }

    fn ready_ids(&self) -> Vec<u64> {
        self.context
            .workers()
            .iter()
            .map(|w| w.id().get())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_framed_worker_goes_online_then_ready_then_joins_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    assert_eq!(primary.fork(1).expect("fork"), 1);
    assert_eq!(primary.events(), ["initialize", "fork", "workerFork"]);
    primary.frames(
        1,
        vec![Frame::Hello {
            protocol: protocol::VERSION,
        }],
    );
    assert_eq!(primary.events(), ["workerOnline"]);
    assert!(primary.ready_ids().is_empty());
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(primary.events(), ["workerReady", "addWorker"]);
    assert_eq!(primary.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn workers_without_hello_are_online_or_ready_once_started() {
    let mut node = Harness::new(WorkerChannel::Node);
    node.fork(1).expect("fork");
    assert_eq!(node.events()[2..], ["workerFork", "workerOnline"]);
    let mut plain = Harness::new(WorkerChannel::None);
    plain.fork(1).expect("fork");
    assert_eq!(
        plain.events()[2..],
        ["workerFork", "workerOnline", "workerReady", "addWorker"]
    );
    assert_eq!(plain.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_must_listen_is_ready_once_it_holds_a_listening_socket() {
    let builder = ClusterPrimary::builder()
        .channel(WorkerChannel::None)
        .readiness(Readiness::Listening);
    let mut primary = Harness::with(builder);
    primary.fork(1).expect("fork");
    assert_eq!(primary.events()[2..], ["workerFork", "workerOnline"]);
    primary.advance(Duration::from_millis(50)).await;
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.spawner.listening.store(true, Ordering::SeqCst);
    primary.advance(Duration::from_millis(10)).await;
    assert_eq!(primary.events(), ["workerReady", "addWorker"]);
}

#[tokio::test(start_paused = true)]
async fn an_exit_in_every_state_is_reported_once_after_a_disconnect_and_replaced() {
    // (state reached before the exit, events of the exit and its replacement)
    let cases: [(&str, &[&str]); 3] = [
        (
            "starting",
            &["workerDisconnect", "workerExit", "fork", "workerFork"],
        ),
        (
            "online",
            &["workerDisconnect", "workerExit", "fork", "workerFork"],
        ),
        (
            "ready",
            &[
                "workerDisconnect",
                "removeWorker",
                "workerExit",
                "fork",
                "workerFork",
            ],
        ),
    ];
    for (state, expected) in cases {
        let mut primary = Harness::new(WorkerChannel::Frames);
        primary.fork(1).expect("fork");
        // Stable, so replaced at once.
        primary.advance(Duration::from_secs(2)).await;
        match state {
            "online" => primary.frames(
                1,
                vec![Frame::Hello {
                    protocol: protocol::VERSION,
                }],
            ),
            "ready" => primary.ready(1),
            _ => {}
        }
        primary.events();
        primary.exit(1, 1);
        assert_eq!(primary.events(), expected, "exit while {state}");
        assert!(primary.context.registry.get(WorkerId::new(1)).is_none());
        assert!(primary.context.registry.get(WorkerId::new(2)).is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_leaving_worker_that_exits_is_voluntary_and_not_counted_as_a_failure() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.frames(1, vec![Frame::Disconnect]);
    assert_eq!(primary.events(), ["workerDisconnect", "removeWorker"]);
    let exits = Arc::new(Mutex::new(Vec::new()));
    let seen = exits.clone();
    (&mut primary.context).on::<super::WorkerExit>(move |event| {
        seen.lock().expect("exits").push(event.voluntary);
    });
    primary.exit(1, 0);
    assert_eq!(*exits.lock().expect("exits"), [true]);
}

#[tokio::test(start_paused = true)]
async fn a_spawn_failure_is_a_fork_error_and_the_workers_before_it_run() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.events();
    primary.spawner.fail.store(3, Ordering::SeqCst);
    let error = primary.fork(2).expect_err("the second start fails");
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert_eq!(primary.events(), ["fork", "forkError", "workerFork"]);
    assert_eq!(primary.context.registry.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn frames_out_of_order_are_a_worker_error_then_sigterm_then_sigkill() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.events();
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(
        primary.events(),
        ["workerError", "workerSignal", "workerDisconnect"]
    );
    assert_eq!(primary.signals(1), [Signal::TERM]);
    assert!(primary.frames_sent_until_closed(1).await.is_empty());
    // Frames after the error are not read.
    primary.frames(
        1,
        vec![Frame::Message(
            crate::Message::from_json("1").expect("json"),
        )],
    );
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.advance(KILL_GRACE).await;
    assert_eq!(primary.events(), ["workerSignal"]);
    assert_eq!(primary.signals(1), [Signal::KILL]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_not_ready_in_time_is_stopped() {
    let builder = ClusterPrimary::builder().ready_timeout(Duration::from_secs(1));
    let mut primary = Harness::with(builder);
    primary.fork(2).expect("fork");
    primary.ready(2);
    primary.events();
    primary.advance(Duration::from_secs(1)).await;
    assert_eq!(
        primary.events(),
        ["workerError", "workerSignal", "workerDisconnect"]
    );
    assert_eq!(primary.signals(1), [Signal::TERM]);
    assert_eq!(primary.signals(2), Vec::<Signal>::new());
    assert_eq!(primary.ready_ids(), [2]);
}

#[tokio::test(start_paused = true)]
async fn a_channel_that_ends_unasked_gets_sigterm_after_the_grace_period() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.input(Input::Closed(WorkerId::new(1), None));
    assert_eq!(primary.events(), ["workerDisconnect", "removeWorker"]);
    primary.advance(GRACE - Duration::from_millis(1)).await;
    assert_eq!(primary.signals(1), Vec::<Signal>::new());
    primary.advance(Duration::from_millis(1)).await;
    assert_eq!(primary.signals(1), [Signal::TERM]);
    let error = ProtocolError::InvalidMessage("after the end".into());
    primary.input(Input::Closed(WorkerId::new(1), Some(error)));
    assert_eq!(primary.events(), ["workerSignal"], "one disconnect only");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_asks_every_worker_to_leave_then_escalates_then_completes() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(3).expect("fork");
    primary.ready(1);
    primary.frames(
        2,
        vec![Frame::Hello {
            protocol: protocol::VERSION,
        }],
    );
    primary.events();
    primary.context.shut_down();
    primary.settle();
    assert_eq!(primary.events(), ["shutDown"]);
    assert!(!primary.context.is_active());
    for id in 1..=3 {
        let sent = primary.frames_sent_until_closed(id).await;
        assert!(
            matches!(sent[..], [Frame::Disconnect]),
            "worker {id}: {sent:?}"
        );
    }
    // Worker 1 leaves at once; 2 after SIGTERM; 3 only after SIGKILL.
    primary.input(Input::Closed(WorkerId::new(1), None));
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "removeWorker", "workerExit"]
    );
    primary.advance(GRACE).await;
    assert_eq!(primary.signals(2), [Signal::TERM]);
    assert_eq!(primary.signals(3), [Signal::TERM]);
    primary.exit(2, 0);
    primary.advance(KILL_GRACE).await;
    assert_eq!(primary.signals(3), [Signal::KILL]);
    primary.events();
    primary.input(Input::Exited(
        WorkerId::new(3),
        Some(ExitStatus::from_raw(libc::SIGKILL)),
    ));
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "shutDownComplete"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_destroy_in_every_state_shuts_down_then_tears_down() {
    for state in ["idle", "starting", "ready", "shutting down", "shut down"] {
        let mut primary = Harness::new(WorkerChannel::Frames);
        if state != "idle" {
            primary.fork(1).expect("fork");
        }
        if state == "ready" {
            primary.ready(1);
        }
        if state.starts_with("shut") {
            primary.context.shut_down();
            primary.settle();
        }
        if state == "shut down" {
            primary.exit(1, 0);
        }
        primary.events();
        primary.context.destroy();
        primary.settle();
        let mut events = primary.events();
        if state != "idle" && state != "shut down" {
            assert!(
                !events.contains(&"destroyComplete"),
                "{state}: waits for the exit"
            );
            primary.exit(1, 0);
            events.extend(primary.events());
        }
        assert_eq!(events.first(), Some(&"destroy"), "{state}: {events:?}");
        assert_eq!(
            events.last(),
            Some(&"destroyComplete"),
            "{state}: {events:?}"
        );
        let completes = events.iter().filter(|e| **e == "shutDownComplete").count();
        assert!(completes <= 1, "{state}: {events:?}");
        assert_eq!(completes == 1, state != "shut down", "{state}: {events:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_recycled_worker_leaves_the_pool_and_is_replaced_at_once_outside_the_backoff() {
    let policy = RestartPolicy::default().stable_after(Duration::from_secs(3600));
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.context.stop_worker(WorkerId::new(1)).expect("live");
    assert_eq!(primary.events(), ["removeWorker"]);
    let sent = primary.frames_sent_until_closed(1).await;
    assert!(matches!(sent[..], [Frame::Disconnect]), "{sent:?}");
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "fork", "workerFork"]
    );
    // Recycling again and again never backs off.
    for id in 2..5 {
        primary
            .context
            .stop_worker(WorkerId::new(id))
            .expect("live");
        primary.exit(id, 0);
        assert!(!primary.events().contains(&"restartScheduled"));
    }
    let unknown = primary.context.stop_worker(WorkerId::new(99));
    assert!(matches!(unknown, Err(Error::NoSuchWorker { .. })));
}

#[tokio::test(start_paused = true)]
async fn workers_that_keep_dying_early_are_replaced_with_growing_delays() {
    let policy = RestartPolicy::default()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(400));
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.exit(1, 1);
    primary.events();
    let mut delays = Vec::new();
    let scheduled = Arc::new(Mutex::new(Vec::new()));
    let seen = scheduled.clone();
    (&mut primary.context).on::<super::RestartScheduled>(move |event| {
        seen.lock().expect("delays").push(event.delay);
    });
    for id in 2..6 {
        primary.exit(id, 1);
        let delay = scheduled
            .lock()
            .expect("delays")
            .last()
            .copied()
            .expect("a delay");
        delays.push(delay.as_millis());
        assert!(
            primary
                .context
                .registry
                .get(WorkerId::new(id + 1))
                .is_none()
        );
        primary.advance(delay).await;
        assert!(
            primary
                .context
                .registry
                .get(WorkerId::new(id + 1))
                .is_some()
        );
    }
    assert_eq!(delays, [100, 200, 400, 400]);
}

#[tokio::test(start_paused = true)]
async fn no_replacement_after_a_shutdown_began() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.context.shut_down();
    primary.settle();
    primary.events();
    primary.exit(1, 1);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "shutDownComplete"]
    );
    assert_eq!(primary.fork(1).expect("ignored"), 0);
}

#[tokio::test(start_paused = true)]
async fn fork_ready_resolves_once_every_new_worker_is_in_the_pool_or_one_exits_first() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let mut ready = primary.context.fork_ready(2).expect("fork");
    primary.settle();
    primary.ready(2);
    assert!(ready.try_recv().is_err(), "worker 1 is not ready yet");
    primary.ready(1);
    let workers = ready.try_recv().expect("told").expect("ready");
    let ids: Vec<u64> = workers.iter().map(|w| w.id().get()).collect();
    assert_eq!(ids, [1, 2]);

    let mut lost = primary.context.fork_ready(1).expect("fork");
    primary.settle();
    primary.exit(3, 1);
    let error = lost.try_recv().expect("told").expect_err("it exited");
    assert!(matches!(error, Error::NotReady { worker_id } if worker_id.get() == 3));

    primary.context.shut_down();
    primary.settle();
    let none = primary.context.fork_ready(1).expect("ignored").try_recv();
    assert!(matches!(none, Ok(Ok(workers)) if workers.is_empty()));
}

// ===== found by review: handlers that move a worker on while it comes up =====

#[tokio::test(start_paused = true)]
async fn a_worker_asked_to_leave_while_it_comes_online_never_joins_the_pool() {
    for ask in ["stop_worker", "shut_down"] {
        let mut primary = Harness::new(WorkerChannel::None);
        (&mut primary.context).on::<super::WorkerOnline>(move |event| {
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
    (&mut primary.context).on::<super::WorkerReady>(|event| {
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
    (&mut primary.context).on::<super::AddWorker>(|event| event.prevent());
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
    (&mut primary.context).on::<super::Fork>(move |event| {
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
    (&mut primary.context).on::<super::WorkerDisconnect>(|event| event.prevent());
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
        .on::<super::Initialize>(|event| {
            event.context().fork(1).expect("fork");
        });
    let (mailbox, commands) = Mailbox::new();
    let (mut context, _) = builder.into_context(mailbox.downgrade());
    let mut events = context.stream.subscribe();
    events::publish(&mut context, super::Initialize);
    // The worker's first message is already waiting when the actor starts.
    let permit = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a permit");
    let message = crate::Message::from_json("1").expect("json");
    let frames = vec![Frame::Message(message)];
    context
        .inputs
        .try_send(Input::Frames(WorkerId::new(1), frames, permit))
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
    primary.frames(
        1,
        vec![Frame::Hello {
            protocol: protocol::VERSION,
        }],
    );
    primary.context.shut_down();
    primary.settle();
    primary.events();
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(primary.events(), Vec::<&str>::new());
    assert!(primary.ready_ids().is_empty());
}
