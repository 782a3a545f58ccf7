//! Whole flows, one worker state or primary phase at a time.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_framed_worker_goes_online_then_ready_then_joins_the_pool() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    assert_eq!(primary.fork(1).expect("fork"), 1);
    assert_eq!(primary.events(), ["initialize", "fork", "workerFork"]);
    primary.hello(1);
    assert_eq!(primary.events(), ["workerOnline"]);
    assert!(primary.ready_ids().is_empty());
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(primary.events(), ["workerReady", "addWorker"]);
    assert_eq!(primary.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn workers_without_hello_are_online_or_ready_once_started() {
    let mut node = Harness::new(WorkerChannel::Node);
    node.fork(1).expect("fork");
    assert_eq!(node.events()[2..], ["workerFork", "workerOnline"]);
    let mut plain = Harness::new(WorkerChannel::None);
    plain.fork(1).expect("fork");
    assert_eq!(
        plain.events()[2..],
        ["workerFork", "workerOnline", "workerReady", "addWorker"]
    );
    assert_eq!(plain.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_must_listen_is_ready_once_it_holds_a_listening_socket() {
    let builder = ClusterPrimary::builder()
        .channel(WorkerChannel::None)
        .readiness(Readiness::Listening);
    let mut primary = Harness::with(builder);
    primary.fork(1).expect("fork");
    assert_eq!(primary.events()[2..], ["workerFork", "workerOnline"]);
    primary.advance(Duration::from_millis(50)).await;
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.spawner.listening.store(true, Ordering::SeqCst);
    primary.advance(Duration::from_millis(10)).await;
    assert_eq!(primary.events(), ["workerReady", "addWorker"]);
}

#[tokio::test(start_paused = true)]
async fn an_exit_in_every_state_is_reported_once_after_a_disconnect_and_replaced() {
    // (state reached before the exit, events of the exit and its replacement)
    let cases: [(&str, &[&str]); 3] = [
        (
            "starting",
            &["workerDisconnect", "workerExit", "fork", "workerFork"],
        ),
        (
            "online",
            &["workerDisconnect", "workerExit", "fork", "workerFork"],
        ),
        (
            "ready",
            &[
                "workerDisconnect",
                "removeWorker",
                "workerExit",
                "fork",
                "workerFork",
            ],
        ),
    ];
    for (state, expected) in cases {
        let mut primary = Harness::new(WorkerChannel::Frames);
        primary.fork(1).expect("fork");
        // Stable, so replaced at once.
        primary.advance(Duration::from_secs(2)).await;
        match state {
            "online" => primary.hello(1),
            "ready" => primary.ready(1),
            _ => {}
        }
        primary.events();
        primary.exit(1, 1);
        assert_eq!(primary.events(), expected, "exit while {state}");
        assert!(primary.context.registry.get(WorkerId::new(1)).is_none());
        assert!(primary.context.registry.get(WorkerId::new(2)).is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_leaving_worker_that_exits_is_voluntary_and_not_counted_as_a_failure() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.frames(1, vec![Frame::Disconnect]);
    assert_eq!(primary.events(), ["workerDisconnect", "removeWorker"]);
    let exits = Arc::new(Mutex::new(Vec::new()));
    let seen = exits.clone();
    (&mut primary.context).on::<crate::primary::WorkerExit>(move |event| {
        seen.lock().expect("exits").push(event.voluntary);
    });
    primary.exit(1, 0);
    assert_eq!(*exits.lock().expect("exits"), [true]);
}

#[tokio::test(start_paused = true)]
async fn a_spawn_failure_is_a_fork_error_and_the_workers_before_it_run() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.events();
    primary.spawner.fail.lock().expect("ids").push(3);
    let error = primary.fork(2).expect_err("the second start fails");
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert_eq!(primary.events(), ["fork", "forkError", "workerFork"]);
    assert_eq!(primary.context.registry.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn frames_out_of_order_are_a_worker_error_then_sigterm_then_sigkill() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.events();
    primary.frames(1, vec![Frame::Ready]);
    assert_eq!(
        primary.events(),
        ["workerError", "workerSignal", "workerDisconnect"]
    );
    assert_eq!(primary.signals(1), [Signal::TERM]);
    assert!(primary.frames_sent_until_closed(1).await.is_empty());
    // Frames after the error are not read.
    primary.frames(
        1,
        vec![Frame::Message(
            crate::Message::from_json("1").expect("json"),
        )],
    );
    assert_eq!(primary.events(), Vec::<&str>::new());
    primary.advance(KILL_GRACE).await;
    assert_eq!(primary.events(), ["workerSignal"]);
    assert_eq!(primary.signals(1), [Signal::KILL]);
}

/// Bytes messages read as one run are each let in by the worker's state as
/// it is then: in order while it is ready; before its hello, the first
/// breaks it and none is delivered.
#[tokio::test(start_paused = true)]
async fn a_run_of_bytes_messages_is_let_in_message_by_message() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let seen = primary.record_bytes();
    primary.fork(2).expect("fork");
    primary.ready(1);
    primary.events();
    primary.bytes_run(1, &[b"a", b"bc", b"d"]);
    assert_eq!(primary.events(), ["workerBytes"; 3]);
    assert_eq!(*seen.lock().expect("seen"), [&b"a"[..], b"bc", b"d"]);

    primary.bytes_run(2, &[b"e", b"f"]);
    assert_eq!(
        primary.events(),
        ["workerError", "workerSignal", "workerDisconnect"]
    );
    assert_eq!(seen.lock().expect("seen").len(), 3, "none delivered");
}

/// A handler that changes the worker's state mid-run (it stops it, or
/// forks another) sees the rest of the run let in as frame by frame would.
#[tokio::test(start_paused = true)]
async fn a_run_honours_state_changes_its_handlers_make_as_frames_do() {
    let run = |as_run: bool| {
        let mut primary = Harness::new(WorkerChannel::Frames);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        primary
            .context
            .on::<crate::primary::WorkerBytes>(move |event| {
                into.lock().expect("seen").push(event.bytes.clone());
                match &event.bytes[..] {
                    b"stop" => {
                        let id = event.worker.id();
                        event.context().stop_worker(id).expect("live");
                    }
                    b"fork" => drop(event.context().fork(1)),
                    _ => {}
                }
            });
        primary.fork(1).expect("fork");
        primary.ready(1);
        primary.events();
        let payloads: [&'static [u8]; 4] = [b"a", b"fork", b"stop", b"b"];
        if as_run {
            primary.bytes_run(1, &payloads);
        } else {
            let frames = payloads.map(|p| Frame::Bytes(bytes::Bytes::from_static(p)));
            primary.frames(1, frames.to_vec());
        }
        let events = primary.events();
        let seen = seen.lock().expect("seen").clone();
        (events, seen)
    };
    let (events, seen) = run(true);
    assert_eq!((&events, &seen), (&run(false).0, &run(false).1));
    assert_eq!(seen.len(), 4, "a leaving worker's messages still come");
}

/// Runs and frames in one input are let in in order: what a worker sends
/// after it said it leaves (or after a frame that breaks it) is not.
#[tokio::test(start_paused = true)]
async fn runs_and_frames_in_one_input_keep_their_order() {
    // (Listening: only the primary sends it, so it breaks the worker.)
    let listening = Frame::Listening {
        id: 1,
        result: Ok("127.0.0.1:1".parse().expect("address")),
        passed: false,
        acks: false,
    };
    for last in [Frame::Disconnect, listening] {
        let mut primary = Harness::new(WorkerChannel::Frames);
        let seen = primary.record_bytes();
        primary.fork(1).expect("fork");
        primary.ready(1);
        primary.events();
        let input = vec![
            bytes_run(&[b"a", b"b"]),
            Inbound::Frame(last),
            bytes_run(&[b"c"]),
        ];
        primary.inbound(1, input);
        assert_eq!(*seen.lock().expect("seen"), [&b"a"[..], b"b"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_not_ready_in_time_is_stopped() {
    let builder = ClusterPrimary::builder().ready_timeout(Duration::from_secs(1));
    let mut primary = Harness::with(builder);
    primary.fork(2).expect("fork");
    primary.ready(2);
    primary.events();
    primary.advance(Duration::from_secs(1)).await;
    assert_eq!(
        primary.events(),
        ["workerError", "workerSignal", "workerDisconnect"]
    );
    assert_eq!(primary.signals(1), [Signal::TERM]);
    assert_eq!(primary.signals(2), Vec::<Signal>::new());
    assert_eq!(primary.ready_ids(), [2]);
}

#[tokio::test(start_paused = true)]
async fn a_channel_that_ends_unasked_gets_sigterm_after_the_grace_period() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.input(Input::Closed(WorkerId::new(1), None));
    assert_eq!(primary.events(), ["workerDisconnect", "removeWorker"]);
    primary.advance(GRACE - Duration::from_millis(1)).await;
    assert_eq!(primary.signals(1), Vec::<Signal>::new());
    primary.advance(Duration::from_millis(1)).await;
    assert_eq!(primary.signals(1), [Signal::TERM]);
    let error = ProtocolError::InvalidMessage("after the end".into());
    primary.input(Input::Closed(WorkerId::new(1), Some(error)));
    assert_eq!(primary.events(), ["workerSignal"], "one disconnect only");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_asks_every_worker_to_leave_then_escalates_then_completes() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(3).expect("fork");
    primary.ready(1);
    primary.hello(2);
    primary.events();
    primary.context.shut_down();
    primary.settle();
    assert_eq!(primary.events(), ["shutDown"]);
    assert!(!primary.context.is_active());
    for id in 1..=3 {
        let sent = primary.frames_sent_until_closed(id).await;
        assert!(
            matches!(sent[..], [Frame::Disconnect]),
            "worker {id}: {sent:?}"
        );
    }
    // Worker 1 leaves at once; 2 after SIGTERM; 3 only after SIGKILL.
    primary.input(Input::Closed(WorkerId::new(1), None));
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "removeWorker", "workerExit"]
    );
    primary.advance(GRACE).await;
    assert_eq!(primary.signals(2), [Signal::TERM]);
    assert_eq!(primary.signals(3), [Signal::TERM]);
    primary.exit(2, 0);
    primary.advance(KILL_GRACE).await;
    assert_eq!(primary.signals(3), [Signal::KILL]);
    primary.events();
    primary.input(Input::Exited(
        WorkerId::new(3),
        Some(ExitStatus::from_raw(libc::SIGKILL)),
    ));
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "shutDownComplete"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_destroy_in_every_state_shuts_down_then_tears_down() {
    for state in ["idle", "starting", "ready", "shutting down", "shut down"] {
        let mut primary = Harness::new(WorkerChannel::Frames);
        if state != "idle" {
            primary.fork(1).expect("fork");
        }
        if state == "ready" {
            primary.ready(1);
        }
        if state.starts_with("shut") {
            primary.context.shut_down();
            primary.settle();
        }
        if state == "shut down" {
            primary.exit(1, 0);
        }
        primary.events();
        primary.context.destroy();
        primary.settle();
        let mut events = primary.events();
        if state != "idle" && state != "shut down" {
            assert!(
                !events.contains(&"destroyComplete"),
                "{state}: waits for the exit"
            );
            primary.exit(1, 0);
            events.extend(primary.events());
        }
        assert_eq!(events.first(), Some(&"destroy"), "{state}: {events:?}");
        assert_eq!(
            events.last(),
            Some(&"destroyComplete"),
            "{state}: {events:?}"
        );
        let completes = events.iter().filter(|e| **e == "shutDownComplete").count();
        assert!(completes <= 1, "{state}: {events:?}");
        assert_eq!(completes == 1, state != "shut down", "{state}: {events:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_recycled_worker_leaves_the_pool_and_is_replaced_at_once_outside_the_backoff() {
    let policy = RestartPolicy::default().stable_after(Duration::from_secs(3600));
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.ready(1);
    primary.events();
    primary.context.stop_worker(WorkerId::new(1)).expect("live");
    assert_eq!(primary.events(), ["removeWorker"]);
    let sent = primary.frames_sent_until_closed(1).await;
    assert!(matches!(sent[..], [Frame::Disconnect]), "{sent:?}");
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "fork", "workerFork"]
    );
    // Recycling again and again never backs off.
    for id in 2..5 {
        primary
            .context
            .stop_worker(WorkerId::new(id))
            .expect("live");
        primary.exit(id, 0);
        assert!(!primary.events().contains(&"restartScheduled"));
    }
    let unknown = primary.context.stop_worker(WorkerId::new(99));
    assert!(matches!(unknown, Err(Error::NoSuchWorker { .. })));
}

#[tokio::test(start_paused = true)]
async fn workers_that_keep_dying_early_are_replaced_with_growing_delays() {
    let policy = RestartPolicy::default()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(400));
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.exit(1, 1);
    primary.events();
    let mut delays = Vec::new();
    let scheduled = Arc::new(Mutex::new(Vec::new()));
    let seen = scheduled.clone();
    (&mut primary.context).on::<crate::primary::RestartScheduled>(move |event| {
        seen.lock().expect("delays").push(event.delay);
    });
    for id in 2..6 {
        primary.exit(id, 1);
        let delay = scheduled
            .lock()
            .expect("delays")
            .last()
            .copied()
            .expect("a delay");
        delays.push(delay.as_millis());
        assert!(
            primary
                .context
                .registry
                .get(WorkerId::new(id + 1))
                .is_none()
        );
        primary.advance(delay).await;
        assert!(
            primary
                .context
                .registry
                .get(WorkerId::new(id + 1))
                .is_some()
        );
    }
    assert_eq!(delays, [100, 200, 400, 400]);
}

#[tokio::test(start_paused = true)]
async fn no_replacement_after_a_shutdown_began() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(1).expect("fork");
    primary.context.shut_down();
    primary.settle();
    primary.events();
    primary.exit(1, 1);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "workerExit", "shutDownComplete"]
    );
    assert_eq!(primary.fork(1).expect("ignored"), 0);
}

#[tokio::test(start_paused = true)]
async fn fork_ready_resolves_once_every_new_worker_is_in_the_pool_or_one_exits_first() {
    let mut primary = Harness::new(WorkerChannel::Frames);
    let mut ready = primary.context.fork_ready(2).expect("fork");
    primary.settle();
    primary.ready(2);
    assert!(ready.try_recv().is_err(), "worker 1 is not ready yet");
    primary.ready(1);
    let workers = ready.try_recv().expect("told").expect("ready");
    let ids: Vec<u64> = workers.iter().map(|w| w.id().get()).collect();
    assert_eq!(ids, [1, 2]);

    let mut lost = primary.context.fork_ready(1).expect("fork");
    primary.settle();
    primary.exit(3, 1);
    let error = lost.try_recv().expect("told").expect_err("it exited");
    assert!(matches!(error, Error::NotReady { worker_id } if worker_id.get() == 3));

    primary.context.shut_down();
    primary.settle();
    let none = primary.context.fork_ready(1).expect("ignored").try_recv();
    assert!(matches!(none, Ok(Ok(workers)) if workers.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_cannot_start_is_retried_with_backoff_until_it_starts() {
    let policy = RestartPolicy::default()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1));
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.ready(1);
    // Stable, so replaced at once; its replacements 2 and 3 cannot start.
    primary.advance(Duration::from_secs(2)).await;
    primary.spawner.fail.lock().expect("ids").extend([2, 3]);
    primary.events();
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        [
            "workerDisconnect",
            "removeWorker",
            "workerExit",
            "fork",
            "forkError",
            "restartScheduled"
        ]
    );
    // Retried on the next turn (no delay after one failure), fails again…
    primary.advance(Duration::ZERO).await;
    assert_eq!(primary.events(), ["fork", "forkError", "restartScheduled"]);
    assert!(primary.context.registry.get(WorkerId::new(4)).is_none());
    // …then after the backoff's first delay; 4 starts and the pool is whole.
    primary.advance(Duration::from_millis(100)).await;
    assert_eq!(primary.events(), ["fork", "workerFork"]);
    primary.ready(4);
    assert_eq!(primary.ready_ids(), [4]);
}

#[tokio::test(start_paused = true)]
async fn failed_starts_count_toward_the_restart_intensity() {
    let policy = RestartPolicy::default().intensity(
        2,
        Duration::from_secs(60),
        crate::primary::OnIntensity::ShutDown,
    );
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(policy));
    primary.fork(1).expect("fork");
    primary.advance(Duration::from_secs(2)).await;
    primary.spawner.fail.lock().expect("ids").extend(2..100);
    primary.exit(1, 1);
    for _ in 0..5 {
        primary.advance(Duration::from_secs(10)).await;
    }
    // The exit and two failed starts: three replacements, one over the limit.
    assert_eq!(
        primary.events()[3..],
        [
            "workerDisconnect",
            "workerExit",
            "fork",
            "forkError",
            "restartScheduled",
            "fork",
            "forkError",
            "restartIntensityExceeded",
            "shutDown",
            "shutDownComplete"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn each_restart_mode_replaces_only_the_exits_it_names_and_a_recycle_always() {
    use super::super::Restart;
    // (issue 14 item 5: every exit was replaced, so a job pool could not
    // finish and a worker that succeeded was started again.)
    let on_failure = RestartPolicy::default().restart(Restart::OnFailure);
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(on_failure));
    primary.fork(2).expect("fork");
    primary.ready(1);
    primary.ready(2);
    primary.events();
    primary.exit(1, 0);
    assert_eq!(
        primary.events(),
        ["workerDisconnect", "removeWorker", "workerExit"]
    );
    primary.exit(2, 1);
    assert!(
        primary
            .events()
            .ends_with(&["workerExit", "fork", "workerFork"])
    );
    let never = RestartPolicy::default().restart(Restart::Never);
    let mut primary = Harness::with(ClusterPrimary::builder().restart_policy(never));
    primary.fork(2).expect("fork");
    primary.ready(1);
    primary.ready(2);
    primary.events();
    primary.exit(1, 1);
    assert!(
        !primary.events().contains(&"fork"),
        "a failure is not replaced either"
    );
    // A worker the primary stopped itself is replaced, whatever the mode.
    primary.context.stop_worker(WorkerId::new(2)).expect("live");
    primary.exit(2, 0);
    assert!(
        primary
            .events()
            .ends_with(&["workerExit", "fork", "workerFork"])
    );
}

#[tokio::test(start_paused = true)]
async fn a_replacement_takes_the_slot_of_the_worker_it_replaces() {
    // (issue 14 item 7: nothing told an app which of N it was.)
    let mut primary = Harness::new(WorkerChannel::Frames);
    primary.fork(3).expect("fork");
    for id in 1..=3 {
        primary.ready(id);
    }
    let slot_of = |primary: &Harness, id: u64| {
        let entry = primary.context.registry.get(WorkerId::new(id));
        entry.map(|entry| entry.worker.slot())
    };
    assert_eq!(
        [1, 2, 3].map(|id| slot_of(&primary, id)),
        [Some(0), Some(1), Some(2)]
    );
    primary.exit(2, 1);
    assert_eq!(slot_of(&primary, 4), Some(1), "worker 2's slot");
    primary.exit(1, 1);
    primary.advance(Duration::from_secs(1)).await;
    assert_eq!(slot_of(&primary, 5), Some(0), "worker 1's slot");
}

#[tokio::test(start_paused = true)]
async fn a_node_worker_asked_to_leave_gets_sigterm_soon_as_with_nodes_own_cluster() {
    // (issue 14 item 1: a Node worker without a `disconnect` handler held
    // the shutdown for the whole grace.)
    let mut primary = Harness::new(WorkerChannel::Node);
    primary.fork(1).expect("fork");
    primary.frames(1, vec![Frame::Ready]);
    primary.context.shut_down();
    primary.settle();
    primary.input(Input::Closed(WorkerId::new(1), None));
    primary
        .advance(super::super::NODE_TERM_AFTER - Duration::from_millis(1))
        .await;
    assert_eq!(primary.signals(1), Vec::<Signal>::new());
    primary.advance(Duration::from_millis(1)).await;
    assert_eq!(primary.signals(1), [Signal::TERM], "not after {GRACE:?}");
}
