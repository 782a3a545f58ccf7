//! One pool of a run: its primary (a `ClusterPrimary` of its own, with its
//! listening sockets and its workers' output), and its supervision, a task
//! that reports the pool's events, carries out what the driver
//! (`supervise.rs`) asks, and ends once the pool has shut down: when asked,
//! when it gave up (`--max-restarts`), or when no worker is left to
//! replace.

use std::sync::Arc;
use std::time::Duration;

use isotropic_cluster::EventStream;
use isotropic_cluster::Signal;
use isotropic_cluster::primary::{
    self, ClusterPrimary, OnIntensity, PrimaryBuilder, PrimaryEvent, WorkerChannel, WorkerStdio,
    output_channel,
};
use isotropic_cluster::upgrade::Handover;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::args::{Channel, Plan, Readiness};
use crate::control::{self, Refusal};
use crate::health;
use crate::listen;
use crate::report::Report;
use crate::service::ServiceManager;

/// Bytes of worker output that may wait for our stdout before the workers'
/// pipes are no longer read.
const OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// One pool: its plan, its primary (with no worker until the driver forks
/// them), its events from the start, and the printing of its workers' lines.
#[derive(Debug)]
pub(crate) struct Pool {
    plan: Plan,
    primary: ClusterPrimary,
    events: EventStream<PrimaryEvent>,
    report: Report,
    printing: JoinHandle<()>,
}

/// What the driver asks of a pool under supervision.
#[derive(Debug)]
pub(crate) enum Command {
    /// SIGHUP, or `reload` on the control socket (answered at its end):
    /// roll out the program anew.
    Reload {
        reply: Option<oneshot::Sender<Result<usize, Refusal>>>,
    },
    /// SIGTTIN (`up`) or SIGTTOU.
    Scale { up: bool },
    /// `scale` on the control socket: the size before and after.
    Resize {
        workers: usize,
        reply: oneshot::Sender<Result<(usize, usize), Refusal>>,
    },
    /// The first SIGINT or SIGTERM: shut down gracefully.
    ShutDown,
    /// A second SIGINT: kill the workers.
    Kill,
}

/// What a pool under supervision tells the driver: what the service
/// manager hears of (`service.rs`).
#[derive(Debug)]
pub(crate) enum Note {
    /// An event that changes the pool's status.
    Event(PrimaryEvent),
    /// The reload under way in the pool named so ended (complete, or
    /// rolled back); one asked during it is part of it.
    Reloaded(String),
}

/// How a pool's supervision ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// A worker had to be killed once the shutdown began.
    pub(crate) forced: bool,
    /// It restarted workers more than `--max-restarts` allows.
    pub(crate) gave_up: bool,
    /// A worker that was not replaced had failed (`--restart
    /// on-failure|never`).
    pub(crate) failed: bool,
}

impl Pool {
    /// Starts the primary `plan` describes (binding its `--listen`
    /// addresses, or adopting them from `handover`), with no worker yet;
    /// the pool, and the socket files it bound. `report` names the pool
    /// when there are several.
    ///
    /// # Errors
    ///
    /// An address cannot be bound or adopted, the command is not found (with
    /// `--listen`), or the primary cannot start.
    pub(crate) async fn start(
        plan: &Plan,
        report: Report,
        handover: Option<&mut Handover>,
        activated: &mut listen::Activated,
        sampled: bool,
    ) -> anyhow::Result<(Self, listen::SocketFiles)> {
        let (builder, files) = if plan.listen.is_empty() {
            let builder = ClusterPrimary::builder()
                .program(&plan.program)
                .args(&plan.args);
            (builder, listen::SocketFiles::default())
        } else {
            listen::through_shim(plan, &report, handover, activated)?
        };
        let (sink, lines) = output_channel(OUTPUT_BYTES);
        let primary = configure(builder, plan, sampled)
            .output(sink)
            .start()
            .await?;
        let events = primary.events();
        let printing = tokio::spawn(report.output().forward(lines, report.pool().cloned()));
        let pool = Self {
            plan: plan.clone(),
            primary,
            events,
            report,
            printing,
        };
        Ok((pool, files))
    }

    /// The pool's name in `--config` (`[pools.NAME]`), if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.plan.name.as_deref()
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    pub(crate) fn primary(&self) -> &ClusterPrimary {
        &self.primary
    }

    pub(crate) fn report(&self) -> &Report {
        &self.report
    }

    /// The pool's name: in `--config`, or `default`.
    pub(crate) fn label(&self) -> &str {
        self.name().unwrap_or(control::DEFAULT_POOL)
    }

