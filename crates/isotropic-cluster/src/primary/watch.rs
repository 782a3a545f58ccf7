//! The task that watches one worker process: its channel, its output and its
//! exit, reported to the primary's actor in that order.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{Decoder, FramedRead};

use super::events::OutputStream;
use super::input::{Inbound, Input};
use super::output::{Delivery, OutputLine, OutputSink};
use crate::channel::Inbox;
use crate::error::ProtocolError;
use crate::protocol::{AnyCodec, BytesRun, Frame};
use crate::shared::Sharing;
use crate::sys;
use crate::traffic::Traffic;
use crate::{Signal, WorkerId};

/// How long output and channel data are still read after a worker exited
/// (they end at once unless a grandchild holds them open).
const LINGER: Duration = Duration::from_millis(500);
/// Most frames reported in one input.
const BATCH: usize = 256;
/// Most bytes of frames reported in one input (plus one frame).
const BATCH_BYTES: usize = 256 * 1024;
/// Most bytes of a worker's frames waiting for the actor. Beyond it the
/// channel is not read until the actor catches up, so a worker that sends
/// faster than the primary handles is slowed down by its own socket instead
/// of filling the primary's memory.
const INPUT_BUDGET: usize = 4 * 1024 * 1024;
/// Most requests of a worker whose replies are not yet queued for it (its
/// handlers still run, or its queue is full). Beyond it the channel is not
/// read until replies go out: a worker that asks without reading its replies
/// is slowed down instead of filling the primary's memory, and no reply is
/// ever dropped.
const UNSENT_REPLIES: usize = 256;
/// Longest line of worker output before it is split.
const MAX_LINE: usize = 64 * 1024;

/// What is watched of one worker.
pub(super) struct Watch {
    id: WorkerId,
    /// Its slot and process id, for its output lines.
    slot: u32,
    pid: u32,
    /// Read with `recvmsg`, which keeps the fds a worker passes.
    frames: Option<Inbox<Counted>>,
    /// Where the frames read are counted (once per batch).
    traffic: Arc<Traffic>,
    pipes: Pipes,
    inputs: mpsc::Sender<Input>,
    budget: Arc<Semaphore>,
    /// Requests whose replies are not yet queued (see [`UNSENT_REPLIES`]).
    replies: Arc<Semaphore>,
    signals: mpsc::UnboundedReceiver<Signal>,
    /// Where lines go instead of the actor, if anywhere (see `output.rs`).
    output: Option<OutputSink>,
    /// A line waiting for room in `output`: no other line is read meanwhile.
    delivery: Option<Delivery>,
    /// Without a channel: the worker's end, kept open and unused, so that
    /// ours never reads an end of file.
    _unused: Option<OwnedFd>,
}

impl Watch {
    /// Watches `child` (its piped output, if any, its `cgroup` if it runs in
    /// one) and its channel, read through `codec` (or kept unread, its other
    /// end `unused`); signals sent on the returned sender reach it (and its
    /// group) while it is not reaped.
    pub(super) fn start(
        (id, slot, traffic): (WorkerId, u32, Arc<Traffic>),
        mut child: Child,
        cgroup: Option<sys::WorkerCgroup>,
        channel: Result<(OwnedReadHalf, AnyCodec, Sharing), OwnedFd>,
        inputs: mpsc::Sender<Input>,
        output: Option<OutputSink>,
    ) -> mpsc::UnboundedSender<Signal> {
        let (frames, unused) = match channel {
            Ok((read, codec, sharing)) => {
                let node = matches!(codec, AnyCodec::Node(_));
                let inbox = Inbox::new(read, Counted(codec, 0)).sharing(sharing);
                (Some(if node { inbox.closing_fds() } else { inbox }), None)
            }
            Err(unused) => (None, Some(unused)),
        };
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let pid = child.id().unwrap_or_default();
        let watch = Self {
            id,
            slot,
            pid,
            frames,
            traffic,
            pipes: Pipes {
                stdout: child.stdout.take().map(|s| FramedRead::new(s, LineCodec)),
                stderr: child.stderr.take().map(|s| FramedRead::new(s, LineCodec)),
            },
            inputs,
            budget: Arc::new(Semaphore::new(INPUT_BUDGET)),
            replies: Arc::new(Semaphore::new(UNSENT_REPLIES)),
            signals: signal_rx,
            output,
            delivery: None,
            _unused: unused,
        };
        tokio::spawn(watch.run(Process {
            child,
            pid,
            cgroup,
            group_ended: false,
        }));
        signals
    }

