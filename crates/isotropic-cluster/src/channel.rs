//! The writing half of a channel: a bounded queue of encoded frames drained by
//! one task, which coalesces small frames into few writes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::WorkerId;
use crate::error::SendError;

/// Frames up to this size are copied into a shared write buffer.
const COALESCE_BELOW: usize = 4 * 1024;
/// A batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 64 * 1024;

enum Outgoing {
    Frame(Bytes, Option<oneshot::Sender<bool>>),
    Close,
}

/// How much may wait to be written to one peer: a number of messages, and a
/// number of bytes (a few large messages must not pin hundreds of MiB).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            messages: 1024,
            bytes: 4 * 1024 * 1024,
        }
    }
}

/// A cloneable sender of frames to one peer.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// Bytes that may still be queued; the writer gives them back once written.
    room: Arc<Semaphore>,
    max_bytes: usize,
    worker_id: Option<WorkerId>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(frame, _) => write!(f, "Frame({} bytes)", frame.len()),
            Self::Close => f.write_str("Close"),
        }
    }
}

impl Outbox {
    /// Starts the writer task for `half`, with a queue bounded by `limits`.
    pub(crate) fn spawn(
        half: OwnedWriteHalf,
        limits: QueueLimits,
        worker_id: Option<WorkerId>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(limits.messages.max(1));
        let max_bytes = limits.bytes.clamp(1, u32::MAX as usize);
        let room = Arc::new(Semaphore::new(max_bytes));
        tokio::spawn(write_loop(half, rx, room.clone(), max_bytes));
        Self {
            tx,
            room,
            max_bytes,
            worker_id,
        }
    }

    /// The room a frame takes in the queue (a frame larger than the whole
    /// queue takes all of it).
    fn cost(&self, frame: &Bytes) -> u32 {
        u32::try_from(frame.len().min(self.max_bytes)).unwrap_or(u32::MAX)
    }

    fn closed(&self) -> SendError {
        SendError::Closed {
            worker_id: self.worker_id,
        }
    }

    /// Queues `frame`, waiting for room, and resolves once it has been written.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), SendError> {
        let (ack, written) = oneshot::channel();
        let room = self
            .room
            .acquire_many(self.cost(&frame))
            .await
            .map_err(|_| self.closed())?;
        room.forget();
        self.tx
            .send(Outgoing::Frame(frame, Some(ack)))
            .await
            .map_err(|_| self.closed())?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(self.closed()),
        }
    }

    /// Queues `frame` without waiting.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        let full = || SendError::Full {
            worker_id: self.worker_id,
        };
        let cost = self.cost(&frame);
        match self.room.try_acquire_many(cost) {
            Ok(room) => room.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(full()),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.closed()),
        }
        self.tx.try_send(Outgoing::Frame(frame, None)).map_err(|e| {
            self.room.add_permits(cost as usize);
            match e {
                mpsc::error::TrySendError::Full(_) => full(),
                mpsc::error::TrySendError::Closed(_) => self.closed(),
            }
        })
    }

    /// Closes the channel for writing once the frames queued so far are written.
    pub(crate) fn close(&self) {
        if let Err(mpsc::error::TrySendError::Full(close)) = self.tx.try_send(Outgoing::Close) {
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(close).await });
        }
    }

    /// Resolves once the writer has stopped and closed the channel for writing.
    pub(crate) async fn wait_closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the writer has stopped (closed, or the peer went away).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

async fn write_loop(
    mut half: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    room: Arc<Semaphore>,
    max_bytes: usize,
) {
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    let mut acks = Vec::new();
    let mut freed = 0;
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        let mut ok = true;
        while let Some(item) = next.take() {
            match item {
                Outgoing::Close => closing = true,
                Outgoing::Frame(frame, ack) => {
                    acks.extend(ack);
                    freed += frame.len().min(max_bytes);
                    if frame.len() < COALESCE_BELOW {
                        batch.extend_from_slice(&frame);
                    } else {
                        ok = flush(&mut half, &mut batch).await
                            && half.write_all(&frame).await.is_ok();
                    }
                }
            }
            if !ok || closing {
                break;
            }
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        ok = ok && flush(&mut half, &mut batch).await;
        room.add_permits(std::mem::take(&mut freed));
        for ack in acks.drain(..) {
            let _ = ack.send(ok);
        }
        if !ok {
            break;
        }
    }
    let _ = half.shutdown().await;
    // Senders waiting for room learn that the channel is closed.
    room.close();
    rx.close();
    // Whatever is still queued will never be written; dropping the acks fails
    // the waiting senders.
    while rx.try_recv().is_ok() {}
}

async fn flush(half: &mut OwnedWriteHalf, batch: &mut BytesMut) -> bool {
    if batch.is_empty() {
        return true;
    }
    let ok = half.write_all(batch).await.is_ok();
    batch.clear();
    ok
}