    /// Reports the pool's events and carries out `commands` until the pool
    /// has shut down, telling `notes` what the service manager hears of.
    pub(crate) async fn supervise(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        notes: mpsc::UnboundedSender<Note>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        // Whether the driver asked for the shutdown.
        let mut asked = false;
        // The generations whose rollout failed: their workers' exits are the
        // rollback's business, not the pool's.
        let mut rolled_back = std::collections::BTreeSet::new();
        // Whether a worker had to be killed once the shutdown began: then the
        // shutdown was forced, whatever started it.
        let mut stopping = false;
        // A rollout (SIGHUP): each new worker proven before an old one leaves,
        // so the pool is never short; rolled back if the new ones fail.
        let mut reloading = Reloading::default();
        let (primary, report, plan) = (&self.primary, &self.report, &self.plan);
        loop {
            tokio::select! {
                // Events first: a reload's end is reported after the events
                // that led to it.
                biased;
                event = self.events.next() => match event {
                    Some(PrimaryEvent::ShutDownComplete(_)) | None => break,
                    Some(event) => {
                        match &event {
                            PrimaryEvent::RestartIntensityExceeded(e) => {
                                outcome.gave_up |= e.then == OnIntensity::ShutDown;
                            }
                            PrimaryEvent::ShutDown(_) => stopping = true,
                            PrimaryEvent::RolloutFailed(e) => {
                                rolled_back.insert(e.generation);
                            }
                            PrimaryEvent::WorkerExit(e)
                                if !e.replaced && !stopping && !rolled_back.contains(&e.worker.generation()) =>
                            {
                                // (A worker asked to leave, when the pool shrank, did not fail.)
                                // (One stopped for a failure failed, whatever its status.)
                                outcome.failed |= e.failed || (!e.voluntary && !plan.restart_policy.is_normal(e.code(), e.signal()));
                                // (The pool as the primary has it now: no worker
                                // staying, no replacement waiting for its backoff.)
                                if !asked && primary.pool_size().await.unwrap_or(0) == 0 {
                                    report.line("done", "no worker left to replace: stopping");
                                    let primary = primary.clone();
                                    tokio::spawn(async move { primary.shut_down().await });
                                }
                            }
                            PrimaryEvent::WorkerDisconnect(e) if stopping && plan.channel == Channel::Node => {
                                let wait = plan.grace.min(primary::NODE_TERM_AFTER);
                                report.node_disconnected(&e.worker, wait);
                            }
                            PrimaryEvent::WorkerSignal(e) if stopping && e.signal == Signal::KILL => {
                                outcome.forced = true;
                            }
                            _ => {}
                        }
                        if ServiceManager::follows(&event) {
                            let _ = notes.send(Note::Event(event.clone()));
                        }
                        report.event(event);
                    }
                },
                Some(command) = commands.recv() => match command {
                    Command::Reload { reply } if asked => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(Refusal::ShuttingDown));
                        }
                    }
                    Command::Reload { reply } => reloading.begin(primary, report, reply),
                    Command::Scale { up } => scale(primary, report, up).await,
                    Command::Resize { reply, .. } if asked => {
                        let _ = reply.send(Err(Refusal::ShuttingDown));
                    }
                    Command::Resize { workers, reply } => {
                        let _ = reply.send(resize(primary, report, workers).await);
                    }
                    Command::ShutDown => {
                        asked = true;
                        let primary = primary.clone();
                        tokio::spawn(async move { primary.shut_down().await });
                    }
                    Command::Kill => {
                        let _ = primary.kill_workers().await;
                        outcome.forced = true;
                    }
                },
                done = reloading.done(), if reloading.under_way() => {
                    reloading.settle(done, report);
                    let _ = notes.send(Note::Reloaded(self.label().to_owned()));
                }
            }
        }
        outcome
    }

    /// Destroys the primary, then waits until what the workers wrote is
    /// printed (the printing ends with their last line), until `deadline`
    /// at most (our stdout may be blocked).
    ///
    /// # Errors
    ///
    /// The primary cannot be destroyed.
    pub(crate) async fn wind_down(self, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        self.primary.destroy().await?;
        drop((self.primary, self.events));
        let _ = tokio::time::timeout_at(deadline, self.printing).await;
        Ok(())
    }
}

/// SIGTTIN (`up`) or SIGTTOU: one worker more, or one fewer (never none),
/// as gunicorn does.
async fn scale(primary: &ClusterPrimary, report: &Report, up: bool) {
    let Ok(size) = primary.pool_size().await else {
        return;
    };
    if !up && size <= 1 {
        return report.line("scale", "one worker left: SIGTTOU ignored");
    }
    let _ = resize(primary, report, if up { size + 1 } else { size - 1 }).await;
}

/// Resizes the pool to `target` workers, with a line: the size before and
/// after.
async fn resize(
    primary: &ClusterPrimary,
    report: &Report,
    target: usize,
) -> Result<(usize, usize), Refusal> {
    let failed = |error: isotropic_cluster::Error| Refusal::Failed(error.to_string());
    let size = primary.pool_size().await.map_err(failed)?;
    if target != size {
        let text = format!("scaling from {size} to {target} workers");
        report.line("scale", &text);
    }
    match primary.scale_to(target).await {
        Ok(()) => Ok((size, target)),
        Err(error) => {
            report.warn("forkError", &format!("cannot scale: {error}"));
            Err(failed(error))
        }
    }
}

