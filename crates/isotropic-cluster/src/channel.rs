//! The two halves of a channel: [`Outbox`], a bounded queue of encoded frames
//! drained by one task, which coalesces small frames into few writes; and
//! [`Inbox`], which reads frames and the fds that come with them. [`open`]
//! makes either side's end of the socket ready for them.

use std::collections::VecDeque;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::Decoder;

use crate::WorkerId;
use crate::error::{ProtocolError, SendError};
use crate::message::Codec;
use crate::protocol::{self, BytesHeader, BytesRun, Encoded, Frame, FrameCodec};
use crate::shared::Sharing;
use crate::sys;
use crate::traffic::Traffic;

/// Makes our end of a channel ready: nonblocking, split, with the writer task
/// of its [`Outbox`] (bounded by `limits`) started. `worker_id` names the peer
/// in send errors, when the peer is a worker.
pub(crate) fn open(
    fd: OwnedFd,
    limits: QueueLimits,
    worker_id: Option<WorkerId>,
) -> std::io::Result<(OwnedReadHalf, Outbox)> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    let (read, write) = tokio::net::UnixStream::from_std(stream)?.into_split();
    Ok((read, Outbox::spawn(write, limits, worker_id)))
}

/// Frames below this size are copied into a shared write buffer as they are
/// queued.
const COALESCE_BELOW: usize = 4 * 1024;
/// A shared write buffer takes frames until it holds this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// Most parts (buffers, headers, payloads) given to one `writev`.
const MAX_PARTS: usize = 64;
/// Emptied write buffers kept for reuse.
const SPARE_BATCHES: usize = 4;

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

/// A cloneable sender of frames to one peer. The last clone dropped closes
/// it (once what is queued is written).
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    _senders: Arc<Senders>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("worker_id", &self.shared.worker_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Closes the outbox when the last clone goes.
struct Senders(Arc<Shared>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the senders and the writer task share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue stops being empty, or closes.
    work: Notify,
    /// Wakes senders waiting for room, or for the writer to stop.
    changed: Notify,
    limits: QueueLimits,
    worker_id: Option<WorkerId>,
    traffic: Arc<Traffic>,
}

/// The frames waiting for the writer. Small frames are copied into the
/// last write buffer as they come (no entry, no allocation of their own);
/// the writer takes everything queued at once.
#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    /// The acks of `send`s whose frames are in `items`.
    acks: Vec<oneshot::Sender<bool>>,
    /// Messages and bytes held against the limits: queued, or being
    /// written (room comes back once written).
    messages: usize,
    bytes: usize,
    /// Of those, the ones in `items`.
    queued: (usize, usize),
    state: State,
    /// The writer waits for `work`.
    idle: bool,
    /// Emptied write buffers.
    spare: Vec<BytesMut>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// Closed for sending: the writer writes what is queued, then stops.
    Closing,
    /// The writer has stopped.
    Stopped,
}

enum Item {
    /// Small frames, one after the other.
    Batch { buf: BytesMut, frames: usize },
    /// A frame written as it is (its fds with its first byte).
    Frame(Encoded),
}

impl Item {
    fn has_fds(&self) -> bool {
        matches!(self, Self::Frame(frame) if !frame.fds.is_empty())
    }

    /// The frames in it, and their bytes.
    fn count(&self) -> (usize, usize) {
        match self {
            Self::Batch { buf, frames } => (*frames, buf.len()),
            Self::Frame(frame) => (1, frame.len()),
        }
    }
}

/// Why a frame was not queued.
enum Refused {
    Full,
    Closed,
}

/// A frame to queue: encoded, or a bytes message's header and payload
/// (no frame built for a short one, the common case of small messages).
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Encoded(&'a Encoded),
    Bytes(BytesHeader, &'a Bytes),
}

impl Outgoing<'_> {
    fn len(self) -> usize {
        match self {
            Outgoing::Encoded(frame) => frame.len(),
            Outgoing::Bytes(header, payload) => header.len() + payload.len(),
        }
    }
}

