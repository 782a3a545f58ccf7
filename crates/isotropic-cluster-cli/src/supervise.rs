//! The `run` command once planned: starts the primary, then reports its
//! events and answers signals until the workers are gone.

use anyhow::Context as _;
use isotropic_cluster::Signal;
use isotropic_cluster::primary::{
    self, ClusterPrimary, OnIntensity, OrphanReaper, OutputLines, PrimaryBuilder, PrimaryEvent,
    WorkerChannel, WorkerStdio, output_channel,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{Channel, Plan, Readiness};
use crate::exit::ExitCode;
use crate::health;
use crate::listen;
use crate::metrics;
use crate::output::Output;
use crate::render::{Entry, Level};
use crate::report::{self, Report};
use crate::upgrade::{Origin, Takeover, Upgrading};

/// Bytes of worker output that may wait for our stdout before the workers'
/// pipes are no longer read.
const OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Runs `plan` to its end; everything printed is written before it returns
/// (or `--grace` after, when our stdout is blocked).
pub(crate) async fn run(plan: Plan, origin: Origin) -> ExitCode {
    let output = Output::start(plan.format);
    // The library's warnings and errors (a replaced orphan guard, a handler
    // that panicked) as lifecycle lines; RUST_LOG chooses.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output.clone())
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
    let grace = plan.grace;
    let code = match supervise(plan, origin, &output).await {
        Ok(code) => code,
        Err(error) if error.is::<listen::CannotAdopt>() => {
            let text = format!("{error:#}");
            output.line(&Entry::info("cannotAdopt", text).at(Level::Error));
            ExitCode::CannotAdopt
        }
        Err(error) => {
            let text = report::cannot_start("the primary", format!("{error:#}"));
            output.line(&Entry::info("cannotStart", text).at(Level::Error));
            ExitCode::CannotStart
        }
    };
    output.finish(grace).await;
    code
}

/// The signals the CLI answers.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    /// SIGTTIN and SIGTTOU: one worker more, one fewer.
    more: tokio::signal::unix::Signal,
    fewer: tokio::signal::unix::Signal,
    /// SIGUSR2: upgrade this primary.
    upgrade: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            more: signal(SignalKind::from_raw(Signal::TTIN.as_raw()))?,
            fewer: signal(SignalKind::from_raw(Signal::TTOU.as_raw()))?,
            upgrade: signal(SignalKind::user_defined2())?,
        })
    }
}

