//! Round robin across pool changes and tags (`docs/seed-mapping.md`:
//! `roundRobin`; its defects 1-3).
#![cfg(target_os = "linux")]

use isotropic_cluster::WorkerId;
use isotropic_cluster::primary::*;
use serde_json::json;
use tests_integration::{Mode, primary, ready, shut_down, wait_for};

fn ids(primary: &ClusterPrimary, tag: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            primary
                .round_robin(tag)
                .map(|w| w.id().get())
                .expect("a ready worker")
        })
        .collect()
}

#[tokio::test]
async fn exact_order_across_pool_changes_and_tags() {
    let primary = primary(Mode::Echo).start().await.expect("start");
    assert!(
        primary.round_robin("").is_none(),
        "an empty pool gives None"
    );
    let mut events = primary.events();
    primary.fork(3).await.expect("fork");
    ready(&mut events, 3).await;
    // Calls in a tight loop never repeat a worker before all had a turn.
    assert_eq!(ids(&primary, "", 7), [1, 2, 3, 1, 2, 3, 1]);
    // Tags are independent rotations.
    assert_eq!(ids(&primary, "io", 2), [1, 2]);
    assert_eq!(ids(&primary, "", 1), [2]);

    // A new worker comes first; a removed one is skipped.
    primary.fork(1).await.expect("fork");
    ready(&mut events, 1).await;
    assert_eq!(ids(&primary, "", 1), [4]);
    assert_eq!(ids(&primary, "io", 2), [3, 4]);
    let two = primary.worker_by_id(WorkerId::new(2)).expect("worker 2");
    primary
        .send(&two, &json!({"type": "exit", "code": 0}))
        .await
        .expect("send");
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::RemoveWorker(r) if r.worker == two).then_some(())
    })
    .await;
    // Worker 2's replacement (5) is never-selected, so it comes first.
    let replacement = ready(&mut events, 1).await;
    assert_eq!(replacement[0].id().get(), 5);
    assert_eq!(ids(&primary, "", 5), [5, 3, 1, 4, 5]);
    shut_down(&primary).await;
    assert!(primary.round_robin("").is_none());
}
