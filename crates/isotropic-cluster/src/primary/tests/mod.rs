//! The primary's lifecycle without processes: a fake spawner starts workers
//! that are only channels, the test plays their part (frames, the end of the
//! channel, exits), and the clock is tokio's paused one. Each test asserts the
//! events published and the actions taken (frames sent, signals, replacements).

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Decoder as _;

use super::MemorySource;
use super::context::{PrimaryContext, PrimaryEvent};
use super::input::{Inbound, Input};
use super::resources::Usage;
use super::spawner::{Spawn, Spawned, Start};
use super::{ClusterPrimary, Readiness, RestartPolicy, WorkerChannel, WorkerHandle};
use crate::actor::Mailbox;
use crate::channel::{Outbox, QueueLimits};
use crate::error::{Error, ProtocolError};
use crate::events::{self, EventStream};
use crate::protocol::{self, Frame, FrameCodec, Wire};
use crate::{Signal, Subscribe as _, WorkerId};

pub(super) const GRACE: Duration = Duration::from_secs(5);
pub(super) const KILL_GRACE: Duration = Duration::from_secs(2);

/// The other side of a fake worker: its end of the channel, the signals
/// the primary sent it, and where a running primary hears of it.
pub(super) struct Peer {
    pub(super) channel: UnixStream,
    pub(super) signals: mpsc::UnboundedReceiver<Signal>,
    pub(super) inputs: mpsc::Sender<Input>,
}

/// Starts workers that are channels only; fails a start when told to.
#[derive(Debug, Default)]
pub(super) struct FakeSpawner {
    pub(super) peers: Mutex<VecDeque<(WorkerId, Peer)>>,
    /// The ids of workers whose start fails.
    pub(super) fail: Mutex<Vec<u64>>,
    pub(super) listening: AtomicBool,
    /// What `usage` says each worker (by pid) uses.
    pub(super) memory: Mutex<std::collections::HashMap<u32, u64>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

impl Spawn for FakeSpawner {
    fn spawn(&self, start: Start<'_>, inputs: mpsc::Sender<Input>) -> Result<Spawned, Error> {
        let (id, slot) = (start.id, start.slot);
        if self.fail.lock().expect("ids").contains(&id.get()) {
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
        let worker = WorkerHandle::new(
            (id, slot, start.release.generation()),
            pid,
            outbox,
            crate::protocol::Sizes::frames(1 << 20),
            GRACE,
            Wire::Frames(crate::Codec::Json),
            start.requests.clone(),
        );
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let peer = Peer {
            channel: theirs,
            signals: signal_rx,
            inputs,
        };
        self.peers.lock().expect("peers").push_back((id, peer));
        Ok(Spawned {
            worker,
            signals,
            cgroup: None,
        })
    }

    fn is_listening(&self, _pid: u32) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Each worker's memory as set in `memory` (by pid), no CPU time.
    fn usage(&self, pid: u32, _cgroup: Option<&std::path::Path>) -> Option<Usage> {
        let memory = *self.memory.lock().expect("memory").get(&pid)?;
        Some(Usage {
            cpu: Duration::ZERO,
            memory,
            source: MemorySource::ProcessTree,
        })
    }
}

/// A primary's context driven by hand, with the events it published.
pub(super) struct Harness {
    pub(super) context: PrimaryContext,
    pub(super) spawner: Arc<FakeSpawner>,
    pub(super) events: EventStream<PrimaryEvent>,
    pub(super) peers: Vec<(WorkerId, Peer)>,
    pub(super) _mailbox: Mailbox<PrimaryContext>,
    /// (Kept: the primary counts as running while its queue is open.)
    _commands: crate::actor::Commands<PrimaryContext>,
}

impl Harness {
    pub(super) fn new(channel: WorkerChannel) -> Self {
        Self::with(ClusterPrimary::builder().channel(channel))
    }

    pub(super) fn with(builder: super::PrimaryBuilder) -> Self {
        let spawner = Arc::new(FakeSpawner::default());
        let builder = builder
            .shutdown_grace(GRACE)
            .kill_grace(KILL_GRACE)
            .spawner(spawner.clone());
        let (mailbox, commands) = Mailbox::new();
        let (mut context, _) = builder.into_context(mailbox.downgrade());
        let events = context.stream.subscribe();
        events::publish(&mut context, super::Initialize);
        Self {
            context,
            spawner,
            events,
            peers: Vec::new(),
            _mailbox: mailbox,
            _commands: commands,
        }
    }

    /// The names of the events published since the last call.
    pub(super) fn events(&mut self) -> Vec<&'static str> {
        std::iter::from_fn(|| self.events.next().now_or_never().flatten())
            .map(|event| event.name())
            .collect()
    }

