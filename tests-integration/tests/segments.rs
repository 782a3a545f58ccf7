//! Shared segments (protocol version 3): large payloads from the primary
//! lent from memfd segments it reuses, echoed back `returned` (not
//! copied); held payloads never overwritten; beyond the pool, sealed
//! memfds; no fd or mapping left behind.
#![cfg(target_os = "linux")]

use std::time::Duration;

use bytes::Bytes;
use isotropic_cluster::EventStream;
use isotropic_cluster::primary::*;
use tests_integration::{Mode, exit_of, launch, primary, shut_down, wait_for};

const MIB: usize = 1024 * 1024;

/// A payload of `len` bytes, every byte value in turn from `seed`.
fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn echo(events: &mut EventStream<PrimaryEvent>) -> Bytes {
    wait_for(events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some(b.bytes),
        _ => None,
    })
    .await
}

/// How many of this process's mappings are segments (a segment is mapped
/// once, by its lender).
fn segments_mapped() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("our maps")
        .lines()
        .filter(|line| line.contains("isotropic-cluster-segment"))
        .count()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Waits until `probe` gives `want` (fds are closed by writer tasks just
/// after they are written), for at most 10 s; returns its last answer.
async fn settled(want: usize, probe: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe() != want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe()
}

#[tokio::test]
async fn payloads_at_and_around_the_threshold_round_trip_lent_and_returned() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let ours = std::process::id();
    let before = (open_fds(ours), open_fds(worker.pid()));
    // Below the threshold (1 MiB) through the channel; from it on, lent;
    // over the maximum frame (16 MiB with its kind byte) too.
    let sizes = [MIB - 1, MIB, MIB + 1, 16 * MIB, 16 * MIB + 1];
    for round in 0..3 {
        for (n, size) in sizes.into_iter().enumerate() {
            let sent = payload(size, (round * 10 + n) as u8);
            primary
                .send_bytes(&worker, sent.clone())
                .await
                .expect("sent");
            assert!(echo(&mut events).await == sent, "{size} bytes differ");
        }
    }
    assert!(
        (1..=4).contains(&segments_mapped()),
        "{} segments",
        segments_mapped()
    );
    let ours_now = settled(before.0, || open_fds(ours)).await;
    assert_eq!(ours_now, before.0, "the primary's fds");
    let theirs = settled(before.1, || open_fds(worker.pid())).await;
    assert_eq!(theirs, before.1, "the worker's fds");
    shut_down(&primary).await;
}

#[tokio::test]
async fn held_payloads_are_never_reused_and_beyond_the_pool_go_sealed() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    // Each echo we keep holds the segment its payload was lent from: the
    // pool (4 segments) runs out, and the rest go in sealed memfds.
    let mut kept = Vec::new();
    for seed in 0..8 {
        let sent = payload(2 * MIB, seed);
        worker.try_send_bytes(sent.clone()).expect("queued");
        kept.push((echo(&mut events).await, sent));
    }
    assert_eq!(segments_mapped(), 4, "the pool's bound");
    for (echo, sent) in &kept {
        assert!(echo == sent, "a held payload changed");
    }
    // Let go, the segments are reused: no more are made.
    kept.clear();
    for seed in 8..16 {
        let sent = payload(3 * MIB / 2, seed);
        primary
            .send_bytes(&worker, sent.clone())
            .await
            .expect("sent");
        assert!(echo(&mut events).await == sent, "an echo differs");
    }
    assert_eq!(segments_mapped(), 4);
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_broadcast_of_a_large_payload_reaches_every_worker_intact() {
    let (primary, mut events, _) = launch::<3>(primary(Mode::Echo)).await;
    for seed in 0..3 {
        let sent = payload(2 * MIB + 3, seed);
        primary
            .send_bytes(Destination::Ready, sent.clone())
            .await
            .expect("sent to all");
        for _ in 0..3 {
            assert!(echo(&mut events).await == sent, "an echo differs");
        }
    }
    shut_down(&primary).await;
}

#[tokio::test]
async fn fds_and_segments_stay_bounded_over_many_sends_and_go_with_the_worker() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let ours = std::process::id();
    let before = (open_fds(ours), open_fds(worker.pid()));
    for seed in 0..64 {
        let sent = payload(MIB + usize::from(seed) * 4096, seed);
        primary
            .send_bytes(&worker, sent.clone())
            .await
            .expect("sent");
        assert!(echo(&mut events).await == sent, "an echo differs");
    }
    assert_eq!(settled(before.0, || open_fds(ours)).await, before.0);
    let theirs = settled(before.1, || open_fds(worker.pid())).await;
    assert_eq!(theirs, before.1, "the worker's fds");
    assert!((1..=4).contains(&segments_mapped()));
    // The worker goes: its segments go with its channel (the handle we
    // keep holds none).
    primary.kill_workers().await.expect("killed");
    wait_for(&mut events, exit_of).await;
    assert_eq!(settled(0, segments_mapped).await, 0, "segments left");
    drop(worker);
    shut_down(&primary).await;
}
