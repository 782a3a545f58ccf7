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
    guard_replaced(&[], false).await;
}

#[tokio::test]
async fn a_killed_guard_is_replaced_and_the_new_one_ends_the_worker_groups_without_cgroups() {
    if let Some(nobody) = as_nobody() {
        guard_replaced(&nobody, false).await;
    }
}

#[tokio::test]
async fn a_guard_killed_with_records_unread_is_replaced_all_the_same() {
    // (Its socket then reads a reset, not an end of file: the primary stopped
    // watching, and no guard ran any more.)
    guard_replaced(&[], true).await;
}

/// Kills the guard of a `guarded-primary` run through `launcher` (`unread`:
/// with a record in its socket), waits for another, kills the primary: its
/// workers and their children go.
async fn guard_replaced(launcher: &[&str], unread: bool) {
    let (mut primary, workers, grandchildren) = guarded_primary(2, launcher);
    assert_eq!(grandchildren.len(), 2, "each worker started a child");
    let watches: Vec<ExitWatch> = workers
        .iter()
        .chain(&grandchildren)
        .map(|&pid| ExitWatch::new(pid))
        .collect();
    let log = log_of(&mut primary);
    let guard = guard_of(primary.id(), None);
    if unread {
        // Stopped, the guard reads nothing: the primary's word that a worker
        // is gone (said before its death is logged) waits in its socket.
        signal(guard, rustix::process::Signal::STOP);
        signal(workers[0], rustix::process::Signal::KILL);
        log_until(&log, "Worker died");
    }
    signal(guard, rustix::process::Signal::KILL);
    let replaced = Instant::now();
    log_until(&log, "the orphan guard died");
    // Not once its process runs: once the primary told it of the groups.
    log_until(&log, "a new orphan guard runs");
    let new_guard = guard_of(primary.id(), Some(guard));
    eprintln!(
        "a new guard ({new_guard}) holds the groups {:?} after the SIGKILL of the old",
        replaced.elapsed()
    );
    // The children ignore SIGTERM and are no worker: only a guard ends them.
    let gone = tests_integration::kill_and_await(&mut primary, watches).await;
    eprintln!("primary killed: 2 workers and 2 children gone after {gone:?}");
}

/// The lines of `primary`'s stderr, read by a thread of their own until it
/// ends.
fn log_of(primary: &mut Running) -> std::sync::mpsc::Receiver<String> {
    let stderr = BufReader::new(primary.stderr.take().expect("stderr"));
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    log
}

/// Reads `log` (a primary's stderr) until a line containing `text`.
fn log_until(log: &std::sync::mpsc::Receiver<String>, text: &str) {
    loop {
        let line = log
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|error| panic!("no {text:?} from the primary: {error}"));
        if line.contains(text) {
            return;
        }
    }
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
    let gone = tests_integration::kill_and_await(&mut primary, watches).await;
    eprintln!("primary and guard killed: 2 workers gone after {gone:?}");
    // Nothing is left to end what the workers started, nor to remove their
    // cgroups (a documented limit): the test does.
    for &pid in &grandchildren {
        let watch = ExitWatch::new(pid);
        signal(pid, rustix::process::Signal::KILL);
        watch.exited().await;
    }
    remove_cgroups(&cgroups);
}

/// The directory of cgroup `cgroup` (a `0::` path), where a cgroup v2
/// hierarchy is mounted.
fn cgroup_dir(cgroup: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mount = mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        filesystem
            .starts_with("cgroup2 ")
            .then(|| mount.split(' ').nth(4))?
    })?;
    Some(PathBuf::from(format!("{mount}{cgroup}")))
}

/// Removes the workers' cgroups (`0::` paths) and the one that holds them,
/// where they run in cgroups of their own.
fn remove_cgroups(cgroups: &[String]) {
    for cgroup in cgroups
        .iter()
        .filter(|cgroup| cgroup.contains("/isotropic-cluster-"))
    {
        let Some(dir) = cgroup_dir(cgroup) else {
            return;
        };
        std::fs::remove_dir(&dir).expect("remove a worker's cgroup");
        let _ = std::fs::remove_dir(dir.parent().expect("the primary's"));
    }
}

/// `fixture-orphans ARGS…` as PID 1 of new user and PID namespaces, with
/// `/proc` of its own (`--mount-proc`) or not, through `launcher` (see
/// [`escape_primary`]); its stdout piped.
fn in_namespaces(launcher: &[&str], mount_proc: bool, args: &[&str]) -> Running {
    let mut command = match launcher {
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg("unshare");
            command
        }
        [] => Command::new("unshare"),
    };
    command.args(["--kill-child", "-Urpf"]);
    if mount_proc {
        command.arg("--mount-proc");
    }
    Running(
        command
            .arg(fixture_orphans())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare"),
    )
}

