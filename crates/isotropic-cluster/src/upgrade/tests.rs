use std::collections::HashMap;

use super::*;

/// The layout `vars` describe for a process whose parent is 42.
fn layout(vars: &[(&str, &str)]) -> Result<Option<Layout>, String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Layout::read(|key| vars.get(key).cloned(), Some(42))
}

#[test]
fn a_handover_is_for_the_child_of_the_process_that_made_it() {
    assert_eq!(layout(&[]), Ok(None));
    let vars = [(FROM, "42"), (FDNAMES, "listen0:listen1")];
    assert_eq!(
        layout(&vars),
        Ok(Some(Layout {
            from: 42,
            activated: 0,
            names: vec!["listen0".into(), "listen1".into()],
        }))
    );
    // Inherited by a descendant of the new process: not its handover.
    assert_eq!(layout(&[(FROM, "41"), (FDNAMES, "listen0")]), Ok(None));
    assert_eq!(
        layout(&[(FROM, "pid")]),
        Err(format!("{FROM} is not a pid: pid"))
    );
}

#[test]
fn socket_activation_sockets_come_first() {
    let vars = [(FROM, "42"), (FDNAMES, ""), ("LISTEN_FDS", "2")];
    let handed = layout(&vars).expect("valid").expect("a handover");
    assert_eq!((handed.activated, handed.names.len()), (2, 0));
    let bad = [(FROM, "42"), ("LISTEN_FDS", "many")];
    assert_eq!(
        layout(&bad),
        Err("LISTEN_FDS is not a count: many".to_owned())
    );
}

#[test]
fn a_socket_name_is_not_empty_and_has_no_colon() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
    for name in ["", "a:b"] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _entered = runtime.enter();
        let started = Upgrade::new("true").socket(name, &listener).start();
        let Err(UpgradeError::Start(error)) = started else {
            panic!("started with {name:?}");
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}

/// A successor that checks what it was handed (a socket named `http` at fd
/// 3, bound to `port`), then says ready on fd 4 and exits.
const CHECKS_AND_SAYS_READY: &str = r#"
import os, socket, sys
assert os.environ["ISOTROPIC_CLUSTER_UPGRADE_FDNAMES"] == "http"
assert os.environ["ISOTROPIC_CLUSTER_UPGRADE_FROM"] == str(os.getppid())
assert "LISTEN_PID" not in os.environ
server = socket.socket(fileno=3)
assert server.getsockname()[1] == int(sys.argv[1]), server.getsockname()
os.write(4, b"READY=1\n")
"#;

#[tokio::test]
async fn a_successor_that_says_ready_is_ready() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
    let port = listener.local_addr().expect("an address").port();
    let successor = Upgrade::new("python3")
        .args(["-c", CHECKS_AND_SAYS_READY, &port.to_string()])
        .socket("http", &listener)
        .ready_timeout(Duration::from_secs(30))
        .start()
        .expect("started");
    let pid = successor.pid();
    assert_eq!(successor.ready().await.expect("ready"), pid);
}

#[tokio::test]
async fn a_successor_that_exits_first_failed_with_its_status() {
    let successor = Upgrade::new("sh")
        .args(["-c", "exit 3"])
        .start()
        .expect("started");
    let Err(UpgradeError::Exited(status)) = successor.ready().await else {
        panic!("not an exit");
    };
    assert_eq!(status.code(), Some(3));
}

#[tokio::test]
async fn a_successor_not_ready_in_time_is_stopped_and_reaped() {
    // (`exec`: the shell's pid is sleep's, which SIGTERM ends.)
    let successor = Upgrade::new("sh")
        .args(["-c", "exec sleep 30"])
        .ready_timeout(Duration::from_millis(200))
        .start()
        .expect("started");
    let pid = successor.pid();
    let error = successor.ready().await.expect_err("not ready");
    assert!(matches!(error, UpgradeError::NotReady(_)), "{error}");
    // Reaped: its pid names no process of ours any more.
    let alive = rustix::process::test_kill_process(
        rustix::process::Pid::from_raw(pid.cast_signed()).expect("a pid"),
    );
    assert!(alive.is_err());
}

#[tokio::test]
async fn a_successor_dropped_before_it_is_ready_is_asked_to_stop() {
    let successor = Upgrade::new("sh")
        .args(["-c", "exec sleep 30"])
        .start()
        .expect("started");
    let pid = successor.pid();
    drop(successor);
    // SIGTERM ends `sleep`: gone, or a zombie until the runtime reaps it.
    let stat = format!("/proc/{pid}/stat");
    let ended = || {
        std::fs::read_to_string(&stat).map_or(true, |stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z'))
        })
    };
    for _ in 0..1000 {
        if ended() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the dropped successor still runs");
}
