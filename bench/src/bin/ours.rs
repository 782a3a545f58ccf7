//! Our library doing each benchmark job. The same program is the primary and
//! (re-executed) its workers: `ours METRIC COUNT`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{
    Echo, LARGE_BYTES, Result, SMALL_BYTES, Small, Typed, large_payload, per, rate, report, rss_mib,
};
use bytes::Bytes;
use isotropic_cluster::primary::{
    ClusterPrimary, Destination, PrimaryContext, PrimaryEvent, RestartPolicy, WorkerBytes,
    WorkerHandle, WorkerMessage,
};
use isotropic_cluster::worker::{ClusterWorker, PrimaryBytes, PrimaryMessage, WorkerBuilder};
use isotropic_cluster::{
    Codec, EventStream, HandleRequests, SendError, Subscribe, Topic, WorkerId,
};
use tokio::sync::Notify;

fn main() -> Result {
    bench::run(
        |metric, count| async move { run_worker(&metric, count).await },
        |metric, count| async move { run_primary(&metric, count).await },
    )
}

// ===== worker side =====

async fn run_worker(metric: &str, count: u64) -> Result {
    let builder = ClusterWorker::builder();
    let builder = match metric {
        "pingpong" => builder.on::<PrimaryMessage>(|event| {
            if let Ok(n) = event.message.decode::<u64>() {
                let _ = event.context().try_send(&n);
            }
        }),
        "request" | "requests" => builder.handle("echo", |echo: Echo| Ok::<_, String>(echo.n)),
        "request-bytes" => builder.handle_bytes("echo", |body: Bytes| Ok::<_, String>(body)),
        "down" | "broadcast" => count_then_done::<Small>(builder, count),
        "large" => count_then_done::<String>(builder, count),
        "typed-json" | "typed-msgpack" => {
            let mut seen = 0;
            builder.route::<Typed>("tick", move |event, _| {
                seen += 1;
                if seen == count {
                    let _ = event.context().try_send("done");
                }
            })
        }
        "bytes-down" | "bytes-large" | "bytes-broadcast" => {
            let mut seen = 0;
            builder.on::<PrimaryBytes>(move |event| {
                seen += 1;
                if seen == count {
                    let _ = event.context().try_send("done");
                }
            })
        }
        "bytes-16mib" => builder.on::<PrimaryBytes>(|event| {
            // Echoed as it came: lent from the primary's segment, so sent
            // back as `returned` (not copied).
            let bytes = event.bytes.clone();
            let _ = event.context().try_send_bytes(bytes);
        }),
        "bytes-up" => builder.on::<PrimaryMessage>(move |event| {
            let Some(worker) = event.context().handle() else {
                return;
            };
            tokio::spawn(async move {
                let payload = Bytes::from(vec![b'x'; SMALL_BYTES]);
                for _ in 0..count {
                    if let Err(SendError::Full { .. }) = worker.try_send_bytes(payload.clone()) {
                        let _ = worker.send_bytes(payload.clone()).await;
                    }
                }
            });
        }),
        "up" => builder.on::<PrimaryMessage>(move |event| {
            let Some(worker) = event.context().handle() else {
                return;
            };
            tokio::spawn(async move {
                for seq in 0..count {
                    send_waiting(&worker, &Small::new(seq)).await;
                }
            });
        }),
        _ => builder,
    };
    let worker = builder.start().await?;
    worker.closed().await;
    Ok(())
}

/// Counts messages that decode as `T`, and says "done" after `count`.
fn count_then_done<T: serde::de::DeserializeOwned>(
    builder: WorkerBuilder,
    count: u64,
) -> WorkerBuilder {
    let mut seen = 0;
    builder.on::<PrimaryMessage>(move |event| {
        if event.message.decode::<T>().is_ok() {
            seen += 1;
            if seen == count {
                let _ = event.context().try_send("done");
            }
        }
    })
}

