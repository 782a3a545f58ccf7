//! The lifecycle lines the CLI prints on stderr, as text (`[primary] …`)
//! or, with `--json`, as JSON lines (worker output: see `output.rs`). With
//! several pools, a pool's lines name it (`[primary] web worker 2 ready`,
//! `"pool": "web"`).

use std::sync::Arc;

use isotropic_cluster::ProtocolError;
use isotropic_cluster::primary::{Expiry, OnIntensity, PrimaryEvent, WorkerError};
use serde_json::json;

use crate::output::Output;

/// Prints lifecycle events as text or JSON.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    json: bool,
    output: Output,
    /// The pool the lines are about, when there are several.
    pool: Option<Arc<str>>,
}

impl Report {
    /// The primary's report: its lines name no pool.
    pub(crate) fn new(json: bool, output: Output) -> Self {
        Self {
            json,
            output,
            pool: None,
        }
    }

    /// The report of the pool `name`: its lines name it.
    pub(crate) fn for_pool(&self, name: Option<&str>) -> Self {
        Self {
            pool: name.map(Arc::from),
            ..self.clone()
        }
    }

    /// Where the lines go.
    pub(crate) fn output(&self) -> Output {
        self.output.clone()
    }

    /// The pool this report names, if any.
    pub(crate) fn pool(&self) -> Option<&Arc<str>> {
        self.pool.as_ref()
    }

