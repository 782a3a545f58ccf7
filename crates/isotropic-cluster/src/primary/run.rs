//! The primary as an [`Actor`]: besides the commands of its handles, it hears
//! its workers' reports and its timers.

use std::future::Future;

use futures_util::StreamExt as _;
use tokio::sync::OwnedSemaphorePermit;

use super::WorkerHandle;
use super::config::Readiness;
use super::context::{PrimaryContext, Timer};
use super::events::{
    HandlerPanicked, Initialize, WorkerBytes, WorkerListenError, WorkerListening, WorkerMessage,
    WorkerOutput, WorkerSignal,
};
use super::input::{Inbound, Input};
use super::listen::LINGER;
use super::phase::Phase;
use super::registry::Entry;
use super::state::{Trigger, WorkerState};
use crate::WorkerId;
use crate::actor::Actor;
use crate::error::BoxError;
use crate::events::{self, HandlerPanic, Stage, Topic as _};
use crate::fds::PassedFds;
use crate::net::ListenAddress;
use crate::protocol::{BytesRun, Frame, Kind};

/// How many queued inputs are handled per turn of the actor's loop.
const BATCH: usize = 256;

/// What the primary hears besides commands.
#[derive(Debug)]
pub(crate) enum Turn {
    Input(Input),
    Timer(Timer),
}

impl Actor for PrimaryContext {
    type Input = Turn;

    async fn next_input(&mut self) -> Turn {
        tokio::select! {
            Some(input) = self.input_rx.recv() => Turn::Input(input),
            Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                Turn::Timer(expired.into_inner())
            }
            // (The context holds a sender: its inputs never end.)
            else => std::future::pending().await,
        }
    }

    fn handle(&mut self, turn: Turn) {
        match turn {
            Turn::Input(input) => {
                self.input(input);
                // Handle what is already queued in one go (bounded).
                for _ in 1..BATCH {
                    let Ok(input) = self.input_rx.try_recv() else {
                        break;
                    };
                    self.settle();
                    self.input(input);
                }
            }
            Turn::Timer(timer) => self.timer(timer),
        }
    }

    fn end_turn(&mut self) {
        self.settle();
        self.sum_up();
    }

    fn orphaned(&mut self) {
        self.destroy();
    }

    fn finished(&self) -> bool {
        self.phase == Phase::Destroyed
    }

    /// Logs the panic and publishes `handlerPanicked` (unless a handler of
    /// that very event panicked: no loop); the event goes on, and so does
    /// supervision.
    fn handler_panicked(&mut self, panic: HandlerPanic) {
        tracing::error!(
            event = panic.event,
            stage = ?panic.stage,
            message = %panic.message,
            "an event handler panicked; the event goes on as if it had returned"
        );
        if panic.event != HandlerPanicked::NAME {
            events::publish(self, HandlerPanicked::from(panic));
        }
    }
}

