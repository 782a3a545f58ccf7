//! What the CLI's end-to-end tests share: starting it, reading its
//! lines, signalling it, its exit code.
// (Each test binary uses some of it.)
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// How long a test waits for anything.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The CLI with `args`, stdout and stderr piped.
pub(crate) fn cli(args: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    cli_to(Stdio::piped(), args)
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

/// Sends SIGTERM to the CLI.
pub(crate) fn terminate(child: &Child) {
    send(child, rustix::process::Signal::TERM);
}

/// Sends `signal` to the CLI (our child, not reaped: its own pid).
pub(crate) fn send(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal the CLI");
}

/// The CLI's exit code, once it exits (within the deadline).
pub(crate) async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the CLI exits in time")
        .expect("wait")
        .code()
}

/// The CLI with its stdout to `stdout`, stderr piped.
pub(crate) fn cli_to(stdout: Stdio, args: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isotropic-cluster"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the CLI");
    let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    (child, stderr)
}
