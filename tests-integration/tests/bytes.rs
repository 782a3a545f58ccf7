//! Bytes messages (protocol version 2): raw payloads both ways, in order
//! with JSON messages, to one worker or several; refused, with a typed
//! error, to a worker that speaks version 1 or over the maximum frame.
#![cfg(target_os = "linux")]

use bytes::Bytes;
use isotropic_cluster::primary::*;
use isotropic_cluster::{EventStream, ProtocolError, SendError, WorkerId};
use serde_json::json;
use tests_integration::{Mode, launch, message_of, primary, shut_down, wait_for};

fn bytes_of(event: PrimaryEvent) -> Option<(WorkerId, Bytes)> {
    match event {
        PrimaryEvent::WorkerBytes(b) => Some((b.worker.id(), b.bytes)),
        _ => None,
    }
}

/// A payload of `len` bytes, every byte value in turn from `seed`.
fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// The next bytes message or JSON message, whichever comes first.
async fn next_echo(events: &mut EventStream<PrimaryEvent>) -> Result<Bytes, serde_json::Value> {
    wait_for(events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some(Ok(b.bytes)),
        other => message_of(other).map(|(_, m)| Err(m)),
    })
    .await
}

#[tokio::test]
async fn bytes_round_trip_in_order_with_messages() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let sizes = [0, 1, 64, 4095, 4096, 65_536, 1 << 20];
    for (n, size) in sizes.into_iter().enumerate() {
        primary
            .send_bytes(&worker, payload(size, n as u8))
            .await
            .expect("sent");
        primary.send(&worker, &json!({"n": n})).await.expect("sent");
    }
    for (n, size) in sizes.into_iter().enumerate() {
        // The worker echoes the bytes as they came (`try_send_bytes`).
        assert_eq!(next_echo(&mut events).await, Ok(payload(size, n as u8)));
        assert_eq!(next_echo(&mut events).await, Err(json!({"echo": {"n": n}})));
    }
    shut_down(&primary).await;
}

#[tokio::test]
async fn bytes_broadcast_reach_every_ready_worker_once() {
    let (primary, mut events, workers) = launch::<3>(primary(Mode::Echo)).await;
    let sent = payload(10_000, 7);
    primary
        .try_send_bytes(Destination::Ready, sent.clone())
        .expect("queued for all");
    let mut from = Vec::new();
    for _ in 0..3 {
        let (id, bytes) = wait_for(&mut events, bytes_of).await;
        assert_eq!(bytes, sent);
        from.push(id);
    }
    from.sort();
    assert_eq!(
        from,
        workers.iter().map(WorkerHandle::id).collect::<Vec<_>>()
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_of_protocol_version_1_gets_no_bytes_but_messages() {
    let (primary, mut events, [worker]) = launch::<1>(primary(Mode::OldVersion)).await;
    let refused = primary.try_send_bytes(&worker, Bytes::from_static(b"raw"));
    assert!(
        matches!(
            refused,
            Err(SendError::Unsupported { worker_id: Some(id), what: "bytes messages", .. }) if id == worker.id()
        ),
        "{refused:?}"
    );
    let refused = worker.send_bytes(Bytes::from_static(b"raw")).await;
    assert!(matches!(refused, Err(SendError::Unsupported { .. })));
    // It is otherwise served as before.
    primary.send(&worker, &json!("hi")).await.expect("sent");
    assert_eq!(next_echo(&mut events).await, Err(json!({"echo": "hi"})));
    shut_down(&primary).await;
}

#[tokio::test]
async fn bytes_over_the_maximum_frame_are_refused_before_sending() {
    let (primary, mut events, [worker]) =
        launch::<1>(primary(Mode::Echo).max_frame_size(1024)).await;
    // The kind byte counts: 1023 bytes of payload fit, 1024 do not.
    let refused = primary.try_send_bytes(&worker, payload(1024, 0));
    assert!(
        matches!(
            refused,
            Err(SendError::Encode(ProtocolError::FrameTooLarge {
                size: 1025,
                max: 1024
            }))
        ),
        "{refused:?}"
    );
    worker.send_bytes(payload(1023, 0)).await.expect("fits");
    assert_eq!(next_echo(&mut events).await, Ok(payload(1023, 0)));
    shut_down(&primary).await;
}
