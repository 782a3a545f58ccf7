//! `run --ready notify` and `--ready-timeout` end to end, an inherited
//! `NOTIFY_SOCKET`, and the shutdown of Node workers without a `disconnect`
//! handler.
#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};

mod common;
use common::*;

/// A worker that says `STATUS=warming`, waits for the file it is given, says
/// `READY=1` and `STATUS=serving`, and `STOPPING=1` on SIGTERM.
const NOTIFY_WORKER: &str = r#"
import os, signal, socket, sys, time
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
def notify(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), address)
def stop(*_):
    notify("STOPPING=1")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("socket", os.environ["NOTIFY_SOCKET"], flush=True)
notify("STATUS=warming")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
notify("READY=1\nSTATUS=serving")
signal.pause()
"#;

fn scratch_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "isotropic-cli-notify-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn ready_notify_waits_for_ready_1_and_prints_status_and_stopping() {
    let go = scratch_file("ready");
    let go_arg = go.to_str().expect("a UTF-8 path");
    let mut command = command(&[
        "run",
        "--workers",
        "1",
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        NOTIFY_WORKER,
        go_arg,
    ]);
    // The CLI's own supervisor's socket: the worker gets the primary's.
    command
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .stdout(std::process::Stdio::piped());
    let (mut child, mut stderr) = spawn(command);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let socket = until(&mut stdout, "socket").await;
    assert!(
        socket
            .last()
            .is_some_and(|l| l.starts_with("[0] socket @isotropic-cluster/")),
        "{socket:?}"
    );
    let before = until(&mut stderr, "worker 1 status: warming").await;
    assert!(!before.iter().any(|l| l.contains("ready")), "{before:?}");
    std::fs::write(&go, "").expect("go");
    // (The status of the datagram that says ready comes first.)
    until(&mut stderr, "worker 1 status: serving").await;
    until(&mut stderr, "worker 1 ready").await;
    terminate(&child);
    until(&mut stderr, "worker 1 is stopping (STOPPING=1)").await;
    let rest = until(&mut stderr, "all workers exited").await;
    assert!(
        rest.iter().any(|l| l.contains("exited with code 0")),
        "{rest:?}"
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
    let _ = std::fs::remove_file(&go);
}

#[tokio::test]
async fn a_worker_not_ready_within_the_ready_timeout_is_stopped_and_replaced() {
    let never = scratch_file("never");
    let never_arg = never.to_str().expect("a UTF-8 path");
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "1",
        "--ready",
        "notify",
        "--ready-timeout",
        "300ms",
        "--",
        "python3",
        "-c",
        NOTIFY_WORKER,
        never_arg,
    ]);
    until(&mut stderr, "worker 1 not ready within 300ms: stopping it").await;
    // (It may die of the SIGTERM before Python has set its handler.)
    let rest = until(&mut stderr, "worker 2 started").await;
    let gone = |l: &&String| {
        l.contains("worker 1 exited")
            || l.starts_with("[primary] worker 1 (pid ") && l.contains(" SIGTERM")
    };
    assert!(rest.iter().any(|l| gone(&l)), "{rest:?}");
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn an_inherited_notify_socket_does_not_reach_workers() {
    let mut command = command(&[
        "run",
        "--workers",
        "1",
        "--",
        "sh",
        "-c",
        "echo \"socket=${NOTIFY_SOCKET-none}\"; exec sleep 60",
    ]);
    command
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .stdout(std::process::Stdio::piped());
    let (mut child, mut stderr) = spawn(command);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let seen = until(&mut stdout, "socket=").await;
    assert_eq!(seen.last().map(String::as_str), Some("[0] socket=none"));
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn node_workers_without_a_disconnect_handler_get_sigterm_soon_after_the_disconnect() {
    // A timer keeps it alive after the disconnect, as a server would.
    let script = "setInterval(() => {}, 1000); process.send('ready');";
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "2",
        "--channel",
        "node",
        "--grace",
        "20s",
        "--",
        "node",
        "-e",
        script,
    ]);
    until(&mut stderr, "ready").await;
    until(&mut stderr, "ready").await;
    let asked = Instant::now();
    terminate(&child);
    let rest = until(&mut stderr, "all workers exited").await;
    for id in [1, 2] {
        let says = |text: &str| {
            rest.iter()
                .any(|l| l.contains(&format!("worker {id} {text}")))
        };
        assert!(
            says("disconnected: waiting up to 1s for it to exit, then SIGTERM"),
            "{rest:?}"
        );
        let sent = format!("sent SIGTERM to worker {id} (pid ");
        assert!(rest.iter().any(|l| l.contains(&sent)), "{rest:?}");
        let ended = |l: &&String| {
            l.contains(&format!("worker {id} (pid "))
                && l.ends_with("ended on the SIGTERM the primary sent")
        };
        assert!(rest.iter().any(|l| ended(&l)), "{rest:?}");
    }
    // Not the whole grace.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
}
