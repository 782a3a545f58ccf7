//! The Python worker printed in `docs/protocol.md` is a full worker: the
//! document is complete enough to write one from it alone.
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use serde_json::{Value, json};
use tests_integration::{launch, shut_down, wait_for};

/// The Python code block of `docs/protocol.md`.
fn documented_worker() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("read docs/protocol.md");
    let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
    let end = start + doc[start..].find("```").expect("end of the block");
    doc[start..end].to_owned()
}

#[tokio::test]
async fn the_documented_python_worker_joins_answers_and_leaves() {
    let python = which("python3").expect("python3 must be installed for this test");
    let (primary, mut events, workers) = launch::<2>(
        ClusterPrimary::builder()
            .program(python)
            .args(["-c", &documented_worker()]),
    )
    .await;
    // Its channel is not inherited by its own children (issue 12: a child
    // of the documented worker could write frames the primary took as its).
    for worker in &workers {
        assert!(
            close_on_exec(worker.pid(), channel_fd(worker.pid())),
            "worker {}'s channel is inheritable",
            worker.id()
        );
    }
    primary
        .send(&workers[1], &json!({"type": "hi", "n": 1}))
        .await
        .expect("send");
    let (from, echo) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => Some((m.worker.id(), m.message.decode::<Value>().ok()?)),
        _ => None,
    })
    .await;
    assert_eq!(
        (from, echo),
        (workers[1].id(), json!({"echo": {"type": "hi", "n": 1}}))
    );
    // Bytes messages (protocol version 2): not JSON, sent back reversed.
    primary
        .send_bytes(&workers[0], &b"\x00\xffraw"[..])
        .await
        .expect("send");
    let (from, echo) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some((b.worker.id(), b.bytes)),
        _ => None,
    })
    .await;
    assert_eq!((from, &echo[..]), (workers[0].id(), &b"war\xff\x00"[..]));
    shut_down(&primary).await;
    let exits: Vec<(Option<i32>, bool)> = {
        let mut exits = Vec::new();
        while exits.len() < 2 {
            exits.push(
                wait_for(&mut events, |e| match e {
                    PrimaryEvent::WorkerExit(x) => Some((x.code(), x.voluntary)),
                    _ => None,
                })
                .await,
            );
        }
        exits
    };
    assert_eq!(exits, [(Some(0), true), (Some(0), true)]);
}

/// The channel fd a worker was started with (its initial environment).
fn channel_fd(pid: u32) -> u32 {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"ISOTROPIC_CLUSTER_CHANNEL_FD="))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .expect("the channel fd variable")
}

/// Whether `fd` of process `pid` closes on exec (`O_CLOEXEC` in its fdinfo).
fn close_on_exec(pid: u32, fd: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|octal| u32::from_str_radix(octal.trim(), 8).ok())
        .expect("flags");
    flags & 0o2_000_000 != 0
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}
