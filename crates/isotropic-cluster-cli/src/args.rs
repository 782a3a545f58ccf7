//! The command line, and the plan it makes for `run`: every setting
//! resolved and every combination of flags checked, before anything starts.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::{OnIntensity, Restart, RestartPolicy};

use crate::control;
use crate::exit::EXIT_CODES;
use crate::render::Format;

pub(crate) mod values;

use values::{Address, Count, Size, Span};

/// The hidden command through which `run --listen` starts each worker.
pub(crate) const EXEC_WITH_SOCKETS: &str = "__exec-with-sockets";

/// Local process clusters: run any program as a supervised pool.
#[derive(Debug, Parser)]
#[command(name = "isotropic-cluster", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs COMMAND as a pool of workers: replaces the ones that exit (with
    /// backoff when they keep dying), prefixes their output with their id,
    /// rolls out the program anew on SIGHUP (new workers first, rolled back
    /// if they fail), and shuts them down gracefully on SIGINT/SIGTERM (a
    /// second SIGINT kills them).
    ///
    /// On SIGUSR2 it upgrades itself without refusing a connection: it
    /// starts the program file it was started from (the one now at that
    /// path), with the same arguments, and hands it the --listen sockets;
    /// once the new primary's workers are all ready (within --ready-timeout
    /// plus 10s, or 60s), it tells NOTIFY_SOCKET MAINPID=, drains its own
    /// workers and exits 0; if the new one fails, it serves on. Not as PID 1
    /// or with --subreaper. A new primary exits with 5 when it cannot adopt
    /// the sockets, with 6 when its workers do not all get ready.
    ///
    /// Under systemd (Type=notify) it tells NOTIFY_SOCKET READY=1 once every
    /// worker is ready, RELOADING=1 then READY=1 around a SIGHUP rollout,
    /// STOPPING=1, STATUS= lines, and WATCHDOG=1 at half of WATCHDOG_USEC
    /// (see docs/deployment.md).
    ///
    /// The command follows the options, with or without `--` before it:
    /// `isotropic-cluster run -w 4 node app.js --port 3000` (everything
    /// after the command's name is its own).
    #[command(
        override_usage = "isotropic-cluster run [OPTIONS] [--] COMMAND [ARGS]...",
        after_help = EXIT_CODES
    )]
    Run(Box<RunArgs>),
    /// Shows the workers of a running primary: pool, slot, id, pid,
    /// generation, state, uptime, restarts, CPU (its share of one CPU over
    /// the last second), memory, and its last STATUS= line.
    Status {
        /// The whole status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Resizes a running primary's pool to N workers (the highest slots
    /// leave gracefully, not replaced).
    Scale {
        /// How many workers.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        workers: u16,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Rolls a running primary's program out anew, as SIGHUP does; ends
    /// once the rollout completed (exit code 0) or was rolled back (1).
    Reload {
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Shuts a running primary down gracefully, as SIGTERM does; ends once
    /// it has exited.
    Stop {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Prints the last lines a running primary printed (its workers' output
    /// and its own lines, up to the last 1000 kept); with -f, then every
    /// new one.
    Logs {
        /// Follow: print new lines as they come, until the primary exits.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// (Internal) How `run --listen` starts each worker: places the passed
    /// sockets at fd 3… with the socket-activation variables, then becomes
    /// COMMAND.
    #[command(name = EXEC_WITH_SOCKETS, hide = true)]
    ExecWithSockets {
        /// LISTEN_FDNAMES.
        names: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

/// Which primary a control command talks to.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlArgs {
    /// The primary's control socket (default: as `run`'s,
    /// $XDG_RUNTIME_DIR/isotropic-cluster/control.sock, or
    /// /tmp/isotropic-cluster-UID/control.sock without XDG_RUNTIME_DIR).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

impl ControlArgs {
    /// The socket's path.
    pub(crate) fn path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(control::default_path)
    }
}

/// A control command that acts on one pool.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PoolArgs {
    /// The pool (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub(crate) pool: Option<String>,
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

/// The options of `run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// How many workers (default: the number of CPUs; at least 1).
    #[arg(
        short,
        long,
        visible_short_alias = 'i',
        value_name = "N",
        value_parser = count::<1, u16>,
        allow_hyphen_values = true
    )]
    workers: Option<u16>,
    /// How long workers get to exit once asked, before SIGTERM then SIGKILL
    /// (e.g. 500ms, 5s, 1min). Node workers (--channel node) are disconnected
    /// and, as Node's own cluster does, sent SIGTERM soon after (1s, or
    /// --grace if shorter) unless they have exited.
    #[arg(
        long,
        value_name = "D",
        default_value = "5s",
        value_parser = duration,
        allow_hyphen_values = true
    )]
    grace: Duration,
    /// A worker that ran this long counts as stable: replaced at once, and
    /// the count of early exits starts over.
    #[arg(
        long,
        value_name = "D",
        default_value = "1s",
        value_parser = duration,
        allow_hyphen_values = true
    )]
    stable_after: Duration,
    /// The wait before replacing a worker after the second early exit in a
    /// row; it doubles with each further one…
    #[arg(
        long,
        value_name = "D",
        default_value = "100ms",
        value_parser = duration,
        allow_hyphen_values = true
    )]
    restart_delay: Duration,
    /// …up to this.
    #[arg(
        long,
        value_name = "D",
        default_value = "10s",
        value_parser = duration,
        allow_hyphen_values = true
    )]
    max_restart_delay: Duration,
    /// At most this many replacements within --restart-period; then
    /// --on-max-restarts applies (default: no limit).
    #[arg(long, value_name = "N", value_parser = count::<0, u32>, allow_hyphen_values = true)]
    max_restarts: Option<u32>,
    /// The window of --max-restarts.
    #[arg(
        long,
        value_name = "D",
        default_value = "60s",
        value_parser = duration,
        allow_hyphen_values = true
    )]
    restart_period: Duration,
    /// Over --max-restarts: stop (shut down, exit code 3) or slow-down
    /// (keep replacing, each after --max-restart-delay).
    #[arg(long, value_enum, default_value_t = OnMaxRestarts::Stop)]
    on_max_restarts: OnMaxRestarts,
    /// Which exits are followed by a replacement: always, on-failure (an
    /// exit code other than 0, or a signal other than SIGTERM, SIGINT,
    /// SIGHUP or SIGPIPE), or never. Once no worker is left and none is to
    /// be replaced, the run ends (exit code 4 if one of them failed).
    #[arg(long, value_enum, default_value_t = RestartMode::Always)]
    restart: RestartMode,
    #[command(flatten)]
    recycle: Recycle,
    #[command(flatten)]
    rollout: Rollout,
    /// The channel workers get: none (plain programs), node (Node.js's own
    /// IPC: process.send / process.on('message')), or frames (ours, see
    /// docs/protocol.md).
    #[arg(long, value_enum, default_value_t = Channel::None)]
    channel: Channel,
    /// When a worker counts as ready: when started (no channel), when it
    /// sends ready (node: the message 'ready'; frames: the ready frame),
    /// when it holds a listening socket (no channel; with --listen, as soon
    /// as it holds the passed ones), or when it sends READY=1 to the socket
    /// named by NOTIFY_SOCKET (systemd's sd_notify, any channel; its
    /// STATUS= and STOPPING=1 are printed).
    #[arg(long, value_enum)]
    ready: Option<Readiness>,
    /// A worker not ready this long after its start is stopped (and
    /// replaced as any exit), in every --ready mode (default: no limit).
    #[arg(long, value_name = "D", value_parser = duration, allow_hyphen_values = true)]
    ready_timeout: Option<Duration>,
    /// Stop and replace a worker silent this long (e.g. 10s): the primary
    /// sends heartbeats every D/4 that a worker answers from its event loop
    /// (SIGTERM, then SIGKILL after --grace). Needs --channel frames, or
    /// --ready notify (the worker sends WATCHDOG=1 within D; WATCHDOG_USEC says D); a
    /// worker whose hello does not say it answers heartbeats is not watched.
    #[arg(long, value_name = "D", value_parser = duration, allow_hyphen_values = true)]
    watchdog: Option<Duration>,
    /// An address the primary listens on, passed to every worker as a
    /// systemd-activation socket (LISTEN_FDS from fd 3, LISTEN_PID,
    /// LISTEN_FDNAMES), written as gunicorn's --bind: 127.0.0.1:8080,
    /// [::1]:8080, localhost:8080, :8080 or 8080 (every IPv4 interface),
    /// unix:/path. Repeatable. A socket passed to the CLI by socket
    /// activation (a systemd .socket unit) bound to ADDR is used instead of
    /// binding one.
    #[arg(
        short = 'b',
        long = "listen",
        visible_alias = "bind",
        value_name = "ADDR"
    )]
    listen: Vec<Address>,
    /// Print one stream of JSON lines on stdout: lifecycle events and the
    /// workers' output, each with ts (RFC 3339, UTC), level, event and
    /// fields (worker, slot, pid, generation, code, signal…).
    #[arg(long)]
    json: bool,
    /// Prefix each line of the text format with the time (RFC 3339, UTC).
    #[arg(long, conflicts_with = "json")]
    timestamps: bool,
    /// Adopt and reap the orphans of the workers' descendants (a
    /// double-forked daemon, the children of a worker that died), as tini
    /// does: PR_SET_CHILD_SUBREAPER. Always done when running as PID 1 (a
    /// container's entrypoint).
    #[arg(long)]
    subreaper: bool,
    /// Recycle a worker whose memory goes over SIZE (200M, 1G, 512K, or
    /// bytes): its process tree's resident memory (its cgroup's, where it
    /// runs in one with the memory controller), sampled every second. It is
    /// stopped as by a restart and replaced in its slot.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_memory: Option<u64>,
    /// Where to listen for `status`, `scale`, `reload`, `stop` and `logs`
    /// (a Unix socket of mode 0600, for this user only; default:
    /// $XDG_RUNTIME_DIR/isotropic-cluster/control.sock, or
    /// /tmp/isotropic-cluster-UID/control.sock). A primary already
    /// answering there is refused.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// No control socket.
    #[arg(long, conflicts_with = "control")]
    no_control_socket: bool,
    /// Serve the pool's metrics on ADDR (127.0.0.1:9100, localhost:9100,
    /// :9100; TCP): GET /metrics in Prometheus' text format
    /// (docs/metrics.md), /healthz (200 while the primary runs) and /readyz
    /// (200 while enough workers are ready, 503 otherwise). Workers are then
    /// sampled every second.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<Address>,
    /// The program to run, and its arguments (all of them its own).
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    command: Vec<String>,
}