    /// Reports frames, lines, the end of the channel and the exit, in that
    /// order for each worker. Stops reading when the actor is gone (the child
    /// is then killed on drop).
    async fn run(mut self, mut process: Process) {
        let id = self.id;
        let mut status = None;
        let linger = tokio::time::sleep(Duration::MAX.min(Duration::from_secs(86_400 * 365)));
        tokio::pin!(linger);
        loop {
            if status.is_some()
                && self.frames.is_none()
                && !self.pipes.is_open()
                && self.delivery.is_none()
            {
                break;
            }
            let mut closed = None;
            let input = tokio::select! {
                frame = next_frame(&mut self.frames) => match self.closed(frame) {
                    Ok(frame) => {
                        // Take what else is already buffered, in one input.
                        let (mut count, mut weight) = (1, frame.weight());
                        let mut batch = vec![Inbound::Frame(frame)];
                        while count < BATCH && weight < BATCH_BYTES {
                            // (Bytes frames, the common case, as one run: see
                            // `Inbox::try_next_run`.)
                            let most = (BATCH - count, BATCH_BYTES - weight);
                            if let Some(run) = self.frames.as_mut().and_then(|f| f.try_next_run(most)) {
                                count += run.len();
                                weight += run.weight();
                                batch.push(Inbound::Bytes(run));
                                continue;
                            }
                            match self.frames.as_mut().and_then(Inbox::try_next) {
                                Some(Ok(frame)) => {
                                    count += 1;
                                    weight += frame.weight();
                                    batch.push(Inbound::Frame(frame));
                                }
                                None => break,
                                end => {
                                    closed = self.closed(end).err();
                                    break;
                                }
                            }
                        }
                        let bytes = self.frames.as_mut().map_or(0, |f| std::mem::take(&mut f.codec_mut().1));
                        self.traffic.received(count, bytes);
                        let share = u32::try_from(weight.min(INPUT_BUDGET)).unwrap_or(u32::MAX);
                        let Ok(permit) = self.budget.clone().acquire_many_owned(share).await else {
                            return;
                        };
                        let requests = (batch.iter())
                            .filter(|f| matches!(f, Inbound::Frame(frame) if frame.is_request()))
                            .count();
                        let replies = match u32::try_from(requests) {
                            Ok(0) | Err(_) => None,
                            Ok(requests) => match self.replies.clone().acquire_many_owned(requests).await {
                                Ok(replies) => Some(replies),
                                Err(_) => return,
                            },
                        };
                        Input::Frames(id, batch, permit, replies)
                    }
                    Err(end) => end,
                },
                line = self.pipes.next_line(), if self.delivery.is_none() && self.pipes.is_open() => {
                    match line.and_then(|(stream, line)| self.line(stream, line)) {
                        Some(input) => input,
                        None => continue,
                    }
                }
                () = delivered(&mut self.delivery) => {
                    self.delivery = None;
                    continue;
                }
                exit = process.child.wait(), if status.is_none() => {
                    status = Some(exit);
                    process.end_group();
                    // The exit is not held back by output waiting for room.
                    self.hand_off_output();
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    continue;
                }
                Some(signal) = self.signals.recv() => {
                    // Not reaped yet (we are its only reaper: see sys::reap), so the pid is
                    // still this worker's.
                    if matches!(process.child.try_wait(), Ok(None)) {
                        let _ = sys::send_signal(process.pid, true, signal.as_raw());
                        // SIGKILL: what left the group goes too.
                        if let (Signal::KILL, Some(cgroup)) = (signal, &process.cgroup) {
                            cgroup.kill();
                        }
                    }
                    continue;
                }
                () = &mut linger, if status.is_some() => break,
            };
            for input in std::iter::once(input).chain(closed) {
                if self.inputs.send(input).await.is_err() {
                    return;
                }
            }
        }
        self.hand_off_output();
        if self.frames.is_some() {
            let _ = self.inputs.send(Input::Closed(id, None)).await;
        }
        let _ = self
            .inputs
            .send(Input::Exited(id, status.and_then(Result::ok)))
            .await;
    }
}

/// A worker's process. What is left of its group and of its cgroup
/// (grandchildren) is killed once the worker is reaped, or when the watch
/// ends first (before the child is killed and reaped on drop); then the
/// orphan guard forgets it.
struct Process {
    child: Child,
    pid: u32,
    cgroup: Option<sys::WorkerCgroup>,
    group_ended: bool,
}