/// Queues without waiting while there is room; waits when the queue is full.
async fn send_waiting(worker: &ClusterWorker, message: &Small) {
    if let Err(SendError::Full { .. }) = worker.try_send(message) {
        let _ = worker.send(message).await;
    }
}

// ===== primary side =====

async fn run_primary(metric: &str, count: u64) -> Result {
    let value = match metric {
        "spawn" => spawn(count).await?,
        "pingpong" => pingpong(count).await?,
        "request" => request(count).await?,
        "request-bytes" => request_bytes(count).await?,
        "node-pingpong" => node_pingpong(count).await?,
        "node-down" => node_down(count).await?,
        "requests" => requests(count).await?,
        "down" => down(count).await?,
        "typed-json" | "typed-msgpack" => typed(metric, count).await?,
        "up" => up(count).await?,
        "large" => large(count).await?,
        "broadcast" => broadcast(count).await?,
        "bytes-down" => bytes_down(count, SMALL_BYTES, 1).await?,
        "bytes-large" => bytes_down(count, LARGE_BYTES, 1).await? * LARGE_BYTES as f64 / 1e6,
        "bytes-broadcast" => bytes_down(count, SMALL_BYTES, 4).await? * 4.0,
        "bytes-up" => bytes_up(count).await?,
        "bytes-16mib" => bytes_round_trip(count).await?,
        "restart" => restart(count).await?,
        "shutdown" => shutdown(count).await?,
        "rss-primary" | "rss-worker" => rss(metric).await?,
        other => return Err(format!("unknown metric {other}").into()),
    };
    report(value);
    Ok(())
}

/// A primary whose workers run `metric` with `count`, and its event stream.
async fn cluster(
    metric: &str,
    count: u64,
    workers: usize,
) -> Result<(ClusterPrimary, EventStream<PrimaryEvent>, Vec<WorkerHandle>)> {
    let codec = match metric {
        "typed-msgpack" => Codec::MessagePack,
        _ => Codec::Json,
    };
    let primary = ClusterPrimary::builder()
        .args([metric.to_owned(), count.to_string()])
        .codec(codec)
        .queue_capacity(4096)
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(workers).await?;
    let ready = ready(&mut events, workers).await?;
    Ok((primary, events, ready))
}

async fn ready(events: &mut EventStream<PrimaryEvent>, n: usize) -> Result<Vec<WorkerHandle>> {
    let mut workers = Vec::new();
    while workers.len() < n {
        match events.next().await {
            Some(PrimaryEvent::AddWorker(add)) => workers.push(add.worker),
            Some(_) => {}
            None => return Err("the primary ended".into()),
        }
    }
    Ok(workers)
}

/// Waits for `n` "done" messages.
async fn done(events: &mut EventStream<PrimaryEvent>, n: usize) -> Result {
    let mut seen = 0;
    while seen < n {
        match events.next().await {
            Some(PrimaryEvent::WorkerMessage(m))
                if m.message.decode::<String>().is_ok_and(|s| s == "done") =>
            {
                seen += 1
            }
            Some(_) => {}
            None => return Err("the primary ended".into()),
        }
    }
    Ok(())
}

/// Milliseconds per worker, from `fork(n)` to all ready.
async fn spawn(n: u64) -> Result<f64> {
    let primary = ClusterPrimary::builder()
        .args(["idle", "0"])
        .start()
        .await?;
    let mut events = primary.events();
    let started = Instant::now();
    primary.fork(n as usize).await?;
    ready(&mut events, n as usize).await?;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(per(elapsed, n, Duration::from_millis(1)))
}

/// Microseconds per round trip, the next ping sent from the handler of the pong.
async fn pingpong(n: u64) -> Result<f64> {
    let (primary, _, workers) = cluster("pingpong", n, 1).await?;
    ping(primary, &workers[0], n).await
}