/// When a worker is recycled (drained: its replacement is ready before it
/// is asked to leave, one worker at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::Args)]
pub(crate) struct Recycle {
    /// Recycle a worker after it served N requests (replies on the frames
    /// channel, or as counted by the worker through the library)…
    #[arg(long, value_name = "N", value_parser = count::<1, u64>, allow_hyphen_values = true)]
    pub(crate) max_requests: Option<u64>,
    /// …plus a random 0 to N more, drawn for each worker, so that workers
    /// do not all recycle at once.
    #[arg(
        long,
        value_name = "N",
        default_value = "0",
        value_parser = count::<0, u64>,
        requires = "max_requests",
        allow_hyphen_values = true
    )]
    pub(crate) max_requests_jitter: u64,
    /// Recycle a worker after it ran this long (plus a random 0 to 10%).
    #[arg(long, value_name = "D", value_parser = duration, allow_hyphen_values = true)]
    pub(crate) max_age: Option<Duration>,
}

/// How a reload (SIGHUP) rolls out a new generation: slot by slot, each
/// new worker proven before an old one leaves; rolled back if one fails.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub(crate) struct Rollout {
    /// Workers a reload starts beyond --workers at once (Kubernetes'
    /// maxSurge).
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        value_parser = count::<0, usize>,
        allow_hyphen_values = true
    )]
    pub(crate) surge: usize,
    /// Workers a reload may take out before their replacements are proven
    /// (Kubernetes' maxUnavailable).
    #[arg(
        long,
        value_name = "N",
        default_value = "0",
        value_parser = count::<0, usize>,
        allow_hyphen_values = true
    )]
    pub(crate) max_unavailable: usize,
    /// A reload's new worker must be ready and up this long before an old
    /// one leaves; one that exits sooner (or is not ready within
    /// --ready-timeout, 60s if unset) rolls the reload back.
    #[arg(
        long,
        value_name = "D",
        value_parser = duration,
        default_value = "1s",
        allow_hyphen_values = true
    )]
    pub(crate) min_uptime: Duration,
    /// A command run (by sh -c) for each new worker of a reload once it is
    /// ready, with ISOTROPIC_CLUSTER_PID, _SLOT, _WORKER_ID and _GENERATION
    /// set: exit code 0 is healthy; any other, or no exit within
    /// --ready-timeout (60s if unset), rolls the reload back.
    #[arg(long, value_name = "CMD")]
    pub(crate) health_check: Option<String>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            surge: 1,
            max_unavailable: 0,
            min_uptime: Duration::from_secs(1),
            health_check: None,
        }
    }
}

