//! `run --metrics ADDR`: a scrape has a series per worker, `/healthz` and
//! `/readyz` answer as the pool stands, and bad requests change nothing.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::path::PathBuf;

mod common;
use common::*;

/// A worker that is ready (`READY=1`) at once if it is the first of its
/// slot, else once the file `argv[1]` exists; it exits 0 on SIGTERM.
const GATED_WORKER: &str = r#"
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
gate, seen = sys.argv[1], sys.argv[2] + "-" + os.environ["ISOTROPIC_CLUSTER_SLOT"]
try:
    os.mkdir(seen)
except FileExistsError:
    while not os.path.exists(gate):
        time.sleep(0.01)
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1", address)
signal.pause()
"#;

/// Paths for this test's gate file and slot markers, none of them there.
fn scratch(test: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!(
        "isotropic-cli-metrics-{test}-{}",
        std::process::id()
    ));
    let gate = base.with_extension("gate");
    let _ = std::fs::remove_file(&gate);
    for slot in 0..2 {
        let _ = std::fs::remove_dir(format!("{}-{slot}", base.display()));
    }
    (gate, base)
}

/// The CLI and what `start` read of it.
struct Started {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// The metrics' address.
    address: SocketAddr,
    /// The gate file and the base of the slot markers.
    files: (PathBuf, PathBuf),
    /// The lines read.
    seen: Vec<String>,
}

/// The CLI with 2 gated workers and `--metrics` on a free port, once both
/// are ready.
async fn start(test: &str) -> Started {
    let (gate, base) = scratch(test);
    let args = [
        "run",
        "--workers",
        "2",
        "--ready",
        "notify",
        "--metrics",
        "127.0.0.1:0",
        // A loaded machine may take seconds to start Python and run its
        // SIGTERM handler; the default 5 s grace would SIGKILL it.
        "--grace",
        "60s",
        "--",
        "python3",
        "-c",
        GATED_WORKER,
        gate.to_str().expect("UTF-8"),
        base.to_str().expect("UTF-8"),
    ];
    let (child, mut stderr) = cli(&args);
    let seen = until_all(
        &mut stderr,
        &["metrics on http://", "worker 1 ready", "worker 2 ready"],
    )
    .await;
    let line = seen
        .iter()
        .find(|line| line.contains("metrics on http://"))
        .expect("the metrics line");
    let address = line
        .rsplit("http://")
        .next()
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    let files = (gate, base);
    Started {
        child,
        stderr,
        address,
        files,
        seen,
    }
}

/// `/readyz` answers `code`, with `ready` of the 2 workers ready.
async fn assert_readyz(address: SocketAddr, code: u16, ready: u32) {
    let body = format!("pool default: {ready} of 2 workers ready (at least 2 needed)\n");
    assert_eq!(get(address, "/readyz").await, (code, body));
}

/// The value of `series` (its name and labels as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

fn worker_series(name: &str, slot: u32, id: u64) -> String {
    format!("{name}{{pool=\"default\",slot=\"{slot}\",worker_id=\"{id}\",generation=\"1\"}}")
}

/// The pid in worker `id`'s `started` line among `seen`.
fn pid_of(seen: &[String], id: u64) -> i32 {
    let prefix = format!("[primary] worker {id} started");
    seen.iter()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit("(pid ").next())
        .and_then(|pid| pid.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("worker {id}'s pid in {seen:?}"))
}

fn clean_up((gate, seen): &(PathBuf, PathBuf)) {
    let _ = std::fs::remove_file(gate);
    for slot in 0..2 {
        let _ = std::fs::remove_dir(format!("{}-{slot}", seen.display()));
    }
}

