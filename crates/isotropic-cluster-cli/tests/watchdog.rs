//! `isotropic-cluster run --watchdog`: a worker that stops answering
//! heartbeats is stopped and replaced; the shipped Python worker answers
//! them and stays.
#![cfg(target_os = "linux")]

mod common;
use common::*;

/// The shipped Python worker (it answers heartbeats).
const ECHO_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/workers/echo_worker.py"
);

/// Workers 1, 3 and 4 (so worker 1's replacement, and its) say hello
/// (answering heartbeats) and ready, then never read their channel again;
/// the others are the shipped worker.
const THREE_STUCK: &str = r#"
import os, socket, struct, sys, time
if os.environ["ISOTROPIC_CLUSTER_WORKER_ID"] in ("1", "3", "4"):
    channel = socket.socket(fileno=int(os.environ["ISOTROPIC_CLUSTER_CHANNEL_FD"]))
    hello = b'{"protocol":1,"heartbeat":true}'
    channel.sendall(struct.pack(">IB", len(hello) + 1, 1) + hello + struct.pack(">IB", 1, 2))
    time.sleep(300)
os.execvp(sys.executable, [sys.executable, sys.argv[1]])
"#;

#[tokio::test]
async fn a_worker_that_stops_answering_heartbeats_is_replaced_and_the_others_stay() {
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "2",
        "--channel",
        "frames",
        "--watchdog",
        "400ms",
        "--grace",
        "500ms",
        "--",
        "python3",
        "-c",
        THREE_STUCK,
        ECHO_WORKER,
    ]);
    let mut seen = until(&mut stderr, "worker 1 unresponsive").await;
    // Python's default SIGTERM ends it.
    seen.extend(until(&mut stderr, "ended on the SIGTERM the primary sent").await);
    assert!(
        seen.last().is_some_and(|l| l.contains("worker 1 (pid ")),
        "{seen:?}"
    );
    // Three stuck ones in a row, worker 2 answering all along.
    seen.extend(until(&mut stderr, "worker 5 ready").await);
    for stuck in [3, 4] {
        let line = format!("worker {stuck} unresponsive");
        assert!(seen.iter().any(|l| l.contains(&line)), "{seen:?}");
    }
    assert!(
        !seen.iter().any(|l| l.contains("worker 2 unresponsive")),
        "{seen:?}"
    );
    stop_cleanly(&mut child, &mut stderr, 2).await;
}

#[tokio::test]
async fn a_watchdog_without_our_channel_is_a_clear_error() {
    let (mut child, mut stderr) = cli(&["run", "--watchdog", "1s", "--", "true"]);
    until(&mut stderr, "--watchdog needs --channel frames").await;
    assert_eq!(exit_code(&mut child).await, Some(2));
}
