//! `isotropic-cluster run --max-memory`: a worker over the limit is
//! recycled, with a line; one under it is not.
#![cfg(target_os = "linux")]

mod common;

use common::{cli, exit_code, terminate, until};

/// The first worker in slot 0 starts a child that allocates 128 MiB (the
/// limit counts the whole process tree); every other worker stays small.
const SCRIPT: &str = r#"
if [ "$ISOTROPIC_CLUSTER_SLOT" = 0 ] && mkdir "$ONCE" 2>/dev/null; then
    python3 -c "import time; big = b'x' * (128 << 20); print('big', flush=True); time.sleep(300)"
else
    echo small; exec sleep 300
fi
"#;

#[tokio::test]
async fn a_worker_over_max_memory_is_replaced_with_a_line() {
    let once = std::env::temp_dir().join(format!("max-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir(&once);
    let script = SCRIPT.replace("$ONCE", &once.display().to_string());
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "2",
        "--max-memory",
        "64M",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let seen = until(&mut stderr, "over the limit").await;
    let line = seen.last().expect("a line");
    assert!(line.starts_with("[primary] worker 1 uses "), "{line}");
    assert!(
        line.ends_with("over the limit of 64.0 MiB: recycling it"),
        "{line}"
    );
    // Drained: replaced first, then asked to leave (no channel: SIGTERM);
    // worker 2, under the limit, is left alone.
    let mut seen = until(&mut stderr, "worker 3 ready").await;
    assert!(
        !seen.iter().any(|l| l.contains("sent SIGTERM to worker 1 ")),
        "{seen:?}"
    );
    seen.extend(until(&mut stderr, "ended on the SIGTERM the primary sent").await);
    assert!(
        seen.last().is_some_and(|l| l.contains("worker 1 (pid ")),
        "{seen:?}"
    );
    terminate(&child);
    let rest = until(&mut stderr, "all workers exited").await;
    assert!(
        !rest.iter().any(|l| l.contains("over the limit")),
        "{rest:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("worker 2 uses")),
        "{seen:?}"
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
    std::fs::remove_dir(&once).expect("made by the first worker");
}

/// `DRAINING_SERVER`, but the first worker in slot 0 (`$ONCE`) takes
/// 128 MiB after its tenth request, and keeps serving.
fn growing_server(once: &std::path::Path) -> String {
    let grow = format!(
        "served, hog, grows = 0, None, False\n\
         if os.environ['ISOTROPIC_CLUSTER_SLOT'] == '0':\n\
         \x20   try:\n\
         \x20       os.mkdir({once:?})\n\
         \x20       grows = True\n\
         \x20   except FileExistsError:\n\
         \x20       pass\n"
    );
    common::DRAINING_SERVER
        .replace("print(\"serving\", flush=True)\n", &format!("{grow}print(\"serving\", flush=True)\n"))
        .replace(
            "    conn.close()\n",
            "    conn.close()\n    served += 1\n    if grows and served == 10:\n        hog = b'x' * (128 << 20)\n",
        )
}

#[tokio::test]
async fn a_worker_over_max_memory_is_recycled_with_no_request_refused_on_a_shared_port() {
    let once = std::env::temp_dir().join(format!("max-memory-port-{}", std::process::id()));
    let _ = std::fs::remove_dir(&once);
    let (mut child, mut stderr) = cli(&[
        "run",
        "--workers",
        "2",
        "--max-memory",
        "64M",
        "--listen",
        "127.0.0.1:0",
        "--",
        "python3",
        "-c",
        &growing_server(&once),
    ]);
    let address = common::listening_address(&until(&mut stderr, "listening on").await);
    let requests = common::Requests::start(address);
    let mut seen = until(&mut stderr, "over the limit").await;
    seen.extend(until(&mut stderr, "worker 3 ready").await);
    seen.extend(until(&mut stderr, "exited").await);
    let answers = requests.stop().await;
    assert!(answers.len() > 10, "requests went on throughout");
    // Its replacement was ready before it was asked to leave.
    let at = |text: &str| seen.iter().position(|l| l.contains(text)).expect(text);
    assert!(
        at("worker 3 ready") < at("sent SIGTERM to worker 1 "),
        "{seen:?}"
    );
    assert!(
        seen.last().is_some_and(|l| l.contains("worker 1 ")),
        "{seen:?}"
    );
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
    std::fs::remove_dir(&once).expect("made by the first worker");
}
