//! The supervision engine with real processes: drained recycles by use
//! (`max_requests` with jitter), and scaling at runtime (issue 14).
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::{Expiry, PrimaryEvent};
use serde_json::json;
use tests_integration::{
    DEADLINE, Mode, exit_of, launch, message_of, primary, ready, shut_down, wait_for,
};

#[tokio::test]
async fn max_requests_with_jitter_recycles_one_worker_at_a_time_never_leaving_the_pool_short() {
    let builder = primary(Mode::Echo).max_requests(20).max_requests_jitter(10);
    let (primary, mut events, _) = launch::<3>(builder).await;
    // The ready pool, as the events tell it, at every step.
    let watcher = tokio::spawn(async move {
        let (mut pool, mut smallest, mut largest, mut limits) = (3_i32, 3, 3, Vec::new());
        while let Some(event) = events.next().await {
            match event {
                PrimaryEvent::AddWorker(_) => pool += 1,
                PrimaryEvent::RemoveWorker(_) => pool -= 1,
                PrimaryEvent::WorkerExpired(e) => match e.reason {
                    Expiry::Requests { served, limit } => limits.push((served, limit)),
                    other => panic!("{other:?}"),
                },
                PrimaryEvent::ShutDown(_) => break,
                _ => {}
            }
            smallest = smallest.min(pool);
            largest = largest.max(pool);
        }
        (smallest, largest, limits)
    });
    for n in 0..300_u64 {
        let square = primary
            .dispatch::<u64, _>("squares", &json!({"type": "square", "n": n}))
            .await;
        assert_eq!(square.expect("every request answered"), n * n);
    }
    shut_down(&primary).await;
    let (smallest, largest, limits) = tokio::time::timeout(DEADLINE, watcher)
        .await
        .expect("in time")
        .expect("join");
    assert!(
        limits.len() >= 6,
        "300 requests over limits of 20 to 30: {limits:?}"
    );
    assert!(
        limits
            .iter()
            .all(|(served, limit)| served == limit && (20..=30).contains(limit))
    );
    let distinct: std::collections::BTreeSet<_> = limits.iter().map(|l| l.1).collect();
    assert!(distinct.len() > 1, "jitter spreads the limits: {limits:?}");
    assert_eq!(smallest, 3, "never short");
    assert_eq!(largest, 4, "one recycle at a time");
}

#[tokio::test]
async fn scale_to_adds_workers_then_retires_the_highest_slots_for_good() {
    let (primary, mut events, _) = launch::<2>(primary(Mode::Echo)).await;
    primary.scale_to(4).await.expect("scale up");
    let added = ready(&mut events, 2).await;
    let mut slots: Vec<u32> = added.iter().map(|w| w.slot()).collect();
    slots.sort_unstable();
    assert_eq!(slots, [2, 3]);
    assert_eq!(primary.pool_size().await.expect("size"), 4);

    primary.scale_to(1).await.expect("scale down");
    assert_eq!(primary.pool_size().await.expect("size"), 1);
    for _ in 0..3 {
        let exit = wait_for(&mut events, exit_of).await;
        assert!(exit.voluntary && !exit.replaced, "{exit:?}");
        assert_ne!(exit.worker.slot(), 0);
    }
    let left = primary.workers();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].slot(), 0);
    shut_down(&primary).await;
}

#[tokio::test]
async fn requests_a_worker_counts_itself_expire_it_past_max_requests() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo).max_requests(10)).await;
    // (Its expiry may come before its last answer.)
    let mut lifecycle = primary.events();
    for _ in 0..3 {
        worker
            .send(&json!({"type": "served", "requests": 4}))
            .await
            .expect("sent");
        let counted = wait_for(&mut events, |e| {
            message_of(e).map(|(_, m)| m["counted"].clone())
        })
        .await;
        assert_eq!(counted, json!(true), "the primary takes the counts");
    }
    let reason = wait_for(&mut lifecycle, |e| match e {
        PrimaryEvent::WorkerExpired(e) => Some((e.worker.id(), e.reason)),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        (
            worker.id(),
            Expiry::Requests {
                served: 12,
                limit: 10
            }
        )
    );
    // Recycled, drained: its replacement joins, then it exits, not replaced again.
    let replacement = ready(&mut lifecycle, 1).await;
    assert_eq!(replacement[0].slot(), worker.slot());
    let exit = wait_for(&mut lifecycle, exit_of).await;
    assert_eq!((exit.worker.id(), exit.replaced), (worker.id(), false));
    shut_down(&primary).await;
}
