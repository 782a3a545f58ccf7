//! Reliability: chaos under load, and many restarts, leave nothing behind
//! (issue: reliability, items 1 and 9). Figures go to the test's output
//! (`--no-capture`) for `docs/reliability.md`.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use isotropic_cluster::RequestError;
use isotropic_cluster::Subscribe as _;
use isotropic_cluster::primary::*;
use serde_json::json;
use tests_integration::{Mode, launch, primary, rss_kib, shut_down, wait_for};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Children of this process that are zombies (exited, not reaped).
fn zombies() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .count()
}

async fn count_exits(events: &mut isotropic_cluster::EventStream<PrimaryEvent>, n: usize) {
    for _ in 0..n {
        wait_for(events, |e| {
            matches!(e, PrimaryEvent::WorkerExit(_)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_thousand_restarts_leave_fds_memory_and_processes_flat() {
    let _turn = tests_integration::measuring_turn().await;
    // Workers that exit at once, replaced without backoff.
    let policy = RestartPolicy::default().stable_after(Duration::ZERO);
    let (primary, mut events) = tests_integration::crash_looping(policy).await;
    // Warm up (allocator pools, runtime), then measure over 1000 restarts.
    count_exits(&mut events, 50).await;
    let (fds, rss, started) = (open_fds(), rss_kib(), Instant::now());
    count_exits(&mut events, 1000).await;
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    shut_down(&primary).await;
    eprintln!(
        "1000 restarts in {:?}: fds {fds} -> {fds_after}; RSS {rss} -> {rss_after} KiB; {} zombies",
        started.elapsed(),
        zombies()
    );
    assert!(fds_after <= fds + 8, "fds grew from {fds} to {fds_after}");
    assert!(
        rss_after <= rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
    assert_eq!(zombies(), 0, "unreaped children");
}

/// The CPU time this process has used, all threads.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.try_into().unwrap_or(0))
}

#[tokio::test]
async fn a_crash_loop_costs_the_primary_under_five_percent_of_a_core() {
    let _turn = tests_integration::measuring_turn().await;
    const WINDOW: Duration = Duration::from_secs(10);
    // A worker that exits at start, under the default restart policy.
    let (primary, mut events) = tests_integration::crash_looping(RestartPolicy::default()).await;
    count_exits(&mut events, 3).await;
    let (cpu, started) = (cpu_time(), tokio::time::Instant::now());
    let mut restarts = 0;
    while let Ok(event) = tokio::time::timeout_at(started + WINDOW, events.next()).await {
        if matches!(event, Some(PrimaryEvent::WorkerExit(_))) {
            restarts += 1;
        }
    }
    let (used, elapsed) = (cpu_time() - cpu, started.elapsed());
    shut_down(&primary).await;
    let share = used.as_secs_f64() / elapsed.as_secs_f64();
    eprintln!(
        "crash loop: {restarts} restarts in {elapsed:?}; the primary used {used:?} of CPU ({:.2}% of a core)",
        share * 100.0
    );
    assert!(restarts >= 2, "the crash loop stopped");
    assert!(
        share < 0.05,
        "the primary used {:.1}% of a core",
        share * 100.0
    );
}

/// A small random generator (xorshift), seeded from the clock; the test
/// prints the seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_nanos() as u64)
            | 1;
        eprintln!("random seed {seed}");
        Self(seed)
    }

    /// A number in `range`.
    fn within(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        range.start() + self.0 % (range.end() - range.start() + 1)
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Outcomes {
    answered: u64,
    gone: u64,
    wrong: Vec<String>,
}

/// Asks `{"type": "square", "n": …}` of the workers in turn, one request at
/// a time, until `stop`; every reply must be the square of its own `n`.
async fn client(primary: ClusterPrimary, first: u64, stop: Arc<AtomicBool>) -> Outcomes {
    let mut outcomes = Outcomes::default();
    for n in first.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(worker) = primary.round_robin("") else {
            tokio::task::yield_now().await;
            continue;
        };
        let reply = worker
            .request_within::<u64, _>(&json!({"type": "square", "n": n}), Duration::from_secs(10))
            .await;
        match reply {
            Ok(square) if square == n * n => outcomes.answered += 1,
            Err(RequestError::Gone { .. }) => outcomes.gone += 1,
            other => outcomes.wrong.push(format!("{n}: {other:?}")),
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_under_load_loses_no_request_and_the_pool_recovers() {
    let _turn = tests_integration::measuring_turn().await;
    const WORKERS: usize = 8;
    const CLIENTS: u64 = 16;
    const STORM: Duration = Duration::from_secs(20);
    // However often workers die, each is replaced within 200 ms.
    let policy = RestartPolicy::default().max_delay(Duration::from_millis(200));
    // Counted once each event's default action has run (the pool is updated).
    let exits = Arc::new(AtomicUsize::new(0));
    let changed = Arc::new(tokio::sync::Notify::new());
    let (counter, on_exit, on_add) = (exits.clone(), changed.clone(), changed.clone());
    let builder = primary(Mode::Echo)
        .restart_policy(policy)
        .after::<WorkerExit>(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            on_exit.notify_one();
        })
        .after::<AddWorker>(move |_| on_add.notify_one());
    let (primary, _events, workers) = launch::<WORKERS>(builder).await;
    for worker in &workers {
        let square: u64 = worker
            .request(&json!({"type": "square", "n": 3}))
            .await
            .expect("warm up");
        assert_eq!(square, 9);
    }
    let (fds, rss) = (open_fds(), rss_kib());

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(primary.clone(), c * 100_000_000, stop.clone())))
        .collect();
    let mut rng = Rng::new();
    let mut killed = HashSet::new();
    let (mut peak_fds, mut peak_rss) = (fds, rss);
    let started = Instant::now();
    let mut last_kill = started;
    while started.elapsed() < STORM {
        tokio::time::sleep(Duration::from_millis(rng.within(50..=200))).await;
        let live: Vec<u32> = primary
            .workers()
            .iter()
            .map(WorkerHandle::pid)
            .filter(|pid| !killed.contains(pid))
            .collect();
        if live.is_empty() {
            continue;
        }
        let pid = live[rng.within(0..=live.len() as u64 - 1) as usize];
        // Our own child, not reaped yet (it has not been reported as exited).
        let target = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(target, rustix::process::Signal::KILL).expect("SIGKILL");
        killed.insert(pid);
        last_kill = Instant::now();
        peak_fds = peak_fds.max(open_fds());
        peak_rss = peak_rss.max(rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Outcomes::default();
    for client in clients {
        let seen = tokio::time::timeout(tests_integration::DEADLINE, client)
            .await
            .expect("a client did not stop in time")
            .expect("client");
        outcomes.answered += seen.answered;
        outcomes.gone += seen.gone;
        outcomes.wrong.extend(seen.wrong);
    }
    let recovery = async {
        while exits.load(Ordering::Relaxed) < killed.len() || primary.workers().len() < WORKERS {
            changed.notified().await;
        }
    };
    if tokio::time::timeout(tests_integration::DEADLINE, recovery)
        .await
        .is_err()
    {
        panic!(
            "the pool did not recover in time: {} of {} kills reported, {} workers",
            exits.load(Ordering::Relaxed),
            killed.len(),
            primary.workers().len()
        );
    }
    let recovered = last_kill.elapsed();
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    eprintln!(
        "chaos: {WORKERS} workers, {CLIENTS} clients, {} SIGKILLs in {STORM:?}: {} answered, \
         {} gone, {} wrong; pool back to {WORKERS} {recovered:?} after the last kill; \
         fds {fds} -> peak {peak_fds} -> {fds_after}; RSS {rss} -> peak {peak_rss} -> {rss_after} KiB",
        killed.len(),
        outcomes.answered,
        outcomes.gone,
        outcomes.wrong.len(),
    );
    assert!(
        outcomes.wrong.is_empty(),
        "wrong outcomes: {:?}",
        outcomes.wrong
    );
    assert!(outcomes.answered > 1000, "too few requests answered");
    assert!(outcomes.gone > 0, "no request was in flight at a kill");
    assert_eq!(primary.workers().len(), WORKERS);
    assert_eq!(zombies(), 0, "unreaped children");
    assert!(fds_after <= fds + 8, "fds grew from {fds} to {fds_after}");
    assert!(
        rss_after <= rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
    shut_down(&primary).await;
    assert_eq!(zombies(), 0, "unreaped children after shutdown");
}
