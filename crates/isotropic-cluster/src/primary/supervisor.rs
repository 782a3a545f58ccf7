//! Starting one worker process, and the task that watches it: its channel, its
//! output and its exit, reported to the primary's actor in order.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{FutureExt as _, StreamExt};
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::{Decoder, FramedRead};

use super::Worker;
use super::builder::{Config, WorkerChannel, WorkerStdio};
use super::events::OutputStream;
use crate::WorkerId;
use crate::channel::Outbox;
use crate::error::{Error, ProtocolError};
use crate::protocol::{self, AnyCodec, Frame, FrameCodec, NodeCodec, Wire};
use crate::{role, sys};

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
/// Longest line of worker output before it is split.
const MAX_LINE: usize = 64 * 1024;

/// What the watcher of a worker reports to the actor.
#[derive(Debug)]
pub(crate) enum Input {
    /// Frames, in the order they arrived, with their share of the worker's
    /// input budget (given back when dropped).
    Frames(WorkerId, Vec<Frame>, OwnedSemaphorePermit),
    Output(WorkerId, OutputStream, String),
    /// The channel ended: end of file, or a protocol error.
    Closed(WorkerId, Option<ProtocolError>),
    /// The process exited and was reaped: exit code, or signal.
    Exited(WorkerId, Option<i32>, Option<i32>),
    /// A connection accepted on a round-robin address.
    Accepted(crate::net::ListenAddress, std::os::fd::OwnedFd),
}

/// A started worker: its handle, and where to send it signals.
pub(crate) struct Spawned {
    pub(crate) worker: Worker,
    pub(crate) signals: mpsc::UnboundedSender<i32>,
}

