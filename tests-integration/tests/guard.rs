//! The orphan guard and the workers' cgroups: the guard never signals a
//! process that is not ours (issue 12, item 1); where workers run in cgroups
//! of their own, nothing they start outlives them (item 10); the guard is
//! told from the primary in `ps`, replaced when it dies, and the workers go
//! even when it dies together with the primary (item 9).
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

/// `fixture-orphans`, run through `launcher` (a program and its first
/// arguments, or none).
fn launch(launcher: &[&str]) -> Command {
    match launcher {
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(fixture_orphans());
            command
        }
        [] => Command::new(fixture_orphans()),
    }
}

/// Runs `fixture-orphans escape-primary` through `launcher` (a program and
/// its first arguments, or none); returns it, its worker and the grandchild
/// (pid and port).
fn escape_primary(launcher: &[&str]) -> (Running, u32, (u32, u16)) {
    let mut primary = Running(
        launch(launcher)
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

/// The command that runs a program as user and group 65534, where this
/// process may (root, `setpriv`): an unprivileged primary, which may not
/// write to the cgroup tree root owns.
fn as_nobody() -> Option<[&'static str; 5]> {
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
    if probe.is_ok_and(|status| status.success()) && rustix::process::getuid().is_root() {
        Some(nobody)
    } else {
        eprintln!("skipped: cannot run a primary as another user here");
        None
    }
}

#[tokio::test]
async fn where_cgroups_cannot_be_made_workers_run_in_ours_and_their_group_still_goes() {
    let Some(nobody) = as_nobody() else { return };
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

/// A `guarded-primary` with `count` hung workers, run through `launcher`
/// (see [`escape_primary`]): it, its workers, and their children.
fn guarded_primary(count: usize, launcher: &[&str]) -> (Running, Vec<u32>, Vec<u32>) {
    let mut primary = Running(
        launch(launcher)
            .args(["guarded-primary", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the primary"),
    );
    let mut lines = BufReader::new(primary.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let workers: Vec<u32> = line
        .strip_prefix("workers ")
        .expect("workers PID…")
        .split(' ')
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    let grandchildren = workers.iter().flat_map(|&pid| children(pid)).collect();
    (primary, workers, grandchildren)
}

/// The children of process `pid` (forked by any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(Result::ok)
        .flat_map(|thread| {
            std::fs::read_to_string(thread.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The orphan guard of `primary` (its child named `cluster-guard`) other than
/// `not`, waiting for one to run.
fn guard_of(primary: u32, not: Option<u32>) -> u32 {
    let started = Instant::now();
    loop {
        let guard = children(primary).into_iter().find(|&child| {
            Some(child) != not
                && std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|comm| comm == "cluster-guard\n")
        });
        if let Some(guard) = guard {
            return guard;
        }
        assert!(started.elapsed() < DEADLINE, "no orphan guard runs");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The command line of process `pid`, its arguments joined by spaces.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    words.join(" ")
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

#[test]
fn the_guard_has_a_name_and_arguments_of_its_own() {
    let (primary, _workers, _grandchildren) = guarded_primary(1, &[]);
    let guard = guard_of(primary.id(), None);
    assert_eq!(
        command_line(guard),
        format!("isotropic-cluster-guard (primary {})", primary.id())
    );
    let pattern = command_line(primary.id());
    let output = Command::new("pgrep")
        .arg("-f")
        .arg(&pattern)
        .output()
        .expect("pgrep");
    let found: Vec<u32> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    assert!(
        found.contains(&primary.id()),
        "pgrep -f {pattern:?}: {found:?}"
    );
    assert!(
        !found.contains(&guard),
        "pgrep -f {pattern:?} lists the guard"
    );
}

#[tokio::test]
async fn a_killed_guard_is_replaced_and_the_new_one_ends_the_workers_with_the_primary() {
    guard_replaced(&[]).await;
}

#[tokio::test]
async fn a_killed_guard_is_replaced_and_the_new_one_ends_the_worker_groups_without_cgroups() {
    if let Some(nobody) = as_nobody() {
        guard_replaced(&nobody).await;
    }
}

/// Kills the guard of a `guarded-primary` run through `launcher`, waits for
/// another, kills the primary: its workers and their children go.
async fn guard_replaced(launcher: &[&str]) {
    let (mut primary, workers, grandchildren) = guarded_primary(2, launcher);
    assert_eq!(grandchildren.len(), 2, "each worker started a child");
    let watches: Vec<ExitWatch> = workers
        .iter()
        .chain(&grandchildren)
        .map(|&pid| ExitWatch::new(pid))
        .collect();
    let guard = guard_of(primary.id(), None);
    signal(guard, rustix::process::Signal::KILL);
    let replaced = Instant::now();
    let new_guard = guard_of(primary.id(), Some(guard));
    eprintln!(
        "a new guard ({new_guard}) runs {:?} after the SIGKILL of the old",
        replaced.elapsed()
    );
    let killed = Instant::now();
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    // The children ignore SIGTERM and are no worker: only a guard ends them.
    for watch in watches {
        watch.exited().await;
    }
    eprintln!(
        "primary killed: 2 workers and 2 children gone after {:?}",
        killed.elapsed()
    );
    let mut stderr = String::new();
    primary
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert!(
        stderr.contains("the orphan guard died"),
        "not said loudly: {stderr}"
    );
}

#[tokio::test]
async fn workers_go_when_the_primary_and_its_guard_die_together() {
    let (mut primary, workers, grandchildren) = guarded_primary(2, &[]);
    let watches: Vec<ExitWatch> = workers.iter().map(|&pid| ExitWatch::new(pid)).collect();
    let cgroups: Vec<String> = workers.iter().map(|&pid| cgroup_of(pid)).collect();
    let guard = guard_of(primary.id(), None);
    // Stopped, the primary cannot replace its guard before it dies too.
    signal(primary.id(), rustix::process::Signal::STOP);
    signal(guard, rustix::process::Signal::KILL);
    let killed = Instant::now();
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    for watch in watches {
        watch.exited().await;
    }
    eprintln!(
        "primary and guard killed: 2 workers gone after {:?}",
        killed.elapsed()
    );
    // Nothing is left to end what the workers started, nor to remove their
    // cgroups (a documented limit): the test does.
    for &pid in &grandchildren {
        let watch = ExitWatch::new(pid);
        signal(pid, rustix::process::Signal::KILL);
        watch.exited().await;
    }
    remove_cgroups(&cgroups);
}

/// Removes the workers' cgroups (`0::` paths) and the one that holds them,
/// where they run in cgroups of their own.
fn remove_cgroups(cgroups: &[String]) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let Some(mount) = mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        filesystem
            .starts_with("cgroup2 ")
            .then(|| mount.split(' ').nth(4))?
    }) else {
        return;
    };
    for cgroup in cgroups
        .iter()
        .filter(|cgroup| cgroup.contains("/isotropic-cluster-"))
    {
        let dir = PathBuf::from(format!("{mount}{cgroup}"));
        std::fs::remove_dir(&dir).expect("remove a worker's cgroup");
        let _ = std::fs::remove_dir(dir.parent().expect("the primary's"));
    }
}
