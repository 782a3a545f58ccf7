//! Readiness over `NOTIFY_SOCKET`: a few lines of Python are a worker that
//! says `READY=1` and `STATUS=` as to systemd.
#![cfg(target_os = "linux")]

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isotropic_cluster::ProtocolError;
use isotropic_cluster::primary::*;
use tests_integration::{DEADLINE, exit_of, shut_down, wait_for};

/// What every notify worker here begins with: exit 0 on SIGTERM, and
/// `notify(text)` sends a datagram to `NOTIFY_SOCKET` (`@`: an abstract name).
const PRELUDE: &str = r#"
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
def notify(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), address)
"#;

/// A worker that says `STATUS=waiting`, waits for the file named by its slot
/// in the directory it is given, then says `READY=1` and `STATUS=serving`.
const SCRIPT: &str = r#"
notify("STATUS=waiting")
go = os.path.join(sys.argv[1], os.environ["ISOTROPIC_CLUSTER_SLOT"])
while not os.path.exists(go):
    time.sleep(0.01)
notify("READY=1")
notify("STATUS=serving")
signal.pause()
"#;

/// A scratch directory for the files that let workers go.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isotropic-notify-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn notify_primary(go: &Path) -> PrimaryBuilder {
    tests_integration::log_to_test_output();
    ClusterPrimary::builder()
        .program("python3")
        .args(["-c", &[PRELUDE, SCRIPT].concat()])
        .arg(go)
        .channel(WorkerChannel::None)
        .readiness(Readiness::Notify)
}

fn status_of(event: PrimaryEvent) -> Option<(u32, String)> {
    match event {
        PrimaryEvent::WorkerStatus(e) => Some((e.worker.slot(), e.status)),
        _ => None,
    }
}

/// The `NOTIFY_SOCKET` in the environment of process `pid`.
fn notify_socket_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

#[tokio::test]
async fn a_worker_is_ready_only_on_its_own_ready_1() {
    let go = scratch("ready");
    let primary = notify_primary(&go).start().await.expect("start");
    let mut events = primary.events();
    primary.fork(2).await.expect("fork");
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let (worker, status) = wait_for(&mut events, |e| match e {
            PrimaryEvent::WorkerStatus(e) => Some((e.worker, e.status)),
            _ => None,
        })
        .await;
        assert_eq!(status, "waiting");
        waiting.push(worker);
    }
    let address = notify_socket_of(waiting[0].pid()).expect("NOTIFY_SOCKET");
    assert_eq!(notify_socket_of(waiting[1].pid()), Some(address.clone()));
    let ours = format!("@isotropic-cluster/{}/", std::process::id());
    assert!(address.starts_with(&ours), "{address}");

    // This test process is no worker: its READY=1 is dropped. It is sent
    // before slot 0 may go, so had it counted, a worker would be ready first.
    let test = std::os::unix::net::UnixDatagram::unbound().expect("a socket");
    let to = SocketAddr::from_abstract_name(&address[1..]).expect("an address");
    test.send_to_addr(b"READY=1", &to).expect("sent");
    std::fs::write(go.join("0"), "").expect("go");
    let ready = wait_for(&mut events, |e| match e {
        PrimaryEvent::AddWorker(e) => Some(e.worker.slot()),
        _ => None,
    })
    .await;
    assert_eq!(ready, 0);
    // Slot 0's READY=1 made it ready, and it alone: slot 1 is still waiting
    // after slot 0's next datagram.
    assert_eq!(
        wait_for(&mut events, status_of).await,
        (0, "serving".into())
    );
    let pool: Vec<u32> = primary.workers().iter().map(WorkerHandle::slot).collect();
    assert_eq!(pool, [0]);
    std::fs::write(go.join("1"), "").expect("go");
    assert_eq!(
        wait_for(&mut events, status_of).await,
        (1, "serving".into())
    );
    assert_eq!(primary.workers().len(), 2);
    shut_down(&primary).await;
    let _ = std::fs::remove_dir_all(&go);
}

