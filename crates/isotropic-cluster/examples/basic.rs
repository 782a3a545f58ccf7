//! The original README's "Basic Usage": a primary greets each worker as it
//! becomes ready, workers answer, and the primary shuts down once all four
//! have answered.
//!
//! ```text
//! cargo run --example basic
//! ```

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, WorkerMessage, WorkerReady};
use isotropic_cluster::worker::{ClusterWorker, PrimaryDisconnect, PrimaryMessage};
use serde::{Deserialize, Serialize};

const WORKERS: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ToWorker {
    Greet { name: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ToPrimary {
    Response { content: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), isotropic_cluster::Error> {
    if isotropic_cluster::is_worker() {
        worker().await
    } else {
        primary().await
    }
}

async fn primary() -> Result<(), isotropic_cluster::Error> {
    let mut answered = 0;
    let primary = ClusterPrimary::builder()
        .on::<WorkerMessage>(move |event| {
            println!(
                "Received from worker {}: {}",
                event.worker.id(),
                event.message
            );
            answered += 1;
            if answered == WORKERS {
                event.context().shut_down();
            }
        })
        .on::<WorkerReady>(|event| {
            println!("Worker {} is ready to handle requests", event.worker.id());
            let greet = ToWorker::Greet {
                name: "User".into(),
            };
            let worker = event.worker.clone();
            if let Err(error) = event.context().try_send(&worker, &greet) {
                eprintln!("cannot greet worker {}: {error}", worker.id());
            }
        })
        .start()
        .await?;
    primary.fork(WORKERS).await?;
    primary.shut_down_complete().await?;
    println!("All {WORKERS} workers answered and exited.");
    Ok(())
}

async fn worker() -> Result<(), isotropic_cluster::Error> {
    let worker = ClusterWorker::builder()
        .on::<PrimaryMessage>(|event| {
            if let Ok(ToWorker::Greet { name }) = event.message.decode() {
                println!("Hello, {name}!");
                let content = format!("Greeted {name}");
                let _ = event.context().try_send(&ToPrimary::Response { content });
            }
        })
        .on::<PrimaryDisconnect>(|_| println!("Primary disconnected, cleaning up..."))
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}
