//! Helpers for the end-to-end tests: the fixture programs and their modes,
//! frames built by hand, an event log, and waiting on events with a generous
//! deadline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isotropic_cluster::WorkerId;
use isotropic_cluster::primary::{
    ClusterPrimary, PrimaryBuilder, PrimaryContext, PrimaryEvent, WorkerExit, WorkerHandle,
};
use isotropic_cluster::{Event, EventStream, Topic};

mod modes;
pub mod wire;

pub use modes::{BadInput, FLOOD_MESSAGES, Mode, PrimaryFlag, PrimaryMode};

/// How long a test waits for anything before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The directory of the built binaries (`target/<profile>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The fixture worker program (its first argument is a [`Mode`]).
pub fn fixture() -> PathBuf {
    target_dir().join("fixture-worker")
}

/// The fixture primary program (see [`PrimaryMode`] and [`PrimaryFlag`]).
pub fn fixture_primary() -> PathBuf {
    target_dir().join("fixture-primary")
}

/// A built example of the library crate.
pub fn example(name: &str) -> PathBuf {
    target_dir().join("examples").join(name)
}

/// A primary whose workers run the fixture in `mode`. Logs go to the test's
/// output when `RUST_LOG` is set.
pub fn primary(mode: Mode) -> PrimaryBuilder {
    log_to_test_output();
    ClusterPrimary::builder()
        .program(fixture())
        .arg(mode.as_str())
}

/// A primary whose workers ignore the disconnect request and SIGTERM, with
/// 100 ms for each step of the escalation (SIGTERM, then SIGKILL).
pub fn hung_primary() -> PrimaryBuilder {
    primary(Mode::Hung)
        .shutdown_grace(Duration::from_millis(100))
        .kill_grace(Duration::from_millis(100))
}

/// Installs a `tracing` subscriber that writes to the test's output, filtered
/// by `RUST_LOG` (nothing when it is unset).
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An ordered log of what handlers saw.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Appends an entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().expect("log lock").push(entry.into());
    }

    /// The entries so far.
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }

    /// A handler that logs `"<label> <event name>"`.
    pub fn hook<E: Topic>(
        &self,
        label: &'static str,
    ) -> impl FnMut(&mut Event<'_, E>) + Send + 'static {
        let log = self.clone();
        move |_| log.push(format!("{label} {}", E::NAME))
    }
}

/// Subscribes a log to the `on` and `after` stages of each listed event.
#[macro_export]
macro_rules! record {
    ($subscriber:expr, $log:expr, [$($event:ty),* $(,)?]) => {{
        use isotropic_cluster::Subscribe as _;
        let subscriber = $subscriber;
        $(
            let subscriber = subscriber
                .on::<$event>($log.hook::<$event>("on"))
                .after::<$event>($log.hook::<$event>("after"));
        )*
        subscriber
    }};
}

/// Waits for the first event that `pick` accepts, and returns what it made of it.
/// The events before it are consumed: to wait for two things that may come in
/// any order, use two streams.
///
/// # Panics
///
/// After [`DEADLINE`], or when the stream ends first.
pub async fn wait_for<T>(
    events: &mut EventStream<PrimaryEvent>,
    mut pick: impl FnMut(PrimaryEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            if let Some(found) = pick(event) {
                return Some(found);
            }
        }
        None
    });
    found
        .await
        .expect("timed out waiting for an event")
        .expect("the event stream ended first")
}

/// Waits until `n` workers are ready; returns them by ascending id.
pub async fn ready(
    events: &mut EventStream<PrimaryEvent>,
    n: usize,
) -> Vec<isotropic_cluster::primary::WorkerHandle> {
    let mut workers = Vec::new();
    while workers.len() < n {
        workers.push(
            wait_for(events, |e| match e {
                PrimaryEvent::AddWorker(add) => Some(add.worker),
                _ => None,
            })
            .await,
        );
    }
    workers.sort_by_key(WorkerHandle::id);
    workers
}

