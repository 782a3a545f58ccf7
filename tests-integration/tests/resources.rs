//! What workers use, with real processes: the memory limit (a worker that
//! allocates past it is recycled, one under it is not, a handler may keep
//! it) and the figures snapshot against `/proc`.

use std::time::Duration;

use isotropic_cluster::Subscribe as _;
use isotropic_cluster::primary::{
    ClusterPrimary, MemorySource, PrimaryBuilder, PrimaryEvent, WorkerFigures, WorkerHandle,
    WorkerOverMemory, WorkerPhase,
};
use serde_json::{Value, json};
use tests_integration::{DEADLINE, Mode, alive, launch, message_of, primary, shut_down, wait_for};
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;
/// The limit: well above an idle fixture worker (a few MiB), well below
/// what the tests make one allocate.
const LIMIT: u64 = 64 * MIB;
const SAMPLES: Duration = Duration::from_millis(100);

fn limited() -> PrimaryBuilder {
    primary(Mode::Echo)
        .max_memory(LIMIT)
        .sample_interval(SAMPLES)
}

/// Asks `worker` to allocate and touch `mib` MiB; waits until it has.
async fn allocate(
    worker: &WorkerHandle,
    events: &mut isotropic_cluster::EventStream<PrimaryEvent>,
    mib: u64,
) {
    worker
        .send(&json!({"type": "allocate", "mib": mib}))
        .await
        .expect("sent");
    let id = worker.id();
    wait_for(events, |e| {
        message_of(e).filter(|(from, m)| *from == id && m["allocated"] == json!(mib))
    })
    .await;
}

/// Waits until `pick` accepts worker `id`'s figures; returns them.
async fn figures_until(
    primary: &ClusterPrimary,
    id: u64,
    mut pick: impl FnMut(&WorkerFigures) -> bool,
) -> WorkerFigures {
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let figures = primary.figures().await;
            if let Some(found) = figures.into_iter().find(|f| f.id.get() == id && pick(f)) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    found.await.expect("the figures in time")
}

#[tokio::test]
async fn a_worker_that_allocates_past_the_limit_is_recycled_and_one_under_it_is_not() {
    let (over, mut raised) = mpsc::unbounded_channel();
    let builder = limited().on::<WorkerOverMemory>(move |event| {
        let _ = over.send((event.worker.id().get(), event.memory, event.limit));
    });
    let (primary, mut events, [first, second]) = launch::<2>(builder).await;
    allocate(&second, &mut events, 16).await;
    // (It may be recycled before it says it has allocated it all.)
    let lifecycle = primary.events();
    allocate(&first, &mut events, 128).await;
    let mut events = lifecycle;
    let (id, memory, limit) = tokio::time::timeout(DEADLINE, raised.recv())
        .await
        .expect("in time")
        .expect("raised");
    assert_eq!((id, limit), (1, LIMIT));
    assert!(memory > LIMIT, "{memory}");
    // Drained: its replacement joins the pool, in its slot, before it
    // leaves the pool; then it is asked to leave, and not replaced again.
    let replacement = wait_for(&mut events, |e| match e {
        PrimaryEvent::AddWorker(add) => Some(add.worker),
        PrimaryEvent::RemoveWorker(remove) => {
            panic!("worker {} left the pool first", remove.worker.id())
        }
        _ => None,
    })
    .await;
    assert_eq!(replacement.slot(), first.slot());
    let exit = wait_for(&mut events, tests_integration::exit_of).await;
    assert_eq!(
        (exit.worker.id().get(), exit.voluntary, exit.replaced),
        (1, true, false)
    );
    let figures = figures_until(&primary, replacement.id().get(), |_| true).await;
    assert_eq!(figures.restarts, 1);
    // The other was sampled with its 16 MiB, under the limit: not raised.
    figures_until(&primary, 2, |f| {
        f.usage.is_some_and(|u| u.memory > 16 * MIB)
    })
    .await;
    shut_down(&primary).await;
    assert!(raised.try_recv().is_err(), "raised once, for worker 1 only");
}

#[tokio::test]
async fn preventing_the_event_keeps_the_worker() {
    let (over, mut raised) = mpsc::unbounded_channel();
    let builder = limited().before::<WorkerOverMemory>(move |event| {
        let _ = over.send(event.worker.id().get());
        event.prevent();
    });
    let (primary, mut events, [worker]) = launch::<1>(builder).await;
    allocate(&worker, &mut events, 128).await;
    let raised_for = tokio::time::timeout(DEADLINE, raised.recv()).await;
    assert_eq!(raised_for.expect("in time"), Some(1));
    // Sampled over the limit again and again: kept, and not raised again.
    let later = figures_until(&primary, 1, |f| f.usage.is_some())
        .await
        .uptime
        + 10 * SAMPLES;
    let figures = figures_until(&primary, 1, |f| f.uptime > later).await;
    assert_eq!(figures.phase, WorkerPhase::Ready);
    assert!(figures.usage.is_some_and(|u| u.memory > LIMIT));
    assert_eq!(primary.workers(), [worker]);
    assert!(raised.try_recv().is_err());
    shut_down(&primary).await;
}

