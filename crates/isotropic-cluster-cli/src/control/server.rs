//! The primary's side of the control socket: binds it (refusing a path
//! where another primary answers, replacing a dead one's file), checks each
//! peer's user, and answers requests, each connection in a task of its own
//! so that a slow or stuck client holds up nobody else.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use isotropic_cluster::primary::ClusterPrimary;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::logs::{Followed, LogTap};
use super::protocol::{self, ErrorCode, Failure, LogRecord, Request, WorkerRow};
use crate::report::Report;
use crate::sys::{self, Credentials};

/// Connections served at once; more are answered `busy`.
const MAX_CONNECTIONS: usize = 32;
/// A connection with no request this long is closed (not `logs -f`, nor a
/// `stop` waiting for the end).
const IDLE: Duration = Duration::from_secs(30);
/// How long, and how much, a connection ended by a bad request is still
/// read (and dropped) after its error, so that the client can finish
/// writing and read the error, then the end.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How long a probe waits for the primary that holds the socket to answer.
const PROBE: Duration = Duration::from_secs(2);

/// What the run's loop is asked to do: what SIGTTIN/SIGTTOU, SIGHUP and
/// SIGTERM do, with an answer.
#[derive(Debug)]
pub(crate) enum Command {
    /// Resize the pool (its index in [`Served::pools`]) to `workers`: the
    /// size before and after.
    Scale {
        pool: usize,
        workers: usize,
        reply: oneshot::Sender<Result<(usize, usize), Refusal>>,
    },
    /// A rollout: answered once it completed (workers replaced) or failed.
    Reload {
        pool: usize,
        reply: oneshot::Sender<Result<usize, Refusal>>,
    },
    /// A graceful shutdown: answered once begun.
    Stop { reply: oneshot::Sender<()> },
}

/// Why the run's loop did not do a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The primary is shutting down.
    ShuttingDown,
    /// A reload's new workers failed, and were rolled back.
    RolledBack(String),
    /// The primary could not (why).
    Failed(String),
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::ShuttingDown => shutting_down(),
            Refusal::RolledBack(why) => Failure::new(ErrorCode::RolledBack, why),
            Refusal::Failed(why) => Failure::new(ErrorCode::Failed, why),
        }
    }
}

fn shutting_down() -> Failure {
    Failure::new(ErrorCode::ShuttingDown, "the primary is shutting down")
}

/// A bound control socket; when dropped, its connections end (none holds
/// the primary any longer) and its file is removed (unless another primary
/// has put its own at the path since).
#[derive(Debug)]
pub(crate) struct ControlSocket {
    path: PathBuf,
    /// The file's device and inode, to tell it from a successor's.
    file: (u64, u64),
    listener: Option<UnixListener>,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

/// What a connection needs to answer.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// Each pool's name (`default`, for the one pool of `run`) and primary.
    pub(crate) pools: Vec<(String, ClusterPrimary)>,
    pub(crate) tap: LogTap,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) report: Report,
}

impl ControlSocket {
    /// Binds `path` (mode 0600). A socket file there is refused while a
    /// primary answers on it, and replaced if it refuses connections (its
    /// primary is gone), or in any case with `replace` (an upgrade's new
    /// primary takes over its old one's).
    ///
    /// # Errors
    ///
    /// Another primary answers at `path`; `path` is not a socket; it cannot
    /// be bound.
    pub(crate) async fn bind(path: &Path, replace: bool) -> anyhow::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => anyhow::bail!("cannot use {}: {error}", path.display()),
            Ok(metadata) if !metadata.file_type().is_socket() => {
                anyhow::bail!("{} exists and is not a socket", path.display())
            }
            Ok(_) => {
                if !replace {
                    refuse_if_live(path).await?;
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot replace {}", path.display()))?;
            }
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: (metadata.dev(), metadata.ino()),
            listener: Some(listener),
            accepting: None,
        })
    }

    /// Answers connections from now on.
    pub(crate) fn serve(&mut self, served: Served) {
        if let Some(listener) = self.listener.take() {
            self.accepting = Some(tokio::spawn(accept(listener, Arc::new(served))));
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(accepting) = &self.accepting {
            accepting.abort();
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Fails if a primary answers at `path` (with its pid if it says it);
/// succeeds if the socket refuses connections (a stale file).
async fn refuse_if_live(path: &Path) -> anyhow::Result<()> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
        Err(error) => anyhow::bail!("cannot check {}: {error}", path.display()),
    };
    let pid = tokio::time::timeout(PROBE, hello(stream))
        .await
        .ok()
        .flatten();
    match pid {
        Some(pid) => anyhow::bail!(
            "another primary is running at {} (pid {pid})",
            path.display()
        ),
        None => anyhow::bail!(
            "another primary is running at {} (it does not answer)",
            path.display()
        ),
    }
}

/// The pid of the primary at the other end of `stream`, if it says.
async fn hello(mut stream: UnixStream) -> Option<u64> {
    let mut request = serde_json::to_string(&Request::Hello).ok()?;
    request.push('\n');
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.ok()?;
    serde_json::from_str::<Value>(&line).ok()?["pid"].as_u64()
}

/// Accepts connections, each served by a task of the set (aborted with
/// it: when the socket is dropped, no connection holds the primary any
/// longer).
async fn accept(listener: UnixListener, served: Arc<Served>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // (Out of fds, say: try again soon rather than spin.)
                let text = format!("control socket: cannot accept a connection: {error}");
                served.report.warn("control", &text);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            // (Into the empty socket buffer: it does not wait.)
            let busy = format!("{MAX_CONNECTIONS} control connections are open already");
            let mut line = Failure::new(ErrorCode::Busy, busy).to_json().to_string();
            line.push('\n');
            let _ = stream.try_write(line.as_bytes());
            continue;
        }
        let served = Arc::clone(&served);
        connections.spawn(async move { connection(stream, &served).await });
    }
}

