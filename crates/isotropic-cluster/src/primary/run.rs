//! The primary's actor: one task that owns the [`PrimaryContext`] and feeds
//! it commands from the handles, reports from the workers, and timers.

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::WorkerHandle;
use super::config::Readiness;
use super::context::{PrimaryContext, Timer};
use super::events::{
    WorkerListenError, WorkerListening, WorkerMessage, WorkerOutput, WorkerSignal,
};
use super::input::Input;
use super::phase::Phase;
use super::state::Trigger;
use crate::WorkerId;
use crate::actor::Command;
use crate::events;
use crate::net::ListenAddress;
use crate::protocol::Frame;

/// How many queued inputs are handled per turn of the actor's loop.
const BATCH: usize = 256;

/// Runs the primary until it is destroyed (or every handle is dropped, which
/// destroys it).
pub(super) async fn run(
    mut context: PrimaryContext,
    mut commands: mpsc::UnboundedReceiver<Command<PrimaryContext>>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let mut handles = true;
    // What handlers of the initialize events did (forked, say) settles first.
    context.settle();
    while context.phase != Phase::Destroyed {
        tokio::select! {
            command = commands.recv(), if handles => match command {
                Some(command) => command(&mut context),
                None => {
                    handles = false;
                    tracing::debug!("every handle dropped: destroying the primary");
                    context.destroy();
                }
            },
            Some(input) = inputs.recv() => {
                context.input(input);
                // Handle what is already queued in one go (bounded).
                for _ in 1..BATCH {
                    let Ok(input) = inputs.try_recv() else { break };
                    context.settle();
                    context.input(input);
                }
            }
            Some(expired) = context.timers.next(), if !context.timers.is_empty() => {
                context.timer(expired.into_inner());
            }
        }
        context.settle();
    }
}

impl PrimaryContext {
    pub(super) fn input(&mut self, input: Input) {
        match input {
            Input::Frames(id, frames, _budget) => {
                for frame in frames {
                    self.frame(id, frame);
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
        }
    }

    /// A frame from worker `id`: a step of its lifecycle, or something to
    /// deliver once its state allows.
    fn frame(&mut self, id: WorkerId, frame: Frame) {
        let ready_on = self.config.readiness();
        let trigger = match &frame {
            Frame::Hello { protocol } => Trigger::Hello {
                version: *protocol,
                ready_on,
            },
            Frame::Ready if ready_on == Readiness::Message => Trigger::Ready,
            Frame::Disconnect => Trigger::Announce,
            other => {
                let Some(entry) = self.registry.get(id) else {
                    return;
                };
                let primary_only =
                    matches!(other, Frame::Listening { .. } | Frame::Connection { .. });
                match entry.state.admits(other.name(), primary_only) {
                    Ok(true) => return self.deliver(entry.worker.clone(), frame),
                    Ok(false) => return,
                    Err(error) => Trigger::Broke(error),
                }
            }
        };
        self.apply(id, trigger);
    }

    /// Hands on a frame of a worker whose state allows it.
    fn deliver(&mut self, worker: WorkerHandle, frame: Frame) {
        match frame {
            Frame::Message(message) => events::publish(self, WorkerMessage { worker, message }),
            Frame::Listen { id, address } => self.listen(worker, id, &address),
            Frame::Reply { id, result } => {
                let from = worker.id();
                worker.pending().resolve(id, result, Some(from));
            }
            Frame::Request { id, message } => self
                .handlers
                .answer(id, &message, self.config.max_frame_size)
                .send(worker.outbox()),
            // Lifecycle frames are triggers, never delivered (a ready that
            // does not make the worker ready is dropped).
            Frame::Hello { .. }
            | Frame::Ready
            | Frame::Disconnect
            | Frame::Listening { .. }
            | Frame::Connection { .. } => {}
        }
    }

    /// Answers a worker's listen request, and reports it.
    fn listen(&mut self, worker: WorkerHandle, request: u64, address: &ListenAddress) {
        let registry = &self.registry;
        let answer = self.listeners.answer(
            &worker,
            request,
            address,
            self.config.distribution,
            &self.inputs,
            |id| registry.connected(id),
        );
        match answer {
            Some(Ok(address)) => {
                tracing::info!(worker_id = %worker.id(), %address, "Worker is listening");
                events::publish(self, WorkerListening { worker, address });
            }
            Some(Err(error)) => {
                tracing::warn!(worker_id = %worker.id(), %error, "Worker cannot listen");
                events::publish(self, WorkerListenError { worker, error });
            }
            None => {}
        }
    }

    pub(super) fn timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart => {
                if self.phase.is_active() {
                    let _ = self.fork(1);
                }
            }
            Timer::Ready(id) => {
                if let Some(after) = self.config.ready_timeout {
                    self.apply(id, Trigger::ReadyTimeout(after));
                }
            }
            Timer::Listening(id) => self.poll_listening(id),
            Timer::Escalate(id, signal) => {
                if let Some(worker) = self.registry.worker(id) {
                    events::publish(self, WorkerSignal { worker, signal });
                }
            }
        }
    }
}
