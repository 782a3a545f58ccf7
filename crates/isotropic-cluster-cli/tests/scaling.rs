//! `run`'s pool at runtime: SIGTTIN and SIGTTOU, and drained recycling by
//! age (issue 14).
#![cfg(target_os = "linux")]

mod common;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn sigttin_and_sigttou_add_and_remove_one_worker_each() {
    // (The trap first: a slot line says that SIGTERM is answered.)
    let script = "trap 'exit 0' TERM; echo slot $ISOTROPIC_CLUSTER_SLOT; \
        while :; do sleep 0.1; done";
    let (mut child, mut stderr) = cli(&["run", "--workers", "2", "--", "sh", "-c", script]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    until(&mut stderr, "worker 2 ready").await;
    until(&mut stdout, "] slot").await;
    until(&mut stdout, "] slot").await;

    send(&child, rustix::process::Signal::TTIN);
    until(&mut stderr, "scaling from 2 to 3 workers").await;
    until(&mut stderr, "worker 3 ready").await;
    assert_eq!(
        until(&mut stdout, "] slot").await.pop().as_deref(),
        Some("[2] slot 2")
    );

    send(&child, rustix::process::Signal::TTOU);
    until(&mut stderr, "scaling from 3 to 2 workers").await;
    until(&mut stderr, "worker 3 exited with code 0").await;
    send(&child, rustix::process::Signal::TTOU);
    let seen = until(&mut stderr, "exited with code 0").await;
    assert!(
        seen.iter()
            .any(|l| l.contains("scaling from 2 to 1 workers")),
        "{seen:?}"
    );
    send(&child, rustix::process::Signal::TTOU);
    until(&mut stderr, "one worker left: SIGTTOU ignored").await;
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

#[tokio::test]
async fn max_age_recycles_each_worker_with_its_replacement_ready_first_and_no_request_fails() {
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "2",
        "--max-age",
        "1s",
        "--listen",
        "127.0.0.1:0",
        "--",
        "python3",
        "-c",
        DRAINING_SERVER,
    ]);
    let address = listening_address(&until(&mut stderr, "listening on").await);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for _ in 0..2 {
        until(&mut stdout, "] serving").await;
    }
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let requests = Requests::start(address);
    // Four recycles (each worker twice at least), counting the ready pool.
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.contains("recycling it"))
        .count()
        < 4
    {
        seen.extend(until(&mut stderr, "recycling it").await);
    }
    seen.extend(until(&mut stderr, "exited with code 0").await);
    assert!(!requests.stop().await.is_empty());
    let (mut pool, mut smallest) = (0_i32, i32::MAX);
    for line in &seen {
        if line.ends_with(" ready") {
            pool += 1;
        } else if line.contains(" exited ") || line.contains(" ended on the ") {
            // (A worker slow to start may end on the SIGTERM itself.)
            pool -= 1;
            smallest = smallest.min(pool);
        }
    }
    assert_eq!(
        smallest, 2,
        "a worker left only once its replacement was ready: {seen:?}"
    );
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}