#[tokio::test]
async fn a_scrape_has_a_series_per_worker_and_bad_requests_change_nothing() {
    let Started {
        mut child,
        mut stderr,
        address,
        files,
        ..
    } = start("scrape").await;
    let (code, text) = get(address, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    for (slot, id) in [(0, 1), (1, 2)] {
        for name in [
            "isotropic_cluster_worker_messages_sent_total",
            "isotropic_cluster_worker_requests_in_flight",
        ] {
            let series = worker_series(name, slot, id);
            assert!(sample(&text, &series).is_some(), "{series} in {text}");
        }
    }
    let ready = sample(&text, "isotropic_cluster_workers_ready{pool=\"default\"}");
    assert_eq!(ready, Some(2.0), "{text}");
    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_owned()));
    assert_readyz(address, 200, 2).await;

    // Bad requests: answered with an error or cut off, one by one.
    assert_eq!(get(address, "/nope").await.0, 404);
    let post = exchange(address, b"POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post:?}");
    let garbage = exchange(address, b"\x00\x01 not http at all\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage:?}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let oversized = exchange(address, huge.as_bytes()).await;
    assert!(
        oversized.is_empty() || oversized.starts_with("HTTP/1.1 431"),
        "{}",
        &oversized[..oversized.len().min(200)]
    );
    // A second primary on the same address cannot start: it says why.
    let taken = address.to_string();
    let (mut second, mut second_stderr) = cli(&["run", "--metrics", &taken, "--", "true"]);
    let said = until(&mut second_stderr, "cannot serve metrics").await;
    assert!(
        said.last().is_some_and(|line| line.contains(&taken)),
        "{said:?}"
    );
    assert_eq!(exit_code(&mut second).await, Some(7), "a start failure");
    // The pool served on, untouched: no worker left, both still ready.
    assert_eq!(get(address, "/readyz").await.0, 200);
    let (_, after) = get(address, "/metrics").await;
    let exits = "isotropic_cluster_exits_total{pool=\"default\",reason=\"signal\"}";
    assert_eq!(sample(&after, exits), Some(0.0), "{after}");
    stop_cleanly(&mut child, &mut stderr, 2).await;
    clean_up(&files);
}

#[tokio::test]
async fn readyz_is_503_while_the_pool_is_short_and_200_once_it_is_full() {
    let Started {
        mut child,
        mut stderr,
        address,
        files,
        seen,
    } = start("readyz").await;
    assert_eq!(get(address, "/readyz").await.0, 200);
    let (_, text) = get(address, "/metrics").await;
    assert!(text.contains("worker_id=\"1\""), "{text}");
    // Worker 1 is killed; its replacement (3) waits for the gate.
    let pid = pid_of(&seen, 1);
    let killed = format!("worker 1 (pid {pid}) was killed by SIGKILL");
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill worker 1");
    until_all(&mut stderr, &[killed.as_str(), "worker 3 started"]).await;
    assert_readyz(address, 503, 1).await;
    assert_eq!(get(address, "/healthz").await.0, 200);
    let (_, text) = get(address, "/metrics").await;
    let exits = "isotropic_cluster_exits_total{pool=\"default\",reason=\"signal\"}";
    assert_eq!(sample(&text, exits), Some(1.0), "{text}");
    let restarts = "isotropic_cluster_restarts_total{pool=\"default\"}";
    assert_eq!(sample(&text, restarts), Some(1.0), "{text}");
    assert!(
        !text.contains("worker_id=\"1\""),
        "its series went with it: {text}"
    );
    let replacement = worker_series("isotropic_cluster_worker_messages_sent_total", 0, 3);
    assert!(sample(&text, &replacement).is_some(), "{text}");
    let ready = "isotropic_cluster_workers{pool=\"default\",state=\"ready\"}";
    assert_eq!(sample(&text, ready), Some(1.0), "{text}");

    std::fs::write(&files.0, b"").expect("open the gate");
    until(&mut stderr, "worker 3 ready").await;
    assert_readyz(address, 200, 2).await;
    stop_cleanly(&mut child, &mut stderr, 2).await;
    clean_up(&files);
}

/// `run --metrics 127.0.0.1:0 --config FILE`, the file `text` (written
/// beside `files`' gate); once `ready` lines were read: the CLI, its
/// stderr, the metrics' address and the lines read.
async fn start_config(
    files: &(PathBuf, PathBuf),
    text: &str,
    ready: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    SocketAddr,
    Vec<String>,
) {
    let config = files.1.with_extension("toml");
    std::fs::write(&config, text).expect("the config");
    let config = config.to_str().expect("UTF-8");
    let args = ["run", "--metrics", "127.0.0.1:0", "--config", config];
    let (child, mut stderr) = cli(&args);
    let seen = until_all(&mut stderr, &[&["metrics on http://"][..], ready].concat()).await;
    let address = (seen.iter())
        .find_map(|line| line.split("metrics on http://").nth(1))
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("the metrics' address in {seen:?}"));
    (child, stderr, address, seen)
}