/// Whether a peer may control a primary run by `own_uid`: the same user, or
/// root (who could signal it anyway).
pub(crate) fn admit(peer: Credentials, own_uid: u32) -> Result<(), Failure> {
    if peer.uid == own_uid || peer.uid == 0 {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorCode::Forbidden,
            format!(
                "uid {} may not control this primary (it runs as uid {own_uid})",
                peer.uid
            ),
        ))
    }
}

/// Serves one connection: its peer checked, then its requests in turn.
async fn connection(stream: UnixStream, served: &Served) {
    let peer = sys::peer_credentials(&stream);
    let (read, mut write) = stream.into_split();
    let admitted = match peer {
        Ok(peer) => admit(peer, sys::own_uid()).inspect_err(|_| {
            let text = format!(
                "control socket: refused a connection from uid {} (pid {}): another user",
                peer.uid, peer.pid
            );
            served.report.warn("control", &text);
        }),
        Err(error) => Err(Failure::new(
            ErrorCode::Forbidden,
            format!("who the client is cannot be told: {error}"),
        )),
    };
    if let Err(failure) = admitted {
        let _ = send(&mut write, &failure.to_json()).await;
        return;
    }
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(protocol::MAX_REQUEST));
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(error))) => {
                let failure = match error {
                    LinesCodecError::MaxLineLengthExceeded => Failure::new(
                        ErrorCode::TooLarge,
                        format!("a request is at most {} bytes", protocol::MAX_REQUEST),
                    ),
                    LinesCodecError::Io(error) => {
                        Failure::new(ErrorCode::BadRequest, error.to_string())
                    }
                };
                // (The rest of the stream cannot be trusted: closed.)
                let _ = send(&mut write, &failure.to_json()).await;
                let _ = write.shutdown().await;
                linger(lines.into_inner()).await;
                return;
            }
        };
        let request = match protocol::parse(&line) {
            Ok(request) => request,
            Err(failure) => {
                if send(&mut write, &failure.to_json()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = match request {
            Request::Logs {
                lines: count,
                follow,
            } => {
                return logs(write, lines, served, count, follow).await;
            }
            Request::Stop => return stop(write, served).await,
            Request::Hello => Ok(protocol::ok(json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "pools": served.pools.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            }))),
            Request::Status => Ok(status(served).await),
            Request::Scale { workers, pool } => scale(served, workers, pool.as_deref()).await,
            Request::Reload { pool } => reload(served, pool.as_deref()).await,
        };
        let reply = reply.unwrap_or_else(|failure| failure.to_json());
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

/// Every live worker, a row each, by pool and slot.
async fn status(served: &Served) -> Value {
    let mut rows: Vec<WorkerRow> = Vec::new();
    for (name, primary) in &served.pools {
        let figures = primary.figures().await;
        rows.extend(figures.iter().map(|figures| WorkerRow::of(name, figures)));
    }
    rows.sort_by(|a, b| (&a.pool, a.slot, a.id).cmp(&(&b.pool, b.slot, b.id)));
    protocol::ok(json!({"pid": std::process::id(), "workers": rows}))
}

async fn scale(served: &Served, workers: usize, pool: Option<&str>) -> Result<Value, Failure> {
    let (pool, name) = check_pool(served, pool)?;
    if workers == 0 {
        return Err(Failure::new(
            ErrorCode::Invalid,
            "a pool keeps at least 1 worker (stop ends them all)",
        ));
    }
    let (from, to) = ask(served, |reply| Command::Scale {
        pool,
        workers,
        reply,
    })
    .await??;
    Ok(protocol::ok(json!({"pool": name, "from": from, "to": to})))
}

/// A rollout, answered once over: with the newest generation running.
async fn reload(served: &Served, pool: Option<&str>) -> Result<Value, Failure> {
    let (pool, name) = check_pool(served, pool)?;
    let restarted = ask(served, |reply| Command::Reload { pool, reply }).await??;
    let figures = served.pools[pool].1.figures().await;
    let generation = figures.iter().map(|figures| figures.generation).max();
    Ok(protocol::ok(json!({
        "pool": name,
        "restarted": restarted,
        "generation": generation,
    })))
}

/// The pool a request names (the only one if it names none): its index in
/// [`Served::pools`], and its name.
fn check_pool<'a>(served: &'a Served, pool: Option<&str>) -> Result<(usize, &'a str), Failure> {
    let names = || {
        let names: Vec<&str> = served.pools.iter().map(|(name, _)| name.as_str()).collect();
        names.join(", ")
    };
    let found = match pool {
        Some(name) => served.pools.iter().position(|(known, _)| known == name),
        None if served.pools.len() == 1 => Some(0),
        None => {
            let text = format!("name a pool (--pool NAME): there are {}", names());
            return Err(Failure::new(ErrorCode::NoSuchPool, text));
        }
    };
    match found {
        Some(at) => Ok((at, served.pools[at].0.as_str())),
        None => Err(Failure::new(
            ErrorCode::NoSuchPool,
            format!(
                "no pool named {} (there is {})",
                pool.unwrap_or_default(),
                names()
            ),
        )),
    }
}

