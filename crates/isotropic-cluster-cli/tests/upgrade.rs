//! Upgrading the primary (SIGUSR2) under HTTP load on a shared `--listen`
//! socket: the requests that failed, from the CLI's `--json` lines which
//! both primaries write (the new one inherits the old one's stdout). The
//! workers are Python servers ready once they serve (`--ready notify`), each
//! saying the release it runs. The new primary is not the test's child: it
//! is stopped by the pid its lines give, and killed if a test fails first.
#![cfg(target_os = "linux")]

use std::path::Path;

use rustix::process::{Pid, Signal};
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdout};

mod common;
use common::load::{Load, release_server};
use common::pool::{Line, Pool};
use common::*;

const WORKERS: usize = 2;
/// Client threads of the load.
const CLIENTS: usize = 3;
const CLI: &str = env!("CARGO_BIN_EXE_isotropic-cluster");

type Lines = Pool<BufReader<ChildStdout>>;

/// The CLI at `program` with `flags` (`--listen ADDR`…), running
/// [`WORKERS`] servers of the release in `release`, all ready (with
/// `NOTIFY_SOCKET` set to `notify`, if given); its lines.
async fn start(
    program: &Path,
    flags: &[&str],
    release: &Path,
    notify: Option<&Path>,
) -> (Child, Lines) {
    std::fs::write(release, "1").expect("the release file");
    let mut command = tokio::process::Command::new(program);
    let workers = WORKERS.to_string();
    let server = release_server();
    let release = release.to_str().expect("a UTF-8 path");
    command
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .args(["run", "--json", "--workers", &workers, "--ready", "notify"])
        .args(flags)
        .args(["--", "python3", "-c", &server, release]);
    if let Some(notify) = notify {
        command.env("NOTIFY_SOCKET", notify);
    }
    let (child, stdout) = spawn_json(command);
    let mut pool = Pool::new(stdout);
    pool.until("every worker ready", |pool| pool.ready().len() == WORKERS)
        .await;
    (child, pool)
}

/// The address of the `listening on ADDR` line read.
fn address(pool: &Lines) -> std::net::SocketAddr {
    let listening = pool.lines().iter().find(|line| line.event == "listening");
    let message = listening.expect("a listening line").message.clone();
    listening_address(&[message])
}

/// The pid in a line's `(pid N)`.
fn pid_in(line: &Line) -> u32 {
    let after = line.message.split("(pid ").nth(1);
    let pid = after.and_then(|rest| rest.split(')').next());
    pid.and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

/// The primary an upgrade started, known by the pid its lines give:
/// killed when dropped, unless stopped.
struct NewPrimary(Option<u32>);

impl NewPrimary {
    /// The new primary the `upgrade` line `line` names.
    fn of(line: &Line) -> Self {
        assert!(line.message.contains("started a new primary"), "{line}");
        Self(Some(pid_in(line)))
    }

    fn pid(&self) -> u32 {
        self.0.expect("running")
    }

    /// SIGTERM; waits for its last line (`all workers exited`) and until
    /// it is gone.
    async fn stop(self, pool: &mut Lines) {
        signal(self.pid(), Signal::TERM);
        self.handed_over(pool).await;
    }

    /// Waits for its last line and until it is gone (it is shutting down).
    async fn handed_over(mut self, pool: &mut Lines) {
        let pid = self.0.take().expect("running");
        pool.event("shutDownComplete").await;
        eventually("the new primary is gone", || gone(pid)).await;
    }
}

impl Drop for NewPrimary {
    /// (A test that failed first: its workers die with it.)
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|&pid| !gone(pid)) {
            signal(pid, Signal::KILL);
        }
    }
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid.cast_signed()).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("signal the new primary");
}

/// Whether process `pid` has exited (gone, or a zombie).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('Z'))
    })
}

/// The datagrams on `socket` (a read timeout set) until `last`, which is
/// not among them: the service manager also hears each primary's
/// `READY=1` and `STATUS=` lines.
async fn datagrams_until(socket: &std::os::unix::net::UnixDatagram, last: &str) -> Vec<String> {
    let socket = socket.try_clone().expect("a copy");
    let last = last.to_owned();
    let received = tokio::task::spawn_blocking(move || {
        let mut before = Vec::new();
        let mut buf = [0; 256];
        loop {
            let n = socket.recv(&mut buf).expect("a datagram");
            let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
            if datagram == last {
                return before;
            }
            before.push(datagram);
        }
    });
    received.await.expect("join")
}

