//! The `run` command once planned: starts the primary, then reports its
//! events and answers signals until the workers are gone.

use anyhow::Context as _;
use isotropic_cluster::Signal;
use isotropic_cluster::primary::{
    self, ClusterPrimary, OnIntensity, OrphanReaper, OutputLines, PrimaryBuilder, PrimaryEvent,
    WorkerChannel, WorkerStdio, output_channel,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::args::{Channel, Plan, Readiness};
use crate::control::{self, ControlSocket, LogTap, Refusal};
use crate::exit::ExitCode;
use crate::health;
use crate::listen;
use crate::metrics;
use crate::output::Output;
use crate::render::{Entry, Level};
use crate::report::{self, Report};
use crate::service::ServiceManager;
use crate::upgrade::{Origin, Takeover, Upgrading};

/// Bytes of worker output that may wait for our stdout before the workers'
/// pipes are no longer read.
const OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Runs `plan` to its end; everything printed is written before it returns
/// (or `--grace` after, when our stdout is blocked).
pub(crate) async fn run(plan: Plan, origin: Origin) -> ExitCode {
    // What `logs` on the control socket reads.
    let tap = plan.control.is_some().then(LogTap::default);
    let output = Output::start(plan.format, tap.clone());
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
    let code = match supervise(plan, origin, &output, tap).await {
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

async fn supervise(
    plan: Plan,
    mut origin: Origin,
    output: &Output,
    tap: Option<LogTap>,
) -> anyhow::Result<ExitCode> {
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
    // The control socket, bound before any worker starts (refused if
    // another primary answers there); an upgrade's new primary takes its
    // old one's once it took over. Held to the end: its file goes with it.
    let mut control = match (&plan.control, &handover) {
        (Some(path), None) => bind_control(path, false, &report).await?,
        _ => None,
    };
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
    // What the control socket asks of this loop.
    let (commands, mut asked) = mpsc::channel(16);
    let served = control::Served {
        primary: primary.clone(),
        tap: tap.unwrap_or_default(),
        pool: control::DEFAULT_POOL.to_owned(),
        commands,
        report: report.clone(),
    };
    if let Some(control) = &mut control {
        control.serve(served.clone());
    }
    // Worker output, printed until the last line of the last worker.
    let printing = tokio::spawn(output.clone().forward(lines));
    let mut events = primary.events();
    // (An upgrade's new primary: the old one is told once every worker is ready.)
    let mut takeover = handover.map(|handover| Takeover::start(&primary, plan.workers, handover));
    // What systemd is told (a new primary speaks once it has taken over).
    let mut service = ServiceManager::new(report.clone(), takeover.is_some());
    let forked = match takeover {
        Some(_) => Ok(0),
        None => primary.fork(plan.workers).await,
    };
    if let Err(error) = forked {
        report.cannot_start(&plan.program, &error);
        drop((events, control, served));
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
    let mut reloading = Reloading::default();
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
                    service.event(&primary, &event).await;
                    report.event(event);
                }
            },
            _ = signals.interrupt.recv() => {
                service.stopping();
                shutdown.on_signal(&primary, &report, true).await;
            }
            _ = signals.terminate.recv() => {
                service.stopping();
                shutdown.on_signal(&primary, &report, false).await;
            }
            _ = signals.hangup.recv(), if shutdown.signals == 0 => {
                service.reloading();
                reloading.begin(&primary, &report, None);
            }
            _ = signals.more.recv(), if shutdown.signals == 0 => scale(&primary, &report, true).await,
            _ = signals.fewer.recv(), if shutdown.signals == 0 => scale(&primary, &report, false).await,
            Some(command) = asked.recv() => match command {
                control::Command::Scale { workers, reply } => {
                    let answer = if shutdown.signals > 0 {
                        Err(Refusal::ShuttingDown)
                    } else {
                        resize(&primary, &report, workers).await
                    };
                    let _ = reply.send(answer);
                }
                control::Command::Reload { reply } if shutdown.signals > 0 => {
                    let _ = reply.send(Err(Refusal::ShuttingDown));
                }
                control::Command::Reload { reply } => {
                    service.reloading();
                    reloading.begin(&primary, &report, Some(reply));
                }
                control::Command::Stop { reply } => {
                    report.line("shutDown", "stop asked on the control socket");
                    service.stopping();
                    shutdown.on_signal(&primary, &report, false).await;
                    let _ = reply.send(());
                }
            },
            done = reloading.done(), if reloading.under_way() => {
                reloading.settle(done, &report);
                service.reloaded(&primary).await;
            }
            _ = signals.upgrade.recv(), if shutdown.signals == 0 => {
                upgrading.begin(&origin, &plan, &socket_files, &report);
            }
            outcome = upgrading.outcome(), if upgrading.under_way() && shutdown.signals == 0 => {
                if Upgrading::took_over(outcome, &report) {
                    service.hand_over();
                    socket_files.keep(true);
                    // (The new primary answers on the metrics socket now.)
                    if let Some(serving) = serving.take() {
                        serving.abort();
                    }
                    shutdown.on_signal(&primary, &report, false).await;
                }
            }
            () = service.tick(&primary), if service.watched() => {}
            code = async { takeover.as_mut().expect("a takeover").settle(&report).await },
                if takeover.as_ref().is_some_and(Takeover::waiting) && shutdown.signals == 0 => {
                gave_up_takeover = code;
                match code {
                    // (Took over: the socket files are this primary's now,
                    // and so is the control socket.)
                    None => {
                        socket_files.keep(false);
                        control = take_over_control(&plan, served.clone(), &report).await;
                        service.take_over(&primary).await;
                    }
                    Some(_) => shutdown.on_signal(&primary, &report, false).await,
                }
            }
        }
    }
    report.shut_down(shutdown.forced);
    if let Some(serving) = serving {
        serving.abort();
    }
    // (The control socket's connections hold the primary: they end first,
    // and its file goes, once every worker is gone.)
    drop((events, reloading, upgrading, control, served));
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
    task: Option<tokio::task::JoinHandle<Result<usize, isotropic_cluster::Error>>>,
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

/// Binds the control socket at `path`, its directory made first if it is
/// the default one: if that directory will not do, the run goes on without
/// a control socket, with a line (`--control PATH` was not asked for).
///
/// # Errors
///
/// The socket cannot be bound (another primary answers there, say).
async fn bind_control(
    path: &std::path::Path,
    replace: bool,
    report: &Report,
) -> anyhow::Result<Option<ControlSocket>> {
    if path == control::default_path()
        && let Err(error) = control::prepare_default_dir(path)
    {
        report.warn("control", &format!("no control socket: {error:#}"));
        return Ok(None);
    }
    ControlSocket::bind(path, replace).await.map(Some)
}

/// An upgrade's new primary, once it took over: the control socket is its
/// own from now on (the old primary's file replaced).
async fn take_over_control(
    plan: &Plan,
    served: control::Served,
    report: &Report,
) -> Option<ControlSocket> {
    let path = plan.control.as_deref()?;
    match bind_control(path, true, report).await {
        Ok(mut control) => {
            if let Some(control) = &mut control {
                control.serve(served);
            }
            control
        }
        Err(error) => {
            report.warn("control", &format!("no control socket: {error:#}"));
            None
        }
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
    // Workers are sampled (every second) for a memory limit, for `status`
    // on the control socket or for the metrics: without any, the primary
    // does not wake up for it.
    let sampled = plan.control.is_some() || plan.metrics.is_some();
    let builder = match (plan.max_memory, sampled) {
        (Some(limit), _) => builder.max_memory(limit),
        (None, true) => builder,
        (None, false) => builder.sample_interval(std::time::Duration::ZERO),
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
