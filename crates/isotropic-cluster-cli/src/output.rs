//! Everything the CLI prints goes through two writer threads, one per
//! stream, so that supervision (signals, exits, replacements) never waits on
//! our own stdout or stderr. As text, lifecycle lines go to stderr and each
//! worker line to the stream it was written to; with `--json`, everything
//! goes to stdout, one JSON object a line (see `render.rs`).
//!
//! Worker lines lose nothing: they wait for the writer, and behind them the
//! workers' pipes (see `output_channel`): a blocked stdout blocks the
//! workers that write, as a terminal would. Lifecycle lines never wait: when
//! their stream is blocked they are dropped, and their count is printed once
//! it moves again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isotropic_cluster::primary::{OutputLines, OutputStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::LogTap;
use crate::render::{self, Entry, Format, Level};

/// Batches waiting for a writer thread, per stream.
const QUEUE: usize = 64;
/// A batch of worker lines is handed over once it holds this many bytes.
const BATCH: usize = 64 * 1024;

/// The two writers, shared by the reports, the logs and the forwarding of
/// worker lines.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    format: Format,
    stdout: Writer,
    stderr: Writer,
    /// Lifecycle lines dropped since their stream last took one.
    dropped: Arc<AtomicU64>,
    /// Where every line printed is also kept, for the control socket's
    /// `logs`.
    tap: Option<LogTap>,
}

/// What a writer thread is given.
#[derive(Debug)]
enum Item {
    Text(Vec<u8>),
    /// Answered once everything before it is written.
    Flush(oneshot::Sender<()>),
}

/// One writer thread's queue.
#[derive(Debug, Clone)]
struct Writer {
    queue: mpsc::Sender<Item>,
}

impl Writer {
    fn start(name: &str, mut sink: impl std::io::Write + Send + 'static) -> Self {
        let (queue, mut items) = mpsc::channel::<Item>(QUEUE);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(item) = items.blocking_recv() {
                    match item {
                        // A reader that went away (EPIPE) gets nothing more; the
                        // queue is still emptied, so nothing upstream waits.
                        Item::Text(text) => drop(sink.write_all(&text)),
                        Item::Flush(done) => {
                            let _ = sink.flush();
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(error) = thread {
            eprintln!("isotropic-cluster: cannot start the {name} thread: {error}");
        }
        Self { queue }
    }

    /// Whether everything given so far is written by `deadline`.
    async fn flushed(&self, deadline: tokio::time::Instant) -> bool {
        let (done, written) = oneshot::channel();
        let flush =
            async { self.queue.send(Item::Flush(done)).await.is_ok() && written.await.is_ok() };
        tokio::time::timeout_at(deadline, flush)
            .await
            .unwrap_or(false)
    }
}

impl Output {
    /// The writers, printing in `format`; every line also recorded in
    /// `tap`, if given.
    pub(crate) fn start(format: Format, tap: Option<LogTap>) -> Self {
        Self {
            format,
            stdout: Writer::start("stdout", std::io::stdout()),
            stderr: Writer::start("stderr", std::io::stderr()),
            dropped: Arc::new(AtomicU64::new(0)),
            tap,
        }
    }

    /// The stream of lifecycle lines.
    fn lifecycle(&self) -> (&Writer, &'static str) {
        match self.format {
            Format::Json => (&self.stdout, "stdout"),
            Format::Text | Format::Timestamped => (&self.stderr, "stderr"),
        }
    }

    /// A lifecycle line, unless its stream is blocked (then counted).
    pub(crate) fn line(&self, entry: &Entry) {
        let (writer, stream) = self.lifecycle();
        let line = entry.render(self.format);
        if let Some(tap) = &self.tap {
            tap.record([Arc::from(line.as_str())]);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut text = String::new();
        if dropped > 0 {
            let note = format!("{dropped} lines not shown: {stream} was blocked");
            text = Entry::info("linesDropped", note)
                .at(Level::Warn)
                .render(self.format);
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        if writer
            .queue
            .try_send(Item::Text(text.into_bytes()))
            .is_err()
        {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
        }
    }

    /// Prints the workers' lines, until they end: as text, each prefixed
    /// with its worker's slot (short and the same across replacements), on
    /// the stream it was written to.
    pub(crate) async fn forward(self, mut lines: OutputLines) {
        while let Some(first) = lines.next().await {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut tapped = Vec::new();
            let mut next = Some(first);
            while let Some(line) = next {
                let batch = match (self.format, line.stream) {
                    (Format::Text | Format::Timestamped, OutputStream::Stderr) => &mut err,
                    _ => &mut out,
                };
                let start = batch.len();
                render::output(self.format, &line, batch);
                if self.tap.is_some() {
                    let text = String::from_utf8_lossy(&batch[start..batch.len() - 1]);
                    tapped.push(Arc::<str>::from(text));
                }
                if out.len() + err.len() >= BATCH {
                    break;
                }
                next = lines.try_next();
            }
            if let Some(tap) = &self.tap {
                tap.record(tapped);
            }
            for (writer, batch) in [(&self.stdout, out), (&self.stderr, err)] {
                if !batch.is_empty() {
                    let _ = writer.queue.send(Item::Text(batch)).await;
                }
            }
        }
    }

    /// Waits up to `within` for everything given so far to be written
    /// (stdout first; a note on stderr if it could not be); whether it was.
    pub(crate) async fn finish(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let written = self.stdout.flushed(deadline).await;
        if !written {
            let note = Entry::info(
                "notWritten",
                "some output was not written: stdout is blocked",
            );
            let mut text = note.at(Level::Warn).render(self.format);
            text.push('\n');
            let _ = self.stderr.queue.try_send(Item::Text(text.into_bytes()));
        }
        let last = deadline.max(tokio::time::Instant::now() + Duration::from_millis(100));
        written && self.stderr.flushed(last).await
    }
}

/// Log events (`tracing`, warnings and errors by default, `RUST_LOG` to
/// choose) as lifecycle lines: they never wait for stderr either.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Output {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            output: self.clone(),
            text: Vec::new(),
        }
    }
}

/// One log event, printed when dropped.
pub(crate) struct LogLine {
    output: Output,
    text: Vec<u8>,
}

impl std::io::Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let (level, message) = text
            .split_once(' ')
            .and_then(|(word, rest)| Some((Level::of_log(word)?, rest.trim_start())))
            .unwrap_or((Level::Info, text));
        // (`WARN message`: as text the whole of it, as JSON its level apart.)
        let message = if self.output.format == Format::Json {
            message
        } else {
            text
        };
        self.output.line(&Entry::info("log", message).at(level));
    }
}