/// The channel workers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Channel {
    None,
    Node,
    Frames,
}

/// When a worker counts as ready: once started, once it sends ready on its
/// channel, once it holds a listening socket, or once it sends `READY=1` to
/// `NOTIFY_SOCKET`. (No doc comment on the
/// variants: clap would print them in `--help`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Readiness {
    Start,
    Message,
    Listening,
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RestartMode {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnMaxRestarts {
    Stop,
    SlowDown,
}

/// What `run` does, every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The program each worker runs…
    pub(crate) program: String,
    /// …with these arguments.
    pub(crate) args: Vec<String>,
    pub(crate) workers: usize,
    pub(crate) channel: Channel,
    /// Never at odds with `channel`.
    pub(crate) readiness: Readiness,
    pub(crate) ready_timeout: Option<Duration>,
    /// The `--listen` addresses.
    pub(crate) listen: Vec<ListenAddress>,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) recycle: Recycle,
    pub(crate) rollout: Rollout,
    /// Both the shutdown's and the kill's.
    pub(crate) grace: Duration,
    /// How lines are printed.
    pub(crate) format: Format,
    /// Whether to adopt and reap orphans: asked, or running as PID 1.
    pub(crate) reap_orphans: bool,
    /// How long a watched worker may be silent (`None`: not watched).
    pub(crate) watchdog: Option<Duration>,
    /// The memory limit of each worker, in bytes.
    pub(crate) max_memory: Option<u64>,
    /// The control socket's path (`None`: no control socket).
    pub(crate) control: Option<PathBuf>,
    /// Where to serve the metrics.
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