/// The rollout under way (SIGHUP, or `reload` on the control socket), and
/// the control clients waiting for its end. A rollout asked for during
/// another restarts it (see `restart_workers`): the waiters of both are
/// answered at the end of the newest.
#[derive(Debug, Default)]
struct Reloading {
    task: Option<JoinHandle<Result<usize, isotropic_cluster::Error>>>,
    waiters: Vec<oneshot::Sender<Result<usize, Refusal>>>,
}

impl Reloading {
    fn begin(
        &mut self,
        primary: &ClusterPrimary,
        report: &Report,
        waiter: Option<oneshot::Sender<Result<usize, Refusal>>>,
    ) {
        report.reloading();
        let primary = primary.clone();
        self.task = Some(tokio::spawn(async move { primary.restart_workers().await }));
        self.waiters.extend(waiter);
    }

    fn under_way(&self) -> bool {
        self.task.is_some()
    }

    /// The end of the rollout under way.
    ///
    /// Cancel safe.
    async fn done(
        &mut self,
    ) -> Result<Result<usize, isotropic_cluster::Error>, tokio::task::JoinError> {
        match &mut self.task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    }

    /// Reports the end of the rollout (a failure is reported by its
    /// events), and answers its waiters.
    fn settle(
        &mut self,
        done: Result<Result<usize, isotropic_cluster::Error>, tokio::task::JoinError>,
        report: &Report,
    ) {
        self.task = None;
        let outcome = match done {
            Ok(Ok(restarted)) => {
                report.reloaded(restarted);
                Ok(restarted)
            }
            Ok(Err(error @ isotropic_cluster::Error::RolledBack { .. })) => {
                Err(Refusal::RolledBack(error.to_string()))
            }
            Ok(Err(error)) => Err(Refusal::Failed(error.to_string())),
            Err(error) => Err(Refusal::Failed(error.to_string())),
        };
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// `builder` (its program and sockets set) with the rest of `plan`; its
/// workers `sampled` every second (for `status` and the metrics) or not.
fn configure(builder: PrimaryBuilder, plan: &Plan, sampled: bool) -> PrimaryBuilder {
    let channel = match plan.channel {
        Channel::None => WorkerChannel::None,
        Channel::Node => WorkerChannel::Node,
        Channel::Frames => WorkerChannel::Frames,
    };
    let readiness = match plan.readiness {
        Readiness::Start => primary::Readiness::Started,
        Readiness::Message => primary::Readiness::Message,
        Readiness::Listening => primary::Readiness::Listening,
        Readiness::Notify => primary::Readiness::Notify,
    };
    let recycle = plan.recycle;
    let builder = given(builder, plan.ready_timeout, PrimaryBuilder::ready_timeout);
    let builder = given(builder, plan.watchdog, PrimaryBuilder::watchdog);
    let builder = given(builder, recycle.max_requests, |builder, max| {
        builder
            .max_requests(max)
            .max_requests_jitter(recycle.max_requests_jitter)
    });
    let builder = given(builder, recycle.max_age, PrimaryBuilder::max_age);
    let rollout = &plan.rollout;
    let builder = given(builder, rollout.health_check.clone(), |builder, command| {
        let command: Arc<str> = command.into();
        builder.health_check(move |worker| health::check(command.clone(), worker))
    });
    // Workers are sampled (every second) for a memory limit, for `status`
    // on the control socket or for the metrics: without any, the primary
    // does not wake up for it.
    let builder = match (plan.max_memory, sampled) {
        (Some(limit), _) => builder.max_memory(limit),
        (None, true) => builder,
        (None, false) => builder.sample_interval(Duration::ZERO),
    };
    // (A pool's workers know its name.)
    let builder = given(builder, plan.name.as_deref(), |builder, name| {
        builder.env("ISOTROPIC_CLUSTER_POOL", name)
    });
    builder
        .pool_name(plan.name.as_deref().unwrap_or(control::DEFAULT_POOL))
        .envs(plan.env.iter().map(|(key, value)| (key, value)))
        .channel(channel)
        .readiness(readiness)
        .stdio(WorkerStdio::Piped)
        .shutdown_grace(plan.grace)
        .kill_grace(plan.grace)
        .restart_policy(plan.restart_policy)
        .surge(rollout.surge)
        .max_unavailable(rollout.max_unavailable)
        .min_uptime(rollout.min_uptime)
}

/// `builder`, with `set` applied if a `value` was given.
fn given<T>(
    builder: PrimaryBuilder,
    value: Option<T>,
    set: impl FnOnce(PrimaryBuilder, T) -> PrimaryBuilder,
) -> PrimaryBuilder {
    match value {
        Some(value) => set(builder, value),
        None => builder,
    }
}