#[tokio::test]
async fn a_worker_that_never_says_ready_is_replaced_after_the_ready_timeout() {
    let go = scratch("timeout");
    // (Long enough for Python to start on a loaded machine: the replacement
    // must be able to make it.)
    let builder = notify_primary(&go).ready_timeout(Duration::from_secs(2));
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let error = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerError(e) => Some(e.error),
        _ => None,
    })
    .await;
    assert!(matches!(error, ProtocolError::ReadyTimeout(_)), "{error}");
    // Its replacement, let go from its start, is ready.
    std::fs::write(go.join("0"), "").expect("go");
    let exit = wait_for(&mut events, exit_of).await;
    assert!(exit.replaced);
    tests_integration::ready(&mut events, 1).await;
    shut_down(&primary).await;
    let _ = std::fs::remove_dir_all(&go);
}

#[tokio::test]
async fn a_child_of_a_worker_speaks_for_it_and_the_socket_goes_with_the_primary() {
    tests_integration::log_to_test_output();
    // The worker is a shell; the server it runs, a child in its process
    // group, says ready. (A sender that exits at once may be gone before its
    // group is read: see docs/protocol.md.)
    let say_ready = r#"
import os, signal, socket
address = os.environ["NOTIFY_SOCKET"]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1", "\0" + address[1:])
signal.pause()
"#;
    let shell = format!("python3 -c '{say_ready}'; echo done");
    let builder = ClusterPrimary::builder()
        .program("sh")
        .args(["-c", &shell])
        .channel(WorkerChannel::None)
        .readiness(Readiness::Notify);
    let (primary, _events, [worker]) = tests_integration::launch::<1>(builder).await;
    let address = notify_socket_of(worker.pid()).expect("NOTIFY_SOCKET");
    let to = SocketAddr::from_abstract_name(&address[1..]).expect("an address");
    let test = std::os::unix::net::UnixDatagram::unbound().expect("a socket");
    test.send_to_addr(b"STATUS=x", &to)
        .expect("the socket is there");
    tokio::time::timeout(DEADLINE, primary.destroy())
        .await
        .expect("destroyed in time")
        .expect("destroyed");
    // Its reader ends with the primary's task, and the socket with it.
    let gone = async {
        while test.send_to_addr(b"STATUS=x", &to).is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("the notify socket outlived the primary");
}

/// A notify worker that sends `WATCHDOG=1` every 50 ms until it sees the
/// file named by its slot, and none after (it hangs, as a stuck daemon
/// would); it says what `WATCHDOG_USEC` it was given with its first one (a
/// notify worker is watched from its first: one hung before it is not).
const WATCHDOG_SCRIPT: &str = r#"
notify("READY=1")
# (Its status with its first sign of life: a test that sees it may hang it.)
notify("WATCHDOG=1\nSTATUS=usec " + os.environ.get("WATCHDOG_USEC", "none"))
stuck = os.path.join(sys.argv[1], os.environ["ISOTROPIC_CLUSTER_SLOT"])
while not os.path.exists(stuck):
    time.sleep(0.05)
    notify("WATCHDOG=1")
signal.pause()
"#;

#[tokio::test]
async fn a_notify_worker_that_stops_sending_watchdog_1_is_replaced_and_one_that_sends_it_is_not() {
    let stuck = scratch("watchdog");
    let primary = ClusterPrimary::builder()
        .program("python3")
        .args(["-c", &[PRELUDE, WATCHDOG_SCRIPT].concat()])
        .arg(&stuck)
        .channel(WorkerChannel::None)
        .readiness(Readiness::Notify)
        .watchdog(Duration::from_millis(1000))
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    primary.fork(2).await.expect("fork");
    for _ in 0..2 {
        let (_, status) = wait_for(&mut events, status_of).await;
        assert_eq!(status, "usec 1000000", "as systemd tells a service");
    }
    let figures = primary.figures().await;
    assert_eq!(figures.len(), 2);
    assert!(
        figures
            .iter()
            .all(|f| f.status.as_deref() == Some("usec 1000000")),
        "the last status line, in the figures: {figures:?}"
    );
    // Slot 1 hangs: only it is stopped, and its replacement takes slot 1.
    std::fs::write(stuck.join("1"), b"").expect("hang slot 1");
    let unresponsive = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerUnresponsive(e) => Some(e.worker),
        _ => None,
    })
    .await;
    assert_eq!(unresponsive.slot(), 1);
    // It hangs past the file: gone, it lets the replacement run, however
    // soon that starts.
    std::fs::remove_file(stuck.join("1")).expect("let the replacement run");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(exit.worker.id(), unresponsive.id());
    assert!(exit.replaced);
    // Slot 0 kept sending: it is still the first worker, after several periods.
    let ready = wait_for(&mut events, |e| match e {
        PrimaryEvent::AddWorker(e) => Some(e.worker),
        _ => None,
    })
    .await;
    assert_eq!(ready.slot(), 1);
    let (slot, _) = wait_for(&mut events, status_of).await;
    assert_eq!(slot, 1);
    assert!(primary.workers().iter().any(|w| w.id().get() == 1));
    shut_down(&primary).await;
    std::fs::remove_dir_all(&stuck).expect("clean up");
}