/// A combination of flags that makes no plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// No command to run.
    NoCommand,
    /// `--ready message` without a channel to send it on.
    MessageNeedsChannel,
    /// `--ready start` or `--ready listening` with a channel.
    NeedsNoChannel(Readiness),
    /// `--watchdog` for workers that cannot give a sign of life.
    WatchdogNeedsFrames,
    /// `--surge 0 --max-unavailable 0`: a reload could not move.
    StuckRollout,
    /// `--metrics unix:…`: the metrics are served over TCP.
    MetricsNeedsTcp,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommand => f.write_str(
                "no command to run: isotropic-cluster run [OPTIONS] COMMAND [ARGS…], \
                 e.g. isotropic-cluster run -w 4 node app.js",
            ),
            Self::MessageNeedsChannel => {
                f.write_str("--ready message needs --channel node or frames")
            }
            Self::NeedsNoChannel(readiness) => {
                let value = clap::ValueEnum::to_possible_value(readiness);
                let name = value.as_ref().map_or("?", |value| value.get_name());
                write!(f, "--ready {name} goes with --channel none")
            }
            Self::WatchdogNeedsFrames => f.write_str(
                "--watchdog needs --channel frames (heartbeats) or --ready notify (WATCHDOG=1)",
            ),
            Self::StuckRollout => f.write_str("--surge and --max-unavailable cannot both be 0"),
            Self::MetricsNeedsTcp => {
                f.write_str("--metrics takes a TCP address (e.g. 127.0.0.1:9100 or :9100)")
            }
        }
    }
}

impl std::error::Error for PlanError {}

