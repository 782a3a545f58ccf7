//! The default action of each primary event, and how a worker's state
//! transitions are carried out.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::config::WorkerChannel;
use super::context::{PrimaryContext, Timer};
use super::events::*;
use super::listen::LINGER;
use super::phase::Settled;
use super::restart::OnIntensity;
use super::spawner::Start;
use super::state::{Action, AfterExit, Trigger, Why, WorkerState};
use crate::events::{self, Topic};
use crate::protocol::{self, Frame, Wire};
use crate::{Signal, WorkerId};

// ===== transitions =====

impl PrimaryContext {
    /// Applies `trigger` to worker `id` and carries out what follows.
    pub(super) fn apply(&mut self, id: WorkerId, trigger: Trigger) {
        let Some((worker, actions)) = self.registry.apply(id, trigger) else {
            return;
        };
        for action in actions {
            // A handler of an earlier action may have moved the worker on
            // (asked it to leave, say): announce only what still holds.
            let state = self.registry.get(id).map(|entry| entry.state);
            match action {
                Action::Online | Action::Ready
                    if !matches!(state, Some(WorkerState::Online | WorkerState::Ready)) => {}
                Action::Online => events::publish(
                    self,
                    WorkerOnline {
                        worker: worker.clone(),
                    },
                ),
                Action::Ready if state != Some(WorkerState::Ready) => {}
                Action::Ready => {
                    let ready = WorkerReady {
                        worker: worker.clone(),
                    };
                    events::publish(self, ready);
                    // Kept out of the pool (a handler prevented it, or asked
                    // it to leave): whoever waits for it to be ready is told.
                    if !self.registry.in_pool(id) {
                        self.ready_waiters.lost(id);
                        self.recycle_kept_out(id);
                        self.rollout_kept_out(id);
                    }
                }
                Action::PollListening => self.poll_listening(id),
                Action::Fail(error) => {
                    let worker = worker.clone();
                    events::publish(self, WorkerError { worker, error });
                }
                Action::Disconnect => {
                    worker.pending().fail_all(Some(id));
                    // Kept for a replacement to take over, unless none is coming.
                    for unheld in self.listeners.forget(id) {
                        if self.phase.is_active() {
                            self.timers.insert(Timer::Unheld(unheld), LINGER);
                        } else {
                            self.listeners.expire(&unheld, Duration::ZERO);
                        }
                    }
                    events::publish(
                        self,
                        WorkerDisconnect {
                            worker: worker.clone(),
                        },
                    );
                    // Prevented or not: a worker that cannot be talked to
                    // leaves, by force after the grace period.
                    let grace = self.config.shutdown_grace;
                    self.apply(id, Trigger::Terminate(Some(grace)));
                }
                Action::AskToLeave => {
                    if self.config.wire() != Wire::NodeJson && self.config.has_channel() {
                        let _ = worker.try_send_frame(protocol::encode_control(&Frame::Disconnect));
                    }
                    worker.outbox().close();
                }
                // (At once, in this turn, when there is no grace.)
                Action::Terminate | Action::TerminateAfter(Duration::ZERO) => {
                    let worker = worker.clone();
                    events::publish(
                        self,
                        WorkerSignal {
                            worker,
                            signal: Signal::TERM,
                        },
                    );
                }
                Action::TerminateAfter(grace) => {
                    self.timers.insert(Timer::Escalate(id, Signal::TERM), grace);
                }
                Action::Exit { status, voluntary } => self.exit(id, status, voluntary),
            }
        }
    }

    /// Publishes `workerExit`, then forgets the worker (prevented or not, the
    /// process is gone); replaces it in the event's default action.
    fn exit(&mut self, id: WorkerId, status: Option<ExitStatus>, voluntary: bool) {
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        let worker = entry.worker.clone();
        let mut after = match entry.state {
            WorkerState::Gone { after } => after,
            _ => AfterExit::Policy,
        };
        let failed = after == AfterExit::Failure;
        // (Both are told.)
        if self.recycle_exited(id) | self.rollout_exited(id, status, after) {
            after = AfterExit::Nothing;
        }
        self.metrics.pool.exited(status, voluntary);
        let mut exit = WorkerExit {
            worker,
            status,
            voluntary,
            failed,
            replaced: false,
        };
        exit.replaced = self.phase.is_active()
            && match after {
                AfterExit::Policy => self.config.restart.replaces(exit.code(), exit.signal()),
                // Stopped for a failure: whatever its status says.
                AfterExit::Failure => self.config.restart.replaces_failures(),
                AfterExit::Replace => true,
                AfterExit::Nothing => false,
            };
        events::publish(self, exit);
        self.ready_waiters.lost(id);
        if let Some(entry) = self.registry.remove(id) {
            entry.worker.outbox().close();
        }
        self.rollout_step();
    }

    /// The worker was started: it comes online now or at its hello.
    pub(super) fn started(&mut self, id: WorkerId) {
        let started = Trigger::Started {
            hello: self.config.channel == WorkerChannel::Frames,
            ready_on: self.config.readiness(),
        };
        self.apply(id, started);
    }