impl PrimaryContext {
    /// Runs the initializer (in `start`, before the actor's task): its panic
    /// is reported as a handler's (`handlerPanicked`) and is its failure.
    pub(super) async fn initialize_with<Fut>(
        &mut self,
        init: impl FnOnce() -> Fut,
    ) -> Result<(), BoxError>
    where
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let outcome = events::catch_async(async move { init().await }).await;
        outcome.unwrap_or_else(|message| {
            let failure = format!("the initializer panicked: {message}");
            self.handler_panicked(HandlerPanic {
                event: Initialize::NAME,
                stage: Stage::Complete,
                message,
            });
            Err(failure.into())
        })
    }

    pub(super) fn input(&mut self, input: Input) {
        match input {
            Input::Frames(id, frames, _budget, mut replies) => {
                for inbound in frames {
                    match inbound {
                        // The common case, taken apart here: a frame is a
                        // large enum, and moving it through `frame` and
                        // `deliver` showed in profiles.
                        Inbound::Bytes(run) => self.bytes_run(id, run),
                        Inbound::Frame(frame) => {
                            let reply = match (&frame, &mut replies) {
                                (frame, Some(replies)) if frame.is_request() => replies.split(1),
                                _ => None,
                            };
                            self.frame(id, frame, reply);
                        }
                    }
                }
            }
            Input::Output(id, stream, line) => {
                if let Some(worker) = self.registry.worker(id) {
                    let output = WorkerOutput {
                        worker,
                        stream,
                        line,
                    };
                    events::publish(self, output);
                }
            }
            Input::Closed(id, None) => self.apply(id, Trigger::Closed),
            Input::Closed(id, Some(error)) => self.apply(id, Trigger::Broke(error)),
            Input::Exited(id, status) => self.apply(id, Trigger::Exited(status)),
            Input::Accepted(bound, connection) => {
                let registry = &self.registry;
                self.listeners
                    .pass(&bound, connection, |id| registry.connected(id));
            }
            Input::Notify(sender, notice) => self.notified(sender, notice),
            Input::Health(id, result) => self.rollout_health(id, result),
        }
    }

    /// Bytes messages of worker `id` read as one run, each published if its
    /// state lets it in (checked again only once the registry changed: a
    /// worker's state changes only with it).
    fn bytes_run(&mut self, id: WorkerId, mut run: BytesRun) {
        let mut admitted: Option<(u64, WorkerHandle)> = None;
        events::publish_each(self, |this: &mut Self| {
            for bytes in run.by_ref() {
                let version = this.registry.version();
                let worker = match &admitted {
                    Some((at, worker)) if *at == version => worker.clone(),
                    _ => {
                        let Some(worker) = this.admitted(id, Kind::Bytes.name(), false) else {
                            continue;
                        };
                        admitted = Some((version, worker.clone()));
                        worker
                    }
                };
                let fds = PassedFds::default();
                return Some(WorkerBytes { worker, bytes, fds });
            }
            None
        });
    }

    /// A frame from worker `id`: a step of its lifecycle, or something to
    /// deliver once its state allows.
    fn frame(&mut self, id: WorkerId, frame: Frame, reply: Option<OwnedSemaphorePermit>) {
        let ready_on = self.config.readiness();
        let trigger = match &frame {
            Frame::Hello {
                protocol,
                heartbeat,
                segments,
                ..
            } => {
                let trigger = Trigger::Hello {
                    version: *protocol,
                    ready_on,
                };
                if let Some(entry) = self.registry.get(id) {
                    entry.worker.said_hello(*protocol, *segments);
                }
                self.apply(id, trigger);
                if *heartbeat {
                    self.answers_heartbeats(id);
                }
                if ready_on == Readiness::Notify {
                    self.ready_if_notified(id);
                }
                return;
            }
            Frame::Ready if ready_on == Readiness::Message => Trigger::Ready,
            Frame::Disconnect => Trigger::Announce,
            other => {
                let primary_only =
                    matches!(other, Frame::Listening { .. } | Frame::Connection { .. });
                let refused =
                    (self.registry.get(id)).and_then(|entry| entry.worker.may_send(other).err());
                if let Some(error) = refused {
                    return self.apply(id, Trigger::Broke(error));
                }
                if let Some(worker) = self.admitted(id, other.name(), primary_only) {
                    self.deliver(worker, frame, reply);
                }
                return;
            }
        };
        self.apply(id, trigger);
    }

    /// Worker `id`'s handle if its state admits a frame of kind `name` (a
    /// frame `primary_only` if only the primary may send it) now; a frame
    /// it may not send breaks it.
    fn admitted(
        &mut self,
        id: WorkerId,
        name: &'static str,
        primary_only: bool,
    ) -> Option<WorkerHandle> {
        let entry = self.registry.get(id)?;
        match entry.state.admits(name, primary_only) {
            Ok(true) => Some(entry.worker.clone()),
            Ok(false) => None,
            Err(error) => {
                self.apply(id, Trigger::Broke(error));
                None
            }
        }
    }

    /// Hands on a frame of a worker whose state allows it.
    fn deliver(&mut self, worker: WorkerHandle, frame: Frame, reply: Option<OwnedSemaphorePermit>) {
        let (frame, fds) = match frame {
            Frame::Attached(frame, fds) => (*frame, fds),
            frame => (frame, PassedFds::default()),
        };
        match frame {
            Frame::Message(message) => events::publish(
                self,
                WorkerMessage {
                    worker,
                    message,
                    fds,
                },
            ),
            Frame::Bytes(bytes) => events::publish(self, WorkerBytes { worker, bytes, fds }),
            Frame::Listen { id, address, acks } => self.listen(&worker, (id, acks), &address),
            Frame::Accepted { listener } => {
                let registry = &self.registry;
                self.listeners
                    .accepted(worker.id(), listener, |id| registry.connected(id));
            }
            Frame::Heartbeat => self.heard_from(worker.id()),
            Frame::Reply { id, result } => {
                let from = worker.id();
                worker.pending().resolve(id, result, Some(from));
                self.served(from, 1);
            }
            Frame::BytesReply { id, result } => {
                let from = worker.id();
                worker.pending().resolve_bytes(id, result, Some(from));
                self.served(from, 1);
            }
            Frame::BytesRequest { id, name, body } => self
                .handlers
                .answer_bytes(id, &name, body, self.config.sizes())
                .send(worker.outbox(), reply),
            Frame::Served { requests } => self.served(worker.id(), requests),
            Frame::Request { id, message } => self
                .handlers
                .answer(id, &message, self.config.max_frame_size)
                .send(worker.outbox(), reply),
            // Lifecycle frames are triggers, never delivered (a ready that
            // does not make the worker ready is dropped).
            Frame::Hello { .. }
            | Frame::Ready
            | Frame::Disconnect
            | Frame::Listening { .. }
            | Frame::Connection { .. }
            | Frame::Fds { .. }
            | Frame::Sealed { .. }
            | Frame::Segment { .. }
            | Frame::Lent { .. }
            | Frame::Release(_)
            | Frame::Returned { .. }
            | Frame::Retire { .. }
            | Frame::Attached(..) => {}
        }
    }

    /// Answers a worker's listen request `(id, acks)`, and reports it.
    fn listen(&mut self, worker: &WorkerHandle, (id, acks): (u64, bool), address: &ListenAddress) {
        let registry = &self.registry;
        let answer = self.listeners.answer(
            (worker, id, acks),
            address,
            self.config.distribution,
            &self.inputs,
            |id| registry.connected(id),
        );
        match answer {
            Some(Ok(address)) => {
                tracing::info!(worker_id = %worker.id(), %address, "Worker is listening");
                let worker = worker.clone();
                events::publish(self, WorkerListening { worker, address });
            }
            Some(Err(error)) => {
                tracing::warn!(worker_id = %worker.id(), %error, "Worker cannot listen");
                let worker = worker.clone();
                events::publish(self, WorkerListenError { worker, error });
            }
            None => {}
        }
    }

    pub(super) fn timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart(token) => {
                // (One the pool no longer needs was cancelled by `scale_to`.)
                if let Some(slot) = self.owed.take(token)
                    && self.phase.is_active()
                {
                    self.replace(slot);
                }
            }
            Timer::Recycle => {
                self.recycler.resume();
                self.recycle_next();
            }
            Timer::Expire(id) => self.expire_by_age(id),
            Timer::Ready(id, after) => {
                let waiting =
                    |e: &Entry| matches!(e.state, WorkerState::Starting | WorkerState::Online);
                if self.registry.get(id).is_some_and(waiting) {
                    self.rollouts.not_ready(id, after);
                }
                self.apply(id, Trigger::ReadyTimeout(after));
            }
            Timer::Listening(id) => self.poll_listening(id),
            Timer::Unheld(key) => self.listeners.expire(&key, LINGER),
            Timer::Sample => self.sample(),
            Timer::Escalate(id, signal) => {
                if let Some(worker) = self.registry.worker(id) {
                    events::publish(self, WorkerSignal { worker, signal });
                }
            }
            Timer::Heartbeat => self.heartbeat_tick(),
            Timer::Rollout => self.rollout_step(),
        }
    }
}