impl RunArgs {
    /// Resolves the defaults and checks the combinations of flags.
    pub(crate) fn plan(mut self) -> Result<Plan, PlanError> {
        let mut command = std::mem::take(&mut self.command).into_iter();
        let program = command.next().ok_or(PlanError::NoCommand)?;
        let readiness = match (self.channel, self.ready) {
            (_, Some(Readiness::Notify)) => Readiness::Notify,
            (Channel::None, None) => Readiness::Start,
            (Channel::Node | Channel::Frames, None) => Readiness::Message,
            (Channel::None, Some(Readiness::Message)) => {
                return Err(PlanError::MessageNeedsChannel);
            }
            (Channel::None, Some(readiness))
            | (Channel::Node | Channel::Frames, Some(readiness @ Readiness::Message)) => readiness,
            (Channel::Node | Channel::Frames, Some(readiness)) => {
                return Err(PlanError::NeedsNoChannel(readiness));
            }
        };
        if self.watchdog.is_some()
            && self.channel != Channel::Frames
            && readiness != Readiness::Notify
        {
            return Err(PlanError::WatchdogNeedsFrames);
        }
        if self.rollout.surge == 0 && self.rollout.max_unavailable == 0 {
            return Err(PlanError::StuckRollout);
        }
        let metrics = match self.metrics.take().map(Address::into_inner) {
            None => None,
            Some(ListenAddress::Tcp(address)) => Some(address),
            Some(_) => return Err(PlanError::MetricsNeedsTcp),
        };
        let restart_policy = self.restart_policy();
        Ok(Plan {
            program,
            args: command.collect(),
            workers: self.workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                usize::from,
            ),
            channel: self.channel,
            readiness,
            ready_timeout: self.ready_timeout,
            listen: self.listen.into_iter().map(Address::into_inner).collect(),
            restart_policy,
            recycle: self.recycle,
            rollout: self.rollout,
            grace: self.grace,
            format: match (self.json, self.timestamps) {
                (true, _) => Format::Json,
                (false, true) => Format::Timestamped,
                (false, false) => Format::Text,
            },
            reap_orphans: self.subreaper || std::process::id() == 1,
            watchdog: self.watchdog,
            max_memory: self.max_memory,
            control: (!self.no_control_socket)
                .then(|| self.control.unwrap_or_else(control::default_path)),
            metrics,
        })
    }

    /// The restart options as a policy.
    fn restart_policy(&self) -> RestartPolicy {
        let policy = RestartPolicy::default()
            .stable_after(self.stable_after)
            .initial_delay(self.restart_delay)
            .max_delay(self.max_restart_delay)
            .restart(match self.restart {
                RestartMode::Always => Restart::Always,
                RestartMode::OnFailure => Restart::OnFailure,
                RestartMode::Never => Restart::Never,
            });
        match self.max_restarts {
            None => policy,
            Some(restarts) => policy.intensity(
                restarts,
                self.restart_period,
                match self.on_max_restarts {
                    OnMaxRestarts::Stop => OnIntensity::ShutDown,
                    OnMaxRestarts::SlowDown => OnIntensity::SlowDown,
                },
            ),
        }
    }
}

/// clap's parser of a [`Span`].
fn duration(text: &str) -> Result<Duration, String> {
    text.parse::<Span>().map(|span| span.0)
}

/// clap's parser of a [`Size`].
fn size(text: &str) -> Result<u64, String> {
    text.parse::<Size>().map(|size| size.0)
}

