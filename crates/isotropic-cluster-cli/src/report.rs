//! The lifecycle lines the CLI prints (see `render.rs` for their formats,
//! `output.rs` for where they go).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use isotropic_cluster::primary::{
    Expiry, OnIntensity, PrimaryEvent, WorkerError, WorkerExit, WorkerHandle,
};
use isotropic_cluster::{ProtocolError, Signal};
use serde_json::Value;

use crate::output::Output;
use crate::render::{Entry, Level, worker_fields};

/// Prints lifecycle events (its clones print to the same output and share
/// what they know).
#[derive(Debug, Clone)]
pub(crate) struct Report {
    output: Output,
    /// The signals the primary sent to each live worker: a worker that dies
    /// of one of them was stopped, not killed by someone else.
    sent: Arc<Mutex<BTreeMap<u64, Vec<Signal>>>>,
}

impl Report {
    pub(crate) fn new(output: Output) -> Self {
        Self {
            output,
            sent: Arc::default(),
        }
    }

    /// Prints `event` (or nothing, for the events the CLI does not show).
    pub(crate) fn event(&self, event: PrimaryEvent) {
        let entry = match event {
            PrimaryEvent::WorkerFork(e) => about(
                "workerFork",
                &e.worker,
                format!(
                    "started in slot {}, generation {} (pid {})",
                    e.worker.slot(),
                    e.worker.generation(),
                    e.worker.pid()
                ),
            ),
            PrimaryEvent::WorkerReady(e) => about("workerReady", &e.worker, "ready"),
            PrimaryEvent::RemoveWorker(e) => about("removeWorker", &e.worker, "left the pool"),
            PrimaryEvent::WorkerExit(e) => self.exit(&e),
            PrimaryEvent::RestartScheduled(e) => Entry::info(
                "restartScheduled",
                format!(
                    "workers keep exiting early or cannot start ({} in a row): next start in {:?}",
                    e.failures, e.delay
                ),
            )
            .at(Level::Warn)
            .with([
                ("failures", e.failures.into()),
                ("delayMs", millis(e.delay)),
            ]),
            PrimaryEvent::RestartIntensityExceeded(e) => {
                let (level, then) = if e.then == OnIntensity::ShutDown {
                    (Level::Error, "giving up")
                } else {
                    (Level::Warn, "slowing down")
                };
                let text = format!("{} restarts within {:?}: {then}", e.restarts, e.period);
                Entry::info("restartIntensityExceeded", text)
                    .at(level)
                    .with([("restarts", e.restarts.into())])
            }
            PrimaryEvent::ForkError(e) => {
                Entry::info("forkError", source_chain(&e.error)).at(Level::Error)
            }
            PrimaryEvent::WorkerSignal(e) => {
                if let Ok(mut sent) = self.sent.lock() {
                    sent.entry(e.worker.id().get()).or_default().push(e.signal);
                }
                let text = format!(
                    "sent {} to worker {} (pid {})",
                    e.signal,
                    e.worker.id(),
                    e.worker.pid()
                );
                Entry::info("workerSignal", text)
                    .with(worker_fields(&e.worker))
                    .with([("signal", e.signal.to_string().into())])
            }
            PrimaryEvent::WorkerError(WorkerError {
                worker,
                error: ProtocolError::ReadyTimeout(after),
                ..
            }) => about(
                "workerError",
                &worker,
                format!("not ready within {after:?}: stopping it"),
            )
            .at(Level::Warn),
            PrimaryEvent::WorkerStatus(e) => {
                about("workerStatus", &e.worker, format!("status: {}", e.status))
                    .with([("status", e.status.as_str().into())])
            }
            PrimaryEvent::WorkerStopping(e) => {
                about("workerStopping", &e.worker, "is stopping (STOPPING=1)")
            }
            PrimaryEvent::WorkerUnresponsive(e) => about(
                "workerUnresponsive",
                &e.worker,
                format!(
                    "unresponsive (silent for {} ms): stopping it",
                    e.silent_for.as_millis()
                ),
            )
            .at(Level::Warn),
            PrimaryEvent::WorkerError(e) => {
                about("workerError", &e.worker, e.error.to_string()).at(Level::Warn)
            }
            PrimaryEvent::HandlerPanicked(e) => Entry::info(
                "handlerPanicked",
                format!(
                    "a {} handler panicked (supervision goes on): {}",
                    e.event, e.message
                ),
            )
            .at(Level::Error),
            PrimaryEvent::WorkerExpired(e) => {
                let why = match e.reason {
                    Expiry::Requests { served, .. } => format!("served {served} requests"),
                    Expiry::Age { limit } => format!("is older than {limit:?}"),
                    _ => "expired".to_owned(),
                };
                let text = format!("{why}: recycling it (its replacement first)");
                about("workerExpired", &e.worker, text)
            }
            PrimaryEvent::WorkerOverMemory(e) => about(
                "workerOverMemory",
                &e.worker,
                format!(
                    "uses {} of memory, over the limit of {}: recycling it",
                    mib(e.memory),
                    mib(e.limit)
                ),
            )
            .at(Level::Warn)
            .with([("memory", e.memory.into()), ("limit", e.limit.into())]),
            PrimaryEvent::RolloutStarted(e) => Entry::info(
                "rolloutStarted",
                format!(
                    "rolling out generation {} (from {}): each new worker proven before an old one leaves",
                    e.generation, e.from
                ),
            )
            .with([("generation", e.generation.into()), ("from", e.from.into())]),
            PrimaryEvent::RolloutFailed(e) => Entry::info(
                "rolloutFailed",
                format!(
                    "generation {} failed ({}): rolling back to generation {}",
                    e.generation, e.reason, e.to
                ),
            )
            .at(Level::Warn)
            .with([("generation", e.generation.into()), ("to", e.to.into())]),
            PrimaryEvent::RolledBack(e) => Entry::info(
                "rolledBack",
                format!(
                    "rolled back: generation {} serves again, {} is gone",
                    e.generation, e.failed
                ),
            )
            .with([
                ("generation", e.generation.into()),
                ("failed", e.failed.into()),
            ]),
            PrimaryEvent::Skipped(e) => Entry::info(
                "skipped",
                format!("{} events not shown: this report fell behind", e.events),
            )
            .at(Level::Warn),
            _ => return,
        };
        self.output.line(&entry);
    }

