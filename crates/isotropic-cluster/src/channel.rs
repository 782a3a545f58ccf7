//! The writing half of a channel: a bounded queue of encoded frames drained by
//! one task, which coalesces small frames into few writes.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

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

/// A cloneable sender of frames to one peer.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
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
    /// Starts the writer task for `half`, with room for `capacity` queued frames.
    pub(crate) fn spawn(
        half: OwnedWriteHalf,
        capacity: usize,
        worker_id: Option<WorkerId>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(write_loop(half, rx));
        Self { tx, worker_id }
    }

    fn closed(&self) -> SendError {
        SendError::Closed {
            worker_id: self.worker_id,
        }
    }

    /// Queues `frame`, waiting for room, and resolves once it has been written.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), SendError> {
        let (ack, written) = oneshot::channel();
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
        self.tx
            .try_send(Outgoing::Frame(frame, None))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full {
                    worker_id: self.worker_id,
                },
                mpsc::error::TrySendError::Closed(_) => self.closed(),
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

async fn write_loop(mut half: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    let mut acks = Vec::new();
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
        for ack in acks.drain(..) {
            let _ = ack.send(ok);
        }
        if !ok {
            break;
        }
    }
    let _ = half.shutdown().await;
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
