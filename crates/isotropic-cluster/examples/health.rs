//! The original README's "Health Monitoring": the primary asks every ready
//! worker for its health a few times; workers answer with their memory and
//! uptime; a worker over the (demo) memory limit is asked to restart, and is
//! replaced.
//!
//! ```text
//! cargo run --example health
//! ```

use std::time::{Duration, Instant};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, Destination, WorkerExit, WorkerMessage};
use isotropic_cluster::worker::{ClusterWorker, PrimaryMessage};
use serde::{Deserialize, Serialize};

/// Workers whose resident memory is above this are restarted (low, so that
/// the demo restarts one: worker 2 pretends to use more).
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Monitor {
    HealthCheck,
    HealthStatus { rss_bytes: u64, uptime_ms: u64 },
    PrepareForRestart,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let primary = ClusterPrimary::builder()
        .on::<WorkerMessage>(|event| {
            if let Ok(Monitor::HealthStatus {
                rss_bytes,
                uptime_ms,
            }) = event.message.decode()
            {
                let id = event.worker.id();
                println!(
                    "worker {id}: {} KiB resident, up {uptime_ms} ms",
                    rss_bytes / 1024
                );
                if rss_bytes > MEMORY_LIMIT {
                    println!("worker {id} uses too much memory: asking it to restart");
                    let worker = event.worker.clone();
                    let _ = event
                        .context()
                        .try_send(&worker, &Monitor::PrepareForRestart);
                }
            }
        })
        .on::<WorkerExit>(|event| {
            if event.context().is_active() {
                println!("worker {} exited; a replacement starts", event.worker.id());
            }
        })
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(3).await?;
    for round in 1..=3 {
        // Wait until three workers are ready, then check them all.
        while primary.workers().len() < 3 {
            if events.next().await.is_none() {
                return Ok(());
            }
        }
        println!("-- health check {round}");
        if let Err(error) = primary
            .send(Destination::Ready, &Monitor::HealthCheck)
            .await
        {
            eprintln!("health check failed: {error}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // the check interval
    }
    primary.shut_down().await?;
    println!("Done.");
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let id = ClusterWorker::worker_id().map_or(0, |id| id.get());
    let worker = ClusterWorker::builder()
        .on::<PrimaryMessage>(move |event| match event.message.decode() {
            Ok(Monitor::HealthCheck) => {
                let pretend = if id == 2 { 2 * MEMORY_LIMIT } else { 0 };
                let status = Monitor::HealthStatus {
                    rss_bytes: resident_bytes() + pretend,
                    uptime_ms: started.elapsed().as_millis() as u64,
                };
                let _ = event.context().try_send(&status);
            }
            Ok(Monitor::PrepareForRestart) => event.context().destroy(Duration::from_secs(5)),
            _ => {}
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}

/// This process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
