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
    // Bytes messages: not JSON, sent back reversed.
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
    // Version 3: a large bytes message comes in a sealed memfd and goes
    // back in one; fds with a message are taken (and closed) in order.
    let large: Vec<u8> = (0..3_u32 << 20).map(|i| (i % 251) as u8).collect();
    primary
        .send_bytes(&workers[1], large.clone())
        .await
        .expect("send");
    let echo = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some(b.bytes),
        _ => None,
    })
    .await;
    assert!(
        echo.iter().rev().eq(large.iter()),
        "the large bytes came back wrong"
    );
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    workers[0]
        .send_with_fds(&json!("with an fd"), vec![null.into()])
        .await
        .expect("send");
    let echo = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => m.message.decode::<Value>().ok(),
        _ => None,
    })
    .await;
    assert_eq!(echo, json!({"echo": "with an fd"}));
    // Bytes requests, small and large (sealed both ways), and a name it
    // does not handle.
    for body in [b"abc".to_vec(), large] {
        let reply = workers[0]
            .request_bytes("reverse", body.clone())
            .await
            .expect("a reply");
        assert!(
            reply.iter().rev().eq(body.iter()),
            "{} bytes came back wrong",
            body.len()
        );
    }
    let unknown = workers[1].request_bytes("nobody", &b""[..]).await;
    assert!(
        matches!(&unknown, Err(isotropic_cluster::RequestError::Remote { message, .. }) if message == "no handler named 'nobody'"),
        "{unknown:?}"
    );
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