/// Starts `builder`'s primary, forks `N` workers and waits until all are
/// ready; returns the primary, its event stream (from before the fork) and the
/// workers by ascending id.
///
/// # Panics
///
/// When starting or forking fails, or the workers are not ready in time.
pub async fn launch<const N: usize>(
    builder: PrimaryBuilder,
) -> (ClusterPrimary, EventStream<PrimaryEvent>, [WorkerHandle; N]) {
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    assert_eq!(primary.fork(N).await.expect("fork"), N);
    let workers = ready(&mut events, N).await;
    (primary, events, workers.try_into().expect("N workers"))
}

/// A primary whose one worker exits at start, again and again, replaced
/// under `policy`; with its event stream from before the first fork.
///
/// # Panics
///
/// When starting or forking fails.
pub async fn crash_looping(
    policy: isotropic_cluster::primary::RestartPolicy,
) -> (ClusterPrimary, EventStream<PrimaryEvent>) {
    let primary = primary(Mode::ExitAtStart)
        .restart_policy(policy)
        .start()
        .await
        .expect("start");
    let events = primary.events();
    primary.fork(1).await.expect("fork");
    (primary, events)
}

/// The exit events, for [`wait_for`].
pub fn exit_of(event: PrimaryEvent) -> Option<WorkerExit> {
    match event {
        PrimaryEvent::WorkerExit(exit) => Some(exit),
        _ => None,
    }
}

/// The messages from workers as JSON values, with the sender, for [`wait_for`].
pub fn message_of(event: PrimaryEvent) -> Option<(WorkerId, serde_json::Value)> {
    match event {
        PrimaryEvent::WorkerMessage(m) => Some((m.worker.id(), m.message.decode().ok()?)),
        _ => None,
    }
}

/// Shuts the primary down, with the deadline.
///
/// # Panics
///
/// When it does not complete in time, or fails.
pub async fn shut_down(primary: &ClusterPrimary) {
    tokio::time::timeout(DEADLINE, primary.shut_down())
        .await
        .expect("shutdown timed out")
        .expect("shutdown failed");
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The host type of primary events, for generic helpers.
pub type Primary = PrimaryContext;

/// Watches a process (not necessarily our child) through a pidfd, opened now.
#[derive(Debug)]
pub struct ExitWatch(Option<std::os::fd::OwnedFd>);

impl ExitWatch {
    /// Starts watching `pid`; a process that is already gone counts as exited.
    pub fn new(pid: u32) -> Self {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Self(Some(fd)),
            Err(rustix::io::Errno::SRCH) => Self(None),
            Err(error) => panic!("pidfd_open: {error}"),
        }
    }

    /// Waits until the process has exited.
    ///
    /// # Panics
    ///
    /// After [`DEADLINE`].
    pub async fn exited(mut self) {
        let Some(fd) = self.0.take() else { return };
        let exited = tokio::task::spawn_blocking(move || {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let deadline = rustix::event::Timespec {
                tv_sec: DEADLINE.as_secs() as i64,
                tv_nsec: 0,
            };
            let exited = rustix::event::poll(&mut fds, Some(&deadline)).expect("poll") == 1;
            if !exited {
                // Leave nothing behind: the pidfd names this very process.
                let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
            }
            exited
        });
        assert!(
            exited.await.expect("join"),
            "the process did not exit in time"
        );
    }
}

/// SIGKILLs `primary` (our child), reaps it, then waits until every one of
/// `watches` has exited; returns the time since the kill.
pub async fn kill_and_await(
    primary: &mut std::process::Child,
    watches: Vec<ExitWatch>,
) -> std::time::Duration {
    let killed = std::time::Instant::now();
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    for watch in watches {
        watch.exited().await;
    }
    killed.elapsed()
}

impl Drop for ExitWatch {
    /// Kills the process if it is still running (a test that failed half-way).
    fn drop(&mut self) {
        if let Some(fd) = &self.0 {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

/// A child process that is killed and reaped however the test ends (a test
/// that fails half-way must not leave it running).
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// This process's resident memory, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A turn to measure this whole process (its CPU time, RSS, fds, zombies)
/// or to make it grow: plain `cargo test` runs a binary's tests on parallel
/// threads of one process, so such tests of one binary take turns (nextest
/// runs each test in a process of its own).
pub async fn measuring_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
