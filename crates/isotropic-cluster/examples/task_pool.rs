//! A job queue over a pool of workers with `dispatch`: results, a job whose
//! handler fails (a typed remote error), and a worker killed mid-way whose
//! job is retried on another worker.
//!
//! ```text
//! cargo run --example task_pool
//! ```

use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent};
use isotropic_cluster::worker::ClusterWorker;
use isotropic_cluster::{HandleRequests, RequestError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "job")]
struct Job {
    id: u32,
    input: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    job: u32,
    output: u64,
    worker: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let primary = ClusterPrimary::builder().start().await?;
    let mut events = primary.events();
    primary.fork(3).await?;
    let mut ready = 0;
    while ready < 3 {
        if let Some(PrimaryEvent::AddWorker(_)) = events.next().await {
            ready += 1;
        }
    }
    let jobs = (1..=9).map(|id| Job {
        id,
        input: u64::from(id) * 10,
    });
    for job in jobs {
        match primary.dispatch::<Done, _>("jobs", &job).await {
            Ok(done) => println!(
                "job {} -> {} (worker {})",
                done.job, done.output, done.worker
            ),
            Err(RequestError::Remote { message, worker_id }) => {
                println!(
                    "job {} failed on worker {}: {message}",
                    job.id,
                    worker_id.map_or(0, |id| id.get())
                );
            }
            Err(error) => println!("job {} could not run: {error}", job.id),
        }
    }
    primary.shut_down().await?;
    println!("All jobs handled.");
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let id = ClusterWorker::worker_id().map_or(0, |id| id.get());
    let worker = ClusterWorker::builder()
        .handle_async("job", move |job: Job| async move {
            match job.id {
                // Job 4 crashes whichever worker takes it first: the primary
                // retries it on another worker.
                4 if id == 1 => std::process::exit(1),
                // Job 7 always fails: the error comes back, typed.
                7 => Err(format!("input {} is not allowed", job.input)),
                _ => Ok(Done {
                    job: job.id,
                    output: job.input * job.input,
                    worker: id,
                }),
            }
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}
