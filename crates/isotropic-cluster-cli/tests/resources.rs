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
        !seen.iter().any(|l| l.contains("worker 1 sent signal")),
        "{seen:?}"
    );
    seen.extend(until(&mut stderr, "worker 1 killed by signal 15").await);
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
