//! What `logs` reads: the last lines printed (workers' and the primary's),
//! kept in a ring bounded in lines and bytes, and the followers of `logs
//! -f`, each with a queue bounded in bytes. Recording never waits: a
//! follower whose queue is full misses lines, counted and told in its
//! stream, so a client that does not read slows neither the primary nor
//! the workers' output.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Lines the ring keeps…
const KEPT_LINES: usize = 1000;
/// …and bytes.
const KEPT_BYTES: usize = 1 << 20;
/// Bytes of lines that may wait for one follower.
const FOLLOWER_BYTES: usize = 1 << 20;

/// Shared by the output (which records) and the control socket (which
/// reads).
#[derive(Debug, Clone, Default)]
pub(crate) struct LogTap {
    inner: Arc<Mutex<Tap>>,
}

#[derive(Debug, Default)]
struct Tap {
    lines: VecDeque<Arc<str>>,
    bytes: usize,
    followers: Vec<Follower>,
}

/// One `logs -f` client, as the tap sees it.
#[derive(Debug)]
struct Follower {
    queue: mpsc::UnboundedSender<Followed>,
    /// Bytes of lines in `queue` (the reader takes them off).
    queued: Arc<AtomicUsize>,
    /// Lines missed since its queue was last taken from.
    skipped: u64,
}

/// What a follower is given, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Followed {
    Line(Arc<str>),
    /// This many lines were missed here.
    Skipped(u64),
}

/// A follower's side: the lines as they come.
#[derive(Debug)]
pub(crate) struct Following {
    queue: mpsc::UnboundedReceiver<Followed>,
    queued: Arc<AtomicUsize>,
}

impl Following {
    /// The next line (or count of missed lines); `None` once the tap is
    /// gone.
    ///
    /// Cancel safe.
    pub(crate) async fn next(&mut self) -> Option<Followed> {
        let next = self.queue.recv().await?;
        if let Followed::Line(line) = &next {
            self.queued.fetch_sub(line.len(), Ordering::Relaxed);
        }
        Some(next)
    }
}

impl LogTap {
    /// Records `lines` (as printed, without their newline), and hands them
    /// to every follower with room.
    pub(crate) fn record(&self, lines: impl IntoIterator<Item = Arc<str>>) {
        let mut tap = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            tap.followers.retain_mut(|follower| follower.give(&line));
            tap.bytes += line.len();
            tap.lines.push_back(line);
            while tap.lines.len() > KEPT_LINES || tap.bytes > KEPT_BYTES {
                let Some(old) = tap.lines.pop_front() else {
                    break;
                };
                tap.bytes -= old.len();
            }
        }
    }

    /// The last `count` lines recorded, and, if `follow`, every line
    /// recorded from then on (none lost or repeated in between).
    pub(crate) fn tail(&self, count: usize, follow: bool) -> (Vec<Arc<str>>, Option<Following>) {
        let mut tap = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let skip = tap.lines.len().saturating_sub(count);
        let last = tap.lines.iter().skip(skip).cloned().collect();
        let following = follow.then(|| {
            let (queue, receiver) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            tap.followers.push(Follower {
                queue,
                queued: Arc::clone(&queued),
                skipped: 0,
            });
            Following {
                queue: receiver,
                queued,
            }
        });
        (last, following)
    }
}

impl Follower {
    /// Queues `line` if there is room (after the count of lines missed
    /// before it), else counts it; whether the follower is still there.
    fn give(&mut self, line: &Arc<str>) -> bool {
        if self.queue.is_closed() {
            return false;
        }
        if self.queued.load(Ordering::Relaxed) + line.len() > FOLLOWER_BYTES {
            self.skipped += 1;
            return true;
        }
        if self.skipped > 0 {
            let _ = self.queue.send(Followed::Skipped(self.skipped));
            self.skipped = 0;
        }
        self.queued.fetch_add(line.len(), Ordering::Relaxed);
        self.queue.send(Followed::Line(Arc::clone(line))).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Vec<Arc<str>> {
        range.map(|n| Arc::from(format!("line {n}"))).collect()
    }

    #[test]
    fn the_ring_keeps_the_last_lines() {
        let tap = LogTap::default();
        tap.record(lines(0..KEPT_LINES + 5));
        let (all, none) = tap.tail(usize::MAX, false);
        assert!(none.is_none());
        assert_eq!(all.len(), KEPT_LINES);
        assert_eq!(&*all[0], "line 5");
        let (last, _) = tap.tail(2, false);
        assert_eq!(last, lines(KEPT_LINES + 3..KEPT_LINES + 5));
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let tap = LogTap::default();
        let big: Arc<str> = Arc::from("x".repeat(KEPT_BYTES / 4 + 1));
        tap.record(std::iter::repeat_n(big, 5));
        let (kept, _) = tap.tail(usize::MAX, false);
        assert_eq!(kept.len(), 3);
    }

    #[tokio::test]
    async fn a_follower_gets_the_tail_then_every_new_line_in_order() {
        let tap = LogTap::default();
        tap.record(lines(0..3));
        let (last, following) = tap.tail(1, true);
        assert_eq!(last, lines(2..3));
        let mut following = following.expect("following");
        tap.record(lines(3..5));
        for line in lines(3..5) {
            assert_eq!(following.next().await, Some(Followed::Line(line)));
        }
    }

    #[tokio::test]
    async fn a_follower_that_does_not_read_misses_lines_and_is_told_how_many() {
        let tap = LogTap::default();
        let (_, following) = tap.tail(0, true);
        let mut following = following.expect("following");
        let line: Arc<str> = Arc::from("y".repeat(1024));
        // Twice what its queue holds, never waiting.
        tap.record(std::iter::repeat_n(line.clone(), 2 * FOLLOWER_BYTES / 1024));
        let mut got = 0;
        while got < FOLLOWER_BYTES / 1024 {
            assert_eq!(following.next().await, Some(Followed::Line(line.clone())));
            got += 1;
        }
        tap.record([Arc::from("after")]);
        let missed = (FOLLOWER_BYTES / 1024) as u64;
        assert_eq!(following.next().await, Some(Followed::Skipped(missed)));
        assert_eq!(
            following.next().await,
            Some(Followed::Line(Arc::from("after")))
        );
    }

    #[test]
    fn a_follower_that_went_away_is_forgotten() {
        let tap = LogTap::default();
        let (_, following) = tap.tail(0, true);
        drop(following);
        tap.record(lines(0..1));
        assert!(tap.inner.lock().expect("tap").followers.is_empty());
    }
}
