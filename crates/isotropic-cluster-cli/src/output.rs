//! Everything the CLI prints goes through two writer threads, one per
//! stream, so that supervision (signals, exits, replacements) never waits on
//! our own stdout or stderr.
//!
//! Worker lines lose nothing: they wait for the writer, and behind them the
//! workers' pipes (see `output_channel`): a blocked stdout blocks the
//! workers that write, as a terminal would. Lifecycle lines never wait: when
//! stderr is blocked they are dropped, and their count is printed once it
//! moves again.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isotropic_cluster::primary::{OutputLines, OutputStream};
use tokio::sync::mpsc;

/// Batches waiting for a writer thread, per stream.
const QUEUE: usize = 64;
/// A batch of worker lines is handed over once it holds this many bytes.
const BATCH: usize = 64 * 1024;

/// The two writers, shared by the reports and the forwarding of worker lines.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    stdout: Writer,
    stderr: Writer,
    /// Lifecycle lines dropped since stderr last took one.
    dropped: Arc<AtomicU64>,
}

/// One writer thread's queue, and how to learn that it wrote everything.
#[derive(Debug, Clone)]
struct Writer {
    queue: mpsc::Sender<Vec<u8>>,
    done: Arc<std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl Writer {
    fn start(name: &str, mut sink: impl std::io::Write + Send + 'static) -> Self {
        let (queue, mut batches) = mpsc::channel::<Vec<u8>>(QUEUE);
        let (finished, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(batch) = batches.blocking_recv() {
                    // A reader that went away (EPIPE) gets nothing more; the
                    // queue is still emptied, so nothing upstream waits.
                    let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                }
                let _ = finished.send(());
            });
        if let Err(error) = thread {
            eprintln!("isotropic-cluster: cannot start the {name} thread: {error}");
        }
        Self {
            queue,
            done: Arc::new(std::sync::Mutex::new(Some(done))),
        }
    }
}

/// Waits until `deadline` for a writer thread to have written everything,
/// once every sender of its queue is gone; whether it did.
fn wait(
    done: &std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    deadline: std::time::Instant,
) -> bool {
    let done = done.lock().map(|mut done| done.take());
    let Ok(Some(done)) = done else { return true };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    done.recv_timeout(left).is_ok()
}

impl Output {
    pub(crate) fn start() -> Self {
        Self {
            stdout: Writer::start("stdout", std::io::stdout()),
            stderr: Writer::start("stderr", std::io::stderr()),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A lifecycle line on stderr, unless stderr is blocked (then counted).
    pub(crate) fn line(&self, line: &str) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut text = String::new();
        if dropped > 0 {
            text = format!("[primary] {dropped} lines not shown: stderr was blocked\n");
        }
        text.push_str(line);
        text.push('\n');
        if self.stderr.queue.try_send(text.into_bytes()).is_err() {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
        }
    }

    /// Prints the workers' lines, each prefixed with its worker's id, on the
    /// stream it was written to, until they end.
    pub(crate) async fn forward(self, mut lines: OutputLines) {
        while let Some(first) = lines.next().await {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            while let Some(line) = next {
                let batch = match line.stream {
                    OutputStream::Stderr => &mut err,
                    _ => &mut out,
                };
                let _ = writeln!(batch, "[{}] {}", line.worker, line.line);
                if out.len() + err.len() >= BATCH {
                    break;
                }
                next = lines.try_next();
            }
            for (writer, batch) in [(&self.stdout, out), (&self.stderr, err)] {
                if !batch.is_empty() {
                    let _ = writer.queue.send(batch).await;
                }
            }
        }
    }

    /// Waits up to `within` for everything queued to be written (stdout
    /// first; a note on stderr if it could not be); whether it was. Every
    /// other clone must be gone by then.
    pub(crate) fn finish(self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let Self { stdout, stderr, .. } = self;
        drop(stdout.queue);
        let written = wait(&stdout.done, deadline);
        if !written {
            let note = "[primary] some worker output was not written: stdout is blocked\n";
            let _ = stderr.queue.try_send(note.as_bytes().to_vec());
        }
        drop(stderr.queue);
        let flushed = wait(
            &stderr.done,
            deadline.max(std::time::Instant::now() + Duration::from_millis(100)),
        );
        written && flushed
    }
}
