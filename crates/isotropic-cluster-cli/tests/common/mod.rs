//! What the CLI's test binaries share: starting the CLI, reading its lines,
//! signalling it, waiting for its exit.
// (Each test binary uses its own share of these.)
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The CLI with `args`, to be started by [`spawn`].
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_isotropic-cluster"));
    command.args(args);
    command
}

/// Starts `command` (the CLI) with stderr piped and killed when dropped;
/// its stderr as lines.
pub(crate) fn spawn(mut command: Command) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = command
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the CLI");
    let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    (child, stderr)
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

pub(crate) fn terminate(child: &Child) {
    send(child, rustix::process::Signal::TERM);
}

/// Sends `signal` to the CLI (our child, not reaped: its own pid).
pub(crate) fn send(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal the CLI");
}

pub(crate) async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the CLI exits in time")
        .expect("wait")
        .code()
}

/// The pid in a `worker N started (pid P)` line.
pub(crate) fn started_pid(line: &str) -> u32 {
    line.rsplit(' ')
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .expect("its pid")
}
