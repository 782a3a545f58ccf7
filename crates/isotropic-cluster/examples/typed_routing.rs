//! The original README's "Type-Based Message Routing": the primary routes
//! `log`, `metric` and `requestHelp` messages to typed handlers; a worker's
//! `helpResponse` route answers. Each worker says it is done, and the primary
//! shuts down when all are.
//!
//! ```text
//! cargo run --example typed_routing
//! ```

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, WorkerMessageError};
use isotropic_cluster::worker::ClusterWorker;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WORKERS: usize = 2;

#[derive(Deserialize)]
struct Log {
    level: String,
    text: String,
}

#[derive(Deserialize)]
struct Metric {
    name: String,
    value: f64,
}

#[derive(Deserialize)]
struct RequestHelp {
    problem: String,
}

#[derive(Serialize, Deserialize)]
struct HelpResponse {
    #[serde(rename = "type")]
    kind: String,
    solution: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let mut done = 0;
    let primary = ClusterPrimary::builder()
        .route::<Log>("log", |event, log| {
            println!(
                "[Worker {} LOG] {}: {}",
                event.worker.id(),
                log.level,
                log.text
            );
        })
        .route::<Metric>("metric", |_, metric| {
            println!("METRIC: {} = {}", metric.name, metric.value)
        })
        .route::<RequestHelp>("requestHelp", |event, help| {
            println!(
                "Worker {} needs help with: {}",
                event.worker.id(),
                help.problem
            );
            let worker = event.worker.clone();
            let response = HelpResponse {
                kind: "helpResponse".into(),
                solution: format!("Solution for {}", help.problem),
            };
            let _ = event.context().try_send(&worker, &response);
        })
        .route::<serde_json::Value>("done", move |event, _| {
            done += 1;
            if done == WORKERS {
                event.context().shut_down();
            }
        })
        // A message whose payload does not fit its route is an event, not a crash.
        .on::<WorkerMessageError>(|event| {
            eprintln!("bad message from {}: {}", event.worker.id(), event.error)
        })
        .start()
        .await?;
    primary.fork(WORKERS).await?;
    primary.shut_down_complete().await?;
    println!("Every worker was helped.");
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let worker = ClusterWorker::builder()
        .route::<HelpResponse>("helpResponse", |event, help| {
            println!("Worker {} got: {}", event.context().id(), help.solution);
            let _ = event.context().try_send(&json!({"type": "done"}));
        })
        .start()
        .await?;
    worker
        .send(&json!({"type": "log", "level": "info", "text": "starting up"}))
        .await?;
    worker
        .send(&json!({"type": "metric", "name": "startup_ms", "value": 12.5}))
        .await?;
    worker
        .send(&json!({"type": "requestHelp", "problem": "a tricky bug"}))
        .await?;
    worker.closed().await;
    Ok(())
}