/// Plays `n` rounds of ping-pong with `worker`, then shuts the primary down.
async fn ping(primary: ClusterPrimary, worker: &WorkerHandle, n: u64) -> Result<f64> {
    let finished = Arc::new(Notify::new());
    let notify = finished.clone();
    primary.on::<WorkerMessage>(move |event| {
        if let Ok(pong) = event.message.decode::<u64>() {
            if pong + 1 < n {
                let worker = event.worker.clone();
                let _ = event.context().try_send(&worker, &(pong + 1));
            } else {
                notify.notify_one();
            }
        }
    });
    let started = Instant::now();
    worker.send(&0_u64).await?;
    finished.notified().await;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(per(elapsed, n, Duration::from_micros(1)))
}

/// A primary of plain Node.js workers (`bench/node/worker.js`) over Node's
/// own IPC, and the ready workers.
async fn node_cluster(
    metric: &str,
    count: u64,
) -> Result<(ClusterPrimary, EventStream<PrimaryEvent>, Vec<WorkerHandle>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/worker.js");
    let primary = ClusterPrimary::builder()
        .program("node")
        .args([script.to_owned(), metric.to_owned(), count.to_string()])
        .channel(isotropic_cluster::primary::WorkerChannel::Node)
        .queue_capacity(4096)
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(1).await?;
    let workers = ready(&mut events, 1).await?;
    Ok((primary, events, workers))
}

/// Microseconds per round trip with a Node.js worker.
async fn node_pingpong(n: u64) -> Result<f64> {
    let (primary, _, workers) = node_cluster("pingpong", n).await?;
    ping(primary, &workers[0], n).await
}

/// Small messages per second to a Node.js worker (counted by it).
async fn node_down(n: u64) -> Result<f64> {
    let (primary, events, workers) = node_cluster("down", n).await?;
    flood(primary, events, &workers[0], n, |i| Json(Small::new(i))).await
}

/// Microseconds per request/response round trip, one at a time.
async fn request(n: u64) -> Result<f64> {
    let (primary, _, workers) = cluster("request", n, 1).await?;
    let started = Instant::now();
    for i in 0..n {
        let _: u64 = workers[0].request(&Echo::new(i)).await?;
    }
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(per(elapsed, n, Duration::from_micros(1)))
}

/// Microseconds per bytes request/response round trip of
/// [`SMALL_BYTES`] each way, one at a time.
async fn request_bytes(n: u64) -> Result<f64> {
    let (primary, _, workers) = cluster("request-bytes", n, 1).await?;
    let body = Bytes::from(vec![b'r'; SMALL_BYTES]);
    let started = Instant::now();
    for _ in 0..n {
        workers[0].request_bytes("echo", body.clone()).await?;
    }
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(per(elapsed, n, Duration::from_micros(1)))
}

/// Requests per second, 4 workers, up to 256 in flight (pipelined).
async fn requests(n: u64) -> Result<f64> {
    use futures_util::StreamExt as _;
    let (primary, _, _) = cluster("requests", n, 4).await?;
    let started = Instant::now();
    let mut replies = futures_util::stream::iter(0..n)
        .map(|i| {
            let primary = &primary;
            async move { primary.dispatch::<u64, _>("", &Echo::new(i)).await }
        })
        .buffer_unordered(256);
    while let Some(reply) = replies.next().await {
        reply?;
    }
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, n))
}

/// What [`send_all`] sends: a serde value, or bytes.
trait Outgoing {
    fn try_send(
        &self,
        primary: &ClusterPrimary,
        to: Destination,
    ) -> std::result::Result<(), SendError>;
    async fn send(
        &self,
        primary: &ClusterPrimary,
        to: WorkerId,
    ) -> std::result::Result<(), SendError>;
}

/// A serde value, in the primary's codec.
struct Json<M>(M);

impl<M: serde::Serialize> Outgoing for Json<M> {
    fn try_send(
        &self,
        primary: &ClusterPrimary,
        to: Destination,
    ) -> std::result::Result<(), SendError> {
        primary.try_send(to, &self.0)
    }
    async fn send(
        &self,
        primary: &ClusterPrimary,
        to: WorkerId,
    ) -> std::result::Result<(), SendError> {
        primary.send(to, &self.0).await
    }
}