impl Queue {
    /// Appends `frame`: copied into the last write buffer when small.
    fn append(&mut self, frame: Outgoing<'_>) {
        let small = frame.len() < COALESCE_BELOW;
        let parts = match frame {
            Outgoing::Bytes(ref header, payload) if small => [&header[..], &payload[..]],
            Outgoing::Bytes(header, payload) => {
                let frame = Encoded::bytes(header, payload.clone());
                return self.items.push(Item::Frame(frame));
            }
            Outgoing::Encoded(frame) if small && frame.fds.is_empty() => {
                [&frame.head[..], &frame.body[..]]
            }
            Outgoing::Encoded(frame) => return self.items.push(Item::Frame(frame.clone())),
        };
        if !matches!(self.items.last(), Some(Item::Batch { buf, .. }) if buf.len() < BATCH_BYTES) {
            let buf = (self.spare.pop()).unwrap_or_else(|| BytesMut::with_capacity(BATCH_BYTES));
            self.items.push(Item::Batch { buf, frames: 0 });
        }
        if let Some(Item::Batch { buf, frames }) = self.items.last_mut() {
            *frames += 1;
            for part in parts {
                buf.extend_from_slice(part);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every change to the queue is whole before the lock is released.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` (and takes `ack` for it), within the limits when
    /// `bounded`.
    fn push(
        &self,
        frame: Outgoing<'_>,
        ack: &mut Option<oneshot::Sender<bool>>,
        bounded: bool,
    ) -> Result<(), Refused> {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return Err(Refused::Closed);
        }
        if bounded {
            // A frame larger than the whole queue takes all of it.
            let cost = frame.len().min(self.limits.bytes);
            if queue.messages >= self.limits.messages || queue.bytes + cost > self.limits.bytes {
                return Err(Refused::Full);
            }
            queue.messages += 1;
            queue.bytes += cost;
            queue.queued.0 += 1;
            queue.queued.1 += cost;
        }
        queue.append(frame);
        queue.acks.extend(ack.take());
        let wake = std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        let mut queue = self.lock();
        if queue.state == State::Open {
            queue.state = State::Closing;
        }
        let wake = std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.work.notify_one();
        }
    }

    fn state(&self) -> State {
        self.lock().state
    }

    /// Resolves once `done` returns true, tried now and after each change
    /// the writer makes.
    async fn until(&self, mut done: impl FnMut() -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done() {
                return;
            }
            changed.await;
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
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            work: Notify::new(),
            changed: Notify::new(),
            limits: QueueLimits {
                messages: limits.messages.max(1),
                bytes: limits.bytes.clamp(1, u32::MAX as usize),
            },
            worker_id,
            traffic: Arc::new(Traffic::default()),
        });
        tokio::spawn(write_loop(half, Writer(shared.clone())));
        Self {
            _senders: Arc::new(Senders(shared.clone())),
            shared,
        }
    }

    /// What went through the channel: written by this outbox, and read by
    /// whoever reads the other half (see [`Traffic`]).
    pub(crate) fn traffic(&self) -> &Arc<Traffic> {
        &self.shared.traffic
    }

    fn error(&self, refused: Refused) -> SendError {
        let worker_id = self.shared.worker_id;
        match refused {
            Refused::Full => SendError::Full { worker_id },
            Refused::Closed => SendError::Closed { worker_id },
        }
    }

    /// Queues the hello: the first frame either side sends, with its
    /// protocol version; `heartbeat`: this side (a worker) answers
    /// heartbeats; `served`: this side (the primary) takes `served` frames;
    /// `segments`: this side (a worker) takes shared segments; `codec`: the
    /// channel's messages are in it.
    pub(crate) fn hello(&self, heartbeat: bool, served: bool, segments: bool, codec: Codec) {
        let _ = self.try_send(protocol::encode_hello(heartbeat, served, segments, codec));
    }

    /// Queues `frame`, waiting for room, and resolves once it has been written.
    pub(crate) async fn send(&self, frame: impl Into<Encoded>) -> Result<(), SendError> {
        self.queue(frame).await?.await
    }

    /// Queues `frame`, waiting for room; then the future it gives resolves
    /// once the frame has been written.
    ///
    /// # Cancel safety
    ///
    /// Cancelled before it resolves, the frame is not queued.
    pub(crate) async fn queue(
        &self,
        frame: impl Into<Encoded>,
    ) -> Result<impl Future<Output = Result<(), SendError>> + '_, SendError> {
        let frame = frame.into();
        let (ack, written) = oneshot::channel();
        let mut ack = Some(ack);
        let mut outcome = Ok(());
        self.shared
            .until(
                || match self.shared.push(Outgoing::Encoded(&frame), &mut ack, true) {
                    Err(Refused::Full) => false,
                    result => {
                        outcome = result;
                        true
                    }
                },
            )
            .await;
        outcome.map_err(|refused| self.error(refused))?;
        Ok(async move {
            match written.await {
                Ok(true) => Ok(()),
                _ => Err(self.error(Refused::Closed)),
            }
        })
    }

    /// Queues `frame` without waiting.
    pub(crate) fn try_send(&self, frame: impl Into<Encoded>) -> Result<(), SendError> {
        self.try_send_ref(&frame.into())
    }

    /// Queues `frame` without waiting (a frame sent to several peers is
    /// shared, not cloned for each).
    pub(crate) fn try_send_ref(&self, frame: &Encoded) -> Result<(), SendError> {
        self.try_push(Outgoing::Encoded(frame))
    }

    /// Queues the bytes message of `header` and `payload` without waiting:
    /// a short one is copied into the write buffer (no frame is built for
    /// it), a longer one queued by reference.
    pub(crate) fn try_send_bytes(
        &self,
        header: BytesHeader,
        payload: &Bytes,
    ) -> Result<(), SendError> {
        self.try_push(Outgoing::Bytes(header, payload))
    }

    fn try_push(&self, frame: Outgoing<'_>) -> Result<(), SendError> {
        (self.shared.push(frame, &mut None, true)).map_err(|refused| self.error(refused))
    }

    /// Queues `frame` with `fd` attached, as a control frame (see
    /// [`try_send_control`](Self::try_send_control)).
    pub(crate) fn try_send_fd(&self, frame: Bytes, fd: OwnedFd) -> Result<(), SendError> {
        let mut frame = Encoded::from(frame);
        frame.fds.push(Arc::new(fd));
        self.try_send_control(frame)
    }

    /// Queues a control frame (with fds or not) without waiting: not bound
    /// by the queue's limits, so never refused for fullness.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the channel is closed.
    pub(crate) fn try_send_control(&self, frame: Encoded) -> Result<(), SendError> {
        self.shared
            .push(Outgoing::Encoded(&frame), &mut None, false)
            .map_err(|refused| self.error(refused))
    }

    /// Closes the channel for writing once the frames queued so far are
    /// written; later sends fail.
    pub(crate) fn close(&self) {
        self.shared.close();
    }

    /// Resolves once the writer has stopped and closed the channel for writing.
    pub(crate) async fn wait_closed(&self) {
        self.shared
            .until(|| self.shared.state() == State::Stopped)
            .await;
    }

    /// Whether the writer has stopped (closed, or the peer went away).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.state() == State::Stopped
    }
}

/// The writer task's hold on the queue: when the task ends, however it
/// ends, the queue is stopped.
struct Writer(Arc<Shared>);

impl Writer {
    /// Moves what is queued into `items` and `acks`, and returns the
    /// messages and bytes it holds against the limits; `None` once the
    /// queue is empty and closing. Waits while it is empty and open.
    async fn take(
        &self,
        items: &mut Vec<Item>,
        acks: &mut Vec<oneshot::Sender<bool>>,
    ) -> Option<(usize, usize)> {
        loop {
            {
                let mut queue = self.0.lock();
                if !queue.items.is_empty() {
                    std::mem::swap(items, &mut queue.items);
                    std::mem::swap(acks, &mut queue.acks);
                    return Some(std::mem::take(&mut queue.queued));
                }
                if queue.state != State::Open {
                    return None;
                }
                queue.idle = true;
            }
            self.0.work.notified().await;
        }
    }

    /// `items` were written (or not: `ok`): their room is given back, their
    /// write buffers kept for reuse.
    fn written(&self, items: &mut Vec<Item>, (messages, bytes): (usize, usize)) {
        // Frames go first, outside the lock: their bytes can be anyone's,
        // whose drop may queue a frame here (a payload lent to a worker,
        // released when its last view goes).
        items.retain(|item| matches!(item, Item::Batch { .. }));
        let mut queue = self.0.lock();
        queue.messages -= messages;
        queue.bytes -= bytes;
        for item in items.drain(..) {
            if let Item::Batch { mut buf, .. } = item
                && queue.spare.len() < SPARE_BATCHES
                && buf.capacity() <= 2 * BATCH_BYTES
            {
                buf.clear();
                queue.spare.push(buf);
            }
        }
        drop(queue);
        self.0.changed.notify_waiters();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.state = State::Stopped;
        // What is still queued will never be written; dropping the acks
        // fails the waiting senders.
        let left = (
            std::mem::take(&mut queue.items),
            std::mem::take(&mut queue.acks),
            std::mem::take(&mut queue.spare),
        );
        drop(queue);
        drop(left);
        self.0.changed.notify_waiters();
    }
}

async fn write_loop(mut half: OwnedWriteHalf, writer: Writer) {
    let mut items = Vec::new();
    let mut acks = Vec::new();
    while let Some(held) = writer.take(&mut items, &mut acks).await {
        let ok = write_items(&mut half, &items).await.is_ok();
        if ok {
            let (frames, bytes) = items
                .iter()
                .map(Item::count)
                .fold((0, 0), |(f, b), (n, len)| (f + n, b + len));
            writer.0.traffic.sent(frames, bytes);
        }
        writer.written(&mut items, held);
        for ack in acks.drain(..) {
            let _ = ack.send(ok);
        }
        if !ok {
            break;
        }
    }
    let _ = half.shutdown().await;
    // (The queue stops as `writer` drops.)
}

/// Writes `items` in order, as few system calls as the socket allows: runs
/// of frames without fds in one `writev`, a frame with fds on its own.
async fn write_items(half: &mut OwnedWriteHalf, items: &[Item]) -> std::io::Result<()> {
    let mut rest = items;
    while let Some(first) = rest.first() {
        if let Item::Frame(frame) = first
            && !frame.fds.is_empty()
        {
            write_with_fds(half, frame).await?;
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .take(MAX_PARTS / 2)
            .take_while(|item| !item.has_fds())
            .count();
        let mut slices: Vec<_> = rest[..run]
            .iter()
            .flat_map(|item| match item {
                Item::Batch { buf, .. } => [&buf[..], &[]],
                Item::Frame(frame) => [&frame.head[..], &frame.body[..]],
            })
            .filter(|part| !part.is_empty())
            .map(std::io::IoSlice::new)
            .collect();
        write_slices(half, &mut slices).await?;
        rest = &rest[run..];
    }
    Ok(())
}

/// Writes `frame`, its first bytes with its fds attached.
async fn write_with_fds(half: &mut OwnedWriteHalf, frame: &Encoded) -> std::io::Result<()> {
    let fds: Vec<_> = frame.fds.iter().map(|fd| fd.as_fd()).collect();
    let mut slices = [&frame.head[..], &frame.body[..]].map(std::io::IoSlice::new);
    let written = loop {
        half.writable().await?;
        match half.as_ref().try_io(Interest::WRITABLE, || {
            sys::send_with_fds(half.as_ref(), &slices, &fds)
        }) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => break written,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let mut left = &mut slices[..];
    std::io::IoSlice::advance_slices(&mut left, written);
    write_slices(half, left).await
}

async fn write_slices(
    half: &mut OwnedWriteHalf,
    mut left: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    std::io::IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        match half.write_vectored(left).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            written => std::io::IoSlice::advance_slices(&mut left, written),
        }
    }
    Ok(())
}

// ===== Inbox =====

/// How much is read at a time: at first, and at most (a read that fills the
/// buffer doubles it; idle workers keep a small one).
const FIRST_CHUNK: usize = 4 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// How many buffers read before an inbox keeps for reuse, and the largest
/// it reuses.
const SPARES: usize = 2;
const SPARE_BYTES: usize = 4 * READ_CHUNK;

/// Reads frames, and keeps the fds that arrive with them, in order: those
/// of `connection` frames (taken with [`take_fd`](Self::take_fd)), those an
/// `fds` frame announces (handed on with the next frame, as
/// [`Frame::Attached`]), and the memfd of a `sealed` frame (handed on as
/// its [`Frame::Bytes`]); a bytes request or reply is handed on with the
/// body that follows it. `D` is the wire's decoder.
#[derive(Debug)]
pub(crate) struct Inbox<D = FrameCodec> {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// How much the next read asks for.
    chunk: usize,
    /// Buffers read before, kept for reuse once their frames are gone.
    spares: Vec<BytesMut>,
    codec: D,
    fds: VecDeque<OwnedFd>,
    /// The fds an `fds` frame announced, for the frame after it.
    announced: Option<Vec<OwnedFd>>,
    /// A head whose body is the next frame ([`Frame::awaits_body`]).
    heads: Option<Frame>,
    /// Whether fds are kept for the frames (else closed as they come).
    keeps_fds: bool,
    /// The shared segments this side lends or borrows.
    sharing: Sharing,
    eof: bool,
    done: bool,
}

impl<D: Decoder<Item = Frame, Error = ProtocolError>> Inbox<D> {
    pub(crate) fn new(half: OwnedReadHalf, codec: D) -> Self {
        Self {
            half,
            buf: BytesMut::with_capacity(FIRST_CHUNK),
            chunk: FIRST_CHUNK,
            spares: Vec::new(),
            codec,
            fds: VecDeque::new(),
            announced: None,
            heads: None,
            keeps_fds: true,
            sharing: Sharing::None,
            eof: false,
            done: false,
        }
    }

    /// This inbox, closing every fd that comes as it comes: for a wire
    /// whose frames take none (Node's channel, whose handles we do not
    /// take), so that a peer's fds are not kept until the channel closes.
    pub(crate) fn closing_fds(mut self) -> Self {
        self.keeps_fds = false;
        self
    }

    /// This inbox, taking the frames of shared segments that `sharing`
    /// takes (`docs/protocol.md`, "Shared segments").
    pub(crate) fn sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// The decoder (to read what it counted, say).
    pub(crate) fn codec_mut(&mut self) -> &mut D {
        &mut self.codec
    }

    /// The next frame; `None` after the end of the channel or an error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what was read stays buffered.
    pub(crate) async fn next(&mut self) -> Option<Result<Frame, ProtocolError>> {
        while !self.done {
            match self.decode() {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) if self.eof => self.done = true,
                Ok(None) => {
                    if let Err(error) = self.read().await {
                        self.done = true;
                        return Some(Err(error));
                    }
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        None
    }

    /// The next frame if one is already buffered (no read).
    pub(crate) fn try_next(&mut self) -> Option<Result<Frame, ProtocolError>> {
        if self.done {
            return None;
        }
        let decoded = self.decode().transpose();
        if matches!(decoded, Some(Err(_))) {
            self.done = true;
        }
        decoded
    }

    /// The next frames if they are bytes frames already buffered (at most
    /// `most.0` of them, none past the first to end beyond `most.1` bytes),
    /// with no fds announced for the first and no head waiting for it as
    /// its body (no read); else `None`, the frame left for
    /// [`try_next`](Self::try_next).
    pub(crate) fn try_next_run(&mut self, most: (usize, usize)) -> Option<BytesRun>
    where
        D: crate::protocol::TakeBytes,
    {
        if self.done || self.announced.is_some() || self.heads.is_some() {
            return None;
        }
        self.codec.take_run(&mut self.buf, most)
    }

    /// The oldest fd received and not taken yet.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// The next whole frame buffered, with the fds it announced attached.
    fn decode(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            let decoded = if self.eof {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            let frame = match decoded? {
                None if self.eof && self.heads.is_some() => {
                    let head = self.heads.take().map_or("", |head| head.name());
                    let next = "the end of the channel";
                    return Err(ProtocolError::MissingBody { head, next });
                }
                None => return Ok(None),
                Some(Frame::Fds { count }) => {
                    self.announce(usize::from(count))?;
                    continue;
                }
                Some(Frame::Sealed { len }) => {
                    let memfd = self.fds.pop_front().ok_or(ProtocolError::FdsMismatch(
                        "a sealed frame without its memfd",
                    ))?;
                    Frame::Bytes(sys::map_sealed(memfd, len)?)
                }
                Some(Frame::Segment { id, len }) => {
                    let borrower = self.sharing.borrower("segment")?;
                    let memfd = self.fds.pop_front().ok_or(ProtocolError::FdsMismatch(
                        "a segment frame without its memfd",
                    ))?;
                    borrower.map(id, len, memfd)?;
                    continue;
                }
                Some(Frame::Retire { id }) => {
                    self.sharing.borrower("retire")?.retire(id)?;
                    continue;
                }
                Some(Frame::Lent {
                    segment,
                    token,
                    offset,
                    len,
                }) => Frame::Bytes(self.sharing.borrower("lent")?.lent(
                    segment,
                    token,
                    (offset, len),
                )?),
                Some(Frame::Release(tokens)) => {
                    self.sharing.lender("release")?.release(&tokens)?;
                    continue;
                }
                Some(Frame::Returned { token, offset, len }) => Frame::Bytes(
                    self.sharing
                        .lender("returned")?
                        .returned(token, offset, len)?,
                ),
                Some(frame) => frame,
            };
            let frame = match self.heads.take() {
                Some(head) => head.with_body(frame)?,
                None if frame.awaits_body() => {
                    self.heads = Some(frame);
                    continue;
                }
                None => frame,
            };
            return match self.announced.take() {
                None => Ok(Some(frame)),
                Some(fds) if matches!(frame, Frame::Message(_) | Frame::Bytes(_)) => Ok(Some(
                    Frame::Attached(Box::new(frame), crate::fds::PassedFds::new(fds)),
                )),
                Some(_) => Err(ProtocolError::FdsMismatch(
                    "fds announced before a frame that is not a message",
                )),
            };
        }
    }

    /// Sets aside the `count` fds an `fds` frame announced.
    fn announce(&mut self, count: usize) -> Result<(), ProtocolError> {
        if count > crate::fds::MAX_FDS {
            return Err(ProtocolError::TooManyFds {
                count,
                max: crate::fds::MAX_FDS,
            });
        }
        if self.announced.is_some() {
            return Err(ProtocolError::FdsMismatch("two fds frames in a row"));
        }
        if self.fds.len() < count {
            return Err(ProtocolError::FdsMismatch("fewer fds than announced"));
        }
        self.announced = Some(self.fds.drain(..count).collect());
        Ok(())
    }

    /// Makes room in `buf` for the next read: in place when its frames
    /// handed out are gone (the common case when they are handled before the
    /// next read), else in a spare buffer whose frames are all gone, else in
    /// a new one; the buffer left behind becomes a spare (a primary hands
    /// frames to another task, so one is still in use while it reads).
    /// Spares are for a burst: a large one (it held a large frame) is let
    /// go once free, and all once a read comes short (see `read`).
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() >= self.chunk || self.buf.try_reclaim(self.chunk) {
            return;
        }
        // (Reclaimed, a free spare shows its whole allocation.)
        (self.spares).retain_mut(|spare| !spare.try_reclaim(0) || spare.capacity() <= SPARE_BYTES);
        let reusable = (self.spares.iter_mut()).position(|spare| spare.try_reclaim(self.chunk));
        let mut next = match reusable {
            Some(at) => self.spares.swap_remove(at),
            None => BytesMut::with_capacity(2 * self.chunk),
        };
        next.extend_from_slice(&self.buf);
        let mut spent = std::mem::replace(&mut self.buf, next);
        spent.clear();
        if self.spares.len() == SPARES {
            self.spares.remove(0);
        }
        self.spares.push(spent);
    }

    async fn read(&mut self) -> Result<(), ProtocolError> {
        self.make_room();
        let (read, dropped) = loop {
            self.half.readable().await?;
            let (half, buf, fds) = (self.half.as_ref(), &mut self.buf, &mut self.fds);
            match half.try_io(Interest::READABLE, || {
                sys::recv_with_fds(half, buf, self.chunk, fds)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => break other?,
            }
        };
        if dropped {
            // The fds that did come are closed with the inbox.
            return Err(ProtocolError::TooManyFds {
                count: crate::fds::MAX_FDS + 2,
                max: crate::fds::MAX_FDS,
            });
        }
        if !self.keeps_fds {
            self.fds.clear();
        }
        if read == 0 {
            self.eof = true;
        }
        if read == self.chunk && read < READ_CHUNK {
            self.chunk = read * 2;
        }
        if read < self.chunk {
            // The peer's burst is over: the spares' memory goes back with
            // the frames that hold it.
            self.spares.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME, User, Wire};

    const ID: Option<WorkerId> = Some(WorkerId(3));

    /// An outbox on one end of a socket pair, and an inbox on the other.
    /// Its writer task runs only once the test yields (current-thread runtime).
    fn outbox(messages: usize, bytes: usize) -> (Outbox, Inbox) {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let outbox = Outbox::spawn(ours.into_split().1, QueueLimits { messages, bytes }, ID);
        (outbox, reader(theirs))
    }

    fn reader(stream: tokio::net::UnixStream) -> Inbox {
        Inbox::new(stream.into_split().0, FrameCodec::new(DEFAULT_MAX_FRAME))
    }

    /// A message frame of `size` bytes (at least 16), carrying `n`.
    fn frame(n: u64, size: usize) -> Bytes {
        let encode = |padding: usize| {
            let message = (n, "x".repeat(padding));
            Wire::Frames(Codec::Json)
                .encode(User::Message(&message), DEFAULT_MAX_FRAME)
                .expect("encodes")
        };
        let frame = encode(size - encode(0).len());
        assert_eq!(frame.len(), size);
        frame
    }

    /// The number a frame from [`frame`] carries.
    fn number(frame: Option<Result<Frame, ProtocolError>>) -> u64 {
        match frame {
            Some(Ok(Frame::Message(message))) => message.decode::<(u64, String)>().expect("ours").0,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn is_full(result: Result<(), SendError>) -> bool {
        matches!(result, Err(SendError::Full { worker_id: ID }))
    }

    fn is_closed(result: Result<(), SendError>) -> bool {
        matches!(result, Err(SendError::Closed { worker_id: ID }))
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_messages() {
        let (outbox, mut inbox) = outbox(2, 1 << 20);
        outbox.try_send(frame(1, 16)).expect("room");
        outbox.try_send(frame(2, 16)).expect("room");
        assert!(is_full(outbox.try_send(frame(3, 16))));
        // `send` waits for room, and for its frame to be written.
        outbox.send(frame(3, 16)).await.expect("written");
        for n in 1..=3 {
            assert_eq!(number(inbox.next().await), n);
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes() {
        let (outbox, mut inbox) = outbox(100, 256);
        outbox.try_send(frame(1, 200)).expect("room");
        assert!(is_full(outbox.try_send(frame(2, 100))));
        outbox.try_send(frame(2, 50)).expect("room left");
        outbox.send(frame(3, 100)).await.expect("written");
        for n in 1..=3 {
            assert_eq!(number(inbox.next().await), n);
        }
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_queue_takes_all_of_it() {
        let (outbox, mut inbox) = outbox(100, 64);
        outbox
            .try_send(frame(1, 1000))
            .expect("an empty queue takes it");
        assert!(is_full(outbox.try_send(frame(2, 16))));
        outbox.send(frame(2, 16)).await.expect("written");
        assert_eq!(number(inbox.next().await), 1);
        assert_eq!(number(inbox.next().await), 2);
    }

    #[tokio::test]
    async fn close_writes_what_was_queued_then_ends_the_channel() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        outbox.try_send(frame(1, 16)).expect("room");
        outbox.try_send(frame(2, 10_000)).expect("room");
        outbox.close();
        outbox.wait_closed().await;
        assert!(outbox.is_closed());
        assert!(is_closed(outbox.try_send(frame(3, 16))));
        assert!(is_closed(outbox.send(frame(3, 16)).await));
        assert_eq!(number(inbox.next().await), 1);
        assert_eq!(number(inbox.next().await), 2);
        assert!(inbox.next().await.is_none());
    }

    #[tokio::test]
    async fn frames_written_are_counted_with_their_bytes() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        assert_eq!(outbox.traffic().sent_total(), (0, 0));
        outbox.try_send(frame(1, 16)).expect("room");
        outbox.try_send(frame(2, 10_000)).expect("room");
        outbox.send(frame(3, 100)).await.expect("written");
        assert_eq!(outbox.traffic().sent_total(), (3, 10_116));
        for n in 1..=3 {
            assert_eq!(number(inbox.next().await), n);
        }
    }

    #[tokio::test]
    async fn control_frames_are_not_bounded_and_fail_only_once_closed() {
        let (outbox, mut inbox) = outbox(1, 64);
        outbox.try_send(frame(1, 16)).expect("room");
        assert!(is_full(outbox.try_send(frame(2, 16))));
        let connection = protocol::encode_control(&Frame::Connection { listener: 9 });
        outbox
            .try_send_control(connection.clone().into())
            .expect("not bounded");
        let (_kept, sent) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        outbox
            .try_send_fd(connection.clone(), sent.into())
            .expect("not bounded");
        outbox.close();
        assert!(is_closed(outbox.try_send_control(connection.into())));
        assert_eq!(number(inbox.next().await), 1);
        for _ in 0..2 {
            assert!(matches!(
                inbox.next().await,
                Some(Ok(Frame::Connection { listener: 9 }))
            ));
        }
        assert!(inbox.next().await.is_none());
        assert!(inbox.take_fd().is_some());
    }

    #[tokio::test]
    async fn the_last_clone_dropped_writes_what_was_queued_then_ends() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        let clone = outbox.clone();
        outbox.try_send(frame(1, 16)).expect("room");
        drop(outbox);
        clone.try_send(frame(2, 10_000)).expect("room");
        drop(clone);
        assert_eq!(number(inbox.next().await), 1);
        assert_eq!(number(inbox.next().await), 2);
        assert!(inbox.next().await.is_none());
    }

    #[tokio::test]
    async fn a_peer_that_went_away_closes_the_outbox() {
        let (outbox, inbox) = outbox(100, 1 << 20);
        drop(inbox);
        assert!(is_closed(outbox.send(frame(1, 16)).await));
        outbox.wait_closed().await;
        assert!(is_closed(outbox.try_send(frame(2, 16))));
    }

    #[tokio::test]
    async fn bytes_messages_small_and_large_arrive_whole_and_in_order() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        let payloads: Vec<Bytes> = [10, COALESCE_BELOW, 3 * READ_CHUNK, 0]
            .iter()
            .map(|&len| (0..len).map(|i| i as u8).collect::<Vec<u8>>().into())
            .collect();
        outbox.try_send(frame(1, 16)).expect("room");
        for payload in &payloads {
            let sizes = protocol::Sizes::frames(DEFAULT_MAX_FRAME);
            let bytes = protocol::encode_payload(payload.clone(), sizes, false).expect("fits");
            outbox.try_send(bytes).expect("room");
        }
        outbox.send(frame(2, 16)).await.expect("written");
        assert_eq!(number(inbox.next().await), 1);
        for payload in payloads {
            match inbox.next().await {
                Some(Ok(Frame::Bytes(bytes))) => assert_eq!(bytes, payload),
                other => panic!("not bytes: {other:?}"),
            }
        }
        assert_eq!(number(inbox.next().await), 2);
        let wire = 2 * 16 + 4 * 5 + 10 + COALESCE_BELOW + 3 * READ_CHUNK;
        assert_eq!(outbox.traffic().sent_total(), (6, wire as u64));
    }

    /// Bytes messages copied as they are queued keep to the limits and to
    /// their order among other frames (fds attached, large ones); read as
    /// runs, they come as `next` would give them, fds with their frame.
    #[tokio::test]
    async fn copied_bytes_messages_keep_order_and_limits_and_read_as_runs() {
        let (outbox, mut inbox) = outbox(7, 1 << 20);
        let header = |len| protocol::bytes_header(len, DEFAULT_MAX_FRAME).expect("fits");
        let payload = |tag: u8, len: usize| Bytes::from(vec![tag; len]);
        let large = payload(3, COALESCE_BELOW);
        outbox.try_send(frame(1, 16)).expect("room");
        outbox
            .try_send_bytes(header(1), &payload(1, 1))
            .expect("room");
        outbox
            .try_send_bytes(header(2), &payload(2, 2))
            .expect("room");
        let sizes = protocol::Sizes::frames(DEFAULT_MAX_FRAME);
        let attached = protocol::encode_payload(payload(9, 4), sizes, false).expect("fits");
        let attached = protocol::attach_fds(attached, nulls(2)).expect("two fds");
        outbox.try_send(attached).expect("room");
        outbox
            .try_send_bytes(header(large.len()), &large)
            .expect("room");
        outbox
            .try_send_bytes(header(0), &Bytes::new())
            .expect("room");
        outbox.try_send(frame(2, 16)).expect("room");
        assert!(is_full(outbox.try_send_bytes(header(1), &payload(5, 1))));
        // (Wait for all of it to be written.)
        outbox.send(frame(3, 16)).await.expect("written");
        // (The fds frame goes with the frame it announces: counted with it.)
        let wire = 3 * 16 + 5 * 5 + 6 + 1 + 2 + 4 + COALESCE_BELOW;
        assert_eq!(outbox.traffic().sent_total(), (8, wire as u64));

        let mut seen = Vec::new();
        assert_eq!(number(inbox.next().await), 1);
        while seen.len() < 6 {
            if let Some(run) = inbox.try_next_run((usize::MAX, usize::MAX)) {
                seen.extend(run.map(|bytes| (bytes, 0)));
                continue;
            }
            // (Read on when nothing whole is buffered, as the watch does.)
            let next = match inbox.try_next() {
                None => inbox.next().await,
                next => next,
            };
            match next {
                Some(Ok(Frame::Attached(frame, fds))) => match *frame {
                    Frame::Bytes(bytes) => seen.push((bytes, fds.len())),
                    other => panic!("not bytes: {other:?}"),
                },
                Some(Ok(Frame::Message(message))) => {
                    let n = message.decode::<(u64, String)>().expect("ours").0;
                    seen.push((Bytes::from(format!("#{n}")), 0));
                }
                Some(Ok(Frame::Bytes(bytes))) => seen.push((bytes, 0)),
                other => panic!("unexpected: {other:?}"),
            }
        }
        let expected = [
            (payload(1, 1), 0),
            (payload(2, 2), 0),
            (payload(9, 4), 2),
            (large, 0),
            (Bytes::new(), 0),
            (Bytes::from_static(b"#2"), 0),
        ];
        assert_eq!(seen, expected);
        assert_eq!(number(inbox.next().await), 3);
    }

    #[tokio::test]
    async fn payloads_held_across_reads_stay_intact_while_the_inbox_reuses_its_buffers() {
        // 101-byte payloads straddle the reads; every other one is held to
        // the end (its buffer cannot be reused), the others dropped at once
        // (theirs can).
        let (outbox, mut inbox) = outbox(10_000, 1 << 22);
        let payload = |i: usize| Bytes::from(vec![(i % 251) as u8; 101]);
        let sizes = protocol::Sizes::frames(DEFAULT_MAX_FRAME);
        let mut held = Vec::new();
        for round in 0..20 {
            for i in round * 1000..(round + 1) * 1000 {
                let frame = protocol::encode_payload(payload(i), sizes, false).expect("fits");
                outbox.try_send(frame).expect("room");
            }
            for i in round * 1000..(round + 1) * 1000 {
                match inbox.next().await {
                    Some(Ok(Frame::Bytes(bytes))) if i % 2 == 0 => held.push((i, bytes)),
                    Some(Ok(Frame::Bytes(bytes))) => assert_eq!(bytes, payload(i)),
                    other => panic!("not bytes: {other:?}"),
                }
            }
        }
        assert!(inbox.spares.len() <= SPARES);
        for (i, bytes) in held {
            assert_eq!(bytes, payload(i), "payload {i} intact");
        }
    }

    #[tokio::test]
    async fn a_buffer_that_held_a_large_frame_is_not_kept_once_the_burst_is_over() {
        let (outbox, mut inbox) = outbox(100, 1 << 24);
        let sizes = protocol::Sizes::frames(DEFAULT_MAX_FRAME);
        let send = |len: usize| {
            let payload = Bytes::from(vec![1u8; len]);
            let frame = protocol::encode_payload(payload, sizes, false).expect("fits");
            outbox.try_send(frame).expect("room");
        };
        send(4 << 20);
        let held = match inbox.next().await {
            Some(Ok(Frame::Bytes(bytes))) => bytes,
            other => panic!("not bytes: {other:?}"),
        };
        // The next read needs room while the large frame is held: the
        // buffer it is in is set aside, then let go after a short read.
        send(10);
        assert!(matches!(inbox.next().await, Some(Ok(Frame::Bytes(b))) if b.len() == 10));
        assert!(
            inbox.spares.is_empty(),
            "{} spares kept",
            inbox.spares.len()
        );
        assert_eq!(held.len(), 4 << 20);
    }

    /// Every spare set aside is a real buffer, reusable once its frames are
    /// gone (not the empty one an inbox could start with).
    #[tokio::test]
    async fn every_spare_can_be_reused_once_its_frames_are_gone() {
        let (outbox, mut inbox) = outbox(10, 1 << 20);
        let sizes = protocol::Sizes::frames(DEFAULT_MAX_FRAME);
        let frame = protocol::encode_payload(Bytes::from_static(b"hello"), sizes, false);
        outbox.try_send(frame.expect("fits")).expect("room");
        match inbox.next().await {
            Some(Ok(Frame::Bytes(bytes))) => assert_eq!(&bytes[..], b"hello"),
            other => panic!("not bytes: {other:?}"),
        }
        let chunk = inbox.chunk;
        for spare in &mut inbox.spares {
            let capacity = spare.capacity();
            assert!(spare.try_reclaim(chunk), "a spare of {capacity} bytes");
        }
    }

    /// `n` fds (of `/dev/null`).
    fn nulls(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| std::fs::File::open("/dev/null").expect("opened").into())
            .collect()
    }

    #[tokio::test]
    async fn announced_fds_come_attached_and_large_payloads_sealed() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        let sizes = protocol::Sizes {
            max_frame: 64,
            sealed_from: 100,
        };
        let large: Bytes = vec![9; 1000].into();
        let sealed = protocol::encode_payload(large.clone(), sizes, true).expect("sealed");
        assert_eq!(sealed.fds.len(), 1);
        outbox.try_send(sealed.clone()).expect("room");
        let with_fds = protocol::attach_fds(sealed, nulls(2)).expect("two fds");
        outbox.try_send(with_fds).expect("room");
        let small = protocol::encode_payload(Bytes::from_static(b"s"), sizes, true).expect("fits");
        let small = protocol::attach_fds(small, nulls(crate::MAX_FDS)).expect("at the bound");
        outbox.send(small).await.expect("written");

        assert!(matches!(inbox.next().await, Some(Ok(Frame::Bytes(b))) if b == large));
        match inbox.next().await {
            Some(Ok(Frame::Attached(frame, fds))) => {
                assert_eq!(*frame, Frame::Bytes(large));
                assert_eq!(fds.take().len(), 2);
            }
            other => panic!("not attached: {other:?}"),
        }
        match inbox.next().await {
            Some(Ok(Frame::Attached(frame, fds))) => {
                assert_eq!(*frame, Frame::Bytes(Bytes::from_static(b"s")));
                assert_eq!(fds.len(), crate::MAX_FDS);
            }
            other => panic!("not attached: {other:?}"),
        }
        assert!(inbox.take_fd().is_none());
        let over = protocol::attach_fds(Bytes::new().into(), nulls(crate::MAX_FDS + 1));
        assert!(matches!(
            over,
            Err(ProtocolError::TooManyFds { count: 17, max: 16 })
        ));
    }

    /// What an inbox makes of `frames` sent with `fds` attached.
    async fn received(frames: &[Frame], fds: usize) -> Option<Result<Frame, ProtocolError>> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let bytes: Vec<u8> = frames.iter().flat_map(protocol::encode_control).collect();
        let fds = nulls(fds);
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let parts = [std::io::IoSlice::new(&bytes)];
        let sent = sendmsg(&ours, &parts, &mut control, SendFlags::empty()).expect("sent");
        assert_eq!(sent, bytes.len());
        reader(theirs).next().await
    }

    #[tokio::test]
    async fn fds_that_do_not_match_their_frames_are_errors() {
        let message = Frame::Message(crate::Message::from_json("1".to_owned()).expect("json"));
        let fds = |count| Frame::Fds { count };
        let cases: [(&[Frame], usize); 5] = [
            (&[fds(2), message.clone()], 1),
            (&[fds(1), Frame::Heartbeat], 1),
            (&[fds(1), fds(1), message.clone()], 2),
            (&[Frame::Sealed { len: 1 }], 0),
            (&[fds(17), message.clone()], 17),
        ];
        for (frames, count) in cases {
            let error = received(frames, count).await;
            assert!(
                matches!(
                    error,
                    Some(Err(
                        ProtocolError::FdsMismatch(_) | ProtocolError::TooManyFds { .. }
                    ))
                ),
                "{frames:?}: {error:?}"
            );
        }
        let error = received(&[fds(20), message], 20).await;
        assert!(
            matches!(error, Some(Err(ProtocolError::TooManyFds { .. }))),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn fds_arrive_with_their_frames_in_order() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        let (mut kept, sent) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        outbox.try_send(frame(1, 16)).expect("room");
        let connection = protocol::encode_control(&Frame::Connection { listener: 9 });
        outbox.try_send_fd(connection, sent.into()).expect("room");
        outbox.send(frame(2, 16)).await.expect("written");

        assert!(inbox.take_fd().is_none());
        assert_eq!(number(inbox.next().await), 1);
        assert!(matches!(
            inbox.next().await,
            Some(Ok(Frame::Connection { listener: 9 }))
        ));
        assert_eq!(number(inbox.next().await), 2);
        let mut received = std::os::unix::net::UnixStream::from(inbox.take_fd().expect("the fd"));
        assert!(inbox.take_fd().is_none());
        received.write_all(b"through").expect("written");
        let mut read = [0; 7];
        kept.read_exact(&mut read).expect("read");
        assert_eq!(&read, b"through");
    }

    #[tokio::test]
    async fn open_wraps_a_socket_and_the_hello_comes_first() {
        let (ours, theirs) = sys::channel_pair().expect("a socket pair");
        let (_, outbox) = open(ours, QueueLimits::default(), None).expect("opened");
        let (read, _) = open(theirs, QueueLimits::default(), None).expect("opened");
        let mut inbox = Inbox::new(read, FrameCodec::new(DEFAULT_MAX_FRAME));
        outbox.hello(true, false, false, Codec::Json);
        outbox.try_send(frame(1, 16)).expect("room");
        assert_eq!(
            inbox.next().await.expect("a frame").expect("valid"),
            Frame::Hello {
                protocol: protocol::VERSION,
                heartbeat: true,
                served: false,
                segments: false,
            }
        );
        assert_eq!(number(inbox.next().await), 1);
    }

    #[tokio::test]
    async fn try_next_only_takes_what_is_buffered() {
        let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut inbox = reader(theirs);
        assert!(inbox.try_next().is_none());
        ours.write_all(&[frame(1, 16), frame(2, 16)].concat())
            .await
            .expect("written");
        assert_eq!(number(inbox.next().await), 1);
        assert_eq!(number(inbox.try_next()), 2);
        assert!(inbox.try_next().is_none());
    }

    #[tokio::test]
    async fn a_broken_frame_ends_the_inbox() {
        let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut inbox = reader(theirs);
        ours.write_all(&[0, 0, 0, 0]).await.expect("written");
        assert!(matches!(
            inbox.next().await,
            Some(Err(ProtocolError::EmptyFrame))
        ));
        assert!(inbox.next().await.is_none());
        assert!(inbox.try_next().is_none());
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_an_error_and_a_clean_end_is_none() {
        let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut inbox = reader(theirs);
        let whole = frame(1, 16);
        ours.write_all(&whole[..whole.len() - 1])
            .await
            .expect("written");
        drop(ours);
        assert!(matches!(inbox.next().await, Some(Err(_))));
        assert!(inbox.next().await.is_none());

        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut inbox = reader(theirs);
        drop(ours);
        assert!(inbox.next().await.is_none());
    }

    #[tokio::test]
    async fn a_frame_larger_than_a_read_arrives_whole() {
        let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut inbox = reader(theirs);
        let big = frame(1, 3 * READ_CHUNK);
        let writer = tokio::spawn(async move { ours.write_all(&big).await });
        assert_eq!(number(inbox.next().await), 1);
        writer.await.expect("no panic").expect("written");
    }
}
