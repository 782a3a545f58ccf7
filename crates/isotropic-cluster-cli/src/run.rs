//! The `run` command.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::{
    ClusterPrimary, OnIntensity, OutputStream, PrimaryEvent, Readiness, RestartPolicy,
    WorkerChannel, WorkerStdio,
};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

/// The options of `run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many workers (default: the number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// How long workers get to exit once asked, before SIGTERM then SIGKILL
    /// (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = duration)]
    grace: Duration,
    /// A worker that ran this long counts as stable: replaced at once, and
    /// the count of early exits starts over.
    #[arg(long, default_value = "1s", value_parser = duration)]
    stable_after: Duration,
    /// The wait before replacing a worker after the second early exit in a
    /// row; it doubles with each further one…
    #[arg(long, default_value = "100ms", value_parser = duration)]
    restart_delay: Duration,
    /// …up to this.
    #[arg(long, default_value = "10s", value_parser = duration)]
    max_restart_delay: Duration,
    /// At most this many replacements within --restart-period; then
    /// --on-max-restarts applies (default: no limit).
    #[arg(long)]
    max_restarts: Option<u32>,
    /// The window of --max-restarts.
    #[arg(long, default_value = "60s", value_parser = duration)]
    restart_period: Duration,
    /// Over --max-restarts: stop (shut down, exit code 3) or slow-down
    /// (keep replacing, each after --max-restart-delay).
    #[arg(long, value_enum, default_value_t = OnMaxRestarts::Stop)]
    on_max_restarts: OnMaxRestarts,
    /// The channel workers get: none (plain programs), node (Node.js's own
    /// IPC: process.send / process.on('message')), or frames (ours, see
    /// docs/protocol.md).
    #[arg(long, value_enum, default_value_t = Channel::None)]
    channel: Channel,
    /// When a worker counts as ready: when started (no channel), when it
    /// sends ready (node: the message 'ready'; frames: the ready frame), or
    /// when it holds a listening socket (no channel; with --listen, as soon
    /// as it holds the passed ones).
    #[arg(long, value_enum)]
    ready: Option<Ready>,
    /// An address the primary listens on, passed to every worker as a
    /// systemd-activation socket (LISTEN_FDS from fd 3, LISTEN_PID,
    /// LISTEN_FDNAMES): 127.0.0.1:8080, [::1]:0, unix:/path. Repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Print lifecycle events as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// The program to run, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Channel {
    None,
    Node,
    Frames,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnMaxRestarts {
    Stop,
    SlowDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ready {
    Start,
    Message,
    Listening,
}

/// `500ms`, `5s`, `2m`, or a number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

pub(crate) async fn run(args: Args) -> ExitCode {
    match supervise(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("isotropic-cluster: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn supervise(args: Args) -> anyhow::Result<ExitCode> {
    // First, so that a signal during startup is a shutdown once running,
    // not the default action.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let channel = match (args.channel, args.ready) {
        (Channel::None, None | Some(Ready::Start | Ready::Listening)) => WorkerChannel::None,
        (Channel::Frames, None | Some(Ready::Message)) => WorkerChannel::Frames,
        (Channel::Node, None | Some(Ready::Message)) => WorkerChannel::Node,
        (Channel::None, Some(Ready::Message)) => {
            anyhow::bail!("--ready message needs --channel node or frames")
        }
        (_, Some(Ready::Start)) => anyhow::bail!("--ready start goes with --channel none"),
        (_, Some(Ready::Listening)) => {
            anyhow::bail!("--ready listening goes with --channel none")
        }
    };
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command"))?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let report = Report { json: args.json };
    let builder = if args.listen.is_empty() {
        ClusterPrimary::builder()
            .program(program)
            .args(program_args)
    } else {
        // Workers start through the shim: find the command now, so that a
        // missing one is an error here, as without --listen.
        let program = executable(program)?;
        let (fds, names) = bind(&args.listen, &report)?;
        // Each worker starts as this program, which places the sockets and
        // then becomes the command.
        ClusterPrimary::builder()
            .program(std::env::current_exe()?)
            .arg("__exec-with-sockets")
            .arg(names)
            .arg("--")
            .arg(program)
            .args(program_args)
            .pass_fds(fds)
    };
    let builder = match args.ready {
        Some(Ready::Start) => builder.readiness(Readiness::Started),
        Some(Ready::Message) => builder.readiness(Readiness::Message),
        Some(Ready::Listening) => builder.readiness(Readiness::Listening),
        None => builder,
    };
    let primary = builder
        .channel(channel)
        .stdio(WorkerStdio::Piped)
        .shutdown_grace(args.grace)
        .kill_grace(args.grace)
        .restart_policy(restart_policy(&args))
        .start()
        .await?;
    let mut events = primary.events();
    if let Err(error) = primary.fork(workers).await {
        report.line(
            "forkError",
            None,
            &format!("cannot start {program}: {}", source_chain(&error)),
        );
        primary.destroy().await?;
        return Ok(ExitCode::from(2));
    }
    let mut signals = 0;
    let mut forced = false;
    let mut gave_up = false;
    // A rolling restart (SIGHUP): one worker at a time, each once the
    // previous one's replacement is ready. The primary keeps the listening
    // sockets, so connections wait in the backlog meanwhile.
    let mut reload: Option<tokio::task::JoinHandle<Result<usize, _>>> = None;
    loop {
        tokio::select! {
            // Events first: a reload's end is reported after the events
            // that led to it.
            biased;
            event = events.next() => match event {
                Some(PrimaryEvent::ShutDownComplete(_)) | None => break,
                Some(PrimaryEvent::RestartIntensityExceeded(e)) => {
                    gave_up |= e.then == OnIntensity::ShutDown;
                    report.line(
                        "restartIntensityExceeded",
                        None,
                        &format!(
                            "{} restarts within {:?}: {}",
                            e.restarts,
                            e.period,
                            if gave_up { "giving up" } else { "slowing down" }
                        ),
                    );
                }
                Some(event) => report.event(event),
            },
            _ = interrupt.recv() => forced |= on_signal(&primary, &report, &mut signals, true).await,
            _ = terminate.recv() => forced |= on_signal(&primary, &report, &mut signals, false).await,
            _ = hangup.recv(), if signals == 0 => {
                report.line("reload", None, "restarting the workers one at a time");
                let primary = primary.clone();
                reload = Some(tokio::spawn(async move { primary.restart_workers().await }));
            }
            done = async { reload.as_mut().expect("a reload").await }, if reload.is_some() => {
                reload = None;
                if let Ok(Ok(restarted)) = done {
                    report.line("reloadComplete", None, &format!("{restarted} workers restarted"));
                }
            }
        }
    }
    report.line(
        "shutDownComplete",
        None,
        if forced {
            "workers were killed"
        } else {
            "all workers exited"
        },
    );
    Ok(if forced {
        ExitCode::from(1)
    } else if gave_up {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The restart options as a policy.
fn restart_policy(args: &Args) -> RestartPolicy {
    let policy = RestartPolicy::default()
        .stable_after(args.stable_after)
        .initial_delay(args.restart_delay)
        .max_delay(args.max_restart_delay);
    match args.max_restarts {
        None => policy,
        Some(restarts) => policy.intensity(
            restarts,
            args.restart_period,
            match args.on_max_restarts {
                OnMaxRestarts::Stop => OnIntensity::ShutDown,
                OnMaxRestarts::SlowDown => OnIntensity::SlowDown,
            },
        ),
    }
}

/// The executable file `program` names, directly or through `PATH`.
fn executable(program: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |path: &std::path::Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        Some(std::path::PathBuf::from(program)).filter(|path| runnable(path))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| runnable(path))
        })
    };
    found.ok_or_else(|| anyhow::anyhow!("cannot start {program}: not found, or not executable"))
}

/// Binds every `--listen` address; the sockets and their LISTEN_FDNAMES.
fn bind(
    addresses: &[String],
    report: &Report,
) -> anyhow::Result<(Vec<std::os::fd::OwnedFd>, String)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    for (i, text) in addresses.iter().enumerate() {
        let address: ListenAddress = text.parse()?;
        let (fd, bound) = match &address {
            ListenAddress::Tcp(at) => {
                let listener = std::net::TcpListener::bind(at)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {text}: {e}"))?;
                let bound = listener.local_addr()?;
                (std::os::fd::OwnedFd::from(listener), bound.to_string())
            }
            ListenAddress::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {text}: {e}"))?;
                (
                    std::os::fd::OwnedFd::from(listener),
                    format!("unix:{}", path.display()),
                )
            }
        };
        report.line("listening", None, &format!("listening on {bound}"));
        fds.push(fd);
        names.push(format!("listen{i}"));
    }
    Ok((fds, names.join(":")))
}