    /// A worker ready once listening ([`Readiness::Listening`]) is ready once
    /// it holds a listening socket; until then, look again shortly.
    ///
    /// [`Readiness::Listening`]: super::Readiness::Listening
    pub(super) fn poll_listening(&mut self, id: WorkerId) {
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        if entry.state != WorkerState::Online {
            return;
        }
        if self.spawner.is_listening(entry.worker.pid()) {
            self.apply(id, Trigger::Ready);
        } else {
            self.timers
                .insert(Timer::Listening(id), Duration::from_millis(10));
        }
    }
}

// ===== default actions =====

impl PrimaryContext {
    pub(super) fn log_event<E: Topic>(&mut self, event: &E) {
        tracing::debug!(event = E::NAME, data = ?event);
    }

    pub(super) fn complete_initialize(&mut self, _: &Initialize) {
        tracing::info!("Initializing primary");
        self.phase = self.phase.initialized();
    }

    pub(super) fn complete_destroy(&mut self, _: &Destroy) {
        self.phase = self.phase.destroy();
        if self.phase.is_active() {
            self.shut_down();
        }
        // A destroy stops the workers even if a handler vetoed the shutdown.
        if self.phase.is_active() {
            self.begin_shutdown();
        }
    }

    pub(super) fn complete_fork(&mut self, event: &Fork) {
        let mut started = Vec::new();
        for _ in 0..event.count {
            self.next_id += 1;
            let id = WorkerId::new(self.next_id);
            tracing::info!(worker_id = %id, "Starting a new worker");
            let new_slot = self.fork_slot.is_none();
            let slot = (self.fork_slot.take())
                .unwrap_or_else(|| self.registry.free_slot(self.owed.slots()));
            let release =
                (self.fork_release.take()).unwrap_or_else(|| self.rollouts.stable().clone());
            let start = Start {
                id,
                slot,
                release: &release,
                requests: self.metrics.pool.requests(),
            };
            match self.spawner.spawn(start, self.inputs.clone()) {
                Ok(spawned) => {
                    // A worker in a new slot grows the pool a rollout rolls out.
                    if let Some(size) = self.rollouts.size().filter(|_| new_slot) {
                        self.rollouts.resize(size + 1);
                    }
                    self.forked.push(spawned.worker.clone());
                    self.registry.insert(spawned, release);
                    self.arm_sampler();
                    let config = self.config.clone();
                    if let Some(timeout) = config.ready_timeout {
                        self.timers.insert(Timer::Ready(id, timeout), timeout);
                    }
                    self.arm_expiry(id, &config);
                    started.push(id);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a worker");
                    let fork_error = ForkError {
                        error: error.clone(),
                    };
                    events::publish(self, fork_error);
                    self.fork_outcome = Some(Err(error));
                    return;
                }
            }
        }
        self.fork_outcome = Some(Ok(started));
    }

    pub(super) fn complete_ready(&mut self, event: &WorkerReady) {
        tracing::info!(worker_id = %event.worker.id(), "Worker is ready to work");
        let worker = event.worker.clone();
        events::publish(self, AddWorker { worker });
    }

    pub(super) fn complete_add(&mut self, event: &AddWorker) {
        if !self.registry.join_pool(&event.worker) {
            return;
        }
        self.ready_waiters.joined(&event.worker);
        self.recycle_joined(event.worker.id());
        self.rollout_joined(event.worker.id());
    }

    pub(super) fn complete_remove(&mut self, event: &RemoveWorker) {
        self.registry.leave_pool(event.worker.id());
    }

    pub(super) fn complete_message(&mut self, event: &WorkerMessage) {
        if let Err(error) = events::route(self, event, &event.message) {
            tracing::warn!(worker_id = %event.worker.id(), %error, "message does not fit its route");
            let worker = event.worker.clone();
            let message = event.message.clone();
            events::publish(
                self,
                WorkerMessageError {
                    worker,
                    message,
                    error,
                },
            );
        }
    }

    pub(super) fn complete_disconnect(&mut self, event: &WorkerDisconnect) {
        tracing::info!(worker_id = %event.worker.id(), "Worker disconnected");
        self.leave_pool(&event.worker);
    }

    pub(super) fn complete_error(&mut self, event: &WorkerError) {
        tracing::error!(worker_id = %event.worker.id(), error = %event.error, "Worker error");
        self.leave_pool(&event.worker);
        event.worker.outbox().close();
        self.apply(event.worker.id(), Trigger::Terminate(None));
    }

    pub(super) fn complete_exit(&mut self, event: &WorkerExit) {
        let id = event.worker.id();
        match (event.voluntary, event.code(), event.signal()) {
            (true, _, _) => tracing::info!(worker_id = %id, "Worker exited voluntarily"),
            (false, Some(0), _) => tracing::warn!(worker_id = %id, "Worker died"),
            (false, code, signal) => {
                tracing::error!(worker_id = %id, ?code, ?signal, "Worker died unexpectedly");
            }
        }
        self.leave_pool(&event.worker);
        if !event.replaced {
            tracing::info!(worker_id = %id, "Not replaced");
            return;
        }
        // (A handler may have shut the primary down meanwhile.)
        if !self.phase.is_active() {
            return;
        }
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        let (started, slot) = (entry.started, entry.worker.slot());
        if entry.state
            == (WorkerState::Gone {
                after: AfterExit::Replace,
            })
        {
            tracing::info!(worker_id = %id, "Replacing recycled worker");
            return self.replace(slot);
        }
        self.pace_replacement(Some(started), slot);
    }

