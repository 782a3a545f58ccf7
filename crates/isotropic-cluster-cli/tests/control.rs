//! The control socket of `run` (issue 16, item 1): `status`, `scale`,
//! `reload`, `stop` and `logs` against a running primary, a second primary
//! at the same path, a stale socket file, bad requests and another user.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStderr, ChildStdout};

/// A worker that says its slot once it answers SIGTERM, then waits for it.
const WORKER: &str = "trap 'exit 0' TERM; echo hello from $ISOTROPIC_CLUSTER_SLOT; \
    while :; do sleep 0.1; done";

type Stderr = tokio::io::Lines<BufReader<ChildStderr>>;
type Stdout = tokio::io::Lines<BufReader<ChildStdout>>;

/// `run --workers N` of [`WORKER`] with its control socket at `socket`,
/// every worker ready and answering SIGTERM; its stderr and stdout.
async fn primary(socket: &Path, workers: usize, flags: &[&str]) -> (Child, Stderr, Stdout) {
    let count = workers.to_string();
    let args = [
        &["--workers", &count][..],
        flags,
        &["--", "sh", "-c", WORKER],
    ]
    .concat();
    let mut run = run_at(socket, &args);
    run.stdout(Stdio::piped());
    let (mut child, mut stderr) = spawn(run);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    until(&mut stderr, &format!("worker {workers} ready")).await;
    for _ in 0..workers {
        until(&mut stdout, "hello from").await;
    }
    (child, stderr, stdout)
}

/// [`primary`] for `test`, its socket in a scratch directory of its own
/// (removed when dropped), its stdout drained.
async fn running(test: &str, workers: usize, flags: &[&str]) -> (Scratch, PathBuf, Child, Stderr) {
    let scratch = Scratch::new(test);
    let socket = scratch.path("control.sock");
    let (child, stderr, stdout) = primary(&socket, workers, flags).await;
    drain(stdout);
    (scratch, socket, child, stderr)
}

/// `run --control SOCKET ARGS…`, to be spawned.
fn run_at(socket: &Path, args: &[&str]) -> tokio::process::Command {
    let mut run = command(&["run", "--control"]);
    run.arg(socket).args(args);
    run
}

/// Reads `stdout` to its end, in the background.
fn drain(mut stdout: Stdout) {
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
}

/// The CLI's control command `args` against `socket`, run to its end.
async fn control(socket: &Path, args: &[&str]) -> Output {
    let mut command = command(args);
    command.arg("--control").arg(socket).kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("the command ends in time")
        .expect("run the command")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

/// `status --json`: the primary's pid and its workers.
async fn status(socket: &Path) -> (u64, Vec<Value>) {
    let text = stdout(&control(socket, &["status", "--json"]).await);
    let status: Value = serde_json::from_str(&text).expect("JSON");
    let workers = status["workers"].as_array().expect("workers").clone();
    (status["pid"].as_u64().expect("a pid"), workers)
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u64) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a live process");
    let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
    after_name
        .split(' ')
        .nth(1)
        .expect("ppid")
        .parse()
        .expect("a pid")
}