/// Asserts that a request on the Unix socket at `path` is answered.
async fn assert_answers(path: &Path) {
    let path = path.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("a timeout");
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an answer");
        answer
    });
    let answer = answer.await.expect("join");
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
}

/// Waits until `load` had `more` answers beyond the ones it has now.
async fn served_more(load: &Load, more: u64) {
    let now = load.ok();
    eventually("requests are answered", || load.ok() >= now + more).await;
}

/// Waits for the old primary's `upgradeReady`, naming `new`.
async fn old_hands_over(pool: &mut Lines, new: &NewPrimary) {
    let hands_over =
        |line: &Line| line.event == "upgradeReady" && line.message.contains("hands over");
    let ready = pool
        .line("the old primary's upgradeReady", hands_over)
        .await;
    assert_eq!(pid_in(&ready), new.pid(), "{ready}");
}

/// Waits for the old primary's last line and its exit, with code 0.
async fn old_exits(old: &mut Child, pool: &mut Lines) {
    pool.event("shutDownComplete").await;
    assert_eq!(exit_code(old).await, Some(0));
}

#[tokio::test]
async fn an_upgrade_under_load_fails_no_request_and_the_old_primary_exits() {
    let scratch = Scratch::new("load");
    let release = scratch.path("release");
    let control = scratch.path("control.sock");
    let flags = [
        "--listen",
        "127.0.0.1:0",
        "--control",
        control.to_str().expect("UTF-8"),
    ];
    let (mut old, mut pool) = start(Path::new(CLI), &flags, &release, None).await;
    assert_eq!(control_pid(&control).await, old.id().expect("running"));
    let load = Load::start(address(&pool), CLIENTS);
    served_more(&load, 20).await;
    std::fs::write(&release, "2").expect("the release file");
    send(&old, Signal::USR2);
    let new = NewPrimary::of(&pool.event("upgrade").await);
    old_hands_over(&mut pool, &new).await;
    old_exits(&mut old, &mut pool).await;
    // The new primary alone serves, release 2.
    served_more(&load, 20).await;
    let tally = load.stop().await;
    eprintln!("the load through the upgrade: {tally:?}");
    tally.assert_none_failed();
    let release_2 = pool.lines().iter().filter(|line| {
        line.event == "workerStatus" && line.message.ends_with(" status: release 2")
    });
    assert_eq!(release_2.count(), WORKERS, "{}", pool.transcript());
    // The control socket is the new primary's (the old one left its file).
    assert_eq!(control_pid(&control).await, new.pid());
    new.stop(&mut pool).await;
    assert!(!control.exists(), "removed at the new primary's exit");
}

/// The pid of the primary that answers `status` on the control socket
/// at `path`.
async fn control_pid(path: &Path) -> u32 {
    let mut status = command(&["status", "--json", "--control"]);
    status.arg(path);
    let out = tokio::time::timeout(DEADLINE, status.output())
        .await
        .expect("in time")
        .expect("status");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let pid = status["pid"].as_u64().expect("a pid");
    u32::try_from(pid).expect("a pid")
}

#[tokio::test]
async fn a_new_primary_that_fails_leaves_the_old_one_serving_and_a_second_sigusr2_is_ignored() {
    let scratch = Scratch::new("fails");
    let program = scratch.path("isotropic-cluster");
    std::fs::copy(CLI, &program).expect("a copy of the CLI");
    let (mut old, mut pool) = start(
        &program,
        &["--listen", "127.0.0.1:0"],
        &scratch.path("release"),
        None,
    )
    .await;
    let load = Load::start(address(&pool), CLIENTS);
    served_more(&load, 20).await;
    // The deploy: a program that fails once the gate is there (30 s at most).
    let gate = scratch.path("gate");
    let script = format!(
        "#!/bin/sh\nfor _ in $(seq 600); do [ -e {} ] && break; sleep 0.05; done\nexit 1\n",
        gate.display()
    );
    let next = scratch.path("next");
    std::fs::write(&next, script).expect("the script");
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&next, executable).expect("executable");
    std::fs::rename(&next, &program).expect("the deploy");
    send(&old, Signal::USR2);
    let started = pool.event("upgrade").await;
    assert!(
        started.message.contains("started a new primary"),
        "{started}"
    );
    send(&old, Signal::USR2);
    let ignored = pool.event("upgrade").await;
    assert!(
        ignored.message.contains("an upgrade is under way")
            && ignored.message.contains("SIGUSR2 ignored"),
        "{ignored}"
    );
    std::fs::write(&gate, "").expect("the gate");
    let failed = pool.event("upgradeFailed").await;
    assert!(
        failed
            .message
            .contains("exited before it was ready (exit status: 1)")
            && failed.message.contains("this primary serves on"),
        "{failed}"
    );
    served_more(&load, 20).await;
    load.stop().await.assert_none_failed();
    stop_cleanly(&mut old, pool.stdout(), WORKERS).await;
}