/// The first line `namespace` prints.
fn first_line(namespace: &mut Running) -> String {
    let stdout = namespace.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("read")
}

/// Waits for `namespace` to end; returns whether it succeeded.
fn ended(namespace: &mut Running) -> bool {
    let started = Instant::now();
    loop {
        if let Some(status) = namespace.try_wait().expect("try_wait") {
            return status.success();
        }
        assert!(started.elapsed() < DEADLINE, "the namespace did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The primary of a `pid2` namespace (`unshare`, its PID 1, the primary),
/// by its pid here, and its workers' (by their name, `fixture-worker`).
fn namespaced_primary(namespace: &Running) -> (u32, Vec<u32>) {
    let first = |pid: u32| children(pid).first().copied().expect("a child");
    let primary = first(first(namespace.id()));
    let workers = children(primary)
        .into_iter()
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|comm| comm == "fixture-worker\n")
        })
        .collect();
    (primary, workers)
}

#[tokio::test]
async fn a_primary_spares_the_workers_of_another_with_its_pid_in_another_pid_namespace() {
    if !namespaces() {
        return;
    }
    // Both primaries are PID 2 of their namespace: once their cgroups shared
    // a name, and one's end killed the other's workers.
    let launch = |count: &str| {
        let mut namespace = in_namespaces(&[], true, &["pid2", "guarded-primary", count]);
        assert!(first_line(&mut namespace).starts_with("workers "));
        namespace
    };
    let mut one = launch("1");
    let mut other = launch("3");
    let (primary, _) = namespaced_primary(&one);
    let (other_primary, workers) = namespaced_primary(&other);
    assert_eq!(workers.len(), 3, "{workers:?}");
    let cgroups: Vec<String> = workers.iter().map(|&pid| cgroup_of(pid)).collect();
    signal(primary, rustix::process::Signal::KILL);
    // Its PID 1 ends once its guard has ended its workers.
    assert!(!ended(&mut one), "its primary was killed");
    let alive: Vec<bool> = workers
        .iter()
        .map(|&pid| tests_integration::alive(pid))
        .collect();
    assert_eq!(
        alive, [true; 3],
        "the other primary's workers ({cgroups:?})"
    );
    // Its guard, not the end of its namespace, removes its cgroups.
    signal(other_primary, rustix::process::Signal::KILL);
    assert!(!ended(&mut other));
}

#[test]
fn where_proc_is_another_pid_namespaces_workers_are_not_killed_at_start() {
    if !namespaces() {
        return;
    }
    let mut namespace = in_namespaces(&[], false, &["pid2", "clean-primary", "2"]);
    assert_eq!(first_line(&mut namespace), "clean");
    assert!(ended(&mut namespace));
}

#[tokio::test]
async fn where_proc_is_another_pid_namespaces_the_guard_still_ends_the_worker_groups() {
    // Without cgroups (an unprivileged primary): only the guard ends what
    // the workers started.
    let Some(nobody) = as_nobody() else { return };
    if !namespaces() {
        return;
    }
    let mut namespace = in_namespaces(&nobody, false, &["pid2", "guarded-primary", "2"]);
    assert!(first_line(&mut namespace).starts_with("workers "));
    let (primary, workers) = namespaced_primary(&namespace);
    let grandchildren: Vec<u32> = workers.iter().flat_map(|&pid| children(pid)).collect();
    assert_eq!(grandchildren.len(), 2, "each worker started a child");
    let watches: Vec<ExitWatch> = workers
        .iter()
        .chain(&grandchildren)
        .map(|&pid| ExitWatch::new(pid))
        .collect();
    signal(primary, rustix::process::Signal::KILL);
    // The children ignore SIGTERM and are no worker: only a guard ends them.
    for watch in watches {
        watch.exited().await;
    }
}

/// The base cgroups of PID 1s (`isotropic-cluster-1…`) in our cgroup.
fn bases_of_pid_1() -> Vec<String> {
    let Some(ours) = cgroup_dir(&cgroup_of(std::process::id())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(ours) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name == "isotropic-cluster-1" || name.starts_with("isotropic-cluster-1-"))
        .collect()
}

#[test]
fn a_primary_that_is_pid_1_leaves_no_cgroup_after_a_clean_exit() {
    if !namespaces() {
        return;
    }
    let before = bases_of_pid_1();
    // Its guard dies with it, often before it removed anything: 4 runs.
    for _ in 0..4 {
        let mut namespace = in_namespaces(&[], true, &["clean-primary", "2"]);
        assert_eq!(first_line(&mut namespace), "clean");
        assert!(ended(&mut namespace));
    }
    let left: Vec<String> = bases_of_pid_1()
        .into_iter()
        .filter(|name| !before.contains(name))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "left behind");
}