    /// Prints `event` (or nothing, for the events the CLI does not show).
    pub(crate) fn event(&self, event: PrimaryEvent) {
        match event {
            PrimaryEvent::WorkerFork(e) => {
                self.line(
                    "workerFork",
                    Some(e.worker.id().get()),
                    &format!(
                        "started in slot {}, generation {} (pid {})",
                        e.worker.slot(),
                        e.worker.generation(),
                        e.worker.pid()
                    ),
                );
            }
            PrimaryEvent::WorkerReady(e) => {
                self.line("workerReady", Some(e.worker.id().get()), "ready")
            }
            PrimaryEvent::RemoveWorker(e) => {
                self.line("removeWorker", Some(e.worker.id().get()), "left the pool")
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
                    "workers keep exiting early or failing to start ({} in a row): next start in {:?}",
                    e.failures, e.delay
                ),
            ),
            PrimaryEvent::RestartIntensityExceeded(e) => self.line(
                "restartIntensityExceeded",
                None,
                &format!(
                    "{} restarts within {:?}: {}",
                    e.restarts,
                    e.period,
                    if e.then == OnIntensity::ShutDown {
                        "giving up"
                    } else {
                        "slowing down"
                    }
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
            PrimaryEvent::WorkerError(WorkerError {
                worker,
                error: ProtocolError::ReadyTimeout(after),
                ..
            }) => {
                let text = format!("not ready within {after:?}: stopping it");
                self.line("workerError", Some(worker.id().get()), &text);
            }
            PrimaryEvent::WorkerStatus(e) => {
                let text = format!("status: {}", e.status);
                self.line("workerStatus", Some(e.worker.id().get()), &text);
            }
            PrimaryEvent::WorkerStopping(e) => {
                let text = "is stopping (STOPPING=1)";
                self.line("workerStopping", Some(e.worker.id().get()), text);
            }
            PrimaryEvent::WorkerUnresponsive(e) => self.line(
                "workerUnresponsive",
                Some(e.worker.id().get()),
                &format!(
                    "unresponsive (silent for {} ms): stopping it",
                    e.silent_for.as_millis()
                ),
            ),
            PrimaryEvent::WorkerError(e) => self.line(
                "workerError",
                Some(e.worker.id().get()),
                &e.error.to_string(),
            ),
            PrimaryEvent::HandlerPanicked(e) => self.line(
                "handlerPanicked",
                None,
                &format!(
                    "a {} handler panicked (supervision goes on): {}",
                    e.event, e.message
                ),
            ),
            PrimaryEvent::WorkerExpired(e) => {
                let why = match e.reason {
                    Expiry::Requests { served, .. } => format!("served {served} requests"),
                    Expiry::Age { limit } => format!("is older than {limit:?}"),
                    _ => "expired".to_owned(),
                };
                let text = format!("{why}: recycling it (its replacement first)");
                self.line("workerExpired", Some(e.worker.id().get()), &text);
            }
            PrimaryEvent::WorkerOverMemory(e) => self.line(
                "workerOverMemory",
                Some(e.worker.id().get()),
                &format!(
                    "uses {} of memory, over the limit of {}: recycling it",
                    mib(e.memory),
                    mib(e.limit)
                ),
            ),
            PrimaryEvent::RolloutStarted(e) => self.line(
                "rolloutStarted",
                None,
                &format!(
                    "rolling out generation {} (from {}): each new worker proven before an old one leaves",
                    e.generation, e.from
                ),
            ),
            PrimaryEvent::RolloutFailed(e) => self.line(
                "rolloutFailed",
                None,
                &format!(
                    "generation {} failed ({}): rolling back to generation {}",
                    e.generation, e.reason, e.to
                ),
            ),
            PrimaryEvent::RolledBack(e) => self.line(
                "rolledBack",
                None,
                &format!(
                    "rolled back: generation {} serves again, {} is gone",
                    e.generation, e.failed
                ),
            ),
            PrimaryEvent::Skipped(e) => self.line(
                "skipped",
                None,
                &format!("{} events not shown: this report fell behind", e.events),
            ),
            _ => {}
        }
    }

    /// The first workers cannot start.
    pub(crate) fn cannot_start(&self, program: &str, error: &dyn std::error::Error) {
        let text = format!("cannot start {program}: {}", source_chain(error));
        self.line("forkError", None, &text);
    }

    /// The first SIGINT or SIGTERM.
    pub(crate) fn shutting_down(&self) {
        let text = "shutting down (Ctrl-C again kills the workers)";
        self.line("shutDown", None, text);
    }

    /// A SIGTERM during the shutdown.
    pub(crate) fn already_shutting_down(&self) {
        self.line("shutDown", None, "already shutting down");
    }

    /// A SIGINT during the shutdown.
    pub(crate) fn killing(&self) {
        self.line("kill", None, "killing the workers");
    }

    /// A Node worker disconnected during the shutdown: what it waits for.
    pub(crate) fn node_disconnected(&self, worker: u64, wait: std::time::Duration) {
        let text = format!("disconnected: waiting up to {wait:?} for it to exit, then SIGTERM");
        self.line("workerDisconnect", Some(worker), &text);
    }

    /// A SIGHUP.
    pub(crate) fn reloading(&self) {
        self.line(
            "reload",
            None,
            "reloading: a rollout of the program as it is on disk now",
        );
    }

    /// The end of a SIGHUP's rolling restart.
    pub(crate) fn reloaded(&self, restarted: usize) {
        let text = format!("{restarted} workers restarted");
        self.line("reloadComplete", None, &text);
    }

    /// The last line.
    pub(crate) fn shut_down(&self, forced: bool) {
        let text = if forced {
            "workers were killed"
        } else {
            "all workers exited"
        };
        self.line("shutDownComplete", None, text);
    }

    /// One lifecycle line, about `worker` or the primary.
    pub(crate) fn line(&self, event: &str, worker: Option<u64>, text: &str) {
        let pool = self.pool.as_deref();
        self.output
            .line(&render(self.json, pool, event, worker, text));
    }
}

/// A lifecycle line as text or JSON, about `pool` if named.
fn render(json: bool, pool: Option<&str>, event: &str, worker: Option<u64>, text: &str) -> String {
    match (json, pool, worker) {
        (true, None, _) => json!({"event": event, "worker": worker, "message": text}).to_string(),
        (true, Some(pool), _) => {
            json!({"event": event, "pool": pool, "worker": worker, "message": text}).to_string()
        }
        (false, None, Some(id)) => format!("[primary] worker {id} {text}"),
        (false, None, None) => format!("[primary] {text}"),
        (false, Some(pool), Some(id)) => format!("[primary] {pool} worker {id} {text}"),
        (false, Some(pool), None) => format!("[primary] {pool}: {text}"),
    }
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
    fn text_lines_name_the_primary_and_the_worker() {
        assert_eq!(
            render(false, None, "workerReady", Some(2), "ready"),
            "[primary] worker 2 ready"
        );
        assert_eq!(
            render(false, None, "shutDown", None, "already shutting down"),
            "[primary] already shutting down"
        );
    }

    #[test]
    fn a_pools_lines_name_it() {
        assert_eq!(
            render(false, Some("web"), "workerReady", Some(2), "ready"),
            "[primary] web worker 2 ready"
        );
        assert_eq!(
            render(false, Some("web"), "reload", None, "reloading"),
            "[primary] web: reloading"
        );
        let line = render(
            true,
            Some("web"),
            "workerExit",
            Some(3),
            "exited with code 0",
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).expect("one JSON value"),
            json!({"event": "workerExit", "pool": "web", "worker": 3, "message": "exited with code 0"})
        );
    }

    #[test]
    fn json_lines_carry_the_event_the_worker_and_the_message() {
        let line = |worker| {
            let line = render(true, None, "workerExit", worker, "exited with code 0");
            serde_json::from_str::<serde_json::Value>(&line).expect("one JSON value")
        };
        assert_eq!(
            line(Some(3)),
            json!({"event": "workerExit", "worker": 3, "message": "exited with code 0"})
        );
        assert_eq!(line(None)["worker"], serde_json::Value::Null);
    }

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
