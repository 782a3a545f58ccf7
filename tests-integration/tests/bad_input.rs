//! A worker that breaks the protocol gets a typed workerError and is stopped;
//! the primary keeps serving the others (issue: bad input).
#![cfg(target_os = "linux")]

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::*;
use isotropic_cluster::{Codec, ProtocolError};
use serde_json::json;
use tests_integration::{
    BadInput, ExitWatch, FLOOD_MESSAGES, Mode, alive, launch, primary, shut_down, wait_for,
};

async fn bad_worker(case: BadInput) -> ProtocolError {
    bad_worker_with(case, Codec::Json).await
}

/// As [`bad_worker`], with a primary whose messages are in `codec`.
async fn bad_worker_with(case: BadInput, codec: Codec) -> ProtocolError {
    let builder = primary(Mode::BadAfterFirst)
        .codec(codec)
        .arg(case.as_str())
        // Bad workers are not replaced, so each case sees one.
        .before::<WorkerExit>(|exit| {
            if exit.worker.id().get() != 1 {
                exit.prevent();
            }
        });
    let (primary, mut events, [good]) = launch::<1>(builder).await;
    primary.fork(1).await.expect("fork");
    let (bad, error) = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerError(e) => Some((e.worker, e.error)),
        _ => None,
    })
    .await;
    assert_eq!(bad.id().get(), 2);
    // The bad worker is stopped (not just left out of the pool), before any
    // shutdown.
    ExitWatch::new(bad.pid()).exited().await;
    // The bad worker is disconnected and exits (or is terminated).
    wait_for(&mut events, |e| {
        matches!(e, PrimaryEvent::WorkerDisconnect(d) if d.worker == bad).then_some(())
    })
    .await;
    let pool: Vec<_> = primary.workers().iter().map(WorkerHandle::id).collect();
    assert_eq!(pool, [good.id()], "only the good worker is in the pool");
    // The good worker is still served.
    primary.send(&good, &"still there").await.expect("send");
    let echo = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerMessage(m) => m.message.decode::<serde_json::Value>().ok(),
        _ => None,
    })
    .await;
    assert_eq!(echo, json!({"echo": "still there"}));
    shut_down(&primary).await;
    assert!(!alive(bad.pid()));
    error
}