/// Asks the run's loop to do `command`; its answer.
async fn ask<T>(
    served: &Served,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Failure> {
    let (reply, answer) = oneshot::channel();
    served
        .commands
        .send(command(reply))
        .await
        .map_err(|_| shutting_down())?;
    answer.await.map_err(|_| shutting_down())
}

/// `stop`: the shutdown begun, answered; the connection then stays open
/// until the primary has exited (its end tells the client).
async fn stop(mut write: OwnedWriteHalf, served: &Served) {
    if ask(served, |reply| Command::Stop { reply }).await.is_ok() {
        let reply = protocol::ok(json!({"pid": std::process::id(), "stopping": true}));
        if send(&mut write, &reply).await.is_ok() {
            std::future::pending::<()>().await;
        }
    }
}

/// `logs`: the last `count` lines, then, with `follow`, each new one until
/// the client goes away (or sends anything more).
async fn logs(
    mut write: OwnedWriteHalf,
    mut requests: FramedRead<OwnedReadHalf, LinesCodec>,
    served: &Served,
    count: usize,
    follow: bool,
) {
    let (last, following) = served.tap.tail(count, follow);
    let records = std::iter::once(protocol::ok(json!({}))).chain(
        last.iter()
            .map(|line| record(LogRecord::Line(line.to_string()))),
    );
    for reply in records {
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
    let Some(mut following) = following else {
        let _ = send(&mut write, &record(LogRecord::End(true))).await;
        return;
    };
    loop {
        let next = tokio::select! {
            next = following.next() => next,
            _ = requests.next() => None,
        };
        let Some(next) = next else {
            return;
        };
        let next = match next {
            Followed::Line(line) => LogRecord::Line(line.to_string()),
            Followed::Skipped(count) => LogRecord::Skipped(count),
        };
        if send(&mut write, &record(next)).await.is_err() {
            return;
        }
    }
}

fn record(record: LogRecord) -> Value {
    serde_json::to_value(record).unwrap_or_default()
}

/// Reads and drops what a client still sends after the error that ends
/// its connection, until it closes its end (for at most [`LINGER`] and
/// [`LINGER_BYTES`]). Closed at once, the client could be refused the rest
/// of a long request (`EPIPE`) or get a reset where it expects the end.
async fn linger(mut read: OwnedReadHalf) {
    let mut scratch = vec![0; 16 * 1024];
    let mut left = LINGER_BYTES;
    let drain = async {
        while let Ok(read @ 1..) = read.read(&mut scratch).await {
            left = left.saturating_sub(read);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Writes `reply` as one line.
async fn send(write: &mut OwnedWriteHalf, reply: &Value) -> std::io::Result<()> {
    let mut line = reply.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_user_and_root_are_admitted_others_refused() {
        let peer = |uid| Credentials { pid: 42, uid };
        assert_eq!(admit(peer(1000), 1000), Ok(()));
        assert_eq!(admit(peer(0), 1000), Ok(()));
        assert_eq!(admit(peer(0), 0), Ok(()));
        let refused = admit(peer(65534), 0).expect_err("another user");
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert_eq!(
            refused.message,
            "uid 65534 may not control this primary (it runs as uid 0)"
        );
        assert!(admit(peer(1001), 1000).is_err());
    }
}
