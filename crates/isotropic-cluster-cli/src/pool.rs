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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::args::{Channel, Plan, Readiness};
use crate::health;
use crate::listen;
use crate::report::Report;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// SIGHUP: roll out the program anew.
    Reload,
    /// SIGTTIN (`up`) or SIGTTOU.
    Scale { up: bool },
    /// The first SIGINT or SIGTERM: shut down gracefully.
    ShutDown,
    /// A second SIGINT: kill the workers.
    Kill,
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
    ) -> anyhow::Result<(Self, listen::SocketFiles)> {
        let (builder, files) = if plan.listen.is_empty() {
            let builder = ClusterPrimary::builder()
                .program(&plan.program)
                .args(&plan.args);
            (builder, listen::SocketFiles::default())
        } else {
            listen::through_shim(plan, &report, handover)?
        };
        let (sink, lines) = output_channel(OUTPUT_BYTES);
        let primary = configure(builder, plan).output(sink).start().await?;
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

    /// Reports the pool's events and carries out `commands` until the pool
    /// has shut down.
    pub(crate) async fn supervise(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
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
        let mut reload: Option<JoinHandle<Result<usize, _>>> = None;
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
                        report.event(event);
                    }
                },
                Some(command) = commands.recv() => match command {
                    Command::Reload => {
                        report.reloading();
                        let primary = primary.clone();
                        reload = Some(tokio::spawn(async move { primary.restart_workers().await }));
                    }
                    Command::Scale { up } => scale(primary, report, up).await,
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
                done = async { reload.as_mut().expect("a reload").await }, if reload.is_some() => {
                    reload = None;
                    if let Ok(Ok(restarted)) = done {
                        report.reloaded(restarted);
                    }
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
    let target = if up {
        size + 1
    } else {
        size.saturating_sub(1).max(1)
    };
    if target == size {
        return report.line("scale", "one worker left: SIGTTOU ignored");
    }
    report.line("scale", &format!("scaling from {size} to {target} workers"));
    if let Err(error) = primary.scale_to(target).await {
        report.warn("forkError", &format!("cannot scale: {error}"));
    }
}

/// `builder` (its program and sockets set) with the rest of `plan`.
fn configure(builder: PrimaryBuilder, plan: &Plan) -> PrimaryBuilder {
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
    // Workers are sampled only for a memory limit (nothing else here shows
    // what they use): without one, the primary does not wake up for it.
    let builder = match plan.max_memory {
        Some(limit) => builder.max_memory(limit),
        None => builder.sample_interval(Duration::ZERO),
    };
    // (A pool's workers know its name.)
    let builder = given(builder, plan.name.as_deref(), |builder, name| {
        builder.env("ISOTROPIC_CLUSTER_POOL", name)
    });
    builder
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
