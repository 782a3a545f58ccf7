//! [`Traffic`]: what went through one channel, each way.

use std::sync::atomic::{AtomicU64, Ordering};

/// What went through one channel each way: frames of every kind and their
/// bytes on the wire. Counted once per batch (one relaxed add each), by the
/// outbox's writer for what it wrote, by the reader for what it read.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    sent: [AtomicU64; 2],
    received: [AtomicU64; 2],
}

impl Traffic {
    /// `frames` frames of `bytes` bytes were written.
    pub(crate) fn sent(&self, frames: usize, bytes: usize) {
        add(&self.sent, frames, bytes);
    }

    /// `frames` frames of `bytes` bytes were read.
    pub(crate) fn received(&self, frames: usize, bytes: usize) {
        add(&self.received, frames, bytes);
    }

    /// Frames and bytes written so far.
    pub(crate) fn sent_total(&self) -> (u64, u64) {
        load(&self.sent)
    }

    /// Frames and bytes read so far.
    pub(crate) fn received_total(&self) -> (u64, u64) {
        load(&self.received)
    }
}

fn add(counts: &[AtomicU64; 2], frames: usize, bytes: usize) {
    counts[0].fetch_add(frames as u64, Ordering::Relaxed);
    counts[1].fetch_add(bytes as u64, Ordering::Relaxed);
}

fn load(counts: &[AtomicU64; 2]) -> (u64, u64) {
    (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_counts_frames_and_bytes() {
        let traffic = Traffic::default();
        traffic.sent(3, 300);
        traffic.sent(0, 0);
        traffic.received(0, 7);
        traffic.sent(1, 5);
        traffic.received(2, 50);
        assert_eq!(traffic.sent_total(), (4, 305));
        assert_eq!(traffic.received_total(), (2, 57));
    }
}
