//! What the CLI prints: `--json` as one stream of JSON lines on stdout
//! (lifecycle events and the workers' output, each with a timestamp, a
//! level, an event and its fields), `--timestamps` for the text format.
#![cfg(target_os = "linux")]

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

mod common;
use common::*;

/// A worker that says `up` on stdout and `warming "up"\` on stderr (JSON
/// escapes), then stays until SIGTERM (exit 0).
const WORKER: &str =
    r#"trap 'exit 0' TERM; echo up; echo 'warming "up"\' >&2; while :; do sleep 1; done"#;

/// Whether `ts` is RFC 3339 in UTC with milliseconds, within a minute of
/// now.
fn recent(ts: &str) -> bool {
    ts.len() == "2026-12-02T07:00:00.000Z".len()
        && ts.ends_with('Z')
        && humantime::parse_rfc3339(ts).is_ok_and(|at| {
            let ago = SystemTime::now().duration_since(at);
            ago.is_ok_and(|ago| ago < Duration::from_secs(60))
        })
}

/// A `--json` line, checked: an object with a recent `ts`, a `level` and
/// an `event`.
fn parse(line: &str) -> serde_json::Map<String, Value> {
    let Ok(Value::Object(fields)) = serde_json::from_str(line) else {
        panic!("not a JSON object: {line}");
    };
    let text = |key| fields.get(key).and_then(Value::as_str);
    assert!(text("ts").is_some_and(recent), "{line}");
    assert!(
        text("level").is_some_and(|l| ["info", "warn", "error"].contains(&l)),
        "{line}"
    );
    assert!(text("event").is_some(), "{line}");
    fields
}

type Fields = serde_json::Map<String, Value>;

/// Reads `--json` lines into `lines` (each checked) until `done` holds of
/// them; the last one read.
async fn read_until<R: tokio::io::AsyncBufRead + Unpin>(
    stdout: &mut tokio::io::Lines<R>,
    lines: &mut Vec<Fields>,
    done: impl Fn(&[Fields]) -> bool,
) -> Fields {
    tokio::time::timeout(DEADLINE, async {
        while !done(lines) {
            let line = stdout.next_line().await.expect("read");
            lines.push(parse(
                &line.unwrap_or_else(|| panic!("stdout ended: {lines:?}")),
            ));
        }
        lines.last().cloned().unwrap_or_default()
    })
    .await
    .unwrap_or_else(|_| panic!("not in time: {lines:?}"))
}

/// The line of `event` about `worker`, if read.
fn find<'a>(lines: &'a [Fields], event: &str, worker: u64) -> Option<&'a Fields> {
    lines
        .iter()
        .find(|f| f["event"] == event && f.get("worker") == Some(&Value::from(worker)))
}

#[tokio::test]
async fn json_is_one_stream_of_json_lines_on_stdout_with_fields() {
    // (The command without `--`, and `-w`.)
    let mut child = command(&["run", "--json", "-w", "2", "sh", "-c", WORKER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the CLI");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    // Both workers' output: JSON lines too, on stdout, whichever stream
    // they used.
    let output = |lines: &[Fields], worker: u64, stream: &str, text: &str| {
        lines.iter().any(|f| {
            f["event"] == "output"
                && f["worker"] == worker
                && f["stream"] == stream
                && f["line"] == text
        })
    };
    read_until(&mut stdout, &mut lines, |lines| {
        [1, 2].iter().all(|&worker| {
            output(lines, worker, "stdout", "up")
                && output(lines, worker, "stderr", r#"warming "up"\"#)
        }) && find(lines, "workerReady", 2).is_some()
    })
    .await;
    let fork = find(&lines, "workerFork", 1).expect("worker 1's start");
    let pid = fork["pid"].as_u64().expect("a pid");
    assert_eq!((&fork["slot"], &fork["generation"]), (&0.into(), &1.into()));
    let message = fork["message"].as_str().expect("a message");
    assert_eq!(
        message,
        format!("worker 1 started in slot 0, generation 1 (pid {pid})")
    );
    for line in lines.iter().filter(|f| f["event"] == "output") {
        assert_eq!(line["level"], "info", "{line:?}");
        let worker = line["worker"].as_u64().expect("a worker");
        let fork = find(&lines, "workerFork", worker).expect("its start");
        assert_eq!((&line["pid"], &line["slot"]), (&fork["pid"], &fork["slot"]));
    }
    // A signal the primary did not send: the line says which, by name.
    let victim = rustix::process::Pid::from_raw(i32::try_from(pid).expect("a pid")).expect("pid");
    rustix::process::kill_process(victim, rustix::process::Signal::KILL).expect("kill worker 1");
    read_until(&mut stdout, &mut lines, |lines| {
        find(lines, "workerExit", 1).is_some() && find(lines, "workerReady", 3).is_some()
    })
    .await;
    let exit = find(&lines, "workerExit", 1).expect("its exit");
    assert_eq!(
        (&exit["signal"], &exit["sent"]),
        (&"SIGKILL".into(), &false.into())
    );
    assert_eq!(
        (&exit["pid"], &exit["level"]),
        (&pid.into(), &"warn".into())
    );
    assert_eq!(
        exit["message"],
        format!("worker 1 (pid {pid}) was killed by SIGKILL")
    );
    // A signal the primary sent: said as such.
    terminate(&child);
    let sent = read_until(&mut stdout, &mut lines, |lines| {
        lines.last().is_some_and(|f| f["event"] == "workerSignal")
    })
    .await;
    assert_eq!(sent["signal"], "SIGTERM", "{sent:?}");
    let worker = sent["worker"].as_u64().expect("a worker");
    let message = sent["message"].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("sent SIGTERM to worker {worker} (pid ")),
        "{message}"
    );
    read_until(&mut stdout, &mut lines, |lines| {
        lines
            .last()
            .is_some_and(|f| f["event"] == "shutDownComplete")
    })
    .await;
    while let Some(line) = stdout.next_line().await.expect("read") {
        lines.push(parse(&line));
    }
    assert_eq!(exit_code(&mut child).await, Some(0));
    assert_eq!(stderr.await.expect("stderr"), "", "nothing else is printed");
    // The library's own logs (`tracing`) are lines too, their level apart.
    for log in lines.iter().filter(|f| f["event"] == "log") {
        let message = log["message"].as_str().expect("a message");
        let word = message.split(' ').next().unwrap_or_default();
        assert!(!["ERROR", "WARN", "INFO"].contains(&word), "{log:?}");
    }
}

#[tokio::test]
async fn timestamps_prefix_every_text_line() {
    let (mut child, mut stderr) = cli(&["run", "--timestamps", "-w", "1", "sh", "-c", WORKER]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let up = until(&mut stdout, "[0] up").await.pop().expect("a line");
    let ready = until(&mut stderr, "[primary] worker 1 ready").await;
    terminate(&child);
    let mut seen = until(&mut stderr, "all workers exited").await;
    seen.extend(ready);
    seen.push(up);
    for line in &seen {
        let (ts, rest) = line.split_once(' ').expect("a prefix");
        assert!(recent(ts), "{line}");
        assert!(rest.starts_with('['), "{line}");
    }
    assert_eq!(exit_code(&mut child).await, Some(0));
}
