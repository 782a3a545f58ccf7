//! Processes: the default program, stdio, isolation of the channel, roles,
//! and no orphans (issue: roles, stdio, channel, no orphans).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use isotropic_cluster::primary::*;
use isotropic_cluster::worker::ClusterWorker;
use serde_json::{Value, json};
use tests_integration::{
    ExitWatch, Mode, PrimaryFlag, PrimaryMode, Running, fixture_primary, launch, primary,
    shut_down, wait_for,
};

/// Runs `fixture-primary` and returns it with the JSON line it prints once
/// its workers are ready.
fn start_fixture_primary(program: &std::path::Path, args: &[&str]) -> (Running, Value) {
    let mut child = Running(
        Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture-primary"),
    );
    // Workers print their greeting first; the report is the first JSON line.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .by_ref()
        .map(|line| line.expect("read"))
        .find(|line| line.starts_with('{'))
        .expect("a report line");
    // Keep reading, so that the primary can still print.
    std::thread::spawn(move || lines.for_each(drop));
    (child, serde_json::from_str(&line).expect("a JSON line"))
}

#[test]
fn workers_re_execute_the_primary_with_its_arguments_even_once_deleted() {
    let dir = std::env::temp_dir().join(format!("isotropic-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("fixture-primary");
    std::fs::copy(fixture_primary(), &copy).expect("copy");
    let args = [
        "2",
        PrimaryFlag::DeleteSelf.as_str(),
        PrimaryFlag::ThenShutDown.as_str(),
    ];
    let (mut child, report) = start_fixture_primary(&copy, &args);
    assert!(!copy.exists(), "the primary deleted its own binary");
    assert_eq!(report["args"], json!([args, args]));
    assert!(child.wait().expect("wait").success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_inherit_the_primarys_output_unless_silent() {
    let run = |extra: &[PrimaryFlag]| {
        let output = Command::new(fixture_primary())
            .args(["2", PrimaryFlag::ThenShutDown.as_str()])
            .args(extra.iter().map(|flag| flag.as_str()))
            .output()
            .expect("run fixture-primary");
        assert!(output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout.lines().filter(|l| l.ends_with("says hi")).count()
    };
    assert_eq!(run(&[]), 2);
    assert_eq!(run(&[PrimaryFlag::Silent]), 0);
}

#[tokio::test]
async fn workers_exit_when_their_primary_is_killed() {
    let (mut child, report) = start_fixture_primary(&fixture_primary(), &["3"]);
    let pids: Vec<u32> = serde_json::from_value(report["pids"].clone()).expect("pids");
    // Watch each worker through a pidfd, opened while the primary still runs.
    let watches: Vec<ExitWatch> = pids.iter().map(|&pid| ExitWatch::new(pid)).collect();
    child.kill().expect("SIGKILL the primary");
    child.wait().expect("reap the primary");
    for watch in watches {
        watch.exited().await;
    }
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_killed_primary_takes_workers_that_ignore_sigterm_and_their_children() {
    // Two workers that ignore SIGTERM and never read their channel, each with
    // a child that ignores SIGTERM too.
    let (mut child, report) = start_fixture_primary(
        &fixture_primary(),
        &[PrimaryMode::Worker.as_str(), Mode::Hung.as_str(), "2"],
    );
    let workers: Vec<u32> = serde_json::from_value(report["pids"].clone()).expect("pids");
    let grandchildren: Vec<u32> = workers.iter().flat_map(|&pid| children(pid)).collect();
    assert_eq!(grandchildren.len(), 2, "each worker started a child");
    let watches: Vec<ExitWatch> = workers
        .iter()
        .chain(&grandchildren)
        .map(|&pid| ExitWatch::new(pid))
        .collect();
    let gone = tests_integration::kill_and_await(&mut child, watches).await;
    eprintln!("primary killed: 2 workers and 2 grandchildren gone after {gone:?}");
}

#[tokio::test]
async fn piped_output_arrives_line_by_line_with_the_stream() {
    let (primary, mut events, [worker]) =
        launch::<1>(primary(Mode::Echo).stdio(WorkerStdio::Piped)).await;
    primary
        .send(&worker, &json!({"type": "print", "text": "hello"}))
        .await
        .expect("send");
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(
            wait_for(&mut events, |e| match e {
                PrimaryEvent::WorkerOutput(o) if o.worker == worker => Some((o.stream, o.line)),
                _ => None,
            })
            .await,
        );
    }
    lines.sort_by_key(|(stream, _)| *stream == OutputStream::Stderr);
    assert_eq!(
        lines,
        [
            (OutputStream::Stdout, "hello".to_owned()),
            (OutputStream::Stderr, "hello (stderr)".to_owned()),
        ]
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_workers_children_inherit_neither_the_channel_nor_the_markers() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    primary
        .send(&worker, &json!({"type": "inspect"}))
        .await
        .expect("send");
    let seen = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => m.message.decode::<Value>().ok()?.get("inspect").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(
        seen,
        json!([]),
        "a grandchild saw cluster variables or sockets"
    );
    shut_down(&primary).await;
}

/// Has `worker` start a child (`sleep 300`) and watches it.
async fn grandchild(
    primary: &ClusterPrimary,
    events: &mut isotropic_cluster::EventStream<PrimaryEvent>,
    worker: &WorkerHandle,
) -> ExitWatch {
    primary
        .send(worker, &json!({"type": "spawn-child"}))
        .await
        .expect("send");
    let child = wait_for(events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => m.message.decode::<Value>().ok()?.get("child")?.as_i64(),
        _ => None,
    })
    .await;
    ExitWatch::new(u32::try_from(child).expect("pid"))
}

#[tokio::test]
async fn grandchildren_go_with_their_worker_on_shutdown() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let watch = grandchild(&primary, &mut events, &worker).await;
    shut_down(&primary).await;
    watch.exited().await;
}

#[tokio::test]
async fn grandchildren_go_with_their_worker_when_it_dies_and_is_replaced() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let watch = grandchild(&primary, &mut events, &worker).await;
    primary
        .send(&worker, &json!({"type": "exit", "code": 1}))
        .await
        .expect("send");
    // The replacement is ready; the dead worker's child is gone.
    let replacement = tests_integration::ready(&mut events, 1).await;
    assert_ne!(replacement[0].id(), worker.id());
    watch.exited().await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn this_test_process_is_a_primary() {
    assert!(isotropic_cluster::is_primary());
    assert!(!isotropic_cluster::is_worker());
    assert_eq!(ClusterWorker::worker_id(), None);
    let error = ClusterWorker::builder()
        .start()
        .await
        .expect_err("not a worker");
    assert!(
        matches!(error, isotropic_cluster::Error::NotAWorker),
        "{error}"
    );
}

#[tokio::test]
async fn workers_run_as_another_user_only_when_the_primary_may_switch() {
    tests_integration::log_to_test_output();
    let primary = ClusterPrimary::builder()
        .program("sh")
        .args(["-c", "echo $(id -u):$(id -g):$(id -G); exec sleep 30"])
        .channel(WorkerChannel::None)
        .stdio(WorkerStdio::Piped)
        .uid(65534)
        .gid(65534)
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    let forked = primary.fork(1).await;
    if rustix::process::getuid().is_root() {
        forked.expect("root may run workers as nobody");
        let line = wait_for(&mut events, |e| match e {
            PrimaryEvent::WorkerOutput(o) => Some(o.line),
            _ => None,
        })
        .await;
        // User, group, and no supplementary group left from root.
        assert_eq!(line, "65534:65534:65534");
    } else {
        let error = forked.expect_err("only root may switch users");
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            matches!(error, isotropic_cluster::Error::Spawn { .. }),
            "{error}: {source:?}"
        );
    }
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_holds_only_its_stdio_and_its_channel() {
    tests_integration::log_to_test_output();
    // Plain `sleep` opens nothing itself: whatever it holds, we gave it.
    // Three at once, so that any fd of a sibling's spawn would show.
    let primary = ClusterPrimary::builder()
        .program("sleep")
        .arg("300") // outlives the deadline below
        .stdio(WorkerStdio::Piped)
        // `sleep` ignores the disconnect: SIGTERM it soon.
        .shutdown_grace(std::time::Duration::from_millis(100))
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    primary.fork(3).await.expect("fork");
    for _ in 0..3 {
        let worker = wait_for(&mut events, |e| match e {
            PrimaryEvent::WorkerFork(fork) => Some(fork.worker),
            _ => None,
        })
        .await;
        let pid = worker.pid();
        let mut expected = vec!["0", "1", "2"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        // Until it has exec'd, the child still holds the primary's fds; and
        // `sleep` may briefly open files as it starts. An fd we leaked stays.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
            if expected.len() == 3 {
                expected.extend(
                    environ
                        .split(|b| *b == 0)
                        .find_map(|var| var.strip_prefix(b"ISOTROPIC_CLUSTER_CHANNEL_FD="))
                        .map(|fd| String::from_utf8_lossy(fd).into_owned()),
                );
                expected.sort();
            }
            let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("fds")
                .filter_map(|fd| Some(fd.ok()?.file_name().to_string_lossy().into_owned()))
                .collect();
            fds.sort();
            let exec_d =
                std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm") == "sleep\n";
            if exec_d && fds == expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {pid} holds {fds:?}, not {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The channel has no address (no path, nothing abstract): no other
        // process can connect to it.
        let channel = expected.iter().find(|fd| fd.len() > 1 || fd.as_str() > "2");
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{}", channel.expect("channel")))
            .expect("the channel fd");
        let link = link.to_string_lossy();
        let inode = link.trim_start_matches("socket:[").trim_end_matches(']');
        let sockets = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
        let entry = sockets
            .lines()
            .find(|line| line.split_whitespace().nth(6) == Some(inode))
            .expect("the channel is a Unix socket");
        assert_eq!(
            entry.split_whitespace().count(),
            7,
            "the channel has an address: {entry}"
        );
    }
    shut_down(&primary).await;
}