    /// Starts a replacement in `slot`. One that cannot start (its program
    /// missing for a moment during a deploy, out of fds, fork failing) is
    /// retried, paced as a worker that died at once: backoff, restart
    /// intensity. During a rollout, the slot is the rollout's to fill (with
    /// its release: a crash loop of the old one does not hold it).
    pub(super) fn replace(&mut self, slot: u32) {
        if self.rollouts.under_way() {
            return self.rollout_step();
        }
        self.fork_slot = Some(slot);
        let forked = self.fork(1);
        self.fork_slot = None;
        if let Err(error) = forked {
            tracing::warn!(%error, "cannot start a replacement: retrying");
            self.pace_replacement(None, slot);
        }
    }

    /// The next replacement in `slot`, after the exit of a worker started
    /// at `started` (`None`: after a start that failed): at once, after a
    /// backoff delay (`restartScheduled`), or as the restart intensity says.
    fn pace_replacement(&mut self, started: Option<Instant>, slot: u32) {
        let policy = self.config.restart;
        self.pacing = Some(slot);
        if let Some((restarts, period, then)) = self.backoff.over_intensity(&policy) {
            let exceeded = RestartIntensityExceeded {
                restarts,
                period,
                then,
            };
            return events::publish(self, exceeded);
        }
        let (delay, failures) = match started {
            Some(started) => self.backoff.on_exit(&policy, started),
            None => self.backoff.on_failure(&policy),
        };
        if delay.is_zero() && started.is_some() {
            tracing::info!("Replacing dead worker");
            return self.replace(slot);
        }
        // (A failed start is retried on a later turn even without a delay.)
        events::publish(self, RestartScheduled { delay, failures });
    }

    pub(super) fn complete_restart_scheduled(&mut self, event: &RestartScheduled) {
        tracing::warn!(delay = ?event.delay, failures = event.failures, "Workers keep dying early or failing to start: replacement delayed");
        let slot =
            (self.pacing.take()).unwrap_or_else(|| self.registry.free_slot(self.owed.slots()));
        let token = self.owed.push(slot);
        self.timers.insert(Timer::Restart(token), event.delay);
    }

    pub(super) fn complete_restart_intensity(&mut self, event: &RestartIntensityExceeded) {
        tracing::error!(restarts = event.restarts, period = ?event.period, then = ?event.then, "Restart intensity exceeded");
        match event.then {
            OnIntensity::SlowDown => {
                let delay = self.config.restart.max();
                let failures = event.restarts;
                events::publish(self, RestartScheduled { delay, failures });
            }
            OnIntensity::ShutDown => events::publish(self, ShutDown),
        }
    }

    pub(super) fn complete_shut_down(&mut self, _: &ShutDown) {
        self.begin_shutdown();
    }

    /// Stops replacing workers and asks each to leave.
    fn begin_shutdown(&mut self) {
        tracing::info!("Shutting down workers");
        self.listeners.stop_accepting();
        self.phase = self.phase.shut_down();
        self.rollouts.end();
        self.recycler.end();
        for worker in self.registry.workers() {
            self.ask_to_leave(worker.id(), Why::ShutDown);
        }
    }

    pub(super) fn complete_signal(&mut self, event: &WorkerSignal) {
        let id = event.worker.id();
        // (SIGTERM is how a worker without a channel is asked to leave.)
        if event.signal == Signal::KILL {
            tracing::warn!(worker_id = %id, signal = %event.signal, "Killing worker");
        } else {
            tracing::info!(worker_id = %id, signal = %event.signal, "Signalling worker");
        }
        if let Some(entry) = self.registry.get(id) {
            entry.signal(event.signal);
        }
        if event.signal == Signal::TERM {
            let kill = Timer::Escalate(id, Signal::KILL);
            self.timers.insert(kill, self.config.kill_grace);
        }
    }

    /// Work that follows a turn: `workerFork` of new workers, the end of a
    /// shutdown, the end of a destroy.
    pub(super) fn settle(&mut self) {
        while !self.forked.is_empty() {
            for worker in std::mem::take(&mut self.forked) {
                let id = worker.id();
                events::publish(self, WorkerFork { worker });
                self.started(id);
            }
        }
        loop {
            let (phase, settled) = self.phase.settle(self.registry.len());
            self.phase = phase;
            match settled {
                Settled::Nothing => return,
                Settled::ShutDownComplete => {
                    tracing::info!("Worker shut down complete");
                    events::publish(self, ShutDownComplete);
                    for waiter in self.shut_down_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                Settled::TearDown => {
                    self.listeners.close();
                    events::publish(self, DestroyComplete);
                    self.hub.clear();
                    self.stream.close();
                    for waiter in self.destroy_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
            }
        }
    }
}