/// clap's parser of a [`Count`] of at least `MIN`, as a `T`.
fn count<const MIN: u64, T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let Count(n) = text.parse::<Count<MIN>>()?;
    T::try_from(n).map_err(|_| format!("{text} is too many"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `isotropic-cluster run FLAGS -- prog arg`, parsed and planned.
    fn plan(flags: &[&str]) -> Result<Plan, PlanError> {
        let line = ["isotropic-cluster", "run"]
            .iter()
            .chain(flags)
            .chain(&["--", "prog", "arg"]);
        match Cli::try_parse_from(line).expect("parses").command {
            Command::Run(args) => args.plan(),
            other => panic!("not run: {other:?}"),
        }
    }

    fn parse_error(line: &[&str]) -> clap::error::ErrorKind {
        Cli::try_parse_from(line).expect_err("rejected").kind()
    }

    #[test]
    fn defaults() {
        let plan = plan(&[]).expect("a plan");
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            plan,
            Plan {
                program: "prog".to_owned(),
                args: vec!["arg".to_owned()],
                workers: cpus,
                channel: Channel::None,
                readiness: Readiness::Start,
                ready_timeout: None,
                listen: vec![],
                restart_policy: RestartPolicy::default(),
                recycle: Recycle::default(),
                rollout: Rollout::default(),
                grace: Duration::from_secs(5),
                format: Format::Text,
                reap_orphans: false,
                watchdog: None,
                max_memory: None,
                control: Some(control::default_path()),
                metrics: None,
            }
        );
    }

    #[test]
    fn every_setting() {
        let plan = plan(&[
            "--workers",
            "3",
            "--grace",
            "500ms",
            "--stable-after",
            "2s",
            "--restart-delay",
            "50ms",
            "--max-restart-delay",
            "1m",
            "--max-restarts",
            "4",
            "--restart-period",
            "30",
            "--on-max-restarts",
            "slow-down",
            "--restart",
            "on-failure",
            "--max-requests",
            "1000",
            "--max-requests-jitter",
            "50",
            "--max-age",
            "1h",
            "--channel",
            "frames",
            "--ready-timeout",
            "2s",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "unix:/tmp/a.sock",
            "--json",
            "--subreaper",
            "--watchdog",
            "1.5s",
            "--max-memory",
            "200M",
            "--metrics",
            "127.0.0.1:9100",
            "--surge",
            "2",
            "--max-unavailable",
            "1",
            "--min-uptime",
            "5s",
            "--health-check",
            "curl -sf localhost:8080",
            "--control",
            "/run/c.sock",
        ])
        .expect("a plan");
        assert_eq!(
            plan,
            Plan {
                program: "prog".to_owned(),
                args: vec!["arg".to_owned()],
                workers: 3,
                channel: Channel::Frames,
                readiness: Readiness::Message,
                ready_timeout: Some(Duration::from_secs(2)),
                listen: vec![
                    "127.0.0.1:0".parse().expect("an address"),
                    "unix:/tmp/a.sock".parse().expect("an address"),
                ],
                restart_policy: RestartPolicy::default()
                    .stable_after(Duration::from_secs(2))
                    .initial_delay(Duration::from_millis(50))
                    .max_delay(Duration::from_secs(60))
                    .restart(Restart::OnFailure)
                    .intensity(4, Duration::from_secs(30), OnIntensity::SlowDown),
                recycle: Recycle {
                    max_requests: Some(1000),
                    max_requests_jitter: 50,
                    max_age: Some(Duration::from_secs(3600)),
                },
                rollout: Rollout {
                    surge: 2,
                    max_unavailable: 1,
                    min_uptime: Duration::from_secs(5),
                    health_check: Some("curl -sf localhost:8080".to_owned()),
                },
                grace: Duration::from_millis(500),
                format: Format::Json,
                reap_orphans: true,
                watchdog: Some(Duration::from_millis(1500)),
                max_memory: Some(200 << 20),
                control: Some(PathBuf::from("/run/c.sock")),
                metrics: Some("127.0.0.1:9100".parse().expect("an address")),
            }
        );
    }

    #[test]
    fn max_restarts_stops_by_default() {
        let plan = plan(&["--max-restarts", "2"]).expect("a plan");
        assert_eq!(
            plan.restart_policy,
            RestartPolicy::default().intensity(2, Duration::from_secs(60), OnIntensity::ShutDown)
        );
    }

    #[test]
    fn the_restart_window_alone_sets_no_limit() {
        let plan = plan(&["--restart-period", "5s", "--on-max-restarts", "stop"]);
        assert_eq!(
            plan.expect("a plan").restart_policy,
            RestartPolicy::default()
        );
    }

    #[test]
    fn readiness_follows_the_channel() {
        let readiness = |flags: &[&str]| plan(flags).map(|plan| (plan.channel, plan.readiness));
        assert_eq!(readiness(&[]), Ok((Channel::None, Readiness::Start)));
        assert_eq!(
            readiness(&["--channel", "node"]),
            Ok((Channel::Node, Readiness::Message))
        );
        assert_eq!(
            readiness(&["--ready", "listening"]),
            Ok((Channel::None, Readiness::Listening))
        );
        assert_eq!(
            readiness(&["--channel", "none", "--ready", "start"]),
            Ok((Channel::None, Readiness::Start))
        );
        assert_eq!(
            readiness(&["--channel", "frames", "--ready", "message"]),
            Ok((Channel::Frames, Readiness::Message))
        );
        for channel in ["none", "node", "frames"] {
            let (_, ready) =
                readiness(&["--channel", channel, "--ready", "notify"]).expect("a plan");
            assert_eq!(ready, Readiness::Notify, "with --channel {channel}");
        }
    }

    #[test]
    fn readiness_at_odds_with_the_channel_is_an_error() {
        let error = plan(&["--ready", "message"]).expect_err("no channel");
        assert_eq!(error, PlanError::MessageNeedsChannel);
        assert_eq!(
            error.to_string(),
            "--ready message needs --channel node or frames"
        );
        let error = plan(&["--channel", "node", "--ready", "listening"]).expect_err("a channel");
        assert_eq!(error, PlanError::NeedsNoChannel(Readiness::Listening));
        assert_eq!(
            error.to_string(),
            "--ready listening goes with --channel none"
        );
        let error = plan(&["--channel", "frames", "--ready", "start"]).expect_err("a channel");
        assert_eq!(error.to_string(), "--ready start goes with --channel none");
    }

    #[test]
    fn metrics_take_a_tcp_address_as_listen_does() {
        let metrics = |address: &str| plan(&["--metrics", address]).map(|plan| plan.metrics);
        let any: std::net::SocketAddr = "0.0.0.0:9100".parse().expect("an address");
        assert_eq!(metrics(":9100"), Ok(Some(any)));
        assert_eq!(metrics("9100"), Ok(Some(any)));
        let local = "127.0.0.1:9100".parse().ok();
        assert_eq!(metrics("localhost:9100"), Ok(local));
        let error = metrics("unix:/run/metrics.sock").expect_err("not TCP");
        assert_eq!(error, PlanError::MetricsNeedsTcp);
        assert_eq!(
            error.to_string(),
            "--metrics takes a TCP address (e.g. 127.0.0.1:9100 or :9100)"
        );
    }

    #[test]
    fn the_watchdog_needs_our_channel() {
        for channel in ["none", "node"] {
            let error = plan(&["--watchdog", "5s", "--channel", channel]).expect_err(channel);
            assert_eq!(error, PlanError::WatchdogNeedsFrames);
        }
        assert_eq!(
            PlanError::WatchdogNeedsFrames.to_string(),
            "--watchdog needs --channel frames (heartbeats) or --ready notify (WATCHDOG=1)"
        );
        for flags in [["--channel", "frames"], ["--ready", "notify"]] {
            let plan = plan(&[&["--watchdog", "5s"][..], &flags].concat()).expect("a plan");
            assert_eq!(plan.watchdog, Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn bad_flags_are_parse_errors() {
        use clap::error::ErrorKind;
        let run = |flags: &[&'static str]| {
            let mut line = vec!["isotropic-cluster", "run"];
            line.extend(flags);
            parse_error(&line)
        };
        assert_eq!(
            run(&["--grace", "5x", "--", "prog"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            run(&["--workers", "-1", "--", "prog"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(run(&["--bogus", "prog"]), ErrorKind::UnknownArgument);
        assert_eq!(
            run(&["--json", "--timestamps", "prog"]),
            ErrorKind::ArgumentConflict
        );
        // (issue 12: 0 workers was accepted and idled forever.)
        assert_eq!(
            run(&["--workers", "0", "--", "prog"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            run(&["--channel", "ipc", "--", "prog"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            run(&["--max-requests-jitter", "5", "--", "prog"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse_error(&["isotropic-cluster"]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    /// `isotropic-cluster run WORDS…`, parsed (not planned).
    fn run_args(words: &[&str]) -> RunArgs {
        let line = ["isotropic-cluster", "run"].iter().chain(words);
        match Cli::try_parse_from(line).expect("parses").command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_command_needs_no_double_dash_and_keeps_its_own_flags() {
        let args = run_args(&["-w", "4", "node", "app.js", "-w", "2", "--json", "--", "-1"]);
        assert_eq!(args.workers, Some(4));
        assert!(!args.json, "--json after the command is the command's");
        assert_eq!(
            args.command,
            ["node", "app.js", "-w", "2", "--json", "--", "-1"]
        );
        let args = run_args(&["--workers", "2", "--", "node", "--inspect", "app.js"]);
        assert_eq!(args.command, ["node", "--inspect", "app.js"]);
    }

    #[test]
    fn short_flags_as_gunicorn_and_pm2_have_them() {
        let args = run_args(&["-w", "3", "-b", ":0", "--bind", "localhost:0", "prog"]);
        assert_eq!(args.workers, Some(3));
        let listen: Vec<String> = args.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, ["0.0.0.0:0", "127.0.0.1:0"]);
        assert_eq!(run_args(&["-i", "5", "prog"]).workers, Some(5));
    }

    #[test]
    fn a_missing_command_is_a_plan_error_with_a_hint() {
        for words in [&[][..], &["--"], &["-w", "2"]] {
            let error = run_args(words).plan().expect_err("no command");
            assert_eq!(error, PlanError::NoCommand);
        }
        assert!(
            PlanError::NoCommand
                .to_string()
                .contains("e.g. isotropic-cluster run -w 4 node app.js")
        );
    }

    #[test]
    fn negative_numbers_get_a_message_of_ours() {
        for (flag, value, says) in [
            (
                "--workers",
                "-1",
                "-1 is negative: give a number of 1 or more",
            ),
            (
                "--surge",
                "-2",
                "-2 is negative: give a number of 0 or more",
            ),
            (
                "--max-restarts",
                "-3",
                "-3 is negative: give a number of 0 or more",
            ),
            ("--grace", "-5s", "a duration cannot be negative: -5s"),
        ] {
            let line = ["isotropic-cluster", "run", flag, value, "prog"];
            let error = Cli::try_parse_from(line).expect_err(flag).to_string();
            assert!(error.contains(says), "{error}");
            assert!(!error.contains("-- "), "no `-- -1` advice: {error}");
        }
        let error = Cli::try_parse_from(["isotropic-cluster", "run", "-w", "0", "prog"]);
        let error = error.expect_err("0 workers").to_string();
        assert!(
            error.contains("0 is too few: give a number of 1 or more"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_max_memory_is_a_usage_error() {
        let line = [
            "isotropic-cluster",
            "run",
            "--max-memory",
            "lots",
            "--",
            "prog",
        ];
        let error = Cli::try_parse_from(line).expect_err("rejected");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("not a size: lots"), "{error}");
    }

    #[test]
    fn the_listen_shim_parses_back() {
        let line = [
            "isotropic-cluster",
            EXEC_WITH_SOCKETS,
            "listen0:listen1",
            "--",
            "prog",
            "-x",
        ];
        match Cli::try_parse_from(line).expect("parses").command {
            Command::ExecWithSockets { names, command } => {
                assert_eq!(names, "listen0:listen1");
                assert_eq!(command, ["prog", "-x"]);
            }
            other => panic!("not the shim: {other:?}"),
        }
    }

    #[test]
    fn the_control_socket_can_be_moved_or_turned_off() {
        let off = plan(&["--no-control-socket"]).expect("a plan");
        assert_eq!(off.control, None);
        let line = [
            "isotropic-cluster",
            "run",
            "--control",
            "/run/c.sock",
            "--no-control-socket",
            "--",
            "prog",
        ];
        let error = Cli::try_parse_from(line).expect_err("both");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn control_commands_take_the_socket_and_a_pool() {
        let line = [
            "isotropic-cluster",
            "scale",
            "3",
            "--pool",
            "web",
            "--control",
            "/c",
        ];
        match Cli::try_parse_from(line).expect("parses").command {
            Command::Scale { workers, pool } => {
                assert_eq!((workers, pool.pool.as_deref()), (3, Some("web")));
                assert_eq!(pool.control.path(), PathBuf::from("/c"));
            }
            other => panic!("not scale: {other:?}"),
        }
        let zero = Cli::try_parse_from(["isotropic-cluster", "scale", "0"]).expect_err("0");
        assert_eq!(zero.kind(), clap::error::ErrorKind::ValueValidation);
        match Cli::try_parse_from(["isotropic-cluster", "logs", "-f", "-n", "5"])
            .expect("parses")
            .command
        {
            Command::Logs {
                follow,
                lines,
                control,
            } => {
                assert_eq!((follow, lines), (true, 5));
                assert_eq!(control.path(), control::default_path());
            }
            other => panic!("not logs: {other:?}"),
        }
    }
}
