//! Rollouts by their rules, without processes: surge, minimum uptime,
//! rollback, a reload during a rollout.

use std::time::Duration;

use futures_util::FutureExt as _;

use super::{Harness, RestartPolicy, pool};
use crate::primary::rollout::Outcome;
use crate::primary::{ClusterPrimary, OnIntensity, PrimaryBuilder, Restart, RolloutFailure};
use crate::{Subscribe as _, WorkerId};

fn id(n: u64) -> WorkerId {
    WorkerId::new(n)
}

/// Worker `n`'s slot and generation, while it is live.
fn placed(primary: &Harness, n: u64) -> Option<(u32, u64)> {
    let entry = primary.context.registry.get(id(n))?;
    Some((entry.worker.slot(), entry.worker.generation()))
}

/// A pool of `count` ready workers whose rollouts prove new workers at once.
fn eager(builder: PrimaryBuilder, count: u64) -> Harness {
    pool(builder.min_uptime(Duration::ZERO), count)
}

fn ended(done: tokio::sync::oneshot::Receiver<Outcome>) -> Outcome {
    done.now_or_never().expect("ended").expect("told")
}

#[tokio::test(start_paused = true)]
async fn a_rollout_replaces_one_slot_at_a_time_never_leaving_the_pool_short() {
    let mut primary = eager(ClusterPrimary::builder(), 3);
    let done = primary.context.restart_waiter();
    primary.settle();
    for (old, new) in [(1, 4), (2, 5), (3, 6)] {
        assert_eq!(primary.ready_ids().len(), 3, "never short, before {new}");
        let slot = placed(&primary, old).expect("live").0;
        assert_eq!(
            placed(&primary, new),
            Some((slot, 2)),
            "in its slot, generation 2"
        );
        assert_eq!(primary.context.registry.len(), 4, "a surge of one");
        primary.ready(new);
        primary.exit(old, 0);
    }
    assert_eq!(ended(done).expect("rolled out"), 3);
    assert_eq!(primary.ready_ids(), [4, 5, 6]);
    let generations: Vec<u64> = (primary.context.figures().iter())
        .map(|figures| figures.generation)
        .collect();
    assert_eq!(generations, [2, 2, 2], "in the figures too");
    let events = primary.events();
    assert!(events.contains(&"rolloutStarted") && events.contains(&"rolloutComplete"));
    // Generation 2 is the stable one now: a replacement runs it.
    primary.exit(5, 1);
    assert_eq!(placed(&primary, 7).map(|p| p.1), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_replaces_an_old_one_only_once_up_for_the_minimum_uptime() {
    let mut primary = pool(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.ready(3);
    assert_eq!(primary.ready_ids(), [1, 2, 3], "1 still serves");
    primary.advance(Duration::from_millis(1000)).await;
    assert_eq!(primary.ready_ids(), [2, 3], "1 left once 3 was up for 1 s");
    primary.exit(1, 0);
    primary.ready(4);
    primary.advance(Duration::from_millis(1000)).await;
    primary.exit(2, 0);
    assert_eq!(ended(done).expect("rolled out"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_that_exits_early_rolls_the_rollout_back_and_the_old_ones_keep_serving() {
    // Crashing at start, or exiting before it is ready (even normally,
    // under `OnFailure`), or within its minimum uptime once ready.
    let on_failure = RestartPolicy::default().restart(Restart::OnFailure);
    for (ready, code) in [(false, 1), (false, 0), (true, 1)] {
        let mut primary = pool(ClusterPrimary::builder().restart_policy(on_failure), 2);
        let done = primary.context.restart_waiter();
        primary.settle();
        primary.events();
        if ready {
            primary.ready(3);
            primary.advance(Duration::from_millis(500)).await;
        }
        primary.exit(3, code);
        let events = primary.events();
        assert!(events.contains(&"rolloutFailed"), "{events:?}");
        assert!(
            events.contains(&"rolledBack"),
            "nothing to start: {events:?}"
        );
        assert!(!events.contains(&"fork"), "no worker started: {events:?}");
        assert_eq!(primary.ready_ids(), [1, 2], "generation 1 serves");
        let (generation, reason) = ended(done).expect_err("rolled back");
        assert_eq!(generation, 2);
        assert!(
            matches!(reason, RolloutFailure::Exited { worker, code: Some(c), .. } if worker == id(3) && c == code),
            "{reason}"
        );
        // A later replacement runs generation 1, and the next rollout is 3.
        primary.exit(1, 1);
        assert_eq!(placed(&primary, 4).map(|p| p.1), Some(1));
        primary.context.restart_workers();
        primary.settle();
        assert_eq!(placed(&primary, 5).map(|p| p.1), Some(3));
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_never_ready_rolls_back_after_the_ready_timeout() {
    let mut primary = pool(ClusterPrimary::builder(), 1);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.hello(2);
    primary.advance(Duration::from_secs(61)).await;
    assert!(
        primary.events().contains(&"workerError"),
        "not ready in 60 s"
    );
    primary.exit(2, 0);
    let (_, reason) = ended(done).expect_err("rolled back");
    let sixty = Duration::from_secs(60);
    assert!(
        matches!(reason, RolloutFailure::NotReady { after, .. } if after == sixty),
        "{reason}"
    );
    assert_eq!(primary.ready_ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_health_check_rolls_back_and_the_old_generation_retakes_each_slot() {
    let check = |worker: crate::primary::WorkerHandle| async move {
        match worker.id().get() {
            3 => Ok(()),
            _ => Err("503".to_owned()),
        }
    };
    let builder = ClusterPrimary::builder().health_check(check);
    let mut primary = eager(builder, 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.ready(3);
    let said = primary.context.input_rx.recv().await.expect("3's check");
    primary.input(said);
    assert_eq!(primary.ready_ids(), [2, 3], "3 passed: 1 left");
    primary.exit(1, 0);
    primary.ready(4);
    assert_eq!(primary.ready_ids(), [2, 3, 4], "4 is being checked");
    let said = primary.context.input_rx.recv().await.expect("4's check");
    primary.input(said);
    assert!(primary.events().contains(&"rolloutFailed"));
    // Generation 1 takes slot 0 back from 3 (4 serves nobody: it leaves).
    assert_eq!(primary.ready_ids(), [2, 3]);
    assert_eq!(placed(&primary, 5), Some((0, 1)), "started from release 1");
    primary.ready(5);
    assert_eq!(primary.ready_ids(), [2, 5]);
    primary.exit(3, 0);
    primary.exit(4, 0);
    let (_, reason) = ended(done).expect_err("rolled back");
    assert!(matches!(reason, RolloutFailure::Unhealthy { worker, .. } if worker == id(4)));
    assert!(primary.events().contains(&"rolledBack"));
}

#[tokio::test(start_paused = true)]
async fn a_reload_during_a_rollout_restarts_it_for_the_newest_release_never_overlapping() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.ready(3);
    primary.exit(1, 0);
    assert_eq!(placed(&primary, 4), Some((1, 2)), "2's replacement");
    primary.context.restart_workers();
    primary.settle();
    // 4 (generation 2, not ready) leaves; one worker of 3 starts.
    assert_eq!(placed(&primary, 5), Some((0, 3)));
    let staying = |p: &Harness| {
        p.context
            .registry
            .entries()
            .iter()
            .filter(|e| e.state.staying())
            .count()
    };
    assert_eq!(staying(&primary), 3, "2, 3 and 5: a surge of one");
    primary.exit(4, 0);
    for (old, new) in [(3, 5), (2, 6)] {
        primary.ready(new);
        primary.exit(old, 0);
    }
    assert_eq!(ended(done).expect("rolled out"), 3);
    assert_eq!(
        [placed(&primary, 5), placed(&primary, 6)],
        [Some((0, 3)), Some((1, 3))]
    );
}

#[tokio::test(start_paused = true)]
async fn retiring_a_worker_during_a_rollout_takes_its_slot_out() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.context.retire_worker(id(3)).expect("live");
    primary.settle();
    assert_eq!(primary.context.pool_size(), 1);
    primary.exit(3, 0);
    primary.exit(1, 0);
    assert_eq!(placed(&primary, 4), Some((0, 2)));
    primary.ready(4);
    assert_eq!(primary.ready_ids(), [4], "2, beyond the pool, left");
    primary.exit(2, 0);
    assert_eq!(ended(done).expect("rolled out"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_workers_keep_failing_waits_a_backoff_between_tries() {
    let second = Duration::from_secs(1);
    let policy = RestartPolicy::default().initial_delay(second);
    let mut primary = eager(ClusterPrimary::builder().restart_policy(policy), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    // 3 is proven at once: 1 leaves, 4 starts in slot 1 and fails.
    primary.ready(3);
    primary.exit(1, 0);
    primary.exit(4, 1);
    assert_eq!(placed(&primary, 5), Some((0, 1)), "slot 0 taken back");
    primary.exit(5, 1);
    assert_eq!(
        placed(&primary, 6),
        Some((0, 1)),
        "a first failure: at once"
    );
    primary.exit(6, 1);
    assert_eq!(placed(&primary, 7), None, "the next try waits");
    primary.advance(second).await;
    assert_eq!(placed(&primary, 7), Some((0, 1)));
    primary.ready(7);
    primary.exit(3, 0);
    let (generation, _) = ended(done).expect_err("rolled back");
    assert_eq!(generation, 2);
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_kept_out_of_the_pool_by_a_handler_fails_the_rollout_not_holds_it() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    (&mut primary.context).on::<crate::primary::AddWorker>(|event| {
        if event.worker.generation() == 2 {
            event.prevent();
        }
    });
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.ready(3);
    assert_eq!(primary.ready_ids(), [1, 2], "generation 1 serves");
    let (_, reason) = ended(done).expect_err("rolled back at once");
    assert!(
        matches!(reason, RolloutFailure::KeptOut { worker } if worker == id(3)),
        "{reason}"
    );
    primary.exit(3, 0);
    assert_eq!(placed(&primary, 4), None, "3 left, not replaced");
}

#[tokio::test(start_paused = true)]
async fn a_slot_whose_replacement_is_delayed_is_filled_by_the_rollout() {
    // Generation 1 crash-loops in slot 0: the new release (its fix,
    // perhaps) still gets the slot once the delay is over.
    let second = Duration::from_secs(1);
    let policy = RestartPolicy::default().initial_delay(second);
    let mut primary = eager(ClusterPrimary::builder().restart_policy(policy), 1);
    primary.exit(1, 1);
    primary.exit(2, 1);
    assert!(primary.events().contains(&"restartScheduled"));
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.advance(second).await;
    assert_eq!(placed(&primary, 3), Some((0, 2)), "the new release");
    primary.ready(3);
    assert_eq!(ended(done).expect("rolled out"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fork_during_a_rollout_grows_the_pool_it_rolls_out() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    assert_eq!(primary.fork(1).expect("fork"), 1);
    assert_eq!(primary.context.pool_size(), 3);
    assert_eq!(placed(&primary, 4), Some((2, 1)), "a new slot");
    primary.ready(4);
    primary.ready(3);
    primary.exit(1, 0);
    for (old, new) in [(2, 5), (4, 6)] {
        primary.ready(new);
        primary.exit(old, 0);
    }
    assert_eq!(ended(done).expect("rolled out"), 3);
    assert_eq!(primary.ready_ids(), [3, 5, 6]);
}

/// How many of this process's fds are open on `path`.
fn held(path: &std::path::Path) -> usize {
    let fds = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    (fds.flatten())
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_release_lets_its_program_file_go_once_no_worker_runs_it() {
    let dir = std::env::temp_dir().join(format!("rollout-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let program = dir.join("server");
    std::fs::write(&program, "#!/bin/sh\n").expect("the program");
    let mut primary = eager(ClusterPrimary::builder().program(&program), 1);
    assert_eq!(held(&program), 1, "release 1");
    // Rolled out, rolled back, restarted half-way: 30 releases in all.
    let (mut serving, mut next) = (1, 2);
    for round in 0..10_u64 {
        primary.context.restart_workers();
        primary.settle();
        primary.ready(next);
        primary.exit(serving, 0);
        serving = next;
        primary.context.restart_workers();
        primary.settle();
        primary.context.restart_workers();
        primary.settle();
        primary.exit(next + 1, 0);
        primary.exit(next + 2, 1);
        next += 3;
        assert!(held(&program) <= 3, "round {round}: {}", held(&program));
    }
    assert_eq!(held(&program), 1, "the stable release only");
    drop(primary);
    assert_eq!(held(&program), 0);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test(start_paused = true)]
async fn shrinking_a_rollout_cancels_the_delayed_replacements_beyond_the_pool() {
    for retire in [false, true] {
        let policy = RestartPolicy::default().initial_delay(Duration::from_secs(10));
        let mut primary = eager(ClusterPrimary::builder().restart_policy(policy), 2);
        primary.exit(2, 1);
        primary.exit(3, 1);
        assert!(
            primary.events().contains(&"restartScheduled"),
            "slot 1 owed"
        );
        let done = primary.context.restart_waiter();
        primary.settle();
        assert_eq!(placed(&primary, 4), Some((0, 2)));
        if retire {
            // Slot 0 goes: worker 1 and its replacement 4.
            primary.context.retire_worker(id(1)).expect("live");
        } else {
            primary.context.scale_to(1).expect("scaled");
        }
        primary.settle();
        assert_eq!(primary.context.pool_size(), 1, "retire: {retire}");
        let new = if retire { 5 } else { 4 };
        primary.ready(new);
        primary.exit(1, 0);
        let replaced = ended(done).expect("rolled out without waiting for slot 1");
        assert_eq!(replaced, usize::from(!retire));
        assert_eq!(primary.context.pool_size(), 1);
        assert_eq!(primary.ready_ids(), [new]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_for_by_a_handler_of_the_rollouts_end_is_rolled_out_too() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut primary = eager(ClusterPrimary::builder(), 1);
    let again = std::sync::Arc::new(AtomicBool::new(true));
    let once = again.clone();
    (&mut primary.context).on::<crate::primary::RolloutComplete>(move |event| {
        if once.swap(false, Ordering::SeqCst) {
            event.context().restart_workers();
        }
    });
    let first = primary.context.restart_waiter();
    primary.settle();
    primary.ready(2);
    primary.exit(1, 0);
    assert_eq!(ended(first).expect("rolled out"), 1);
    assert!(!again.load(Ordering::SeqCst), "reloaded from the handler");
    assert_eq!(placed(&primary, 3), Some((0, 3)), "the next rollout began");
    let second = primary.context.rollouts.wait();
    primary.ready(3);
    primary.exit(2, 0);
    assert_eq!(ended(second).expect("rolled out"), 1);
    assert_eq!(primary.ready_ids(), [3]);
}

#[tokio::test(start_paused = true)]
async fn the_tries_of_a_failing_rollback_count_towards_the_restart_intensity() {
    let (minute, ten) = (Duration::from_secs(60), Duration::from_secs(10));
    for then in [OnIntensity::ShutDown, OnIntensity::SlowDown] {
        let policy = (RestartPolicy::default().max_delay(ten)).intensity(1, minute, then);
        let mut primary = eager(ClusterPrimary::builder().restart_policy(policy), 2);
        let done = primary.context.restart_waiter();
        primary.settle();
        primary.ready(3);
        primary.exit(1, 0);
        primary.exit(4, 1);
        primary.events();
        // Generation 1 cannot start any more either.
        primary.exit(5, 1);
        primary.exit(6, 1);
        let events = primary.events();
        assert!(events.contains(&"restartIntensityExceeded"), "{events:?}");
        if then == OnIntensity::ShutDown {
            assert!(events.contains(&"shutDown"), "{events:?}");
            assert_eq!(placed(&primary, 7), None, "no more tries");
            ended(done).expect_err("not rolled out");
            continue;
        }
        primary.advance(ten - Duration::from_millis(1)).await;
        assert_eq!(placed(&primary, 7), None, "slowed down");
        primary.advance(Duration::from_millis(1)).await;
        assert_eq!(placed(&primary, 7), Some((0, 1)), "slot 0 once more");
    }
}

#[tokio::test(start_paused = true)]
async fn a_prevented_fork_or_a_shutdown_ends_a_rollout_and_its_waiters_are_told() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    (&mut primary.context).on::<crate::primary::Fork>(|event| event.prevent());
    let done = primary.context.restart_waiter();
    primary.settle();
    let (_, reason) = ended(done).expect_err("rolled back at once");
    assert!(
        matches!(reason, RolloutFailure::CannotStart { .. }),
        "{reason}"
    );
    assert_eq!(primary.ready_ids(), [1, 2]);
    // A shutdown (or a destroy) during a rollout: no worker starts after.
    let mut primary = eager(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.context.destroy();
    primary.settle();
    assert!(ended(done).is_ok(), "told");
    primary.events();
    for n in 1..=3 {
        primary.exit(n, 1);
    }
    primary.advance(Duration::from_secs(120)).await;
    assert!(!primary.events().contains(&"fork"));
}

#[tokio::test(start_paused = true)]
async fn an_old_worker_that_dies_during_a_rollout_is_replaced_by_the_rollout() {
    let mut primary = eager(ClusterPrimary::builder(), 2);
    let done = primary.context.restart_waiter();
    primary.settle();
    primary.exit(2, 1);
    // Not a worker of generation 1 started only to be asked to leave.
    assert_eq!(placed(&primary, 4), Some((1, 2)));
    assert_eq!(placed(&primary, 5), None);
    for new in [3, 4] {
        primary.ready(new);
    }
    primary.exit(1, 0);
    assert_eq!(ended(done).expect("rolled out"), 1);
}

#[tokio::test(start_paused = true)]
async fn scaling_during_a_rollback_rolls_back_the_pool_of_the_new_size() {
    for (to, serving) in [(3, vec![2, 5, 6]), (1, vec![5])] {
        let mut primary = eager(ClusterPrimary::builder(), 2);
        let done = primary.context.restart_waiter();
        primary.settle();
        primary.ready(3);
        primary.exit(1, 0);
        primary.exit(4, 1);
        assert_eq!(placed(&primary, 5), Some((0, 1)), "rolling back");
        primary.context.scale_to(to).expect("scaled");
        primary.settle();
        assert_eq!(primary.context.pool_size(), to);
        for new in 5..=6 {
            if placed(&primary, new).is_some() {
                primary.ready(new);
            }
        }
        for old in 2..=3 {
            if !serving.contains(&old) {
                primary.exit(old, 0);
            }
        }
        ended(done).expect_err("rolled back");
        assert_eq!(primary.ready_ids(), serving, "to {to}");
        assert_eq!(primary.context.pool_size(), to);
    }
}
