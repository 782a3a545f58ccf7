//! What every CLI test file uses: start the CLI, read its lines until one
//! says something, signal it, wait for its end.
#![allow(dead_code)] // (each test file uses its own share)

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub(crate) mod http;
pub(crate) mod load;
pub(crate) mod packages;
pub(crate) mod pool;
pub(crate) mod service_manager;

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A test's own directory (release file, program copy, sockets), removed
/// at the end.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("isotropic-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The CLI with `args`, to be started by [`spawn`], with a runtime
/// directory of its own.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_isotropic-cluster"));
    command.args(args).env("XDG_RUNTIME_DIR", runtime_dir());
    command
}

/// A new directory for one CLI's `XDG_RUNTIME_DIR`, where its default
/// control socket goes: CLIs the tests start side by side do not meet
/// there. In the target directory's scratch space, unless its path is too
/// long for a socket's (108 bytes).
pub(crate) fn runtime_dir() -> std::path::PathBuf {
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("rt-{}-{made}", std::process::id());
    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = if scratch.as_os_str().len() < 48 {
        scratch.to_owned()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).expect("a runtime directory");
    dir
}

/// Starts `command` (the CLI) with stderr piped and killed when dropped;
/// its stderr as lines.
pub(crate) fn spawn(mut command: Command) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = start(command.stderr(Stdio::piped()));
    let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    (child, stderr)
}

/// Starts `command` (the CLI with `--json`) with stdout piped and killed
/// when dropped; its stdout (the JSON lines) as lines.
pub(crate) fn spawn_json(mut command: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = start(command.stdout(Stdio::piped()));
    let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, stdout)
}

/// Starts `command`, killed when dropped.
fn start(command: &mut Command) -> Child {
    command.kill_on_drop(true).spawn().expect("start the CLI")
}

pub(crate) fn cli(args: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    cli_to(Stdio::piped(), args)
}

/// The CLI with its stdout to `stdout`, stderr piped.
pub(crate) fn cli_to(stdout: Stdio, args: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut command = command(args);
    command.stdout(stdout);
    spawn(command)
}

/// `command_line` started by `unshare` as PID 1 of new user and PID
/// namespaces (as a container's entrypoint), with `env`; stdout and stderr
/// piped, killed when dropped.
pub(crate) fn as_pid_1(command_line: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .args(command_line)
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) with user and PID namespaces")
}

/// The pid of the process [`as_pid_1`] started (`unshare`'s one child),
/// asserted to be PID 1 inside.
pub(crate) fn pid_1_of(unshare: &Child) -> u32 {
    let unshare = unshare.id().expect("running");
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("unshare's children");
    let pid: u32 = children.trim().parse().expect("one child");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:"));
    assert!(
        nspid.is_some_and(|l| l.ends_with("\t1")),
        "PID 1 inside: {nspid:?}"
    );
    pid
}

/// Reads stderr until a line containing `text`; returns the lines read.
pub(crate) async fn until<R: AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    text: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let done = line.contains(text);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("the CLI ended before printing {text:?}: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {text:?} in time"));
    seen
}

/// Reads stderr until `workers` lines say a worker is ready
/// (`[primary] worker N ready`); returns the lines read.
pub(crate) async fn until_ready<R: AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    workers: usize,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut ready = 0;
    while ready < workers {
        seen.extend(until(lines, " ready").await);
        let line = seen.last().expect("a line");
        if line.starts_with("[primary] worker ") && line.ends_with(" ready") {
            ready += 1;
        }
    }
    seen
}

/// Reads stderr until lines containing each of `texts` were read, in any
/// order; returns the lines read.
pub(crate) async fn until_all<R: AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    texts: &[&str],
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while let Some(missing) = texts
        .iter()
        .find(|text| !seen.iter().any(|line| line.contains(*text)))
    {
        seen.extend(until(lines, missing).await);
    }
    seen
}

/// SIGTERM, then every one of `workers` exits with code 0, and so does the
/// CLI (as its `lines` say: stderr, or stdout with `--json`).
pub(crate) async fn stop_cleanly<R: AsyncBufRead + Unpin>(
    child: &mut Child,
    lines: &mut Lines<R>,
    workers: usize,
) {
    terminate(child);
    let rest = until(lines, "all workers exited").await;
    let clean = rest.iter().filter(|l| l.contains("exited with code 0"));
    assert_eq!(clean.count(), workers, "{rest:?}");
    assert_eq!(exit_code(child).await, Some(0));
}

pub(crate) fn terminate(child: &Child) {
    send(child, rustix::process::Signal::TERM);
}

/// Sends `signal` to the CLI (our child, not reaped: its own pid).
pub(crate) fn send(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal the CLI");
}

/// Waits until `n` workers have printed `up` on stdout (their signal
/// handling is set up by then).
pub(crate) async fn up(child: &mut Child, n: usize) {
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for _ in 0..n {
        until(&mut stdout, "] up").await;
    }
    // Keep reading, so that the workers can still print.
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
}

/// The CLI with `args` run to its end: its exit code and stderr.
pub(crate) async fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::time::timeout(DEADLINE, command(args).output())
        .await
        .expect("the CLI exits in time")
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

pub(crate) async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the CLI exits in time")
        .expect("wait")
        .code()
}

/// Waits until `done` holds; panics with `what` at the deadline.
pub(crate) async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `request` as is; what came back before the server closed the
/// connection (a write cut short by the close is not an error here).
pub(crate) async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    let _ = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the server answers or closes in time");
    String::from_utf8_lossy(&response).into_owned()
}

/// `GET path`: the status code and the body.
pub(crate) async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = exchange(address, request.as_bytes()).await;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (code, body)
}

/// A server on the `--listen` socket that finishes the request in hand on
/// SIGTERM, then exits 0.
pub(crate) const DRAINING_SERVER: &str = r#"
import os, select, signal, socket
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGTERM, lambda *_: None)
server = socket.socket(fileno=3)
server.setblocking(False)
print("serving", flush=True)
while wake_r not in select.select([server, wake_r], [], [])[0]:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        continue  # another worker took it
    conn.setblocking(True)
    conn.recv(65536)
    body = b"served by %d" % os.getpid()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    conn.close()
"#;

/// The address in the last of `seen`, a `listening on ADDR` line.
pub(crate) fn listening_address(seen: &[String]) -> std::net::SocketAddr {
    seen.last()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|a| a.parse().ok())
        .expect("an address")
}

/// HTTP/1.0 requests to a server, one after another, until stopped (at
/// most 100 000).
pub(crate) struct Requests {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<std::io::Result<Vec<String>>>,
}

impl Requests {
    pub(crate) fn start(address: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = std::sync::Arc::default();
        // On a thread of its own: a test's current-thread runtime that
        // reads lines already buffered never yields, and would not run it.
        let stop_it = std::sync::Arc::clone(&stop);
        let task = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut answers = Vec::new();
                while !stop_it.load(Ordering::Relaxed) && answers.len() < 100_000 {
                    let mut stream = tokio::net::TcpStream::connect(address).await?;
                    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                    let mut response = String::new();
                    stream.read_to_string(&mut response).await?;
                    answers.push(response);
                }
                std::io::Result::Ok(answers)
            })
        });
        Self { stop, task }
    }

    /// Stops; every answer, each asserted to be a 200 (none failed).
    pub(crate) async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the client ends in time")
            .expect("join")
            .expect("no request failed");
        assert!(answers.iter().all(|a| a.starts_with("HTTP/1.0 200 OK")));
        answers
    }
}