#[tokio::test]
async fn the_service_manager_is_told_each_new_main_pid_and_the_unix_socket_is_kept() {
    let scratch = Scratch::new("notify");
    let notify_path = scratch.path("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bound");
    notify.set_read_timeout(Some(DEADLINE)).expect("a timeout");
    let socket = scratch.path("http.sock");
    let listen = format!("unix:{}", socket.display());
    let (mut old, mut pool) = start(
        Path::new(CLI),
        &["--listen", &listen],
        &scratch.path("release"),
        Some(&notify_path),
    )
    .await;
    send(&old, Signal::USR2);
    let new = NewPrimary::of(&pool.event("upgrade").await);
    old_hands_over(&mut pool, &new).await;
    let told = pool.event("upgradeMainPid").await;
    let main_pid = format!("MAINPID={}\n", new.pid());
    assert!(told.message.contains(main_pid.trim_end()), "{told}");
    let before = datagrams_until(&notify, &main_pid).await;
    assert!(before.iter().any(|d| d.contains("READY=1")), "{before:?}");
    old_exits(&mut old, &mut pool).await;
    // The old primary left the socket file: the new one serves it.
    assert_answers(&socket).await;
    // The new primary is upgraded in turn (it inherited NOTIFY_SOCKET).
    signal(new.pid(), Signal::USR2);
    let newer = NewPrimary::of(&pool.event("upgrade").await);
    old_hands_over(&mut pool, &newer).await;
    let main_pid = format!("MAINPID={}\n", newer.pid());
    let before = datagrams_until(&notify, &main_pid).await;
    // The old primary said nothing once it had handed over: no STOPPING=1
    // (that would stop the service).
    assert!(!before.iter().any(|d| d.contains("STOPPING")), "{before:?}");
    new.handed_over(&mut pool).await;
    assert_answers(&socket).await;
    newer.stop(&mut pool).await;
    assert!(
        !socket.exists(),
        "the last primary removes the socket file at its exit"
    );
}

#[tokio::test]
async fn as_a_subreaper_an_upgrade_is_refused_and_the_primary_serves_on() {
    let scratch = Scratch::new("subreaper");
    let flags = ["--listen", "127.0.0.1:0", "--subreaper"];
    let (mut old, mut pool) = start(Path::new(CLI), &flags, &scratch.path("release"), None).await;
    let load = Load::start(address(&pool), CLIENTS);
    send(&old, Signal::USR2);
    let refused = pool.event("upgradeFailed").await;
    assert!(
        refused
            .message
            .contains("SIGUSR2 refused: no upgrade as PID 1 or with --subreaper"),
        "{refused}"
    );
    served_more(&load, 20).await;
    load.stop().await.assert_none_failed();
    stop_cleanly(&mut old, pool.stdout(), WORKERS).await;
}

#[tokio::test]
async fn a_new_primary_whose_sockets_are_not_there_exits_with_code_5() {
    // As an old primary (this process, its parent) would start it, but
    // with neither the socket nor the handshake at fds 3 and 4.
    let mut command = command(&["run", "--listen", "127.0.0.1:0", "--", "true"]);
    command
        .env(
            "ISOTROPIC_CLUSTER_UPGRADE_FROM",
            std::process::id().to_string(),
        )
        .env("ISOTROPIC_CLUSTER_UPGRADE_FDNAMES", "listen0");
    let (mut new, mut stderr) = spawn(command);
    let seen = until(&mut stderr, "cannot take what the old primary handed over").await;
    assert!(
        !seen.iter().any(|line| line.contains("listening on")),
        "{seen:?}"
    );
    assert_eq!(exit_code(&mut new).await, Some(5));
}