impl Outgoing for Bytes {
    fn try_send(
        &self,
        primary: &ClusterPrimary,
        to: Destination,
    ) -> std::result::Result<(), SendError> {
        primary.try_send_bytes(to, self.clone())
    }
    async fn send(
        &self,
        primary: &ClusterPrimary,
        to: WorkerId,
    ) -> std::result::Result<(), SendError> {
        primary.send_bytes(to, self.clone()).await
    }
}

/// Sends `n` messages made by `make` to `to`: queued without waiting while
/// there is room; for a destination whose queue is full, waiting for room and
/// for the write.
async fn send_all<M: Outgoing>(
    primary: &ClusterPrimary,
    to: Destination,
    n: u64,
    make: impl Fn(u64) -> M,
) -> Result {
    for i in 0..n {
        let message = make(i);
        let full = match message.try_send(primary, to.clone()) {
            Ok(()) => continue,
            Err(SendError::Partial { failures, .. }) => failures,
            Err(error) => vec![error],
        };
        for error in full {
            match error {
                SendError::Full {
                    worker_id: Some(id),
                } => message.send(primary, id).await?,
                other => return Err(other.into()),
            }
        }
    }
    Ok(())
}

/// Small messages per second, primary to worker (counted when the worker
/// has decoded all of them).
async fn down(n: u64) -> Result<f64> {
    let (primary, events, workers) = cluster("down", n, 1).await?;
    flood(primary, events, &workers[0], n, |i| Json(Small::new(i))).await
}

/// Typed messages per second, primary to worker, in `metric`'s codec
/// (counted when the worker has routed all of them).
async fn typed(metric: &str, n: u64) -> Result<f64> {
    let (primary, events, workers) = cluster(metric, n, 1).await?;
    flood(primary, events, &workers[0], n, |i| Json(Typed::new(i))).await
}

/// Sends `n` messages made by `make` to `worker` and waits for its "done",
/// then shuts the primary down.
async fn flood<M: Outgoing>(
    primary: ClusterPrimary,
    mut events: EventStream<PrimaryEvent>,
    worker: &WorkerHandle,
    n: u64,
    make: impl Fn(u64) -> M,
) -> Result<f64> {
    let started = Instant::now();
    send_all(&primary, Destination::from(worker), n, make).await?;
    done(&mut events, 1).await?;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, n))
}

/// Small messages per second, worker to primary (each decoded by the primary).
async fn up(n: u64) -> Result<f64> {
    count_up::<WorkerMessage>("up", n, |event| event.message.decode::<Small>().is_ok()).await
}

/// Messages per second, worker to primary: the workers of `metric` send
/// `n` once told to go; the primary counts the events `E` that `counts`.
async fn count_up<E: Topic<Host = PrimaryContext>>(
    metric: &str,
    n: u64,
    counts: impl Fn(&E) -> bool + Send + 'static,
) -> Result<f64> {
    let (primary, _, workers) = cluster(metric, n, 1).await?;
    let finished = Arc::new(Notify::new());
    let notify = finished.clone();
    let mut seen = 0;
    primary.on::<E>(move |event| {
        if counts(event) {
            seen += 1;
            if seen == n {
                notify.notify_one();
            }
        }
    });
    let started = Instant::now();
    workers[0].send("go").await?;
    finished.notified().await;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, n))
}

/// Megabytes per second of 64 KiB messages, primary to worker.
async fn large(n: u64) -> Result<f64> {
    let (primary, mut events, workers) = cluster("large", n, 1).await?;
    let payload = large_payload();
    let started = Instant::now();
    send_all(&primary, Destination::from(&workers[0]), n, |_| {
        Json(payload.as_str())
    })
    .await?;
    done(&mut events, 1).await?;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, n) * payload.len() as f64 / 1e6)
}