#[tokio::test]
async fn status_json_matches_the_running_pool() {
    let (_scratch, socket, mut child, mut stderr) = running("control-status", 2, &[]).await;
    let (pid, workers) = status(&socket).await;
    assert_eq!(pid, u64::from(child.id().expect("running")));
    assert_eq!(workers.len(), 2, "{workers:?}");
    for (slot, worker) in workers.iter().enumerate() {
        assert_eq!(worker["slot"], json!(slot));
        assert_eq!(worker["id"], json!(slot + 1));
        assert_eq!(worker["pool"], "default");
        assert_eq!(worker["generation"], 1);
        assert_eq!(worker["state"], "ready");
        assert_eq!(worker["restarts"], 0);
        let pid = worker["pid"].as_u64().expect("a pid");
        assert_eq!(parent_of(pid), child.id().expect("running"), "{worker}");
    }
    // Once sampled (every second): memory, and a CPU share after two.
    eventually_async("two samples of each worker", || async {
        let (_, workers) = status(&socket).await;
        workers
            .iter()
            .all(|w| w["cpu_percent"].is_number() && w["memory_bytes"].as_u64() > Some(0))
    })
    .await;
    // The table has a line per worker.
    let table = stdout(&control(&socket, &["status"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("POOL     SLOT  ID  PID"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].starts_with("default  0     1"), "{table}");
    stop_cleanly(&mut child, &mut stderr, 2).await;
    assert!(!socket.exists(), "the socket file is removed at exit");
}

/// Waits until `done` resolves true; panics with `what` at the deadline.
async fn eventually_async<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scale_resizes_the_pool_up_and_down() {
    let scratch = Scratch::new("control-scale");
    let socket = scratch.path("control.sock");
    let (mut child, mut stderr, mut lines) = primary(&socket, 2, &[]).await;
    let out = stdout(&control(&socket, &["scale", "4"]).await);
    assert_eq!(out, "pool default: from 2 to 4 workers\n");
    until_all(
        &mut stderr,
        &["scaling from 2 to 4 workers", "worker 4 ready"],
    )
    .await;
    until(&mut lines, "hello from").await;
    until(&mut lines, "hello from").await;
    drain(lines);
    let slots = |workers: &[Value]| -> Vec<u64> {
        workers
            .iter()
            .map(|w| w["slot"].as_u64().expect("a slot"))
            .collect()
    };
    assert_eq!(slots(&status(&socket).await.1), [0, 1, 2, 3]);

    let out = stdout(&control(&socket, &["scale", "1", "--pool", "default"]).await);
    assert_eq!(out, "pool default: from 4 to 1 workers\n");
    let mut exits = 0;
    while exits < 3 {
        until(&mut stderr, "exited with code 0").await;
        exits += 1;
    }
    let (_, workers) = status(&socket).await;
    assert_eq!(slots(&workers), [0]);
    assert_eq!(workers[0]["id"], 1, "the lowest slot stays");

    let wrong = control(&socket, &["scale", "2", "--pool", "jobs"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    let error = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        error.contains("no pool named jobs (there is default) (no_such_pool)"),
        "{error}"
    );
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

#[tokio::test]
async fn reload_rolls_out_a_new_generation_and_answers_at_its_end() {
    let (_scratch, socket, mut child, mut stderr) =
        running("control-reload", 2, &["--min-uptime", "100ms"]).await;
    let old: Vec<Value> = status(&socket).await.1;
    let out = stdout(&control(&socket, &["reload"]).await);
    assert_eq!(
        out,
        "pool default: reloaded, 2 workers restarted, generation 2\n"
    );
    // Answered at the end: the old workers are gone by then.
    let seen = until(&mut stderr, "2 workers restarted").await;
    assert!(seen.iter().any(|l| l.contains("reloading")), "{seen:?}");
    let (_, workers) = status(&socket).await;
    assert_eq!(workers.len(), 2, "{workers:?}");
    for (new, old) in workers.iter().zip(&old) {
        assert_eq!(new["generation"], 2);
        assert_eq!(new["slot"], old["slot"]);
        assert_ne!(new["pid"], old["pid"]);
    }
    stop_cleanly(&mut child, &mut stderr, 2).await;
}

#[tokio::test]
async fn stop_shuts_the_primary_down_and_waits_for_its_end() {
    let (_scratch, socket, mut child, mut stderr) = running("control-stop", 2, &[]).await;
    let pid = child.id().expect("running");
    let out = stdout(&control(&socket, &["stop"]).await);
    assert_eq!(out, format!("stopping the primary (pid {pid})\nstopped\n"));
    let rest = until(&mut stderr, "all workers exited").await;
    assert!(
        rest.iter()
            .any(|l| l.contains("stop asked on the control socket"))
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
    assert!(!socket.exists(), "the socket file is removed at exit");
    let gone = control(&socket, &["status"]).await;
    assert_eq!(gone.status.code(), Some(1));
    let error = String::from_utf8_lossy(&gone.stderr);
    assert!(error.contains("no primary is running at"), "{error}");
}

#[tokio::test]
async fn logs_shows_the_last_lines_and_follows_new_ones() {
    let (_scratch, socket, mut child, mut stderr) = running("control-logs", 1, &[]).await;
    // Without -f: the lines kept so far (the worker's may come after its
    // ready line).
    eventually_async("the worker's line kept", || async {
        stdout(&control(&socket, &["logs"]).await).contains("[0] hello from 0")
    })
    .await;
    let last = stdout(&control(&socket, &["logs", "-n", "1"]).await);
    assert_eq!(last.lines().count(), 1, "{last}");

    let mut follow = command(&["logs", "-f"]);
    follow.arg("--control").arg(&socket);
    let mut follow = follow
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("logs -f");
    let mut followed = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    // The last lines first: then it follows.
    until(&mut followed, "[0] hello from 0").await;
    stdout(&control(&socket, &["scale", "2"]).await);
    let lines = until(&mut followed, "[1] hello from 1").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[primary] scaling from 1 to 2 workers")),
        "the primary's lines too: {lines:?}"
    );
    until(&mut stderr, "worker 2 ready").await;
    stop_cleanly(&mut child, &mut stderr, 2).await;
    // The follower ends with the primary.
    let status = tokio::time::timeout(DEADLINE, follow.wait())
        .await
        .expect("in time");
    assert!(status.expect("wait").success());
}

/// A raw connection to a control socket.
type Connection = BufReader<UnixStream>;

async fn connect(socket: &Path) -> Connection {
    BufReader::new(UnixStream::connect(socket).await.expect("connect"))
}

/// Sends `line` on `connection`, returns the reply.
async fn ask(connection: &mut Connection, line: &str) -> Value {
    connection.write_all(line.as_bytes()).await.expect("send");
    connection.write_all(b"\n").await.expect("send");
    reply(connection).await
}

/// The next line read, as JSON (`null` at the end).
async fn reply(connection: &mut Connection) -> Value {
    let mut line = Vec::new();
    tokio::time::timeout(DEADLINE, connection.read_until(b'\n', &mut line))
        .await
        .expect("a reply in time")
        .expect("read");
    if line.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&line).expect("a JSON reply")
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_error_replies() {
    let (_scratch, socket, mut child, mut stderr) = running("control-bad", 1, &[]).await;
    let mut stream = connect(&socket).await;
    for (request, code) in [
        ("not json", "bad_request"),
        ("[1]", "bad_request"),
        (r#"{"cmd":"explode"}"#, "bad_request"),
        (r#"{"cmd":"scale","workers":"many"}"#, "bad_request"),
        (r#"{"cmd":"scale","workers":0}"#, "invalid"),
        (r#"{"v":2,"cmd":"status"}"#, "unsupported_version"),
        (r#"{"cmd":"reload","pool":"jobs"}"#, "no_such_pool"),
    ] {
        let answer = ask(&mut stream, request).await;
        assert_eq!(answer["ok"], false, "{request}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{request}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    // The connection still serves.
    let answer = ask(&mut stream, r#"{"v":1,"cmd":"status"}"#).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["workers"].as_array().map(Vec::len), Some(1));
    // Over 64 KiB without a newline: an error, then the connection ends.
    let big = vec![b'x'; 100 * 1024];
    stream.write_all(&big).await.expect("send");
    let answer = reply(&mut stream).await;
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    assert_eq!(reply(&mut stream).await, Value::Null, "closed");
    // Invalid UTF-8: an error too.
    let mut stream = connect(&socket).await;
    stream
        .write_all(b"{\"cmd\":\"\xff\"}\n")
        .await
        .expect("send");
    assert_eq!(reply(&mut stream).await["error"]["code"], "bad_request");
    // The primary is none the worse.
    assert_eq!(status(&socket).await.1.len(), 1);
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

/// A client still writing its oversized request when the error comes can
/// finish writing it, and then reads the end of the connection (not a
/// broken pipe, nor a reset).
#[tokio::test]
async fn a_client_still_writing_a_request_too_large_gets_the_error_then_the_end() {
    let (_scratch, socket, mut child, mut stderr) = running("control-linger", 1, &[]).await;
    let mut stream = connect(&socket).await;
    let part = vec![b'x'; 70 * 1024];
    stream.write_all(&part).await.expect("send");
    let answer = reply(&mut stream).await;
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    stream.write_all(&part).await.expect("the rest is taken");
    assert_eq!(reply(&mut stream).await, Value::Null, "the end");
    drop(stream);
    assert_eq!(status(&socket).await.1.len(), 1);
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

#[tokio::test]
async fn a_second_primary_at_the_same_path_is_refused() {
    let (_scratch, socket, mut child, mut stderr) = running("control-second", 1, &[]).await;
    let path = socket.to_str().expect("UTF-8");
    let second = run_at(&socket, &["--workers", "1", "--", "sh", "-c", WORKER])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .output();
    let second = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("in time")
        .expect("run");
    assert_eq!(second.status.code(), Some(7), "{second:?}");
    let error = String::from_utf8_lossy(&second.stderr);
    let pid = child.id().expect("running");
    assert!(
        error.contains(&format!("another primary is running at {path} (pid {pid})")),
        "{error}"
    );
    assert!(!error.contains("started"), "no worker started: {error}");
    // The first one still serves its socket.
    assert_eq!(status(&socket).await.0, u64::from(pid));
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_plain_file_refused() {
    let scratch = Scratch::new("control-stale");
    let socket = scratch.path("control.sock");
    // A socket file nobody listens on: its primary died.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let (mut child, mut stderr, lines) = primary(&socket, 1, &[]).await;
    drain(lines);
    assert_eq!(status(&socket).await.1.len(), 1);
    stop_cleanly(&mut child, &mut stderr, 1).await;

    let file = scratch.path("file");
    std::fs::write(&file, "mine").expect("a file");
    let path = file.to_str().expect("UTF-8");
    let refused = command(&["run", "--workers", "1", "--control", path, "--", "true"])
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(DEADLINE, refused)
        .await
        .expect("in time")
        .expect("run");
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains(&format!("{path} exists and is not a socket")),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "mine");
}

/// `run` of one [`WORKER`] without `--control`, with `XDG_RUNTIME_DIR` set
/// to `runtime`, its worker answering SIGTERM.
async fn with_runtime_dir(runtime: &Path) -> (Child, Stderr) {
    let mut run = command(&["run", "--workers", "1", "--", "sh", "-c", WORKER]);
    run.env("XDG_RUNTIME_DIR", runtime).stdout(Stdio::piped());
    let (mut child, stderr) = spawn(run);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    until(&mut lines, "hello from 0").await;
    drain(lines);
    (child, stderr)
}

#[tokio::test]
async fn the_default_socket_is_in_a_private_directory_of_the_runtime_directory() {
    let runtime = runtime_dir();
    let (mut child, mut stderr) = with_runtime_dir(&runtime).await;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = runtime.join("isotropic-cluster");
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("control.sock")), 0o600);
    let mut status = command(&["status"]);
    status.env("XDG_RUNTIME_DIR", &runtime);
    let out = tokio::time::timeout(DEADLINE, status.output())
        .await
        .expect("in time")
        .expect("run");
    assert!(stdout(&out).contains("default  0     1"), "{out:?}");
    stop_cleanly(&mut child, &mut stderr, 1).await;
    assert!(!dir.join("control.sock").exists());
}

#[tokio::test]
async fn another_user_is_refused() {
    // (The decision itself: `control::server::tests`, with a fake uid.)
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: connecting as another user needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("control-uid");
    let open = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(&scratch.0, 0o755);
    // A copy of the CLI that user 65534 can run, wherever the build is.
    let cli = scratch.path("isotropic-cluster");
    std::fs::copy(env!("CARGO_BIN_EXE_isotropic-cluster"), &cli).expect("copy the CLI");
    open(&cli, 0o755);
    let socket = scratch.path("control.sock");
    let (mut child, mut stderr, lines) = primary(&socket, 1, &[]).await;
    drain(lines);
    let as_nobody = || {
        let mut command = tokio::process::Command::new(&cli);
        command
            .args(["status", "--control"])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(DEADLINE, command.output())
                .await
                .expect("in time")
                .expect("run as 65534")
        }
    };
    // Mode 0600: the kernel keeps it out.
    let out = as_nobody().await;
    assert_eq!(out.status.code(), Some(1));
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("Permission denied"), "{error}");
    // A socket open to all (as a careless chmod would make it): the primary
    // checks who connects, refuses, and says so.
    open(&socket, 0o666);
    let out = as_nobody().await;
    assert_eq!(out.status.code(), Some(1));
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("uid 65534 may not control this primary (it runs as uid 0) (forbidden)"),
        "{error}"
    );
    until(&mut stderr, "refused a connection from uid 65534").await;
    assert!(out.stdout.is_empty(), "no status given");
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

#[tokio::test]
async fn a_follower_that_does_not_read_holds_up_neither_the_output_nor_the_primary() {
    const LINES: usize = 100_000;
    let scratch = Scratch::new("control-stuck");
    let socket = scratch.path("control.sock");
    let go = scratch.path("go");
    // Once `go` exists: LINES lines of 100 bytes (10 MB), then "done".
    let worker = format!(
        "import os, sys, time\n\
         while not os.path.exists({go:?}): time.sleep(0.02)\n\
         for i in range({LINES}): sys.stdout.write('%099d\\n' % i)\n\
         print('done', flush=True)\n\
         time.sleep(600)\n",
        go = go.to_str().expect("UTF-8"),
    );
    let mut run = run_at(&socket, &["--workers", "1", "--", "python3", "-c", &worker]);
    run.stdout(Stdio::piped());
    let (mut child, mut stderr) = spawn(run);
    until(&mut stderr, "worker 1 ready").await;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // A follower that never reads what it asked for.
    let mut stuck = connect(&socket).await;
    assert_eq!(
        ask(&mut stuck, r#"{"cmd":"logs","lines":0,"follow":true}"#).await["ok"],
        true
    );
    std::fs::write(&go, "").expect("go");
    let printed = tokio::time::timeout(DEADLINE, async {
        let mut printed = 0;
        while let Some(line) = stdout.next_line().await.expect("read") {
            if line == "[0] done" {
                return printed;
            }
            printed += 1;
        }
        panic!("the CLI's stdout ended");
    })
    .await
    .expect("every line printed in time");
    assert_eq!(printed, LINES, "none lost");
    // The primary answers meanwhile.
    assert_eq!(status(&socket).await.1.len(), 1);
    // The follower missed lines, and is told how many.
    let skipped = tokio::time::timeout(DEADLINE, async {
        loop {
            let record = reply(&mut stuck).await;
            if let Some(skipped) = record["skipped"].as_u64() {
                return skipped;
            }
            assert!(record["line"].is_string(), "{record}");
        }
    })
    .await
    .expect("a skipped record");
    assert!(skipped > 0);
    eprintln!("the follower that did not read missed {skipped} of {LINES} lines");
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn without_a_usable_runtime_directory_the_run_goes_on_without_a_control_socket() {
    let missing = runtime_dir().join("missing");
    let (mut child, mut stderr) = with_runtime_dir(&missing).await;
    let seen = until(&mut stderr, "worker 1 ready").await;
    let expected = format!(
        "[primary] no control socket: cannot make {}/isotropic-cluster: No such file or directory",
        missing.display()
    );
    assert!(seen.iter().any(|l| l.starts_with(&expected)), "{seen:?}");
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

/// `run --control SOCKET --config FILE` with `pools` (TOML, after
/// `min-uptime = "100ms"`) written to a file in `scratch`, once `ready`
/// lines were read; its stdout drained.
async fn pools(scratch: &Scratch, socket: &Path, pools: &str, ready: &[&str]) -> (Child, Stderr) {
    let config = scratch.path("cluster.toml");
    std::fs::write(&config, format!("min-uptime = \"100ms\"\n{pools}")).expect("the config");
    let mut run = run_at(socket, &["--config", config.to_str().expect("UTF-8")]);
    run.stdout(Stdio::piped());
    let (mut child, mut stderr) = spawn(run);
    drain(BufReader::new(child.stdout.take().expect("stdout")).lines());
    until_all(&mut stderr, ready).await;
    (child, stderr)
}

/// A `[pools.NAME]` of `workers` [`WORKER`]s.
fn worker_pool(name: &str, workers: usize) -> String {
    let command = serde_json::to_string(WORKER).expect("a TOML string");
    format!("[pools.{name}]\ncommand = [\"sh\", \"-c\", {command}]\nworkers = {workers}\n")
}

/// Of `status --json`'s workers, `pool`'s: (slot, generation, pid) each.
fn of_pool(workers: &[Value], pool: &str) -> Vec<(u64, u64, u64)> {
    let number = |worker: &Value, key: &str| worker[key].as_u64().expect("a number");
    (workers.iter())
        .filter(|worker| worker["pool"] == pool)
        .map(|w| (number(w, "slot"), number(w, "generation"), number(w, "pid")))
        .collect()
}

#[tokio::test]
async fn with_two_pools_status_lists_both_and_scale_and_reload_go_to_the_named_one() {
    let scratch = Scratch::new("control-two-pools");
    let socket = scratch.path("control.sock");
    let text = worker_pool("web", 2) + &worker_pool("jobs", 1);
    let ready = ["web worker 2 ready", "jobs worker 1 ready"];
    let (mut child, mut stderr) = pools(&scratch, &socket, &text, &ready).await;
    let primary = child.id().expect("running");

    // Every worker of both pools, by pool name, each a child of the primary.
    let (pid, workers) = status(&socket).await;
    assert_eq!(pid, u64::from(primary));
    let (web, jobs) = (of_pool(&workers, "web"), of_pool(&workers, "jobs"));
    assert_eq!(workers.len(), 3, "{workers:?}");
    assert_eq!(
        web.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        [(0, 1), (1, 1)]
    );
    assert_eq!(
        jobs.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        [(0, 1)]
    );
    for (_, _, pid) in web.iter().chain(&jobs) {
        assert_eq!(parent_of(*pid), primary, "{workers:?}");
    }

    // `scale` names its pool: only web grows.
    let out = stdout(&control(&socket, &["scale", "--pool", "web", "3"]).await);
    assert_eq!(out, "pool web: from 2 to 3 workers\n");
    until(&mut stderr, "web worker 3 ready").await;
    let (_, workers) = status(&socket).await;
    assert_eq!(of_pool(&workers, "web").len(), 3, "{workers:?}");
    assert_eq!(of_pool(&workers, "jobs"), jobs, "jobs unchanged");

    // Without a pool, with two: refused, naming both.
    for args in [&["scale", "3"][..], &["reload"]] {
        let refused = control(&socket, args).await;
        assert_eq!(refused.status.code(), Some(1), "{refused:?}");
        let error = String::from_utf8_lossy(&refused.stderr);
        assert!(
            error.contains("name a pool (--pool NAME): there are jobs, web (no_such_pool)"),
            "{error}"
        );
    }

    // `reload` names its pool: only jobs rolls out a generation 2.
    let out = stdout(&control(&socket, &["reload", "--pool", "jobs"]).await);
    assert_eq!(
        out,
        "pool jobs: reloaded, 1 workers restarted, generation 2\n"
    );
    let (_, workers) = status(&socket).await;
    let reloaded = of_pool(&workers, "jobs");
    assert_eq!(
        reloaded.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        [(0, 2)]
    );
    assert_ne!(reloaded[0].2, jobs[0].2, "a new process");
    let web_now = of_pool(&workers, "web");
    assert!(web_now.iter().all(|w| w.1 == 1), "{workers:?}");
    assert_eq!(web_now[..2], web[..], "web's first two unchanged");

    // `stop` stops both pools: every worker gone, the primary exits 0.
    let out = stdout(&control(&socket, &["stop"]).await);
    assert_eq!(
        out,
        format!("stopping the primary (pid {primary})\nstopped\n")
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
    let pids: Vec<u64> = (workers.iter())
        .map(|w| w["pid"].as_u64().expect("a pid"))
        .collect();
    assert!(
        pids.iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
        "{pids:?}"
    );
}

#[tokio::test]
async fn a_pool_that_ended_answers_commands_while_the_other_serves_on() {
    let scratch = Scratch::new("control-pool-ended");
    let socket = scratch.path("control.sock");
    // `once` exits 0 at once, and is not replaced: the pool ends alone.
    let text = format!(
        "{}[pools.once]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nworkers = 1\nrestart = \"never\"\n",
        worker_pool("web", 1)
    );
    let ready = ["web worker 1 ready", "once: no worker left to replace"];
    let (mut child, mut stderr) = pools(&scratch, &socket, &text, &ready).await;
    // Commands for the pool that ended get an answer, never a wait: once
    // its supervision has ended, that it is shutting down.
    for args in [
        &["reload", "--pool", "once"][..],
        &["scale", "--pool", "once", "2"],
    ] {
        eventually_async("the pool that ended refuses", || async {
            let refused = control(&socket, args).await;
            let error = String::from_utf8_lossy(&refused.stderr).into_owned();
            refused.status.code() == Some(1) && error.contains("(shutting_down)")
        })
        .await;
    }
    // The other serves on, and answers.
    let (_, workers) = status(&socket).await;
    assert_eq!(of_pool(&workers, "web").len(), 1, "{workers:?}");
    assert_eq!(of_pool(&workers, "once").len(), 0, "{workers:?}");
    let out = stdout(&control(&socket, &["reload", "--pool", "web"]).await);
    assert_eq!(
        out,
        "pool web: reloaded, 1 workers restarted, generation 2\n"
    );
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn commands_during_the_shutdown_of_two_pools_are_answered() {
    let scratch = Scratch::new("control-shutting-down");
    let socket = scratch.path("control.sock");
    // Workers that take their time to leave (3 s after SIGTERM).
    let slow = serde_json::to_string("trap 'sleep 3; exit 0' TERM; echo hello; sleep 60 & wait")
        .expect("a TOML string");
    let pool =
        |name: &str| format!("[pools.{name}]\ncommand = [\"sh\", \"-c\", {slow}]\nworkers = 1\n");
    let text = pool("web") + &pool("jobs");
    let ready = ["web worker 1 ready", "jobs worker 1 ready"];
    let (mut child, mut stderr) = pools(&scratch, &socket, &text, &ready).await;
    terminate(&child);
    until(&mut stderr, "shutting down").await;
    for args in [
        &["reload", "--pool", "web"][..],
        &["scale", "--pool", "jobs", "2"],
    ] {
        let refused = control(&socket, args).await;
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {refused:?}");
        let error = String::from_utf8_lossy(&refused.stderr);
        assert!(error.contains("(shutting_down)"), "{args:?}: {error}");
    }
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}