#[tokio::test]
async fn a_new_primary_whose_workers_fail_gives_up_with_code_6_and_the_old_one_serves_on() {
    let scratch = Scratch::new("workers-fail");
    let release = scratch.path("release");
    let socket = scratch.path("http.sock");
    let unix = format!("unix:{}", socket.display());
    let (mut old, mut pool) = start(Path::new(CLI), &["--listen", &unix], &release, None).await;
    // A broken deploy: the new workers find no release, and exit 1 at start.
    std::fs::remove_file(&release).expect("removed");
    send(&old, Signal::USR2);
    let started = pool.event("upgrade").await;
    assert!(
        started.message.contains("started a new primary"),
        "{started}"
    );
    let gave_up = pool.event("upgradeFailed").await;
    assert!(
        gave_up.message.contains("its workers are not all ready"),
        "the new primary says why: {gave_up}"
    );
    let failed = pool.event("upgradeFailed").await;
    assert!(
        failed
            .message
            .contains("exited before it was ready (exit status: 6); this primary serves on"),
        "{failed}"
    );
    // The new primary left the socket file to the old one, which serves it.
    assert_answers(&socket).await;
    stop_cleanly(&mut old, pool.stdout(), WORKERS).await;
    assert!(!socket.exists(), "the old primary removes it at its exit");
}

/// Starts the program and arguments it is given as systemd's socket
/// activation would: a listening socket at fd 3, named `web`.
const SOCKET_ACTIVATION: &str = r#"
import os, socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
os.dup2(server.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[tokio::test]
async fn the_socket_activation_sockets_are_handed_over_as_systemd_passed_them() {
    let mut command = tokio::process::Command::new("python3");
    command.env("XDG_RUNTIME_DIR", runtime_dir());
    command.args([
        "-c",
        SOCKET_ACTIVATION,
        CLI,
        "run",
        "--json",
        "--workers",
        "1",
        "--",
        "sleep",
        "60",
    ]);
    let (mut old, stdout) = spawn_json(command);
    let mut pool = Pool::new(stdout);
    pool.event("workerReady").await;
    let old_pid = old.id().expect("running");
    let socket = |pid: u32| std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3");
    let activated = socket(old_pid);
    assert!(
        activated.to_string_lossy().starts_with("socket:"),
        "{activated:?}"
    );
    send(&old, Signal::USR2);
    let new = NewPrimary::of(&pool.event("upgrade").await);
    old_hands_over(&mut pool, &new).await;
    // The same socket, at fd 3, with systemd's variables but its own
    // LISTEN_PID (set in the process, so not in its initial environment).
    assert_eq!(socket(new.pid()), activated);
    let environ = std::fs::read(format!("/proc/{}/environ", new.pid())).expect("environ");
    let environ: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(environ.contains(&&b"LISTEN_FDS=1"[..]));
    assert!(environ.contains(&&b"LISTEN_FDNAMES=web"[..]));
    assert!(!environ.iter().any(|var| var.starts_with(b"LISTEN_PID=")));
    old_exits(&mut old, &mut pool).await;
    new.stop(&mut pool).await;
}

#[tokio::test]
async fn the_metrics_socket_is_handed_over_and_the_new_primary_answers_on_it() {
    let scratch = Scratch::new("metrics");
    let flags = ["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    let (mut old, mut pool) = start(Path::new(CLI), &flags, &scratch.path("release"), None).await;
    let metrics_line = |pool: &Lines, nth: usize| {
        let mut lines = pool.lines().iter().filter(|line| line.event == "metrics");
        let line = lines.nth(nth).expect("a metrics line").message.clone();
        let address = line.rsplit("http://").next().map(str::parse);
        address
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{line}"))
    };
    let metrics: std::net::SocketAddr = metrics_line(&pool, 0);
    assert_eq!(get(metrics, "/readyz").await.0, 200);
    send(&old, Signal::USR2);
    let new = NewPrimary::of(&pool.event("upgrade").await);
    old_hands_over(&mut pool, &new).await;
    old_exits(&mut old, &mut pool).await;
    // The new primary serves the same address (handed over, not bound again).
    assert_eq!(metrics_line(&pool, 1), metrics);
    let (code, text) = get(metrics, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    let ready = "isotropic_cluster_workers_ready{pool=\"default\"} 2";
    assert!(text.lines().any(|line| line == ready), "{text}");
    assert_eq!(get(metrics, "/readyz").await.0, 200);
    new.stop(&mut pool).await;
}
