//! A plain Node.js script (no library of ours) is a full worker through
//! Node's own child-process IPC (issue: workers in any language).
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use serde_json::{Value, json};
use tests_integration::{exit_of, launch, message_of, shut_down, wait_for};

const SCRIPT: &str = r#"
process.on('message', message => {
  if (message && message.type === 'echo') process.send({ echo: message.n });
  if (message === 'bye') process.disconnect();
  if (message === 'handle') {
    const server = require('net').createServer();
    server.listen(0, '127.0.0.1', () => process.send({ handle: true }, server));
  }
});
process.send({ hello: process.pid });
process.send('ready');
"#;

fn node_primary() -> PrimaryBuilder {
    tests_integration::log_to_test_output();
    assert!(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "these tests need Node.js (node) on the PATH"
    );
    ClusterPrimary::builder()
        .program("node")
        .args(["-e", SCRIPT])
        .channel(WorkerChannel::Node)
}

#[tokio::test]
async fn a_node_script_joins_talks_and_disconnects() {
    let (primary, mut events, [worker]) = launch::<1>(node_primary()).await;
    assert_eq!(primary.workers().len(), 1);
    primary
        .send(&worker, &json!({"type": "echo", "n": 5}))
        .await
        .expect("send");
    let (from, echo) = wait_for(&mut events, |e| {
        message_of(e).filter(|(_, m)| m.get("echo").is_some())
    })
    .await;
    assert_eq!((from, echo), (worker.id(), json!({"echo": 5})));

    // process.disconnect() is a disconnect; the script then ends by itself,
    // and is replaced as any worker.
    primary.send(&worker, &"bye").await.expect("send");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(
        (exit.worker.id(), exit.code(), exit.voluntary),
        (worker.id(), Some(0), false)
    );
    tests_integration::ready(&mut events, 1).await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn ready_comes_after_the_message_that_carries_it() {
    let primary = node_primary().start().await.expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let mut seen: Vec<Value> = Vec::new();
    let pick = |e| match e {
        PrimaryEvent::WorkerMessage(m) => Some(m.message.decode().ok()),
        PrimaryEvent::WorkerReady(_) => Some(None),
        _ => None,
    };
    while let Some(message) = wait_for(&mut events, pick).await {
        seen.push(message);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].get("hello").is_some());
    assert_eq!(seen[1], json!("ready"));
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_handle_a_node_worker_sends_is_closed_at_once() {
    let (primary, mut events, [worker]) = launch::<1>(node_primary()).await;
    let open_fds = || std::fs::read_dir("/proc/self/fd").expect("our fds").count();
    let before = open_fds();
    primary.send(&worker, &"handle").await.expect("send");
    // Node sends the handle's fd with an internal NODE_HANDLE message.
    let (_, message) = wait_for(&mut events, |e| {
        message_of(e).filter(|(_, m)| m.get("cmd") == Some(&json!("NODE_HANDLE")))
    })
    .await;
    assert_eq!(message["msg"], json!({"handle": true}), "{message}");
    assert_eq!(open_fds(), before, "the passed socket was not kept");
    shut_down(&primary).await;
}