/// User and system CPU time of `pid` (`/proc/PID/stat`, fields 14 and 15),
/// and its `VmRSS`.
fn from_proc(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<u64> = stat[stat.rfind(')').expect(")") + 2..]
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // (Fields counted from 3.)
    let ticks = fields[14 - 3] + fields[15 - 3];
    let tick = Duration::from_secs(1) / rustix::param::clock_ticks_per_second() as u32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (tick * ticks as u32, rss_kib * 1024)
}

/// The bytes of a message frame carrying `value` (docs/protocol.md: a
/// 4-byte length, the kind, the JSON).
fn frame_bytes(value: &Value) -> u64 {
    5 + serde_json::to_vec(value).expect("JSON").len() as u64
}

#[tokio::test]
async fn the_figures_snapshot_matches_proc_and_counts_every_message() {
    let (primary, mut events, [worker]) = launch::<1>(limited()).await;
    let pid = worker.pid();
    worker
        .send(&json!({"type": "spin", "ms": 300}))
        .await
        .expect("sent");
    wait_for(&mut events, |e| {
        message_of(e).filter(|(_, m)| m["spun"] == 300)
    })
    .await;
    allocate(&worker, &mut events, 32).await;

    // Messages and bytes each way, exactly.
    let before = figures_until(&primary, 1, |_| true).await;
    let sent: Vec<Value> = (0..10)
        .map(|n| json!({"n": n, "text": "x".repeat(n * 100)}))
        .collect();
    for message in &sent {
        worker.send(message).await.expect("sent");
    }
    for message in &sent {
        let echo = wait_for(&mut events, |e| message_of(e).map(|(_, m)| m)).await;
        assert_eq!(echo, json!({"echo": message}));
    }
    let after = figures_until(&primary, 1, |_| true).await;
    assert_eq!(after.messages_sent - before.messages_sent, 10);
    assert_eq!(
        after.bytes_sent - before.bytes_sent,
        sent.iter().map(frame_bytes).sum::<u64>()
    );
    assert_eq!(after.messages_received - before.messages_received, 10);
    assert_eq!(
        after.bytes_received - before.bytes_received,
        sent.iter()
            .map(|m| frame_bytes(&json!({"echo": m})))
            .sum::<u64>()
    );

    // A request in flight.
    let asking = worker.clone();
    let request = tokio::spawn(async move {
        asking
            .request::<u64, _>(&json!({"type": "sleep", "ms": 500}))
            .await
    });
    figures_until(&primary, 1, |f| f.in_flight == 1).await;
    assert_eq!(request.await.expect("no panic").expect("answered"), 1);

    // CPU time and memory: a sample taken after the work, against /proc.
    let figures = figures_until(&primary, 1, |f| {
        f.usage
            .is_some_and(|u| u.memory > 32 * MIB && u.age < SAMPLES)
    })
    .await;
    let (cpu, rss) = from_proc(pid);
    let usage = figures.usage.expect("sampled");
    assert!(alive(figures.pid) && figures.pid == pid);
    assert_eq!(
        (figures.slot, figures.restarts, figures.in_flight),
        (0, 0, 0)
    );
    assert_eq!(figures.phase, WorkerPhase::Ready);
    println!(
        "figures: cpu {:?} (proc {cpu:?}), memory {} KiB (proc VmRSS {} KiB), {:?}",
        usage.cpu_time,
        usage.memory / 1024,
        rss / 1024,
        usage.memory_source
    );
    // (300 ms of spinning, in wall time: less CPU time on a busy machine.)
    assert!(usage.cpu_time > Duration::ZERO, "{usage:?}");
    assert!(
        usage.cpu_time <= cpu && cpu - usage.cpu_time <= Duration::from_millis(200),
        "{usage:?} against {cpu:?}"
    );
    match usage.memory_source {
        MemorySource::ProcessTree => assert!(
            usage.memory.abs_diff(rss) <= 4 * MIB,
            "{usage:?} against VmRSS {rss}"
        ),
        // Page cache and kernel memory too.
        _ => assert!(usage.memory >= rss - 4 * MIB, "{usage:?} against {rss}"),
    }
    shut_down(&primary).await;
}
