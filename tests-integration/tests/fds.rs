//! Fds with messages and large payloads in sealed memfds (protocol version
//! 3): round trips both ways, the fds used at the other end, and nothing
//! left open in the primary or the worker afterwards.
#![cfg(target_os = "linux")]

use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use isotropic_cluster::primary::*;
use isotropic_cluster::{MAX_FDS, ProtocolError, SendError};
use serde_json::json;
use tests_integration::{Mode, launch, primary, shut_down, wait_for};

/// How many fds process `pid` holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Waits until `pid` holds `count` fds again (an fd sent is closed by the
/// sender's writer task just after it is written), for at most 10 s;
/// returns how many it holds.
async fn settled(pid: u32, count: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_fds(pid) != count && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open_fds(pid)
}

/// The fds held by this process and by a worker, to compare before and
/// after.
struct FdCounts {
    ours: usize,
    worker: (u32, usize),
}

impl FdCounts {
    fn now(worker: &WorkerHandle) -> Self {
        Self {
            ours: open_fds(std::process::id()),
            worker: (worker.pid(), open_fds(worker.pid())),
        }
    }

    /// Asserts that both hold as many fds as they did (once the last ones
    /// sent are closed).
    async fn assert_settled(&self) {
        let (pid, count) = self.worker;
        let ours = settled(std::process::id(), self.ours).await;
        assert_eq!(ours, self.ours, "the primary's fds");
        assert_eq!(settled(pid, count).await, count, "the worker's fds");
    }
}

/// A file holding `text`, already unlinked: only the fd names it.
fn unlinked_file(text: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "isotropic-cluster-fds-{}-{text}",
        std::process::id()
    ));
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("a new file");
    std::fs::remove_file(&path).expect("unlinked");
    file.write_all(text.as_bytes()).expect("written");
    file
}

/// Reads `fd` (a pipe's read end) to its end, off the runtime.
async fn read_pipe(fd: impl Into<OwnedFd>) -> String {
    let fd = fd.into();
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .expect("read");
        text
    })
    .await
    .expect("no panic")
}

#[tokio::test]
async fn a_pipe_end_and_a_file_go_both_ways_and_are_used() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let before = FdCounts::now(&worker);

    let (read, write) = std::io::pipe().expect("a pipe");
    let file = unlinked_file("contents of the file");
    let fds: Vec<OwnedFd> = vec![write.into(), file.into()];
    worker
        .send_with_fds(&json!({"type": "use-fds"}), fds)
        .await
        .expect("sent");
    // The worker wrote into the pipe end it got (ours is closed once sent).
    assert_eq!(read_pipe(read).await, format!("worker {}", worker.id()));

    let (message, fds) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => Some((m.message.clone(), m.take_fds())),
        _ => None,
    })
    .await;
    assert_eq!(
        message.decode::<serde_json::Value>().expect("json"),
        json!({"file": "contents of the file"})
    );
    let [back, file]: [OwnedFd; 2] = fds.try_into().expect("two fds came back");
    assert_eq!(read_pipe(back).await, format!("back from {}", worker.id()));
    let mut file = std::fs::File::from(file);
    file.rewind().expect("rewound");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read");
    assert_eq!(text, "contents of the file");
    drop(file);

    before.assert_settled().await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn fds_go_both_ways_without_waiting() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let before = FdCounts::now(&worker);
    let (read, write) = std::io::pipe().expect("a pipe");
    let null = std::fs::File::open("/dev/null").expect("opened");
    let fds: Vec<OwnedFd> = vec![write.into(), null.into()];
    // The worker's handler sends them back with its context's
    // `try_send_bytes_with_fds`.
    worker
        .try_send_with_fds(&json!({"type": "fds-back"}), fds)
        .expect("queued");
    let (bytes, fds) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some((b.bytes.clone(), b.take_fds())),
        _ => None,
    })
    .await;
    assert_eq!(&bytes[..], b"fds back");
    let [write, null]: [OwnedFd; 2] = fds.try_into().expect("two fds came back");
    drop(null);
    // The pipe's write end came back: what we write comes out of our read end.
    std::fs::File::from(write)
        .write_all(b"the same pipe")
        .expect("written");
    assert_eq!(read_pipe(read).await, "the same pipe");
    // More than the bound: refused at once, as `send_with_fds` refuses them.
    let too_many: Vec<OwnedFd> = (0..=MAX_FDS)
        .map(|_| std::fs::File::open("/dev/null").expect("opened").into())
        .collect();
    let refused = worker.try_send_bytes_with_fds(Bytes::new(), too_many);
    assert!(
        matches!(
            refused,
            Err(SendError::Encode(ProtocolError::TooManyFds { .. }))
        ),
        "{refused:?}"
    );
    before.assert_settled().await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn fds_never_taken_are_closed_with_the_event() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    // The worker echoes bytes with `try_send_bytes`, without the fds; ours
    // go, the worker's copies are dropped with its event.
    let before = FdCounts::now(&worker);
    let fds: Vec<OwnedFd> = (0..MAX_FDS)
        .map(|_| std::fs::File::open("/dev/null").expect("opened").into())
        .collect();
    worker
        .send_bytes_with_fds(Bytes::from_static(b"with fds"), fds)
        .await
        .expect("sent");
    let echo = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some((b.bytes, b.fds.len())),
        _ => None,
    })
    .await;
    assert_eq!(echo, (Bytes::from_static(b"with fds"), 0));
    before.assert_settled().await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn more_fds_than_the_bound_are_refused_and_closed() {
    let (primary, _events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let ours = std::process::id();
    let before = open_fds(ours);
    let fds: Vec<OwnedFd> = (0..=MAX_FDS)
        .map(|_| std::fs::File::open("/dev/null").expect("opened").into())
        .collect();
    let refused = worker.send_with_fds(&json!("too many"), fds).await;
    assert!(
        matches!(
            refused,
            Err(SendError::Encode(ProtocolError::TooManyFds { count, max }))
                if count == MAX_FDS + 1 && max == MAX_FDS
        ),
        "{refused:?}"
    );
    assert_eq!(open_fds(ours), before);
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_16_mib_payload_goes_both_ways_through_sealed_memfds() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let before = FdCounts::now(&worker);
    // Over the maximum frame (16 MiB with its kind byte): only a sealed
    // payload can carry it.
    let payload: Bytes = (0..16 << 20)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    worker.send_bytes(payload.clone()).await.expect("sent");
    let echo = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some(b.bytes),
        _ => None,
    })
    .await;
    assert!(echo == payload, "the echo differs");
    drop(echo);
    before.assert_settled().await;
    shut_down(&primary).await;
}
