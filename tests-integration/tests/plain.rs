//! Plain programs (no channel) as workers: ready when they listen.
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use tests_integration::{launch, shut_down};

#[tokio::test]
async fn a_plain_worker_is_ready_once_it_listens_on_a_unix_socket() {
    tests_integration::log_to_test_output();
    let dir = std::env::temp_dir().join(format!("isotropic-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let script = r#"
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
signal.pause()
"#;
    let builder = ClusterPrimary::builder()
        .program("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .channel(WorkerChannel::None)
        .readiness(Readiness::Listening);
    let (primary, _events, [_worker]) = launch::<1>(builder).await;
    // Ready means listening: a connection is accepted into its backlog.
    std::os::unix::net::UnixStream::connect(&path).expect("the worker listens");
    shut_down(&primary).await;
    let _ = std::fs::remove_dir_all(&dir);
}