/// Starts worker `id` and the task that watches it.
pub(crate) fn spawn(
    config: &Config,
    id: WorkerId,
    inputs: mpsc::Sender<Input>,
) -> Result<Spawned, Error> {
    let program = config
        .program
        .clone()
        .unwrap_or_else(|| "/proc/self/exe".into());
    let spawn_error = |source: std::io::Error| Error::Spawn {
        program: program.clone(),
        source: source.into(),
    };
    let (ours, theirs) = sys::channel_pair().map_err(spawn_error)?;
    let mut command = tokio::process::Command::new(&program);
    match &config.args {
        Some(args) => {
            command.args(args);
        }
        None => {
            let mut own = std::env::args_os();
            if let Some(arg0) = own.next() {
                command.as_std_mut().arg0(arg0);
            }
            command.args(own);
        }
    }
    if config.env_clear {
        command.env_clear();
    }
    for (key, value) in &config.envs {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(dir) = &config.current_dir {
        command.current_dir(dir);
    }
    if let Some(gid) = config.gid {
        command.gid(gid);
    }
    if let Some(uid) = config.uid {
        command.uid(uid);
    }
    let stdio = |mode: WorkerStdio| match mode {
        WorkerStdio::Inherit => Stdio::inherit(),
        WorkerStdio::Null => Stdio::null(),
        WorkerStdio::Piped => Stdio::piped(),
    };
    command
        .stdin(Stdio::null())
        .stdout(stdio(config.stdout))
        .stderr(stdio(config.stderr))
        .process_group(0)
        .kill_on_drop(true);
    let with_channel = config.channel != WorkerChannel::None;
    match config.channel {
        WorkerChannel::Frames => command
            .env(role::WORKER_ID, id.to_string())
            .env(role::CHANNEL_FD, theirs.as_raw_fd().to_string())
            .env(role::PRIMARY_PID, std::process::id().to_string()),
        WorkerChannel::Node => command
            .env("NODE_CHANNEL_FD", theirs.as_raw_fd().to_string())
            .env("NODE_CHANNEL_SERIALIZATION_MODE", "json"),
        WorkerChannel::None => &mut command,
    };
    let inherited = with_channel.then(|| theirs.as_raw_fd());
    let passed: Vec<i32> = config.pass_fds.iter().map(AsRawFd::as_raw_fd).collect();
    if !passed.is_empty() {
        let list: Vec<String> = passed.iter().map(ToString::to_string).collect();
        command.env(sys::PASS_FDS, list.join(","));
    }
    let guard = sys::orphan_guard().map_err(spawn_error)?;
    sys::prepare_child(&mut command, inherited, passed, std::process::id(), guard);
    let mut child = command.spawn().map_err(spawn_error)?;
    // Without a channel, the worker's end stays here, unused, so that ours
    // never reads an end of file.
    let unused = (!with_channel).then_some(theirs);
    let pid = child.id().unwrap_or_default();

    let stream = std::os::unix::net::UnixStream::from(ours);
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
        .map_err(spawn_error)?;
    let (read, write) = stream.into_split();
    let outbox = Outbox::spawn(write, config.queue, Some(id));
    if config.channel == WorkerChannel::Frames {
        // The primary's hello: the first frame, queued before anything else.
        let _ = outbox.try_send(protocol::encode_control(&Frame::Hello {
            protocol: protocol::VERSION,
        }));
    }
    let worker = Worker::new(
        id,
        pid,
        outbox,
        config.max_frame_size,
        config.request_timeout,
        config.wire(),
    );
    let codec = match config.wire() {
        Wire::Frames => AnyCodec::Frames(FrameCodec::new(config.max_frame_size)),
        Wire::NodeJson => AnyCodec::Node(NodeCodec::new(config.max_frame_size)),
    };
    let (signals, signal_rx) = mpsc::unbounded_channel();
    let watch = Watch {
        id,
        // Without a channel there is nothing to read (and no end of file to
        // wait for after an exit).
        frames: with_channel.then(|| FramedRead::new(read, codec)),
        stdout: child.stdout.take().map(|s| FramedRead::new(s, LineCodec)),
        stderr: child.stderr.take().map(|s| FramedRead::new(s, LineCodec)),
        inputs,
        budget: Arc::new(Semaphore::new(INPUT_BUDGET)),
        signals: signal_rx,
        _unused: unused,
    };
    tokio::spawn(watch.run(Process {
        child,
        pid,
        group_ended: false,
    }));
    Ok(Spawned { worker, signals })
}

struct Watch {
    id: WorkerId,
    frames: Option<FramedRead<tokio::net::unix::OwnedReadHalf, AnyCodec>>,
    stdout: Option<FramedRead<ChildStdout, LineCodec>>,
    stderr: Option<FramedRead<ChildStderr, LineCodec>>,
    inputs: mpsc::Sender<Input>,
    budget: Arc<Semaphore>,
    signals: mpsc::UnboundedReceiver<i32>,
    _unused: Option<std::os::fd::OwnedFd>,
}

impl Watch {
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
                && self.stdout.is_none()
                && self.stderr.is_none()
            {
                break;
            }
            let mut closed = None;
            let input = tokio::select! {
                frame = next(&mut self.frames) => match self.closed(frame) {
                    Ok(frame) => {
                        // Take what else is already buffered, in one input.
                        let mut weight = frame.weight();
                        let mut batch = vec![frame];
                        while batch.len() < BATCH && weight < BATCH_BYTES {
                            let Some(frame) = self.frames.as_mut().and_then(|f| f.next().now_or_never()) else { break };
                            match self.closed(frame) {
                                Ok(frame) => {
                                    weight += frame.weight();
                                    batch.push(frame);
                                }
                                Err(end) => {
                                    closed = Some(end);
                                    break;
                                }
                            }
                        }
                        let share = u32::try_from(weight.min(INPUT_BUDGET)).unwrap_or(u32::MAX);
                        let Ok(permit) = self.budget.clone().acquire_many_owned(share).await else {
                            return;
                        };
                        Input::Frames(id, batch, permit)
                    }
                    Err(end) => end,
                },
                line = next(&mut self.stdout) => match line {
                    Some(Ok(line)) => Input::Output(id, OutputStream::Stdout, line),
                    _ => {
                        self.stdout = None;
                        continue;
                    }
                },
                line = next(&mut self.stderr) => match line {
                    Some(Ok(line)) => Input::Output(id, OutputStream::Stderr, line),
                    _ => {
                        self.stderr = None;
                        continue;
                    }
                },
                exit = process.child.wait(), if status.is_none() => {
                    status = Some(exit);
                    process.end_group();
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    continue;
                }
                Some(signal) = self.signals.recv() => {
                    // Not reaped yet (we are the only reaper), so the pid is
                    // still this worker's.
                    if matches!(process.child.try_wait(), Ok(None)) {
                        let _ = sys::send_signal(process.pid, true, signal);
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
        if self.frames.is_some() {
            let _ = self.inputs.send(Input::Closed(id, None)).await;
        }
        let (code, signal) = match status {
            Some(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                (status.code(), status.signal())
            }
            _ => (None, None),
        };
        let _ = self.inputs.send(Input::Exited(id, code, signal)).await;
    }
}

/// A worker's process. What is left of its group (grandchildren) is killed
/// once the worker is reaped, or when the watch ends first (before the
/// child is killed and reaped on drop); then the orphan guard forgets it.
struct Process {
    child: Child,
    pid: u32,
    group_ended: bool,
}

impl Process {
    fn end_group(&mut self) {
        if !std::mem::replace(&mut self.group_ended, true) {
            let _ = sys::send_signal(self.pid, true, libc::SIGKILL);
            sys::forget_group(self.pid);
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
        self.frames = None;
        Err(Input::Closed(self.id, error))
    }
}

/// The next item of an optional stream; pending forever when there is none.
async fn next<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
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
