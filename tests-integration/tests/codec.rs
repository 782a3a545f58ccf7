//! A MessagePack primary and workers of our library: typed messages both
//! ways, typed routing on both sides, requests both ways and dispatch, bytes
//! messages raw (issue 17, item 2). Malformed MessagePack and a worker that
//! speaks JSON to it are in `bad_input.rs`.
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::*;
use isotropic_cluster::{Codec, HandleRequests, Subscribe};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tests_integration::{Log, Mode, launch, primary, shut_down, wait_for};

/// The next worker message, with its codec, as a JSON value.
fn decoded(event: PrimaryEvent) -> Option<(Codec, Value)> {
    match event {
        PrimaryEvent::WorkerMessage(m) => Some((m.message.codec(), m.message.decode().ok()?)),
        _ => None,
    }
}

#[tokio::test]
async fn typed_messages_routing_and_requests_round_trip_in_messagepack() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Early {
        #[serde(rename = "type")]
        kind: String,
    }
    let log = Log::default();
    let routed = log.clone();
    let (primary, mut events, [worker]) = launch::<1>(
        primary(Mode::BeforeReady)
            .codec(Codec::MessagePack)
            .route::<Early>("early", move |e, early| {
                routed.push(format!("routed {} {:?}", early.kind, e.message.codec()));
            }),
    )
    .await;
    // The worker's typed `early` message was routed by its `type`.
    assert_eq!(log.entries(), ["routed early MessagePack"]);

    // Primary to worker, routed there (`ping` → `pong`), and echoed back.
    primary
        .send(&worker, &json!({"type": "ping", "n": 7}))
        .await
        .expect("send");
    let echo = wait_for(&mut events, decoded).await;
    let pong = wait_for(&mut events, decoded).await;
    assert_eq!(
        [echo, pong],
        [
            (
                Codec::MessagePack,
                json!({"echo": {"type": "ping", "n": 7}})
            ),
            (Codec::MessagePack, json!({"pong": 7})),
        ]
    );

    // Requests: a typed reply, a handler's error, dispatch.
    let square: u64 = worker
        .request(&json!({"type": "square", "n": 12}))
        .await
        .expect("reply");
    assert_eq!(square, 144);
    let failed = worker.request::<(), _>(&json!({"type": "fail"})).await;
    assert!(
        matches!(&failed, Err(isotropic_cluster::RequestError::Remote { message, .. }) if message == "no such thing"),
        "{failed:?}"
    );
    let whoami: u64 = primary
        .dispatch("", &json!({"type": "whoami"}))
        .await
        .expect("dispatched");
    assert_eq!(whoami, worker.id().get());

    // Bytes stay raw: echoed as they were sent.
    primary
        .send_bytes(&worker, &b"\x92\x01 not msgpack"[..])
        .await
        .expect("send bytes");
    let bytes = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerBytes(b) => Some(b.bytes),
        _ => None,
    })
    .await;
    assert_eq!(&bytes[..], b"\x92\x01 not msgpack");
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_requests_a_messagepack_primary() {
    #[derive(Deserialize)]
    struct Add {
        a: u64,
        b: u64,
    }
    let builder = primary(Mode::Ask)
        .codec(Codec::MessagePack)
        .handle("add", |Add { a, b }| Ok::<_, String>(a + b));
    let (primary, mut events, _) = launch::<1>(builder).await;
    let sum = wait_for(&mut events, decoded).await;
    assert_eq!(sum, (Codec::MessagePack, json!({"sum": 5})));
    shut_down(&primary).await;
}