/// A `[pools.NAME]` of `workers` that say `up` and exit 0 on SIGTERM.
fn plain_pool(name: &str, workers: u32) -> String {
    format!(
        "[pools.{name}]\nworkers = {workers}\n\
         command = [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo up; sleep 60 & wait\"]\n"
    )
}

#[tokio::test]
async fn with_two_pools_a_scrape_has_both_and_readyz_is_503_while_one_is_short() {
    let files = scratch("two-pools");
    let (gate, base) = (
        files.0.to_str().expect("UTF-8"),
        files.1.to_str().expect("UTF-8"),
    );
    let [worker, gate, base] =
        [GATED_WORKER, gate, base].map(|s| serde_json::to_string(s).expect("TOML"));
    let text = format!(
        "[pools.web]\nworkers = 2\nready = \"notify\"\ngrace = \"60s\"\n\
         command = [\"python3\", \"-c\", {worker}, {gate}, {base}]\n{}",
        plain_pool("jobs", 1)
    );
    let ready = [
        "web worker 1 ready",
        "web worker 2 ready",
        "jobs worker 1 ready",
    ];
    let (mut child, mut stderr, address, seen) = start_config(&files, &text, &ready).await;

    // One scrape: the series of both pools, told apart by their label.
    let (code, text) = get(address, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    for (pool, ready) in [("web", 2.0), ("jobs", 1.0)] {
        let series = format!("isotropic_cluster_workers_ready{{pool=\"{pool}\"}}");
        assert_eq!(sample(&text, &series), Some(ready), "{series} in {text}");
    }
    for (pool, slot, id) in [("web", 0, 1), ("web", 1, 2), ("jobs", 0, 1)] {
        let series = format!(
            "isotropic_cluster_worker_messages_sent_total{{pool=\"{pool}\",slot=\"{slot}\",worker_id=\"{id}\",generation=\"1\"}}"
        );
        assert!(sample(&text, &series).is_some(), "{series} in {text}");
    }
    let full = "pool jobs: 1 of 1 workers ready (at least 1 needed)\n\
                pool web: 2 of 2 workers ready (at least 2 needed)\n";
    assert_eq!(get(address, "/readyz").await, (200, full.to_owned()));

    // Web's worker 1 is killed; its replacement (3) waits for the gate:
    // not ready while web is short, though jobs is full.
    let pid = seen
        .iter()
        .find(|line| line.starts_with("[primary] web worker 1 started"))
        .and_then(|line| line.rsplit("(pid ").next())
        .and_then(|pid| pid.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("web worker 1's pid in {seen:?}"));
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill worker 1");
    until(&mut stderr, "web worker 3 started").await;
    let short = "pool jobs: 1 of 1 workers ready (at least 1 needed)\n\
                 pool web: 1 of 2 workers ready (at least 2 needed)\n";
    assert_eq!(get(address, "/readyz").await, (503, short.to_owned()));
    assert_eq!(get(address, "/healthz").await.0, 200);

    std::fs::write(&files.0, b"").expect("open the gate");
    until(&mut stderr, "web worker 3 ready").await;
    assert_eq!(get(address, "/readyz").await, (200, full.to_owned()));
    stop_cleanly(&mut child, &mut stderr, 3).await;
    clean_up(&files);
    let _ = std::fs::remove_file(files.1.with_extension("toml"));
}

#[tokio::test]
async fn a_pool_that_ended_alone_leaves_the_primary_healthy_and_ready() {
    let files = scratch("pool-ended");
    // `once`'s worker exits 0 at once and is not replaced: its pool ends,
    // the other serves on.
    let text = format!(
        "{}[pools.once]\nworkers = 1\nrestart = \"never\"\ncommand = [\"sh\", \"-c\", \"exit 0\"]\n",
        plain_pool("web", 1)
    );
    let ready = ["web worker 1 ready", "once worker 1 exited with code 0"];
    let (mut child, mut stderr, address, _) = start_config(&files, &text, &ready).await;
    let ended = async || {
        get(address, "/readyz")
            .await
            .1
            .contains("pool once: stopped")
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ended().await {
        assert!(tokio::time::Instant::now() < deadline, "once never stopped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_owned()));
    let (code, body) = get(address, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pool web: 1 of 1 workers ready"), "{body}");
    stop_cleanly(&mut child, &mut stderr, 1).await;
    let _ = std::fs::remove_file(files.1.with_extension("toml"));
}
