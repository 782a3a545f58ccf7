//! Bytes requests (issue 17): raw bytes both ways, small and large (sealed
//! memfds), by handler name; handler errors, unknown names, workers that
//! die mid-request, timeouts, concurrency, dispatch, and requests from a
//! worker to the primary.
#![cfg(target_os = "linux")]

use std::time::Duration;

use bytes::Bytes;
use isotropic_cluster::{Codec, HandleRequests, RequestError, SendError};
use serde_json::json;
use tests_integration::{Mode, launch, message_of, primary, shut_down, wait_for};

fn reversed(body: &[u8]) -> Vec<u8> {
    body.iter().rev().copied().collect()
}

/// `len` bytes that are not all alike.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn small_and_large_bodies_go_and_come_back_whole() {
    let (primary, _events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    // Empty, small, just below the sealed threshold (in the frame), and
    // from it on (in sealed memfds, both ways).
    for len in [0, 5, (1 << 20) - 1, 1 << 20, 3 << 20] {
        let body = pattern(len);
        let reply = worker
            .request_bytes("reverse", body.clone())
            .await
            .unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert_eq!(reply.len(), len);
        assert!(
            reply[..] == reversed(&body)[..],
            "{len} bytes came back wrong"
        );
    }
    let reply = primary
        .request_bytes(&worker, "reverse", &b"\x00\xff"[..])
        .await
        .expect("a reply");
    assert_eq!(&reply[..], b"\xff\x00");
    assert_eq!(worker.in_flight(), 0);
    shut_down(&primary).await;
}

#[tokio::test]
async fn bodies_are_raw_whatever_the_codec() {
    let builder = primary(Mode::Echo).codec(Codec::MessagePack);
    let (primary, _events, [worker]) = launch::<1>(builder).await;
    let reply = worker.request_bytes("reverse", &b"{not json"[..]).await;
    assert_eq!(&reply.expect("a reply")[..], b"nosj ton{");
    let failed = worker.request_bytes("fail", Bytes::new()).await;
    assert!(
        matches!(&failed, Err(RequestError::Remote { message, .. }) if message == "no such bytes"),
        "{failed:?}"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn errors_and_unknown_names_come_back_as_remote_errors_and_timeouts_are_timeouts() {
    let (primary, _events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let failed = worker.request_bytes("fail", Bytes::new()).await;
    assert!(
        matches!(&failed, Err(RequestError::Remote { message, worker_id: Some(id) }) if message == "no such bytes" && *id == worker.id()),
        "{failed:?}"
    );
    let unknown = worker.request_bytes("nobody", Bytes::new()).await;
    assert!(
        matches!(&unknown, Err(RequestError::Remote { message, .. }) if message.contains("\"nobody\"")),
        "{unknown:?}"
    );
    // Names are not message types: the JSON handler `square` is no bytes handler.
    let json_name = worker.request_bytes("square", Bytes::new()).await;
    assert!(
        matches!(json_name, Err(RequestError::Remote { .. })),
        "{json_name:?}"
    );
    let late = worker
        .request_bytes_within("sleep", &b"5000"[..], Duration::from_millis(100))
        .await;
    assert!(
        matches!(late, Err(RequestError::Timeout { .. })),
        "{late:?}"
    );
    assert_eq!(worker.in_flight(), 0, "a timed-out request is forgotten");
    // The worker still answers.
    let reply = worker.request_bytes("reverse", &b"ab"[..]).await;
    assert_eq!(&reply.expect("a reply")[..], b"ba");
    shut_down(&primary).await;
}

#[tokio::test]
async fn concurrent_requests_of_both_kinds_get_their_own_replies() {
    let (primary, _events, workers) = launch::<2>(primary(Mode::Echo)).await;
    let requests = (0..400_u64).map(|n| {
        let worker = workers[(n % 2) as usize].clone();
        async move {
            if n % 4 < 2 {
                // Sizes vary, so replies come back in another order.
                let body = pattern((n as usize * 37) % 5000);
                let reply = worker.request_bytes("reverse", body.clone()).await;
                reply.map(|reply| reply[..] == reversed(&body)[..])
            } else {
                let square = json!({"type": "square", "n": n});
                let reply = worker.request::<u64, _>(&square).await;
                reply.map(|reply| reply == n * n)
            }
        }
    });
    for (n, reply) in futures_util::future::join_all(requests)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(reply.expect("a reply"), "request {n} got another's reply");
    }
    assert!(workers.iter().all(|w| w.in_flight() == 0));
    shut_down(&primary).await;
}

#[tokio::test]
async fn bytes_requests_in_flight_fail_at_once_when_their_worker_dies() {
    let (primary, _events, [worker]) = launch::<1>(primary(Mode::Echo)).await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let worker = worker.clone();
            tokio::spawn(async move {
                // A long deadline: a Timeout would mean the failure waited for it.
                let body = &b"60000"[..];
                worker
                    .request_bytes_within("sleep", body, Duration::from_secs(120))
                    .await
            })
        })
        .collect();
    let death = worker.request_bytes("die", pattern(2 << 20)).await;
    assert!(
        matches!(death, Err(RequestError::Gone { worker_id: Some(id) }) if id == worker.id()),
        "{death:?}"
    );
    for request in slow {
        let reply = request.await.expect("join");
        assert!(matches!(reply, Err(RequestError::Gone { .. })), "{reply:?}");
    }
    let after = worker.request_bytes("reverse", Bytes::new()).await;
    assert!(matches!(after, Err(RequestError::Gone { .. })), "{after:?}");
    shut_down(&primary).await;
}

#[tokio::test]
async fn dispatch_bytes_retries_elsewhere_and_says_when_no_worker_is_left() {
    let empty = primary(Mode::Echo).start().await.expect("start");
    let none = empty.dispatch_bytes("", "whoami", Bytes::new()).await;
    assert!(matches!(none, Err(RequestError::NoWorker)), "{none:?}");
    shut_down(&empty).await;
    let (primary, _events, workers) = launch::<2>(primary(Mode::Echo)).await;
    // Round robin picks worker 1 first (odd: it dies on `flaky`), then 2.
    let reply = primary
        .dispatch_bytes("", "flaky", pattern(4))
        .await
        .expect("retried");
    assert_eq!(&reply[..], workers[1].id().get().to_be_bytes());
    // (Worker 1 is gone: the one least loaded is another.)
    let least = primary
        .dispatch_bytes_least_loaded("whoami", Bytes::new())
        .await
        .expect("a reply");
    assert_ne!(&least[..], workers[0].id().get().to_be_bytes());
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_s_bytes_requests_reach_the_primary_s_handlers() {
    let builder = primary(Mode::AskBytes)
        .handle_bytes("reverse", |body: Bytes| Ok::<_, String>(reversed(&body)));
    let (primary, mut events, _) = launch::<1>(builder).await;
    let (_, report) = wait_for(&mut events, message_of).await;
    assert_eq!(
        report,
        json!({
            "small": true,
            "large": true,
            "unknown": "no handler for bytes requests named \"nobody\""
        })
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_of_an_older_version_is_never_sent_a_bytes_request() {
    let (primary, _events, [worker]) = launch::<1>(primary(Mode::OldVersion)).await;
    let refused = worker.request_bytes("reverse", &b"abc"[..]).await;
    assert!(
        matches!(
            refused,
            Err(RequestError::Send(SendError::Unsupported {
                what: "bytes requests",
                ..
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(worker.in_flight(), 0);
    shut_down(&primary).await;
}
