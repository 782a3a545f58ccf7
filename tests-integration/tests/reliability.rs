//! Reliability: many restarts leave nothing behind (issue: reliability, item 9).
#![cfg(target_os = "linux")]

use std::time::Duration;

use isotropic_cluster::primary::*;
use tests_integration::{rss_kib, shut_down, wait_for};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Children of this process that are zombies (exited, not reaped).
fn zombies() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .count()
}

async fn count_exits(events: &mut isotropic_cluster::EventStream<PrimaryEvent>, n: usize) {
    for _ in 0..n {
        wait_for(events, |e| {
            matches!(e, PrimaryEvent::WorkerExit(_)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_thousand_restarts_leave_fds_memory_and_processes_flat() {
    // Workers that exit at once, replaced without backoff.
    let policy = RestartPolicy::default().stable_after(Duration::ZERO);
    let (primary, mut events) = tests_integration::crash_looping(policy).await;
    // Warm up (allocator pools, runtime), then measure over 1000 restarts.
    count_exits(&mut events, 50).await;
    let (fds, rss) = (open_fds(), rss_kib());
    count_exits(&mut events, 1000).await;
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    shut_down(&primary).await;
    assert!(fds_after <= fds + 8, "fds grew from {fds} to {fds_after}");
    assert!(
        rss_after <= rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
    assert_eq!(zombies(), 0, "unreaped children");
}