    /// A worker's exit: its code, or the signal that ended it and whether
    /// the primary sent it.
    fn exit(&self, e: &WorkerExit) -> Entry {
        let id = e.worker.id().get();
        let sent = self
            .sent
            .lock()
            .ok()
            .and_then(|mut sent| sent.remove(&id))
            .unwrap_or_default();
        let who = format!("worker {id} (pid {})", e.worker.pid());
        let mut entry = match (e.code(), e.signal()) {
            (Some(code), _) => about("workerExit", &e.worker, format!("exited with code {code}"))
                .at(if code == 0 { Level::Info } else { Level::Warn })
                .with([("code", code.into())]),
            (None, Some(signal)) if sent.contains(&signal) => {
                let text = format!("{who} ended on the {signal} the primary sent");
                Entry::info("workerExit", text)
                    .with(worker_fields(&e.worker))
                    .with([("signal", signal.to_string().into()), ("sent", true.into())])
            }
            (None, Some(signal)) => {
                let text = format!("{who} was killed by {signal}");
                Entry::info("workerExit", text)
                    .at(Level::Warn)
                    .with(worker_fields(&e.worker))
                    .with([
                        ("signal", signal.to_string().into()),
                        ("sent", false.into()),
                    ])
            }
            _ => about("workerExit", &e.worker, "exited"),
        };
        if e.failed {
            entry.level = Level::Warn;
        }
        entry
    }

    /// The first workers cannot start.
    pub(crate) fn cannot_start(&self, program: &str, error: &dyn std::error::Error) {
        let text = cannot_start(program, source_chain(error));
        self.output
            .line(&Entry::info("forkError", text).at(Level::Error));
    }

    /// The first SIGINT or SIGTERM.
    pub(crate) fn shutting_down(&self) {
        self.line("shutDown", "shutting down (Ctrl-C again kills the workers)");
    }

    /// A SIGTERM during the shutdown.
    pub(crate) fn already_shutting_down(&self) {
        self.line("shutDown", "already shutting down");
    }

    /// A SIGINT during the shutdown.
    pub(crate) fn killing(&self) {
        self.warn("kill", "killing the workers");
    }

    /// A Node worker disconnected during the shutdown: what it waits for.
    pub(crate) fn node_disconnected(&self, worker: &WorkerHandle, wait: std::time::Duration) {
        let text = format!("disconnected: waiting up to {wait:?} for it to exit, then SIGTERM");
        self.output
            .line(&about("workerDisconnect", worker, text).with([("waitMs", millis(wait))]));
    }

    /// A SIGHUP.
    pub(crate) fn reloading(&self) {
        self.line(
            "reload",
            "reloading: a rollout of the program as it is on disk now",
        );
    }

    /// The end of a SIGHUP's rolling restart.
    pub(crate) fn reloaded(&self, restarted: usize) {
        let text = format!("{restarted} workers restarted");
        let entry = Entry::info("reloadComplete", text).with([("restarted", restarted.into())]);
        self.output.line(&entry);
    }

    /// The last line.
    pub(crate) fn shut_down(&self, forced: bool) {
        let text = if forced {
            "workers were killed"
        } else {
            "all workers exited"
        };
        self.line("shutDownComplete", text);
    }

    /// A line about the primary.
    pub(crate) fn line(&self, event: &'static str, text: &str) {
        self.output.line(&Entry::info(event, text));
    }

    /// A line about the primary, of something that went wrong.
    pub(crate) fn warn(&self, event: &'static str, text: &str) {
        self.output.line(&Entry::info(event, text).at(Level::Warn));
    }

    /// A line about the primary with fields.
    pub(crate) fn entry(&self, entry: &Entry) {
        self.output.line(entry);
    }
}

/// `cannot start WHAT: WHY`, the one wording of every such line (`why`
/// itself, when it says so already).
pub(crate) fn cannot_start(what: &str, why: String) -> String {
    if why.starts_with("cannot start ") {
        why
    } else {
        format!("cannot start {what}: {why}")
    }
}

/// A line about `worker`: `worker 2 {text}`, with its fields.
fn about(event: &'static str, worker: &WorkerHandle, text: impl std::fmt::Display) -> Entry {
    Entry::info(event, format!("worker {} {text}", worker.id())).with(worker_fields(worker))
}

/// A duration in whole milliseconds, as JSON.
fn millis(duration: std::time::Duration) -> Value {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .into()
}

/// Bytes in MiB, to one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `error: its source: its source's source…`
pub(crate) fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_shown_in_mib() {
        assert_eq!(mib(200 << 20), "200.0 MiB");
        assert_eq!(mib(3 << 19), "1.5 MiB");
    }

    #[test]
    fn an_error_comes_with_its_sources() {
        let error = WithSource(std::io::Error::other("no such file"));
        assert_eq!(source_chain(&error), "spawn failed: no such file");
    }

    /// An error whose source is `.0`.
    #[derive(Debug)]
    struct WithSource(std::io::Error);

    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("spawn failed")
        }
    }

    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