    /// Forks `count` workers and ends the turn (`workerFork` is published).
    pub(super) fn fork(&mut self, count: usize) -> Result<usize, Error> {
        let forked = self.context.fork(count);
        self.settle();
        forked
    }

    /// Ends the turn as the actor does.
    pub(super) fn settle(&mut self) {
        self.context.settle();
        self.context.sum_up();
        let mut started = self.spawner.peers.lock().expect("peers");
        self.peers.extend(started.drain(..));
    }

    pub(super) fn input(&mut self, input: Input) {
        self.context.input(input);
        self.settle();
    }

    pub(super) fn frames(&mut self, id: u64, frames: Vec<Frame>) {
        self.inbound(id, frames.into_iter().map(Inbound::Frame).collect());
    }

    /// Worker `id` sends bytes messages of `payloads`, read as one run (as
    /// its watch reads them).
    pub(super) fn bytes_run(&mut self, id: u64, payloads: &[&'static [u8]]) {
        self.inbound(id, vec![bytes_run(payloads)]);
    }

    /// The payloads of the `workerBytes` events from now on, as they come.
    pub(super) fn record_bytes(&mut self) -> Arc<std::sync::Mutex<Vec<bytes::Bytes>>> {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        self.context
            .on::<crate::primary::WorkerBytes>(move |event| {
                into.lock().expect("seen").push(event.bytes.clone());
            });
        seen
    }

    fn inbound(&mut self, id: u64, inbound: Vec<Inbound>) {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a permit");
        self.input(Input::Frames(WorkerId::new(id), inbound, permit, None));
    }

    /// Worker `id` says hello.
    pub(super) fn hello(&mut self, id: u64) {
        let hello = Frame::Hello {
            protocol: protocol::VERSION,
            heartbeat: false,
            served: false,
            segments: false,
        };
        self.frames(id, vec![hello]);
    }

    /// Worker `id` says hello, then ready.
    pub(super) fn ready(&mut self, id: u64) {
        self.hello(id);
        self.frames(id, vec![Frame::Ready]);
    }

    pub(super) fn exit(&mut self, id: u64, code: i32) {
        let status = ExitStatus::from_raw(code << 8);
        self.input(Input::Exited(WorkerId::new(id), Some(status)));
    }

    /// Lets `duration` pass and fires the timers that are due.
    pub(super) async fn advance(&mut self, duration: Duration) {
        tokio::time::advance(duration).await;
        while let Some(Some(expired)) = self.context.timers.next().now_or_never() {
            self.context.timer(expired.into_inner());
            self.settle();
        }
    }

    pub(super) fn peer(&mut self, id: u64) -> &mut Peer {
        let id = WorkerId::new(id);
        &mut self
            .peers
            .iter_mut()
            .find(|(peer, _)| *peer == id)
            .expect("a started worker")
            .1
    }

    /// The signals worker `id` was sent so far.
    pub(super) fn signals(&mut self, id: u64) -> Vec<Signal> {
        let peer = self.peer(id);
        std::iter::from_fn(|| peer.signals.try_recv().ok()).collect()
    }

    /// What worker `id` was sent until its channel closed for sending.
    pub(super) async fn frames_sent_until_closed(&mut self, id: u64) -> Vec<Frame> {
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

    pub(super) fn ready_ids(&self) -> Vec<u64> {
        self.context
            .workers()
            .iter()
            .map(|w| w.id().get())
            .collect()
    }
}

/// A primary with `count` workers, all ready.
pub(super) fn pool(builder: crate::primary::PrimaryBuilder, count: u64) -> Harness {
    let mut primary = Harness::with(builder);
    primary
        .fork(usize::try_from(count).expect("small"))
        .expect("fork");
    for n in 1..=count {
        primary.ready(n);
    }
    primary.events();
    primary
}

mod faults;
mod handlers;
mod lifecycle;
mod liveness;
mod metrics;
mod notify;
mod panics;
mod resources;
mod rollout;
mod supervision;

/// Bytes messages of `payloads` read as one run (as a watch reads them).
fn bytes_run(payloads: &[&'static [u8]]) -> Inbound {
    let mut codec = FrameCodec::new(protocol::DEFAULT_MAX_FRAME);
    let mut wire = bytes::BytesMut::new();
    for payload in payloads {
        let frame = Frame::Bytes(bytes::Bytes::from_static(payload));
        tokio_util::codec::Encoder::encode(&mut codec, &frame, &mut wire).expect("encodes");
    }
    let run = protocol::TakeBytes::take_run(&mut codec, &mut wire, (usize::MAX, usize::MAX));
    assert!(wire.is_empty(), "one run");
    Inbound::Bytes(run.expect("a run"))
}
