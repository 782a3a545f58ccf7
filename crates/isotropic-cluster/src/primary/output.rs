//! Workers' piped output as a lossless, backpressured stream of lines, for
//! a primary that must keep every line (the CLI): see [`output_channel`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::events::OutputStream;
use crate::WorkerId;

/// What a line costs in the channel besides its bytes.
const LINE_OVERHEAD: usize = 64;

/// One line a worker wrote (see [`output_channel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputLine {
    /// The worker that wrote it.
    pub worker: WorkerId,
    /// That worker's slot ([`WorkerHandle::slot`](super::WorkerHandle::slot)):
    /// a short prefix that stays the same across replacements.
    pub slot: u32,
    /// That worker's process id.
    pub pid: u32,
    /// Which stream.
    pub stream: OutputStream,
    /// The line, without its newline (invalid UTF-8 replaced; lines over
    /// 64 KiB split).
    pub line: String,
}

/// A channel for the workers' piped output: give the sink to
/// [`PrimaryBuilder::output`](super::PrimaryBuilder::output), read the lines
/// from the receiver.
///
/// Unlike `workerOutput` events (which the primary then no longer
/// publishes), nothing is lost: each worker's lines come in order, and while
/// `max_bytes` of lines wait unread, the workers' pipes are not read, so a
/// worker that writes more blocks in its write, as on a terminal that stopped
/// scrolling. Supervision goes on meanwhile (messages, exits, replacements).
/// After a worker exits, what it wrote is still delivered. The receiver ends
/// once the primary is destroyed and every line is delivered.
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, WorkerStdio, output_channel};
///
/// # async fn run() -> Result<(), isotropic_cluster::Error> {
/// let (sink, mut lines) = output_channel(1 << 20);
/// let primary = ClusterPrimary::builder()
///     .stdio(WorkerStdio::Piped)
///     .output(sink)
///     .start()
///     .await?;
/// primary.fork(2).await?;
/// while let Some(line) = lines.next().await {
///     println!("[{}] {}", line.worker, line.line);
/// }
/// # Ok(()) }
/// ```
pub fn output_channel(max_bytes: usize) -> (OutputSink, OutputLines) {
    let max = max_bytes.clamp(LINE_OVERHEAD, u32::MAX as usize);
    let (sender, receiver) = mpsc::unbounded_channel();
    let sink = OutputSink {
        sender,
        room: Arc::new(Semaphore::new(max)),
        max,
    };
    (sink, OutputLines { receiver })
}

/// Where the workers' lines go (see [`output_channel`]).
#[derive(Clone)]
pub struct OutputSink {
    sender: mpsc::UnboundedSender<(OutputLine, OwnedSemaphorePermit)>,
    /// Bytes that may still wait unread.
    room: Arc<Semaphore>,
    max: usize,
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSink")
            .field("max_bytes", &self.max)
            .finish_non_exhaustive()
    }
}

/// A line that waits for room.
pub(super) type Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

impl OutputSink {
    /// Delivers `line` now if there is room; otherwise the delivery to
    /// await (no other line of that worker should be read meanwhile).
    pub(super) fn deliver(&self, line: OutputLine) -> Option<Delivery> {
        let cost =
            u32::try_from((line.line.len() + LINE_OVERHEAD).min(self.max)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.room.clone().try_acquire_many_owned(cost) {
            let _ = self.sender.send((line, permit));
            return None;
        }
        let (room, sender) = (self.room.clone(), self.sender.clone());
        Some(Box::pin(async move {
            if let Ok(permit) = room.acquire_many_owned(cost).await {
                let _ = sender.send((line, permit));
            }
        }))
    }
}

/// The workers' lines (see [`output_channel`]).
#[derive(Debug)]
pub struct OutputLines {
    receiver: mpsc::UnboundedReceiver<(OutputLine, OwnedSemaphorePermit)>,
}

impl OutputLines {
    /// The next line; `None` once the primary is destroyed and every line
    /// was delivered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call loses no line.
    pub async fn next(&mut self) -> Option<OutputLine> {
        self.receiver.recv().await.map(|(line, _room)| line)
    }

    /// The next line if one is waiting.
    pub fn try_next(&mut self) -> Option<OutputLine> {
        self.receiver.try_recv().ok().map(|(line, _room)| line)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    fn line(n: usize, size: usize) -> OutputLine {
        OutputLine {
            slot: 0,
            pid: 1,
            worker: WorkerId::new(1),
            stream: OutputStream::Stdout,
            line: format!("{n:0size$}"),
        }
    }

    #[tokio::test]
    async fn a_line_waits_for_room_and_lines_come_in_order() {
        let (sink, mut lines) = output_channel(1000);
        // Each line costs 100 + 64 bytes: 6 fit.
        let waiting: Vec<_> = (0..8).filter_map(|n| sink.deliver(line(n, 100))).collect();
        assert_eq!(waiting.len(), 2, "two wait for room");
        let mut waiting = waiting.into_iter();
        let mut seventh = waiting.next().expect("a delivery");
        assert!((&mut seventh).now_or_never().is_none(), "no room yet");
        assert_eq!(lines.next().await, Some(line(0, 100)));
        seventh.await;
        drop(waiting);
        for n in 1..7 {
            assert_eq!(lines.try_next(), Some(line(n, 100)));
        }
        assert_eq!(lines.try_next(), None);
        drop(sink);
        assert_eq!(lines.next().await, None, "ends with its sinks");
    }
}
