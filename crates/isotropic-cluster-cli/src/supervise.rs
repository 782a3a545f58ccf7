//! The `run` command once planned: starts the primary's pools (one, or
//! those of `--config`: see `pool.rs`), then answers signals for all of
//! them until each has ended. SIGHUP reloads every pool at once (each
//! rollout bounded by its own pool's settings), SIGINT/SIGTERM shut them
//! all down, a pool that gives up (`--max-restarts`) shuts the others down
//! too, and one that runs out of workers ends alone.

use std::collections::BTreeSet;

use anyhow::Context as _;
use isotropic_cluster::Signal;
use isotropic_cluster::primary::{ClusterPrimary, Metrics, OrphanReaper};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::args::Setup;
use crate::control::{self, ControlSocket, LogTap, Refusal};
use crate::exit::ExitCode;
use crate::listen;
use crate::metrics;
use crate::output::Output;
use crate::pool::{Command, Note, Outcome, Pool};
use crate::render::{Entry, Level};
use crate::report::{self, Report};
use crate::service::ServiceManager;
use crate::upgrade::{Origin, Takeover, Upgrading};

/// Runs `setup` to its end; everything printed is written before it returns
/// (or `--grace` after, when our stdout is blocked).
pub(crate) async fn run(setup: Setup, origin: Origin) -> ExitCode {
    // What `logs` on the control socket reads.
    let tap = setup.control.is_some().then(LogTap::default);
    let output = Output::start(setup.format, tap.clone());
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
    let grace = setup.grace();
    let code = match supervise(setup, origin, &output, tap).await {
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
    setup: Setup,
    mut origin: Origin,
    output: &Output,
    tap: Option<LogTap>,
) -> anyhow::Result<ExitCode> {
    // First, so that a signal during startup is a shutdown once running,
    // not the default action.
    let mut signals = Signals::install()?;
    // As PID 1 (or asked), orphans are ours to reap, for as long as we run.
    let _reaper = setup
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
    let mut control = match (&setup.control, &handover) {
        (Some(path), None) => bind_control(path, false, &report).await?,
        _ => None,
    };
    // Bound before anything starts: an address in use is a failure to start.
    let metrics_socket = (setup.metrics)
        .map(|address| metrics::bind(address, handover.as_mut()))
        .transpose()?;
    // Held to the end: the socket files they made go with them.
    let (pools, mut socket_files) = start(&setup, &report, handover.as_mut()).await?;
    let metrics_listener = metrics_socket.map(|(listener, copy)| {
        if let Some(files) = socket_files.first_mut() {
            files.hand_over(metrics::SOCKET_NAME, copy);
        }
        listener
    });
    let primaries: Vec<ClusterPrimary> = pools.iter().map(|pool| pool.primary().clone()).collect();
    // What the control socket asks of this loop.
    let (commands, mut asked) = mpsc::channel(16);
    let served = control::Served {
        pools: (pools.iter())
            .map(|pool| (pool.label().to_owned(), pool.primary().clone()))
            .collect(),
        tap: tap.unwrap_or_default(),
        commands,
        report: report.clone(),
    };
    if let Some(control) = &mut control {
        control.serve(served.clone());
    }
    // (An upgrade's new primary: the old one is told once every worker is ready.)
    let mut takeover = handover.map(|handover| {
        let pools = pools
            .iter()
            .map(|pool| (pool.primary().clone(), pool.plan().workers));
        Takeover::start(pools.collect(), handover)
    });
    // What systemd is told (a new primary speaks once it has taken over).
    let mut service = ServiceManager::new(report.clone(), primaries.clone(), takeover.is_some());
    if takeover.is_none() {
        for pool in &pools {
            if let Err(error) = pool.primary().fork(pool.plan().workers).await {
                pool.report().cannot_start(&pool.plan().program, &error);
                drop((control, served, service, primaries));
                wind_down(pools, setup.grace()).await?;
                return Ok(ExitCode::CannotStart);
            }
        }
    }
    // Served once the pools have their workers (not ready before them),
    // until they are wound down or this primary hands over to a new one.
    let mut serving = metrics_listener.map(|listener| serve_metrics(listener, &primaries, output));
    // Each pool under supervision in a task of its own, told what to do.
    let mut running = Vec::new();
    let names: Vec<String> = pools.iter().map(|pool| pool.label().to_owned()).collect();
    let mut supervised = JoinSet::new();
    let (notes, mut noted) = mpsc::unbounded_channel();
    for mut pool in pools {
        let (commands, received) = mpsc::unbounded_channel();
        running.push(commands);
        let notes = notes.clone();
        supervised.spawn(async move {
            let outcome = pool.supervise(received, notes).await;
            (pool, outcome)
        });
    }
    drop(notes);
    // The pools whose reload has not ended (by name): the service manager
    // hears `READY=1` once none is left. A pool asked to reload during a
    // reload restarts its rollout and ends it once: a set, not a count.
    let mut reloading = BTreeSet::new();
    let mut shutdown = Shutdown::default();
    let mut ended = Vec::new();
    let mut outcome = Outcome::default();
    // SIGUSR2 (see upgrade.rs), and how a new primary's takeover ended.
    let mut upgrading = Upgrading::default();
    let mut gave_up_takeover = None;
    loop {
        tokio::select! {
            finished = supervised.join_next() => match finished {
                None => break,
                Some(finished) => {
                    let (pool, ended_with) = finished.context("a pool's supervision failed")?;
                    // (A pool that ended has no reload under way.)
                    if reloading.remove(pool.label()) && reloading.is_empty() {
                        service.reloaded().await;
                    }
                    if ended_with.gave_up && !supervised.is_empty() && shutdown.signals == 0 {
                        let name = pool.name().unwrap_or_default();
                        report.warn("shutDown", &format!("the pool {name} gave up: stopping every pool"));
                        shutdown.signals += 1;
                        service.stopping();
                        tell(&running, || Command::ShutDown);
                    }
                    // (A pool that ended alone, no worker left to replace,
                    // stops the service only if it was the last one.)
                    if supervised.is_empty() {
                        service.stopping();
                    }
                    outcome.forced |= ended_with.forced;
                    outcome.gave_up |= ended_with.gave_up;
                    outcome.failed |= ended_with.failed;
                    ended.push(pool);
                }
            },
            Some(note) = noted.recv() => match note {
                Note::Event(event) => service.event(&event).await,
                Note::Reloaded(pool) => {
                    if reloading.remove(&pool) && reloading.is_empty() {
                        service.reloaded().await;
                    }
                }
            },
            _ = signals.interrupt.recv() => {
                service.stopping();
                shutdown.on_signal(&running, &report, true);
            }
            _ = signals.terminate.recv() => {
                service.stopping();
                shutdown.on_signal(&running, &report, false);
            }
            _ = signals.hangup.recv(), if shutdown.signals == 0 => {
                for (commands, name) in running.iter().zip(&names) {
                    if commands.send(Command::Reload { reply: None }).is_ok() {
                        reloading.insert(name.clone());
                    }
                }
                if !reloading.is_empty() {
                    service.reloading();
                }
            }
            Some(command) = asked.recv() => match command {
                control::Command::Scale { pool, workers, reply } => {
                    let command = Command::Resize { workers, reply };
                    if let Err(unsent) = running[pool].send(command) {
                        refuse(unsent.0);
                    }
                }
                control::Command::Reload { pool, reply } => {
                    // (`RELOADING=1` only if the pool is there to reload.)
                    match running[pool].send(Command::Reload { reply: Some(reply) }) {
                        Ok(()) => {
                            reloading.insert(names[pool].clone());
                            service.reloading();
                        }
                        Err(unsent) => refuse(unsent.0),
                    }
                }
                control::Command::Stop { reply } => {
                    report.line("shutDown", "stop asked on the control socket");
                    service.stopping();
                    shutdown.on_signal(&running, &report, false);
                    let _ = reply.send(());
                }
            },
            _ = signals.more.recv(), if shutdown.signals == 0 => scale(&running, &report, true),
            _ = signals.fewer.recv(), if shutdown.signals == 0 => scale(&running, &report, false),
            _ = signals.upgrade.recv(), if shutdown.signals == 0 => {
                upgrading.begin(&origin, &setup, &socket_files, &report);
            }
            ended_with = upgrading.outcome(), if upgrading.under_way() && shutdown.signals == 0 => {
                if Upgrading::took_over(ended_with, &report) {
                    service.hand_over();
                    socket_files.iter_mut().for_each(|files| files.keep(true));
                    // (The new primary answers on the metrics socket now.)
                    if let Some(serving) = serving.take() {
                        serving.abort();
                    }
                    shutdown.on_signal(&running, &report, false);
                }
            }
            () = service.tick(), if service.watched() => {}
            code = async { takeover.as_mut().expect("a takeover").settle(&report).await },
                if takeover.as_ref().is_some_and(Takeover::waiting) && shutdown.signals == 0 => {
                gave_up_takeover = code;
                match code {
                    // (Took over: the socket files are this primary's now,
                    // and so is the control socket.)
                    None => {
                        socket_files.iter_mut().for_each(|files| files.keep(false));
                        control = take_over_control(&setup, served.clone(), &report).await;
                        service.take_over().await;
                    }
                    Some(_) => shutdown.on_signal(&running, &report, false),
                }
            }
        }
    }
    let forced = shutdown.forced || outcome.forced;
    report.shut_down(forced);
    if let Some(serving) = serving {
        serving.abort();
    }
    // (The control socket's connections and the service manager hold the
    // primaries: they end first (the workers' output ends with the last
    // handle), and the control socket's file goes, once every worker is
    // gone.)
    drop((upgrading, control, served, service, primaries));
    wind_down(ended, setup.grace()).await?;
    Ok(if let Some(code) = gave_up_takeover {
        code
    } else if forced {
        ExitCode::Forced
    } else if outcome.gave_up {
        ExitCode::GaveUp
    } else if outcome.failed {
        ExitCode::WorkersFailed
    } else {
        ExitCode::Clean
    })
}

/// Starts the primary of every pool of `setup`, with no worker yet; the
/// pools, and the socket files they bound. If one cannot start, those
/// started are wound down.
async fn start(
    setup: &Setup,
    report: &Report,
    mut handover: Option<&mut isotropic_cluster::upgrade::Handover>,
) -> anyhow::Result<(Vec<Pool>, Vec<listen::SocketFiles>)> {
    // (A pool's lines name it when there are several.)
    let several = setup.pools.len() > 1;
    let (mut pools, mut socket_files) = (Vec::new(), Vec::new());
    // Workers are sampled (every second) for `status` on the control socket
    // and for the metrics.
    let sampled = setup.control.is_some() || setup.metrics.is_some();
    // (Each pool takes those bound to its addresses.)
    let listens = setup.pools.iter().any(|plan| !plan.listen.is_empty());
    let mut activated = listen::Activated::take(listens, handover.as_deref());
    for plan in &setup.pools {
        let name = plan.name.as_deref().filter(|_| several);
        let report = report.for_pool(name);
        let handover = handover.as_deref_mut();
        match Pool::start(plan, report, handover, &mut activated, sampled).await {
            Ok((pool, files)) => {
                pools.push(pool);
                socket_files.push(files);
            }
            Err(error) => {
                wind_down(pools, setup.grace()).await?;
                return Err(error);
            }
        }
    }
    activated.close_unused(report);
    Ok((pools, socket_files))
}

/// Tells every pool still running to do `command`.
fn tell(running: &[mpsc::UnboundedSender<Command>], command: impl Fn() -> Command) {
    for commands in running {
        // (A pool that ended has nothing left to do.)
        let _ = commands.send(command());
    }
}

/// Answers a control command whose pool has ended.
fn refuse(command: Command) {
    match command {
        Command::Reload { reply: Some(reply) } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Command::Resize { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        _ => {}
    }
}

/// Serves the metrics of every pool's primary on `listener`, with a line
/// that says where.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    primaries: &[ClusterPrimary],
    output: &Output,
) -> tokio::task::JoinHandle<()> {
    if let Ok(address) = listener.local_addr() {
        let text = format!("metrics on http://{address}");
        output.line(&Entry::info("metrics", text).with([("address", address.to_string().into())]));
    }
    let metrics = primaries.iter().map(ClusterPrimary::metrics);
    let metrics = metrics.reduce(Metrics::merge).expect("a pool at least");
    tokio::spawn(metrics::serve(listener, metrics, output.clone()))
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
    setup: &Setup,
    served: control::Served,
    report: &Report,
) -> Option<ControlSocket> {
    let path = setup.control.as_deref()?;
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

/// SIGTTIN (`up`) or SIGTTOU: one worker more or fewer, for a single pool;
/// with several, which pool is meant is unknown: ignored.
fn scale(running: &[mpsc::UnboundedSender<Command>], report: &Report, up: bool) {
    if let [_] = running {
        return tell(running, || Command::Scale { up });
    }
    let signal = if up { "SIGTTIN" } else { "SIGTTOU" };
    let text = format!(
        "{signal} ignored: there are {} pools (change a pool's workers in the file, then upgrade with SIGUSR2)",
        running.len()
    );
    report.line("scale", &text);
}

/// Destroys every pool's primary, then waits until what the workers wrote
/// is printed, for the longest `grace` at most (our stdout may be blocked).
async fn wind_down(pools: Vec<Pool>, grace: std::time::Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + grace;
    for pool in pools {
        pool.wind_down(deadline).await?;
    }
    Ok(())
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
    /// The first signal shuts every pool down gracefully. During the
    /// shutdown, SIGINT (a second Ctrl-C: someone is waiting) kills the
    /// workers, while SIGTERM changes nothing (service managers repeat it;
    /// the shutdown already ends within the grace periods).
    fn on_signal(
        &mut self,
        running: &[mpsc::UnboundedSender<Command>],
        report: &Report,
        interrupt: bool,
    ) {
        self.signals += 1;
        if self.signals == 1 {
            report.shutting_down();
            tell(running, || Command::ShutDown);
        } else if interrupt {
            report.killing();
            tell(running, || Command::Kill);
            self.forced = true;
        } else {
            report.already_shutting_down();
        }
    }
}