#[tokio::test]
async fn a_message_before_hello() {
    let error = bad_worker(BadInput::NoHello).await;
    assert!(
        matches!(
            error,
            ProtocolError::UnexpectedFrame {
                frame: "message",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_wrong_protocol_version() {
    let error = bad_worker(BadInput::WrongVersion).await;
    assert!(
        matches!(
            error,
            ProtocolError::Version {
                received: 99,
                oldest: 1,
                supported: 3
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn an_oversized_length_prefix() {
    // A JSON message's, then a bytes message's.
    for case in [BadInput::HugeLength, BadInput::HugeBytes] {
        let error = bad_worker(case).await;
        assert!(
            matches!(
                error,
                ProtocolError::FrameTooLarge {
                    size: 0xffff_ffff,
                    ..
                }
            ),
            "{case}: {error}"
        );
    }
}

#[tokio::test]
async fn garbage_bytes() {
    let error = bad_worker(BadInput::Garbage).await;
    assert!(matches!(error, ProtocolError::UnknownKind(0xee)), "{error}");
}

#[tokio::test]
async fn invalid_json() {
    let error = bad_worker(BadInput::InvalidJson).await;
    assert!(matches!(error, ProtocolError::InvalidMessage(_)), "{error}");
}

#[tokio::test]
async fn invalid_utf8() {
    let error = bad_worker(BadInput::InvalidUtf8).await;
    assert!(matches!(error, ProtocolError::InvalidMessage(_)), "{error}");
}

#[tokio::test]
async fn json_nested_100_000_deep() {
    let error = bad_worker(BadInput::DeepJson).await;
    assert!(matches!(error, ProtocolError::InvalidMessage(_)), "{error}");
}

#[tokio::test]
async fn a_frame_cut_short_by_the_channel_closing() {
    let error = bad_worker(BadInput::Truncated).await;
    assert!(
        matches!(error, ProtocolError::Truncated { received: 9 }),
        "{error}"
    );
}

#[tokio::test]
async fn random_bytes() {
    // Whatever the noise makes of it, a typed error (most often a length
    // over the maximum; a frame cut short if the noise claims a small one).
    let error = bad_worker(BadInput::Random).await;
    eprintln!("random bytes: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_worker_is_slowed_down_and_memory_stays_bounded() {
    let _turn = tests_integration::measuring_turn().await;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (counter, all_in) = (received.clone(), done.clone());
    let builder = primary(Mode::BadAfterFirst)
        .arg(BadInput::Flood.as_str())
        .on::<WorkerMessage>(move |event| {
            // A handler slower than the socket: ~2 µs per message.
            let spin = (0..3000_u64).fold(0, |x, i| std::hint::black_box(x ^ i));
            std::hint::black_box(spin);
            if event.worker.id().get() == 2
                && counter.fetch_add(1, Ordering::Relaxed) + 1 == FLOOD_MESSAGES
            {
                all_in.notify_one();
            }
        });
    // `_events` is held and never read: the worst case for memory.
    let (primary, _events, [good]) = launch::<1>(builder).await;
    let rss = tests_integration::rss_kib();
    let peak = Arc::new(AtomicU64::new(rss));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(5));
            loop {
                every.tick().await;
                peak.fetch_max(tests_integration::rss_kib(), Ordering::Relaxed);
            }
        })
    };
    primary.fork(1).await.expect("fork");
    // The good worker is served during the flood.
    for n in 0..20_u64 {
        let square: u64 = good
            .request(&json!({"type": "square", "n": n}))
            .await
            .expect("request during the flood");
        assert_eq!(square, n * n);
    }
    // 256 MiB through a deliberately slow handler takes ~25 s in a debug
    // build on an idle 2-core machine: the deadline must be far above that.
    tokio::time::timeout(4 * tests_integration::DEADLINE, done.notified())
        .await
        .expect("every flooded message arrives");
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "flood: {FLOOD_MESSAGES} messages of 1 KiB (256 MiB) arrived; primary RSS {rss} KiB -> peak {peak} KiB"
    );
    assert_eq!(
        received.load(Ordering::Relaxed),
        FLOOD_MESSAGES,
        "no message lost"
    );
    assert!(
        peak < rss + 64 * 1024,
        "the primary buffered the flood: RSS {rss} KiB -> {peak} KiB"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_malformed_messagepack_message() {
    let error = bad_worker_with(BadInput::InvalidMessagePack, Codec::MessagePack).await;
    assert!(
        matches!(&error, ProtocolError::InvalidMessage(reason) if reason.contains("MessagePack")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_worker_that_speaks_json_to_a_messagepack_primary() {
    // Its hello names no codec: JSON.
    let error = bad_worker_with(BadInput::InvalidJson, Codec::MessagePack).await;
    assert!(
        matches!(
            &error,
            ProtocolError::CodecMismatch { received, expected: "msgpack" } if received == "json"
        ),
        "{error:?}"
    );
}

/// Bad fds or memfds: a typed error, the bad worker stopped, and every fd
/// that came with the bad input (the worker passes `/dev/null`s and
/// memfds) closed in the primary.
async fn bad_fds(case: BadInput) -> ProtocolError {
    let passed = || {
        std::fs::read_dir("/proc/self/fd")
            .expect("our fds")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| {
                target == std::path::Path::new("/dev/null")
                    || target.to_string_lossy().starts_with("/memfd:")
            })
            .count()
    };
    let before = passed();
    let error = bad_worker(case).await;
    assert_eq!(passed(), before, "fds left open by {case}");
    error
}

#[tokio::test]
async fn more_fds_than_the_bound() {
    let error = bad_fds(BadInput::TooManyFds).await;
    assert!(
        matches!(error, ProtocolError::TooManyFds { count, max } if count == isotropic_cluster::MAX_FDS + 1 && max == isotropic_cluster::MAX_FDS),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_memfd_that_is_not_sealed() {
    let error = bad_fds(BadInput::UnsealedMemfd).await;
    assert!(matches!(error, ProtocolError::UnsealedMemfd), "{error:?}");
}

#[tokio::test]
async fn a_memfd_shorter_than_announced() {
    let error = bad_fds(BadInput::ShortMemfd).await;
    assert!(
        matches!(
            error,
            ProtocolError::ShortMemfd {
                announced: 4097,
                size: 4096
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_bytes_request_without_its_body() {
    let error = bad_worker(BadInput::BytesRequestWithoutBody).await;
    assert!(
        matches!(
            error,
            ProtocolError::MissingBody {
                head: "bytes request",
                next: "message"
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_bytes_reply_with_a_bad_status() {
    let error = bad_worker(BadInput::BadBytesReply).await;
    assert!(
        matches!(error, ProtocolError::InvalidControl(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_bytes_request_from_a_worker_of_version_1() {
    let error = bad_worker(BadInput::BytesRequestFromVersion1).await;
    assert!(
        matches!(
            error,
            ProtocolError::UnexpectedFrame {
                frame: "bytes request",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_release_or_a_returned_payload_of_a_token_never_lent() {
    for case in [BadInput::ForgedRelease, BadInput::ForgedReturned] {
        let error = bad_worker(case).await;
        assert!(
            matches!(error, ProtocolError::UnknownToken(7)),
            "{case}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_segment_from_a_worker() {
    let error = bad_fds(BadInput::WorkerSegment).await;
    assert!(
        matches!(
            error,
            ProtocolError::UnexpectedFrame {
                frame: "segment",
                ..
            }
        ),
        "{error:?}"
    );
}
