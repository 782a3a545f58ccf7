//! The pool as the CLI's `--json` lines tell it (one JSON object a line on
//! stdout, `{"ts": …, "level": …, "event": …, "worker": id, …, "message": …}`,
//! or `"line"` for a worker's output: see `src/render.rs`), read by the test as it waits for a line or a state:
//! the ready workers (in on `workerReady`, out on `removeWorker` or
//! `workerExit`), the live ones (in on `workerFork`, out on `workerExit`),
//! the staying ones (live and not asked to leave: out on `removeWorker` or
//! `workerSignal` too), the fewest ready and the most live and staying since
//! [`Pool::track_from_now`], and every line read.

use std::collections::BTreeSet;

use tokio::io::{AsyncBufRead, Lines};

use super::DEADLINE;

/// One line of the CLI's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// `workerReady`, `reloadComplete`, `output`…; empty for a line that is
    /// not JSON (none should be).
    pub(crate) event: String,
    pub(crate) worker: Option<u64>,
    /// The message (a worker's line, for `output`); the whole line for a
    /// line that is not JSON.
    pub(crate) message: String,
}

impl Line {
    fn parse(text: &str) -> Self {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(text) else {
            return Self {
                event: String::new(),
                worker: None,
                message: text.to_owned(),
            };
        };
        let text_of = |key: &str| fields.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            event: text_of("event").expect("an event in a JSON line"),
            worker: fields.get("worker").and_then(serde_json::Value::as_u64),
            message: text_of("message")
                .or_else(|| text_of("line"))
                .expect("a message or a line in a JSON line"),
        }
    }

    /// Whether this is `event` about `worker`.
    pub(crate) fn is(&self, event: &str, worker: u64) -> bool {
        self.event == event && self.worker == Some(worker)
    }
}

impl std::fmt::Display for Line {
    /// `event worker message`, or the line that is not JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.event.as_str(), self.worker) {
            ("", _) => f.write_str(&self.message),
            (event, Some(id)) => write!(f, "{event} {id}: {}", self.message),
            (event, None) => write!(f, "{event}: {}", self.message),
        }
    }
}

/// The pool as the lines read so far tell it.
#[derive(Debug)]
pub(crate) struct Pool<R> {
    stdout: Lines<R>,
    lines: Vec<Line>,
    ready: BTreeSet<u64>,
    live: BTreeSet<u64>,
    staying: BTreeSet<u64>,
    fewest_ready: usize,
    most_live: usize,
    most_staying: usize,
}

impl<R: AsyncBufRead + Unpin> Pool<R> {
    /// The pool of the CLI run with `--json` whose stdout is `stdout`,
    /// none of it read yet.
    pub(crate) fn new(stdout: Lines<R>) -> Self {
        Self {
            stdout,
            lines: Vec::new(),
            ready: BTreeSet::new(),
            live: BTreeSet::new(),
            staying: BTreeSet::new(),
            fewest_ready: 0,
            most_live: 0,
            most_staying: 0,
        }
    }

    /// Reads lines until one that `matches` (about to be read: the lines
    /// read before do not count); returns it. Panics at the deadline or
    /// at the end of stdout, with `what` and every line read.
    pub(crate) async fn line(&mut self, what: &str, matches: impl Fn(&Line) -> bool) -> Line {
        self.within(what, async |pool| {
            loop {
                let line = pool.read().await;
                if matches(&line) {
                    return line;
                }
            }
        })
        .await
    }

    /// Reads lines until the next `event` line; returns it.
    pub(crate) async fn event(&mut self, event: &str) -> Line {
        self.line(event, |line| line.event == event).await
    }

    /// Reads lines until `holds` holds of the pool (at once if it holds
    /// already). Panics as [`Pool::line`].
    pub(crate) async fn until(&mut self, what: &str, holds: impl Fn(&Self) -> bool) {
        self.within(what, async |pool| {
            while !holds(pool) {
                pool.read().await;
            }
        })
        .await;
    }

    /// From now on (the lines read so far excluded), the fewest ready and
    /// the most live start from the pool as it is.
    pub(crate) fn track_from_now(&mut self) {
        self.fewest_ready = self.ready.len();
        self.most_live = self.live.len();
        self.most_staying = self.staying.len();
    }

    /// The fewest workers ready at once since [`Pool::track_from_now`]
    /// (0 before: the pool starts empty).
    pub(crate) fn fewest_ready(&self) -> usize {
        self.fewest_ready
    }

    /// The most workers live at once since [`Pool::track_from_now`] (or
    /// the start).
    pub(crate) fn most_live(&self) -> usize {
        self.most_live
    }

    /// The most workers staying at once (live, not asked to leave: a
    /// surge's bound) since [`Pool::track_from_now`] (or the start).
    pub(crate) fn most_staying(&self) -> usize {
        self.most_staying
    }

    /// The workers in the pool now (ready, not removed, not exited).
    pub(crate) fn ready(&self) -> &BTreeSet<u64> {
        &self.ready
    }

    /// The workers started and not exited.
    pub(crate) fn live(&self) -> &BTreeSet<u64> {
        &self.live
    }

    /// Every line read, in order.
    pub(crate) fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Every line read, one a line (for assertion messages).
    pub(crate) fn transcript(&self) -> String {
        let lines = self.lines.iter().map(Line::to_string);
        lines.collect::<Vec<_>>().join("\n")
    }

    /// The stdout itself, for helpers that read it (`stop_cleanly`): the
    /// lines read through it are not tracked.
    pub(crate) fn stdout(&mut self) -> &mut Lines<R> {
        &mut self.stdout
    }

    /// Runs `wait` within the deadline; panics with `what` and the lines
    /// read if it does not end in time.
    async fn within<T>(&mut self, what: &str, wait: impl AsyncFnOnce(&mut Self) -> T) -> T {
        let done = tokio::time::timeout(DEADLINE, wait(self)).await;
        done.unwrap_or_else(|_| panic!("no {what} in time; the lines:\n{}", self.transcript()))
    }

    /// Reads the next line and tracks what it says.
    async fn read(&mut self) -> Line {
        let text = self.stdout.next_line().await.expect("read stdout");
        let text =
            text.unwrap_or_else(|| panic!("the CLI ended; the lines:\n{}", self.transcript()));
        assert!(
            !text.contains("lines not shown"),
            "the CLI dropped lines: the pool cannot be tracked: {text}"
        );
        let line = Line::parse(&text);
        if let Some(id) = line.worker {
            match line.event.as_str() {
                "workerFork" => {
                    self.live.insert(id);
                    self.staying.insert(id);
                }
                "workerReady" => {
                    self.ready.insert(id);
                }
                "removeWorker" => {
                    self.ready.remove(&id);
                    self.staying.remove(&id);
                }
                "workerSignal" => {
                    self.staying.remove(&id);
                }
                "workerExit" => {
                    self.ready.remove(&id);
                    self.live.remove(&id);
                    self.staying.remove(&id);
                }
                _ => {}
            }
        }
        self.fewest_ready = self.fewest_ready.min(self.ready.len());
        self.most_live = self.most_live.max(self.live.len());
        self.most_staying = self.most_staying.max(self.staying.len());
        self.lines.push(line.clone());
        line
    }
}
