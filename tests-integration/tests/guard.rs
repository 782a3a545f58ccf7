//! The orphan guard and the workers' cgroups: the guard never signals a
//! process that is not ours (issue 12, item 1); where workers run in cgroups
//! of their own, nothing they start outlives them (item 10).
#![cfg(target_os = "linux")]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerChannel, WorkerStdio};
use tests_integration::{DEADLINE, ExitWatch, Running, fixture_primary, shut_down, wait_for};

/// The program of the guard's scenarios (`src/bin/fixture-orphans.rs`).
fn fixture_orphans() -> PathBuf {
    fixture_primary().with_file_name("fixture-orphans")
}

/// Runs `command` to its end (killed after [`DEADLINE`]); returns its status
/// and stdout.
fn run(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = Running(command.stdout(Stdio::piped()).spawn().expect("spawn"));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{command:?} did not end in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (status, reader.join().expect("reader"))
}

/// Whether this machine lets us make user and PID namespaces.
fn namespaces() -> bool {
    let probe = Command::new("unshare")
        .args(["-Urpf", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        eprintln!("skipped: no user and PID namespaces here (unshare -Urpf)");
        return false;
    }
    true
}

#[test]
fn the_guard_spares_a_stranger_given_the_pid_of_a_failed_spawn() {
    if !namespaces() {
        return;
    }
    let (status, stdout) = run(Command::new("unshare")
        .args(["--kill-child", "-Urpf", "--mount-proc"])
        .arg(fixture_orphans())
        .arg("stranger"));
    assert!(status.success(), "{status}: {stdout}");
    assert_eq!(stdout.trim(), "stranger alive");
}

/// The cgroup of process `pid` (its `0::` line in `/proc/PID/cgroup`).
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("/proc/PID/cgroup")
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

/// Whether worker `pid` runs in a cgroup of its own; says so when not.
fn in_own_cgroup(pid: u32) -> bool {
    let own = cgroup_of(pid).contains("/isotropic-cluster-");
    if !own {
        eprintln!("skipped: workers cannot run in cgroups of their own here");
    }
    own
}

/// The grandchild's pid and port in an `escaped PID PORT` line.
fn escaped(line: &str) -> Option<(u32, u16)> {
    let mut words = line.strip_prefix("escaped ")?.split(' ');
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Asserts that the loopback `port` is free again.
fn port_is_free(port: u16) {
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the grandchild's port is free");
}

#[tokio::test]
async fn a_grandchild_that_left_its_process_group_goes_with_a_graceful_shutdown() {
    tests_integration::log_to_test_output();
    let primary = ClusterPrimary::builder()
        .program(fixture_orphans())
        .arg("escape")
        .channel(WorkerChannel::None)
        .stdio(WorkerStdio::Piped)
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let (worker, (grandchild, port)) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerOutput(o) => Some((o.worker.pid(), escaped(&o.line)?)),
        _ => None,
    })
    .await;
    let watch = ExitWatch::new(grandchild);
    let own = in_own_cgroup(worker);
    shut_down(&primary).await;
    if own {
        watch.exited().await;
        port_is_free(port);
    }
}

/// Runs `fixture-orphans escape-primary` through `launcher` (a program and
/// its first arguments, or none); returns it, its worker and the grandchild
/// (pid and port).
fn escape_primary(launcher: &[&str]) -> (Running, u32, (u32, u16)) {
    let mut command = match launcher {
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(fixture_orphans());
            command
        }
        [] => Command::new(fixture_orphans()),
    };
    let mut primary = Running(
        command
            .arg("escape-primary")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the primary"),
    );
    let mut lines = BufReader::new(primary.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let (worker, rest) = line.split_once(' ').expect("WORKER_PID escaped PID PORT");
    let worker = worker.parse().expect("a pid");
    (primary, worker, escaped(rest).expect("escaped PID PORT"))
}

#[tokio::test]
async fn a_grandchild_that_left_its_process_group_goes_when_the_primary_is_killed() {
    let (mut primary, worker, (grandchild, port)) = escape_primary(&[]);
    let watches = [ExitWatch::new(worker), ExitWatch::new(grandchild)];
    let own = in_own_cgroup(worker);
    let killed = Instant::now();
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    if own {
        for watch in watches {
            watch.exited().await;
        }
        eprintln!(
            "primary killed: worker and escaped grandchild gone after {:?}",
            killed.elapsed()
        );
        port_is_free(port);
    }
}

#[tokio::test]
async fn where_cgroups_cannot_be_made_workers_run_in_ours_and_their_group_still_goes() {
    // An unprivileged primary may not write to the cgroup tree root owns.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    let probe = Command::new(nobody[0])
        .args(&nobody[1..])
        .arg("true")
        .status();
    if !probe.is_ok_and(|status| status.success()) || !rustix::process::getuid().is_root() {
        eprintln!("skipped: cannot run a primary as another user here");
        return;
    }
    let (mut primary, worker, (grandchild, _)) = escape_primary(&nobody);
    assert_eq!(
        cgroup_of(worker),
        cgroup_of(primary.id()),
        "the worker runs in the primary's cgroup"
    );
    let worker_watch = ExitWatch::new(worker);
    // It left the group: only a cgroup would have held it (killed on drop).
    let _grandchild = ExitWatch::new(grandchild);
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    worker_watch.exited().await;
}