/// The first signal shuts down gracefully. During the shutdown, SIGINT (a
/// second Ctrl-C: someone is waiting) kills the workers, while SIGTERM
/// changes nothing (service managers repeat it; the shutdown already ends
/// within the grace periods). Returns whether this signal forced the end.
async fn on_signal(
    primary: &ClusterPrimary,
    report: &Report,
    signals: &mut u32,
    interrupt: bool,
) -> bool {
    *signals += 1;
    if *signals == 1 {
        report.line(
            "shutDown",
            None,
            "shutting down (Ctrl-C again kills the workers)",
        );
        let primary = primary.clone();
        tokio::spawn(async move { primary.shut_down().await });
        false
    } else if interrupt {
        report.line("kill", None, "killing the workers");
        let _ = primary.kill_workers().await;
        true
    } else {
        report.line("shutDown", None, "already shutting down");
        false
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Prints worker output with its id, and lifecycle events as text or JSON.
struct Report {
    json: bool,
}

impl Report {
    fn event(&self, event: PrimaryEvent) {
        match event {
            PrimaryEvent::WorkerOutput(output) => {
                // One write per line: lines of different workers never mix.
                let line = format!("[{}] {}\n", output.worker.id(), output.line);
                let _ = match output.stream {
                    OutputStream::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                    OutputStream::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
                };
            }
            PrimaryEvent::WorkerFork(e) => {
                self.line(
                    "workerFork",
                    Some(e.worker.id().get()),
                    &format!("started (pid {})", e.worker.pid()),
                );
            }
            PrimaryEvent::WorkerReady(e) => {
                self.line("workerReady", Some(e.worker.id().get()), "ready")
            }
            PrimaryEvent::WorkerExit(e) => {
                let how = match (e.code(), e.signal()) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(signal)) => {
                        format!("killed by signal {} ({signal})", signal.as_raw())
                    }
                    _ => "exited".to_owned(),
                };
                self.line("workerExit", Some(e.worker.id().get()), &how);
            }
            PrimaryEvent::RestartScheduled(e) => self.line(
                "restartScheduled",
                None,
                &format!(
                    "workers keep exiting early ({} in a row): next start in {:?}",
                    e.failures, e.delay
                ),
            ),
            PrimaryEvent::ForkError(e) => self.line("forkError", None, &source_chain(&e.error)),
            PrimaryEvent::WorkerSignal(e) => {
                self.line(
                    "workerSignal",
                    Some(e.worker.id().get()),
                    &format!("sent signal {} ({})", e.signal.as_raw(), e.signal),
                );
            }
            PrimaryEvent::WorkerError(e) => self.line(
                "workerError",
                Some(e.worker.id().get()),
                &e.error.to_string(),
            ),
            _ => {}
        }
    }

    fn line(&self, event: &str, worker: Option<u64>, text: &str) {
        let line = if self.json {
            json!({"event": event, "worker": worker, "message": text}).to_string()
        } else {
            match worker {
                Some(id) => format!("[primary] worker {id} {text}"),
                None => format!("[primary] {text}"),
            }
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}