impl Process {
    fn end_group(&mut self) {
        if !std::mem::replace(&mut self.group_ended, true) {
            let _ = sys::send_signal(self.pid, true, libc::SIGKILL);
            // Killed, and removed once empty, on drop.
            drop(self.cgroup.take());
            sys::forget_group(self.pid);
            sys::own_children().remove(&self.pid);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.end_group();
    }
}

impl Watch {
    /// A frame, or the input that reports the end of the channel (which
    /// then stops being read).
    fn closed(&mut self, frame: Option<Result<Frame, ProtocolError>>) -> Result<Frame, Input> {
        let error = match frame {
            Some(Ok(frame)) => return Ok(frame),
            Some(Err(error)) if !error.is_disconnect() => Some(error),
            Some(Err(_)) | None => None,
        };
        // The bytes of the frames before the end, not reported with a batch.
        if let Some(mut frames) = self.frames.take() {
            self.traffic.received(0, frames.codec_mut().1);
        }
        Err(Input::Closed(self.id, error))
    }
}

impl Watch {
    /// With an output sink, what is left of the output is delivered by a
    /// task of its own from now on (see [`drain`]).
    fn hand_off_output(&mut self) {
        if let Some(output) = self.output.take()
            && (self.delivery.is_some() || self.pipes.is_open())
        {
            let pipes = std::mem::take(&mut self.pipes);
            let worker = (self.id, self.slot, self.pid);
            tokio::spawn(drain(worker, self.delivery.take(), pipes, output));
        }
    }

    /// A line of output: the input that reports it, or none when it went
    /// to the output sink (or waits for room there).
    fn line(&mut self, stream: OutputStream, line: String) -> Option<Input> {
        match &self.output {
            None => Some(Input::Output(self.id, stream, line)),
            Some(output) => {
                self.delivery = output.deliver(OutputLine {
                    worker: self.id,
                    slot: self.slot,
                    pid: self.pid,
                    stream,
                    line,
                });
                None
            }
        }
    }
}

/// Completes a waiting delivery; pending forever when there is none.
async fn delivered(delivery: &mut Option<Delivery>) {
    match delivery {
        Some(delivery) => delivery.await,
        None => std::future::pending().await,
    }
}

/// Delivers what is left of a worker's output once it exited: the waiting
/// line, then every line to the end of both streams.
async fn drain(
    (worker, slot, pid): (WorkerId, u32, u32),
    delivery: Option<Delivery>,
    mut pipes: Pipes,
    output: OutputSink,
) {
    if let Some(delivery) = delivery {
        delivery.await;
    }
    while let Some((stream, line)) = pipes.next_line().await {
        if let Some(delivery) = output.deliver(OutputLine {
            worker,
            slot,
            pid,
            stream,
            line,
        }) {
            delivery.await;
        }
    }
}

/// A worker's piped output, each stream until its end.
#[derive(Default)]
struct Pipes {
    stdout: Option<FramedRead<ChildStdout, LineCodec>>,
    stderr: Option<FramedRead<ChildStderr, LineCodec>>,
}

impl Pipes {
    fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// The next line of either stream; `None` once both have ended.
    ///
    /// Cancel safe: a line is taken from a stream only when returned.
    async fn next_line(&mut self) -> Option<(OutputStream, String)> {
        loop {
            tokio::select! {
                line = next(&mut self.stdout), if self.stdout.is_some() => match line {
                    Some(Ok(line)) => return Some((OutputStream::Stdout, line)),
                    _ => self.stdout = None,
                },
                line = next(&mut self.stderr), if self.stderr.is_some() => match line {
                    Some(Ok(line)) => return Some((OutputStream::Stderr, line)),
                    _ => self.stderr = None,
                },
                else => return None,
            }
        }
    }
}

/// The next item of an optional stream; pending forever when there is none.
/// The next frame of a channel; pending forever without one.
async fn next_frame(inbox: &mut Option<Inbox<Counted>>) -> Option<Result<Frame, ProtocolError>> {
    match inbox {
        Some(inbox) => inbox.next().await,
        None => std::future::pending().await,
    }
}

async fn next<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// A worker's frames, decoded by `.0`, with the bytes they took on the wire
/// so far in `.1`.
struct Counted(AnyCodec, usize);

impl crate::protocol::TakeBytes for Counted {
    fn take_run(&mut self, src: &mut BytesMut, most: (usize, usize)) -> Option<BytesRun> {
        let run = self.0.take_run(src, most)?;
        self.1 += run.wire_len();
        Some(run)
    }
}

impl Decoder for Counted {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let before = src.len();
        let frame = self.0.decode(src);
        self.1 += before.saturating_sub(src.len());
        frame
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let before = src.len();
        let frame = self.0.decode_eof(src);
        self.1 += before.saturating_sub(src.len());
        frame
    }
}

/// Splits output into lines of at most [`MAX_LINE`] bytes, lossily decoded.
struct LineCodec;

impl Decoder for LineCodec {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, std::io::Error> {
        let end = match src.iter().take(MAX_LINE).position(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if src.len() >= MAX_LINE => MAX_LINE,
            None => return Ok(None),
        };
        let line = src.split_to(end);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, std::io::Error> {
        match self.decode(src)? {
            Some(line) => Ok(Some(line)),
            None if src.is_empty() => Ok(None),
            None => {
                let rest = src.split();
                Ok(Some(String::from_utf8_lossy(&rest).into_owned()))
            }
        }
    }
}
