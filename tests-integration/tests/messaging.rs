//! Messages both ways, typed routing, destinations and send errors
//! (`docs/seed-mapping.md`: `send`, `workerMessage`, `route`; its defects 17,
//! 19-22).
#![cfg(target_os = "linux")]

use std::time::Duration;

use isotropic_cluster::primary::*;
use isotropic_cluster::{EventStream, SendError, Subscribe, WorkerId};
use serde::Deserialize;
use serde_json::{Value, json};
use tests_integration::{Log, Mode, launch, primary, ready, record, rss_kib, shut_down, wait_for};

fn echo_of(event: PrimaryEvent) -> Option<(WorkerId, Value)> {
    match event {
        PrimaryEvent::WorkerMessage(m) => {
            let value: Value = m.message.decode().ok()?;
            Some((m.worker.id(), value.get("echo")?.clone()))
        }
        _ => None,
    }
}

#[tokio::test]
async fn messages_round_trip_in_order() {
    let log = Log::default();
    let (primary, mut events, [worker]) =
        launch::<1>(record!(primary(Mode::Echo), log, [WorkerMessage])).await;
    for i in 0..50 {
        primary.send(&worker, &json!({"n": i})).await.expect("send");
    }
    for i in 0..50 {
        assert_eq!(
            wait_for(&mut events, echo_of).await,
            (worker.id(), json!({"n": i}))
        );
    }
    assert_eq!(
        log.entries()[..2],
        ["on workerMessage", "after workerMessage"]
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn typed_routing_runs_between_on_and_after_on_both_sides() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct Early {
        #[serde(rename = "type")]
        kind: String,
    }
    let log = Log::default();
    let (on, routed, after) = (log.clone(), log.clone(), log.clone());
    let (primary, mut events, [worker]) = launch::<1>(
        primary(Mode::BeforeReady)
            .on::<WorkerMessage>(move |e| on.push(format!("on {}", e.message)))
            .after::<WorkerMessage>(move |e| after.push(format!("after {}", e.message)))
            .route::<Early>("early", move |e, early| {
                assert_eq!(e.stage(), isotropic_cluster::Stage::Complete);
                routed.push(format!("routed {}", early.kind));
            }),
    )
    .await;
    // The string "ready" sent before the handshake is an ordinary message, and
    // neither it nor the early message made the worker ready.
    assert_eq!(
        log.entries(),
        [
            r#"on "ready""#,
            r#"after "ready""#,
            r#"on {"type":"early"}"#,
            r#"routed early"#,
            r#"after {"type":"early"}"#,
        ]
    );
    // The worker's `ping` route answers after its `on` handler echoed.
    primary
        .send(&worker, &json!({"type": "ping", "n": 7}))
        .await
        .expect("send");
    let replies: Vec<Value> = [
        wait_for(&mut events, |e| match e {
            PrimaryEvent::WorkerMessage(m) => m.message.decode().ok(),
            _ => None,
        })
        .await,
        wait_for(&mut events, |e| match e {
            PrimaryEvent::WorkerMessage(m) => m.message.decode().ok(),
            _ => None,
        })
        .await,
    ]
    .into();
    assert_eq!(
        replies,
        [
            json!({"echo": {"type": "ping", "n": 7}}),
            json!({"pong": 7})
        ]
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_payload_that_does_not_fit_its_route_is_an_error_event() {
    #[derive(Deserialize, Debug)]
    struct NeedsNumber {
        #[allow(dead_code)]
        n: u32,
    }
    let primary = primary(Mode::BeforeReady)
        .route::<NeedsNumber>("early", |_, _| panic!("`early` has no number"))
        .start()
        .await
        .expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let error = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessageError(e) => Some(e.error),
        _ => None,
    })
    .await;
    assert!(
        matches!(error, isotropic_cluster::MessageError::Decode { .. }),
        "{error:?}"
    );
    ready(&mut events, 1).await;
    shut_down(&primary).await;
}

#[tokio::test]
async fn destinations_by_handle_id_list_and_pool_with_typed_errors() {
    let primary = primary(Mode::Echo).start().await.expect("start");
    let mut events = primary.events();
    // An empty pool is an explicit error, not a silent success.
    assert!(matches!(
        primary.send(Destination::Ready, &1).await,
        Err(SendError::NoDestination)
    ));
    primary.fork(3).await.expect("fork");
    let workers = ready(&mut events, 3).await;

    primary
        .send(workers[0].id(), &"by id")
        .await
        .expect("by id");
    assert_eq!(
        wait_for(&mut events, echo_of).await,
        (workers[0].id(), json!("by id"))
    );

    primary
        .send(vec![workers[1].clone(), workers[2].clone()], &"two")
        .await
        .expect("list");
    let mut got = vec![
        wait_for(&mut events, echo_of).await.0,
        wait_for(&mut events, echo_of).await.0,
    ];
    got.sort();
    assert_eq!(got, [workers[1].id(), workers[2].id()]);

    primary
        .send(Destination::Ready, &"all")
        .await
        .expect("broadcast");
    let mut got: Vec<WorkerId> = Vec::new();
    for _ in 0..3 {
        got.push(wait_for(&mut events, echo_of).await.0);
    }
    got.sort();
    assert_eq!(
        got,
        workers.iter().map(WorkerHandle::id).collect::<Vec<_>>()
    );

    let unknown = WorkerId::new(999);
    let error = primary.send(unknown, &"x").await.expect_err("unknown id");
    assert!(
        matches!(error, SendError::InvalidDestination { worker_id } if worker_id == unknown),
        "{error}"
    );
    assert!(error.to_string().contains("999"));

    let partial = primary
        .send(vec![workers[0].id(), unknown], &"partly")
        .await
        .expect_err("partial");
    assert!(
        matches!(partial, SendError::Partial { delivered: 1, ref failures } if failures.len() == 1),
        "{partial}"
    );

    // A message over the frame limit is refused before anything is written.
    let big = "x".repeat(17 * 1024 * 1024);
    assert!(matches!(
        primary.send(&workers[0], &big).await,
        Err(SendError::Encode(_))
    ));

    // After the worker exits, its handle reports a closed channel.
    primary
        .send(&workers[0], &json!({"type": "exit", "code": 0}))
        .await
        .expect("send exit");
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::WorkerExit(x) if x.worker == workers[0]).then_some(())
    })
    .await;
    let closed = workers[0].send(&"late").await.expect_err("closed");
    assert!(
        matches!(closed, SendError::Closed { worker_id: Some(id) } if id == workers[0].id()),
        "{closed}"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_that_never_signals_ready_stays_out_of_the_pool_but_is_reachable() {
    let primary = primary(Mode::NeverReady).start().await.expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let worker = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerOnline(o) => Some(o.worker),
        _ => None,
    })
    .await;
    assert!(primary.workers().is_empty());
    assert!(primary.round_robin("").is_none());
    primary
        .send(worker.id(), &"hi")
        .await
        .expect("an online worker is addressable by id");
    assert_eq!(
        wait_for(&mut events, echo_of).await,
        (worker.id(), json!("hi"))
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_worker_that_does_not_read_fills_a_bounded_queue() {
    let _turn = tests_integration::measuring_turn().await;
    let builder = tests_integration::hung_primary().queue_bytes(4 << 20);
    let (primary, _events, [worker]) = launch::<1>(builder).await;
    let megabyte = "z".repeat(1 << 20);
    let before = rss_kib();
    // The queue (4 MiB) and the socket buffers fill up; then sending says so
    // instead of holding more memory.
    let sent = (0..64)
        .take_while(|_| worker.try_send(&megabyte).is_ok())
        .count();
    assert!(sent < 64, "64 MiB queued for a worker that reads nothing");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "the primary grew by {grown} KiB");
    assert!(matches!(
        worker.try_send(&megabyte),
        Err(SendError::Full { .. })
    ));
    drop(primary);
}