async fn supervise(plan: Plan, mut origin: Origin, output: &Output) -> anyhow::Result<ExitCode> {
    // First, so that a signal during startup is a shutdown once running,
    // not the default action.
    let mut signals = Signals::install()?;
    // As PID 1 (or asked), orphans are ours to reap, for as long as we run.
    let _reaper = plan
        .reap_orphans
        .then(OrphanReaper::start)
        .transpose()
        .context("cannot become a subreaper")?;
    let report = Report::new(output.clone());
    // What an old primary handed over, if this one is its upgrade.
    let mut handover = origin.take_handover()?;
    // Bound before anything starts: an address in use is a failure to start.
    let metrics_socket = (plan.metrics)
        .map(|address| metrics::bind(address, handover.as_mut()))
        .transpose()?;
    // Held to the end: the socket files it made go with it.
    let (primary, mut socket_files, lines) = start(&plan, &report, handover.as_mut()).await?;
    let metrics_listener = metrics_socket.map(|(listener, copy)| {
        socket_files.hand_over(metrics::SOCKET_NAME, copy);
        listener
    });
    // Worker output, printed until the last line of the last worker.
    let printing = tokio::spawn(output.clone().forward(lines));
    let mut events = primary.events();
    // (An upgrade's new primary: the old one is told once every worker is ready.)
    let mut takeover = handover.map(|handover| Takeover::start(&primary, plan.workers, handover));
    let forked = match takeover {
        Some(_) => Ok(0),
        None => primary.fork(plan.workers).await,
    };
    if let Err(error) = forked {
        report.cannot_start(&plan.program, &error);
        drop(events);
        wind_down(primary, printing, plan.grace).await?;
        return Ok(ExitCode::CannotStart);
    }
    // Served once the pool has its workers (not ready before them), until
    // the primary is wound down or hands over to a new one.
    let mut serving = metrics_listener.map(|listener| serve_metrics(listener, &primary, output));
    let mut shutdown = Shutdown::default();
    let mut gave_up = false;
    // Whether a worker that was not replaced had failed (`--restart
    // on-failure|never`): the run ends once none is left.
    let mut failed = false;
    // The generations whose rollout failed: their workers' exits are the
    // rollback's business, not the pool's.
    let mut rolled_back = std::collections::BTreeSet::new();
    // Whether a worker had to be killed once the shutdown began: then the
    // shutdown was forced, whatever started it.
    let mut stopping = false;
    // A rollout (SIGHUP): each new worker proven before an old one leaves,
    // so the pool is never short; rolled back if the new ones fail.
    let mut reload: Option<tokio::task::JoinHandle<Result<usize, _>>> = None;
    // SIGUSR2 (see upgrade.rs), and how a new primary's takeover ended.
    let mut upgrading = Upgrading::default();
    let mut gave_up_takeover = None;
    loop {
        tokio::select! {
            // Events first: a reload's end is reported after the events
            // that led to it.
            biased;
            event = events.next() => match event {
                Some(PrimaryEvent::ShutDownComplete(_)) | None => break,
                Some(event) => {
                    match &event {
                        PrimaryEvent::RestartIntensityExceeded(e) => {
                            gave_up |= e.then == OnIntensity::ShutDown;
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
                            failed |= e.failed || (!e.voluntary && !plan.restart_policy.is_normal(e.code(), e.signal()));
                            // (The pool as the primary has it now: no worker
                            // staying, no replacement waiting for its backoff.)
                            if shutdown.signals == 0 && primary.pool_size().await.unwrap_or(0) == 0 {
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
                            shutdown.forced = true;
                        }
                        _ => {}
                    }
                    report.event(event);
                }
            },
            _ = signals.interrupt.recv() => shutdown.on_signal(&primary, &report, true).await,
            _ = signals.terminate.recv() => shutdown.on_signal(&primary, &report, false).await,
            _ = signals.hangup.recv(), if shutdown.signals == 0 => {
                report.reloading();
                let primary = primary.clone();
                reload = Some(tokio::spawn(async move { primary.restart_workers().await }));
            }
            _ = signals.more.recv(), if shutdown.signals == 0 => scale(&primary, &report, true).await,
            _ = signals.fewer.recv(), if shutdown.signals == 0 => scale(&primary, &report, false).await,
            done = async { reload.as_mut().expect("a reload").await }, if reload.is_some() => {
                reload = None;
                if let Ok(Ok(restarted)) = done {
                    report.reloaded(restarted);
                }
            }
            _ = signals.upgrade.recv(), if shutdown.signals == 0 => {
                upgrading.begin(&origin, &plan, &socket_files, &report);
            }
            outcome = upgrading.outcome(), if upgrading.under_way() && shutdown.signals == 0 => {
                if Upgrading::took_over(outcome, &report) {
                    socket_files.keep(true);
                    // (The new primary answers on the metrics socket now.)
                    if let Some(serving) = serving.take() {
                        serving.abort();
                    }
                    shutdown.on_signal(&primary, &report, false).await;
                }
            }
            code = async { takeover.as_mut().expect("a takeover").settle(&report).await },
                if takeover.as_ref().is_some_and(Takeover::waiting) && shutdown.signals == 0 => {
                gave_up_takeover = code;
                match code {
                    // (Took over: the socket files are this primary's now.)
                    None => socket_files.keep(false),
                    Some(_) => shutdown.on_signal(&primary, &report, false).await,
                }
            }
        }
    }
    report.shut_down(shutdown.forced);
    if let Some(serving) = serving {
        serving.abort();
    }
    drop((events, reload, upgrading));
    wind_down(primary, printing, plan.grace).await?;
    Ok(if let Some(code) = gave_up_takeover {
        code
    } else if shutdown.forced {
        ExitCode::Forced
    } else if gave_up {
        ExitCode::GaveUp
    } else if failed {
        ExitCode::WorkersFailed
    } else {
        ExitCode::Clean
    })
}

/// Serves the metrics of `primary` on `listener`, with a line that says
/// where.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    primary: &ClusterPrimary,
    output: &Output,
) -> tokio::task::JoinHandle<()> {
    if let Ok(address) = listener.local_addr() {
        let text = format!("metrics on http://{address}");
        output.line(&Entry::info("metrics", text).with([("address", address.to_string().into())]));
    }
    tokio::spawn(metrics::serve(listener, primary.metrics(), output.clone()))
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

/// Destroys `primary`, then waits until what the workers wrote is printed
/// (`printing` ends with their last line), for `grace` at most (our stdout
/// may be blocked).
async fn wind_down(
    primary: ClusterPrimary,
    printing: tokio::task::JoinHandle<()>,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    primary.destroy().await?;
    drop(primary);
    let _ = tokio::time::timeout(grace, printing).await;
    Ok(())
}

/// Starts the primary `plan` describes, with no worker yet; the socket
/// files it bound.
async fn start(
    plan: &Plan,
    report: &Report,
    handover: Option<&mut isotropic_cluster::upgrade::Handover>,
) -> anyhow::Result<(ClusterPrimary, listen::SocketFiles, OutputLines)> {
    let (builder, files) = if plan.listen.is_empty() {
        let builder = ClusterPrimary::builder()
            .program(&plan.program)
            .args(&plan.args);
        (builder, listen::SocketFiles::default())
    } else {
        listen::through_shim(plan, report, handover)?
    };
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
    let (sink, lines) = output_channel(OUTPUT_BYTES);
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
        let command: std::sync::Arc<str> = command.into();
        builder.health_check(move |worker| health::check(command.clone(), worker))
    });
    // Workers are sampled only for a memory limit or the metrics (nothing
    // else here shows what they use): without them, the primary does not
    // wake up for it.
    let builder = match (plan.max_memory, plan.metrics) {
        (Some(limit), _) => builder.max_memory(limit),
        (None, Some(_)) => builder,
        (None, None) => builder.sample_interval(std::time::Duration::ZERO),
    };
    Ok(builder
        .channel(channel)
        .readiness(readiness)
        .stdio(WorkerStdio::Piped)
        .output(sink)
        .shutdown_grace(plan.grace)
        .kill_grace(plan.grace)
        .restart_policy(plan.restart_policy)
        .surge(rollout.surge)
        .max_unavailable(rollout.max_unavailable)
        .min_uptime(rollout.min_uptime)
        .start()
        .await
        .map(|primary| (primary, files, lines))?)
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

/// The signals that ended the run so far.
#[derive(Debug, Default)]
struct Shutdown {
    /// SIGINTs and SIGTERMs received.
    signals: u32,
    /// Whether a second SIGINT killed the workers.
    forced: bool,
}

impl Shutdown {
    /// The first signal shuts down gracefully. During the shutdown, SIGINT
    /// (a second Ctrl-C: someone is waiting) kills the workers, while SIGTERM
    /// changes nothing (service managers repeat it; the shutdown already ends
    /// within the grace periods).
    async fn on_signal(&mut self, primary: &ClusterPrimary, report: &Report, interrupt: bool) {
        self.signals += 1;
        if self.signals == 1 {
            report.shutting_down();
            let primary = primary.clone();
            tokio::spawn(async move { primary.shut_down().await });
        } else if interrupt {
            report.killing();
            let _ = primary.kill_workers().await;
            self.forced = true;
        } else {
            report.already_shutting_down();
        }
    }
}