/// A notify worker that waits in slot 0; in another, given the pid of slot
/// 0's in the file `victim` of the directory it is given, has a child try
/// to join that worker's process group and say `READY=1` and
/// `STATUS=forged` from there; then says `STATUS=done` itself (after its
/// child's datagram: in order), and waits, never ready.
const FORGER: &str = r#"
if os.environ["ISOTROPIC_CLUSTER_SLOT"] == "0":
    signal.pause()
victim = os.path.join(sys.argv[1], "victim")
while not os.path.exists(victim):
    time.sleep(0.01)
victim = int(open(victim).read())
done, sent = os.pipe()
if os.fork() == 0:
    try:
        os.setpgid(0, victim)
    except OSError:
        pass
    notify("READY=1\nSTATUS=forged")
    os.write(sent, b"x")
    signal.pause()
os.read(done, 1)
notify("STATUS=done")
signal.pause()
"#;

#[tokio::test]
async fn a_process_of_one_worker_cannot_join_anothers_group_to_speak_for_it() {
    // (It could: every worker led a process group of the primary's session,
    // which any process of that session may join with `setpgid`; a datagram
    // from there was taken as that worker's, ready or not.)
    tests_integration::log_to_test_output();
    let go = scratch("forger");
    let builder = ClusterPrimary::builder()
        .program("python3")
        .args(["-c", &[PRELUDE, FORGER].concat()])
        .arg(&go)
        .channel(WorkerChannel::None)
        .readiness(Readiness::Notify);
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    primary.fork(2).await.expect("fork");
    let (slot, pid) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerFork(e) => Some((e.worker.slot(), e.worker.pid())),
        _ => None,
    })
    .await;
    assert_eq!(slot, 0);
    std::fs::write(go.join("victim.tmp"), pid.to_string()).expect("write");
    std::fs::rename(go.join("victim.tmp"), go.join("victim")).expect("rename");
    let mut heard = Vec::new();
    let done = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerStatus(e) => {
            heard.push((e.worker.slot(), e.status.clone()));
            (e.status == "done").then_some(e.worker.slot())
        }
        PrimaryEvent::WorkerReady(e) => {
            heard.push((e.worker.slot(), "ready".into()));
            None
        }
        _ => None,
    })
    .await;
    assert_eq!(done, 1);
    assert!(
        !heard.iter().any(|(slot, _)| *slot == 0),
        "slot 0 never spoke: {heard:?}"
    );
    assert!(!primary.workers().iter().any(|w| w.slot() == 0));
    shut_down(&primary).await;
    let _ = std::fs::remove_dir_all(&go);
}