#[tokio::test]
async fn a_worker_that_never_signals_ready_can_be_timed_out() {
    let builder = primary(Mode::NeverReady)
        .ready_timeout(Duration::from_millis(200))
        .before::<WorkerExit>(|exit| exit.prevent());
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    primary.fork(1).await.expect("fork");
    let error = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerError(e) => Some(e.error),
        _ => None,
    })
    .await;
    assert!(
        matches!(error, isotropic_cluster::ProtocolError::ReadyTimeout(after) if after == Duration::from_millis(200)),
        "{error:?}"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_held_event_stream_keeps_a_bounded_number_of_bytes_and_says_what_it_skipped() {
    let _turn = tests_integration::measuring_turn().await;
    // (issue 13: 40 messages of 8 MiB kept 464 MiB in an unread stream, and
    // a reader that fell behind lost events with no sign.) Here 48 of 1 MiB:
    // 48 MiB over the stream's 32 MiB bound.
    const MESSAGES: usize = 48;
    const SIZE: usize = 1 << 20;
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let builder = primary(Mode::Echo).on::<WorkerMessage>(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let (primary, _events, [worker]) = launch::<1>(builder).await;
    let mut held = primary.events();
    let before = rss_kib();
    let payload = "z".repeat(SIZE);
    // One at a time (the echo worker drops an echo its full queue cannot
    // take); handlers see every event.
    for n in 0..MESSAGES {
        primary
            .send(&worker, &json!({"n": n, "payload": payload}))
            .await
            .expect("send");
        tokio::time::timeout(Duration::from_secs(30), async {
            while seen.load(std::sync::atomic::Ordering::Relaxed) <= n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the echo handled");
    }
    let grown = rss_kib().saturating_sub(before);
    println!("{MESSAGES} x 1 MiB through a held stream: the test process grew by {grown} KiB");
    // The stream kept only the newest events within its byte bound, and says
    // how many it skipped, first.
    let most_kept = EventStream::<PrimaryEvent>::MAX_BYTES / SIZE;
    let Some(PrimaryEvent::Skipped(skipped)) = held.next().await else {
        panic!("the gap comes first");
    };
    let skipped = usize::try_from(skipped.events).expect("small");
    assert!(skipped >= MESSAGES - most_kept, "{skipped} skipped");
    for n in skipped..MESSAGES {
        let (_, echo) = wait_for(&mut held, echo_of).await;
        assert_eq!(echo["n"], json!(n));
    }
    shut_down(&primary).await;
}
