//! The worker's context over a socket pair, with no process: the primary's
//! end is driven by the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::actor::Commands;
use crate::channel::{self, Inbox};
use crate::events::Subscribe;
use crate::message::Message;
use crate::protocol::{Frame, FrameCodec};
use crate::request::HandleRequests;
use crate::sys;

/// Every destroy in these tests: the destroy's guard ends the process this
/// long after it started, so it must outlast the test run.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// The primary's end of the channel.
struct Primary {
    inbox: Inbox,
    outbox: Outbox,
}

impl Primary {
    fn send(&self, frame: &Frame) {
        self.outbox
            .try_send(protocol::encode_control(frame))
            .expect("queued");
    }

    fn hello(&self) {
        self.outbox.hello(false, true, false, crate::Codec::Json);
    }

    async fn next(&mut self) -> Option<Frame> {
        self.inbox.next().await.map(|frame| frame.expect("a frame"))
    }

    /// The frames the worker sent until it closed the channel.
    async fn rest(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// The events of a worker whose primary went away (or broke the protocol).
const PRIMARY_GONE: [&str; 4] = [
    "initialize",
    "primaryDisconnect",
    "destroy",
    "destroyComplete",
];

/// A started worker: its handle, the events it completed, the primary's end,
/// and its actor.
struct Started {
    worker: ClusterWorker,
    events: EventStream<WorkerEvent>,
    primary: Primary,
    actor: JoinHandle<()>,
}

/// The names of the events completed until the worker was destroyed.
async fn names(events: &mut EventStream<WorkerEvent>) -> Vec<&'static str> {
    let mut names = Vec::new();
    while let Some(event) = events.next().await {
        names.push(event.name());
    }
    names
}

/// A worker's context on one end of a socket pair; the primary on the other.
fn context(
    builder: WorkerBuilder,
) -> (
    WorkerContext,
    Mailbox<WorkerContext>,
    Commands<WorkerContext>,
    Primary,
) {
    let (ours, theirs) = sys::channel_pair().expect("a socket pair");
    let (context, mailbox, commands) =
        WorkerContext::connect(WorkerId(1), ours, builder).expect("connected");
    let (read, outbox) =
        channel::open(theirs, QueueLimits::default(), Some(WorkerId(1))).expect("their end");
    let inbox = Inbox::new(read, FrameCodec::new(protocol::DEFAULT_MAX_FRAME));
    (context, mailbox, commands, Primary { inbox, outbox })
}

/// Starts a worker as [`WorkerBuilder::start`] does, without the initializer.
fn start_with(builder: WorkerBuilder, sigterm: bool) -> Started {
    let (mut context, mailbox, commands, primary) = context(builder.destroy_timeout(NEVER));
    if sigterm {
        context = context.on_sigterm();
    }
    let events = context.stream.subscribe();
    pubsub::publish(&mut context, Initialize);
    assert!(context.initialized());
    let worker = ClusterWorker::new(mailbox, &context);
    let actor = tokio::spawn(crate::actor::run(context, commands));
    Started {
        worker,
        events,
        primary,
        actor,
    }
}

fn start(builder: WorkerBuilder) -> Started {
    start_with(builder, false)
}

fn message(json: serde_json::Value) -> Message {
    Message::encode(&json).expect("encodes")
}

#[tokio::test]
async fn a_prevented_initialize_leaves_the_worker_starting() {
    let builder = ClusterWorker::builder().before::<Initialize>(|event| event.prevent());
    let (mut context, ..) = context(builder);
    pubsub::publish(&mut context, Initialize);
    assert!(!context.initialized());
}

#[tokio::test]
async fn after_the_hello_messages_are_published_and_a_disconnect_destroys() {
    let mut started = start(ClusterWorker::builder());
    started.primary.hello();
    started
        .primary
        .send(&Frame::Message(message(json!({"n": 1}))));
    started.primary.send(&Frame::Disconnect);
    assert_eq!(
        names(&mut started.events).await,
        [
            "initialize",
            "primaryMessage",
            "primaryDisconnect",
            "destroy",
            "destroyComplete"
        ]
    );
    let hello = Frame::Hello {
        protocol: protocol::VERSION,
        heartbeat: true,
        served: false,
        segments: true,
    };
    assert_eq!(started.primary.rest().await, [hello, Frame::Disconnect]);
    started.actor.await.expect("the actor ends");
}

#[tokio::test]
async fn what_a_worker_sends_after_the_primary_asked_it_to_leave_is_delivered() {
    // A draining worker's last results reach the primary (the original
    // rejected sends after `primaryDisconnect`; see docs/seed-mapping.md).
    let builder = ClusterWorker::builder().on::<PrimaryDisconnect>(|event| {
        event
            .context()
            .try_send(&json!("last words"))
            .expect("queued");
    });
    let mut started = start(builder);
    started.primary.hello();
    started.primary.send(&Frame::Disconnect);
    let hello = Frame::Hello {
        protocol: protocol::VERSION,
        heartbeat: true,
        served: false,
        segments: true,
    };
    let last_words = Frame::Message(message(json!("last words")));
    assert_eq!(
        started.primary.rest().await,
        [hello, last_words, Frame::Disconnect]
    );
}

#[tokio::test]
async fn a_frame_before_the_hello_is_a_protocol_error() {
    let mut started = start(ClusterWorker::builder());
    started
        .primary
        .send(&Frame::Message(message(json!("early"))));
    assert_eq!(names(&mut started.events).await, PRIMARY_GONE);
}

#[tokio::test]
async fn a_second_hello_is_a_protocol_error() {
    let mut started = start(ClusterWorker::builder());
    started.primary.hello();
    started.primary.hello();
    assert_eq!(names(&mut started.events).await, PRIMARY_GONE);
}

#[tokio::test]
async fn requests_are_answered_and_replies_resolve_requests() {
    let started = start(
        ClusterWorker::builder().handle("double", |n: serde_json::Value| {
            Ok::<_, String>(n["n"].as_u64().unwrap_or_default() * 2)
        }),
    );
    let mut primary = started.primary;
    primary.hello();
    primary.send(&Frame::Request {
        id: 7,
        message: message(json!({"type": "double", "n": 21})),
    });
    let worker = started.worker.clone();
    let asked = tokio::spawn(async move { worker.request::<u64, _>(&json!("ping")).await });
    let mut reply = None;
    let mut request = None;
    while reply.is_none() || request.is_none() {
        match primary.next().await.expect("a frame") {
            Frame::Reply { id: 7, result } => reply = Some(result.expect("answered")),
            Frame::Request { id, .. } => request = Some(id),
            Frame::Hello { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reply.expect("a reply").as_json(), "42");
    primary.send(&Frame::Reply {
        id: request.expect("a request"),
        result: Ok(message(json!(99))),
    });
    assert_eq!(asked.await.expect("no panic").expect("a reply"), 99);
}

#[tokio::test(start_paused = true)]
async fn a_request_within_a_deadline_times_out_without_a_reply() {
    let mut started = start(ClusterWorker::builder().request_timeout(NEVER));
    started.primary.hello();
    let worker = started.worker.clone();
    let deadline = Duration::from_secs(3);
    let asked = tokio::spawn(async move {
        let begun = tokio::time::Instant::now();
        let outcome = worker
            .request_within::<u64, _>(&json!("ping"), deadline)
            .await;
        (outcome, begun.elapsed())
    });
    loop {
        if let Frame::Request { .. } = started.primary.next().await.expect("a frame") {
            break;
        }
    }
    let (outcome, waited) = asked.await.expect("no panic");
    assert!(
        matches!(outcome, Err(RequestError::Timeout { .. })),
        "{outcome:?}"
    );
    assert!(waited >= deadline && waited < NEVER, "waited {waited:?}");
}

#[tokio::test]
async fn the_channel_s_end_fails_waiting_requests_and_destroys() {
    let mut started = start(ClusterWorker::builder());
    started.primary.hello();
    let worker = started.worker.clone();
    let asked = tokio::spawn(async move { worker.request::<u64, _>(&json!("ping")).await });
    loop {
        if let Frame::Request { .. } = started.primary.next().await.expect("a frame") {
            break;
        }
    }
    drop(started.primary);
    assert!(matches!(
        asked.await.expect("no panic"),
        Err(RequestError::Gone { worker_id: None })
    ));
    assert_eq!(names(&mut started.events).await, PRIMARY_GONE);
}

#[tokio::test]
async fn destroy_wakes_closing_runs_the_cleanup_then_disconnects() {
    let (release, released) = oneshot::channel::<()>();
    let cleaned = Arc::new(AtomicBool::new(false));
    let done = cleaned.clone();
    let builder = ClusterWorker::builder().on_destroy(move || async move {
        let _ = released.await;
        done.store(true, Ordering::SeqCst);
    });
    let mut started = start(builder);
    let worker = started.worker.clone();
    let destroyed = tokio::spawn(async move { worker.destroy(NEVER).await });
    // Closing resolves while the cleanup still waits to be released.
    started.worker.closing().await;
    assert!(!cleaned.load(Ordering::SeqCst));
    release.send(()).expect("the cleanup waits");
    destroyed.await.expect("no panic").expect("destroyed");
    assert!(cleaned.load(Ordering::SeqCst));
    started.worker.closed().await;
    assert!(matches!(
        started.worker.request::<u64, _>(&json!("late")).await,
        Err(RequestError::Gone { .. })
    ));
    assert_eq!(
        names(&mut started.events).await,
        ["initialize", "destroy", "destroyComplete"]
    );
    let hello = Frame::Hello {
        protocol: protocol::VERSION,
        heartbeat: true,
        served: false,
        segments: true,
    };
    assert_eq!(started.primary.rest().await, [hello, Frame::Disconnect]);
}

#[tokio::test(start_paused = true)]
async fn a_cleanup_that_overruns_is_cut_at_the_timeout() {
    let timeout = NEVER;
    let builder = ClusterWorker::builder().on_destroy(std::future::pending::<()>);
    let mut started = start(builder);
    let begun = tokio::time::Instant::now();
    started.worker.destroy(timeout).await.expect("destroyed");
    assert!(begun.elapsed() >= timeout);
    assert_eq!(
        names(&mut started.events).await,
        ["initialize", "destroy", "destroyComplete"]
    );
}

#[tokio::test]
async fn a_prevented_destroy_keeps_the_worker_serving() {
    let builder = ClusterWorker::builder()
        .before::<Destroy>(|event| event.prevent())
        .handle("echo", Ok::<serde_json::Value, String>);
    let mut started = start(builder);
    started.primary.hello();
    started.primary.send(&Frame::Disconnect);
    started.primary.send(&Frame::Request {
        id: 1,
        message: message(json!({"type": "echo"})),
    });
    for name in ["initialize", "primaryDisconnect"] {
        assert_eq!(started.events.next().await.map(|e| e.name()), Some(name));
    }
    loop {
        match started.primary.next().await.expect("a frame") {
            Frame::Reply { id: 1, result } => {
                assert!(result.is_ok());
                break;
            }
            Frame::Hello { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    started.actor.abort();
}

#[tokio::test]
async fn dropping_every_handle_destroys_the_worker() {
    let mut started = start(ClusterWorker::builder());
    drop(started.worker);
    assert_eq!(
        names(&mut started.events).await,
        ["initialize", "destroy", "destroyComplete"]
    );
    started.actor.await.expect("the actor ends");
}

#[tokio::test]
async fn sigterm_destroys_the_worker() {
    // Listening first: the signal then no longer ends the process.
    let mut started = start_with(ClusterWorker::builder(), true);
    sys::send_signal(std::process::id(), false, libc::SIGTERM).expect("signalled");
    assert_eq!(
        names(&mut started.events).await,
        ["initialize", "destroy", "destroyComplete"]
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_answered_while_every_watchdog_is_fresh() {
    let mut started = start(ClusterWorker::builder());
    started.primary.hello();
    let expect_hello = Frame::Hello {
        protocol: protocol::VERSION,
        heartbeat: true,
        served: false,
        segments: true,
    };
    assert_eq!(started.primary.next().await, Some(expect_hello));
    started.primary.send(&Frame::Heartbeat);
    assert_eq!(started.primary.next().await, Some(Frame::Heartbeat));
    let within = Duration::from_secs(1);
    let watchdog = started.worker.watchdog(within);
    tokio::time::advance(within * 2).await;
    // Stale: the heartbeat goes unanswered; the message after it is echoed.
    started.primary.send(&Frame::Heartbeat);
    started.primary.send(&Frame::Request {
        id: 1,
        message: message(json!({"type": "none"})),
    });
    assert!(matches!(
        started.primary.next().await,
        Some(Frame::Reply { id: 1, .. })
    ));
    watchdog.progress();
    started.primary.send(&Frame::Heartbeat);
    assert_eq!(started.primary.next().await, Some(Frame::Heartbeat));
    tokio::time::advance(within * 2).await;
    drop(watchdog);
    started.primary.send(&Frame::Heartbeat);
    assert_eq!(started.primary.next().await, Some(Frame::Heartbeat));
}

/// Bytes messages buffered together (read as runs) come in order among
/// other frames, and what their handlers send back (copied as queued)
/// keeps that order.
#[tokio::test]
async fn bytes_read_as_runs_come_in_order_among_other_frames() {
    let builder = ClusterWorker::builder()
        .on::<PrimaryBytes>(|event| {
            let echo = event.bytes.clone();
            event.context().try_send_bytes(echo).expect("queued");
        })
        .on::<PrimaryMessage>(|event| {
            event.context().try_send(&json!("message")).expect("queued");
        });
    let mut started = start(builder);
    started.primary.hello();
    let bytes = |p: &'static [u8]| Frame::Bytes(bytes::Bytes::from_static(p));
    for frame in [
        bytes(b"a"),
        bytes(b"bc"),
        Frame::Message(message(json!(1))),
        bytes(b""),
        bytes(b"d"),
        Frame::Disconnect,
    ] {
        started.primary.send(&frame);
    }
    assert_eq!(
        names(&mut started.events).await,
        [
            "initialize",
            "primaryBytes",
            "primaryBytes",
            "primaryMessage",
            "primaryBytes",
            "primaryBytes",
            "primaryDisconnect",
            "destroy",
            "destroyComplete"
        ]
    );
    let sent = started.primary.rest().await;
    assert!(matches!(sent[0], Frame::Hello { .. }));
    let expected = [
        bytes(b"a"),
        bytes(b"bc"),
        Frame::Message(message(json!("message"))),
        bytes(b""),
        bytes(b"d"),
        Frame::Disconnect,
    ];
    assert_eq!(sent[1..], expected);
}

#[tokio::test]
async fn bytes_go_both_ways_and_not_to_a_primary_of_version_1() {
    let builder = ClusterWorker::builder().on::<PrimaryBytes>(|event| {
        let echo = event.bytes.clone();
        event.context().try_send_bytes(echo).expect("queued");
    });
    let mut started = start(builder);
    started.primary.hello();
    let payload = bytes::Bytes::from_static(b"\0raw\xff");
    started.primary.send(&Frame::Bytes(payload.clone()));
    started
        .worker
        .send_bytes(payload.clone())
        .await
        .expect("written");
    assert!(matches!(
        started.primary.next().await,
        Some(Frame::Hello { .. })
    ));
    for _ in 0..2 {
        assert_eq!(
            started.primary.next().await,
            Some(Frame::Bytes(payload.clone()))
        );
    }

    // A primary whose hello says version 1 is sent none.
    let mut started = start(ClusterWorker::builder());
    started.primary.send(&Frame::Hello {
        protocol: 1,
        heartbeat: false,
        served: false,
        segments: false,
    });
    started
        .primary
        .send(&Frame::Message(message(json!("sync"))));
    while !matches!(
        started.events.next().await,
        Some(WorkerEvent::PrimaryMessage(_))
    ) {}
    let refused = started.worker.try_send_bytes(payload);
    assert!(
        matches!(
            refused,
            Err(SendError::Unsupported {
                worker_id: None,
                what: "bytes messages",
                ..
            })
        ),
        "{refused:?}"
    );
}