/// Deliveries per second of a broadcast to 4 workers.
async fn broadcast(n: u64) -> Result<f64> {
    let (primary, mut events, _workers) = cluster("broadcast", n, 4).await?;
    let started = Instant::now();
    send_all(&primary, Destination::Ready, n, |i| Json(Small::new(i))).await?;
    done(&mut events, 4).await?;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, 4 * n))
}

/// Bytes messages per second of `size` bytes, primary to each of `workers`
/// (a broadcast when more than one); one payload shared by every send.
async fn bytes_down(n: u64, size: usize, workers: usize) -> Result<f64> {
    let metric = if workers > 1 {
        "bytes-broadcast"
    } else {
        "bytes-down"
    };
    let (primary, mut events, ready) = cluster(metric, n, workers).await?;
    let to = if workers > 1 {
        Destination::Ready
    } else {
        Destination::from(&ready[0])
    };
    let payload = Bytes::from(vec![b'y'; size]);
    let started = Instant::now();
    send_all(&primary, to, n, |_| payload.clone()).await?;
    done(&mut events, workers).await?;
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(rate(elapsed, n))
}

/// Milliseconds per round trip of a 16 MiB bytes message (lent from one of
/// the worker's shared segments, echoed back as `returned`); the next sent
/// once the echo is back, its last byte read.
async fn bytes_round_trip(n: u64) -> Result<f64> {
    const SIZE: usize = 16 << 20;
    let (primary, mut events, ready) = cluster("bytes-16mib", n, 1).await?;
    let payload = Bytes::from(vec![b'z'; SIZE]);
    let started = Instant::now();
    for _ in 0..n {
        primary.send_bytes(&ready[0], payload.clone()).await?;
        loop {
            match events.next().await {
                Some(PrimaryEvent::WorkerBytes(echo)) if echo.bytes.last() == Some(&b'z') => break,
                Some(PrimaryEvent::WorkerBytes(_)) => return Err("a wrong echo".into()),
                Some(_) => {}
                None => return Err("the primary ended".into()),
            }
        }
    }
    let elapsed = started.elapsed();
    primary.shut_down().await?;
    Ok(per(elapsed, n, Duration::from_millis(1)))
}

/// Bytes messages of 64 B per second, worker to primary.
async fn bytes_up(n: u64) -> Result<f64> {
    count_up::<WorkerBytes>("bytes-up", n, |event| event.bytes.len() == SMALL_BYTES).await
}

/// Milliseconds from SIGKILL of a worker to its replacement being ready.
async fn restart(n: u64) -> Result<f64> {
    let primary = ClusterPrimary::builder()
        .args(["idle", "0"])
        // Measure the mechanism: no backoff for the short-lived workers here.
        .restart_policy(RestartPolicy::default().stable_after(Duration::ZERO))
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(1).await?;
    let mut worker = ready(&mut events, 1).await?.remove(0);
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        kill(worker.pid());
        worker = ready(&mut events, 1).await?.remove(0);
        total += started.elapsed();
    }
    primary.shut_down().await?;
    Ok(per(total, n, Duration::from_millis(1)))
}

/// SIGKILL to a child of ours that has not been reaped yet.
fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Milliseconds from `shut_down()` to every one of `n` ready workers exited.
async fn shutdown(n: u64) -> Result<f64> {
    let (primary, _, _) = cluster("idle", 0, n as usize).await?;
    let started = Instant::now();
    primary.shut_down().await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// Resident memory in MiB of the primary with one worker, or of that worker.
async fn rss(metric: &str) -> Result<f64> {
    let (primary, _, workers) = cluster("idle", 0, 1).await?;
    let value = if metric == "rss-primary" {
        rss_mib(std::process::id())
    } else {
        rss_mib(workers[0].pid())
    };
    primary.shut_down().await?;
    Ok(value)
}
