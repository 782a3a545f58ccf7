//! The original README's "Custom Worker Initialization", fixed (its worker
//! never signalled ready): each worker connects to a (simulated) database
//! before it joins the pool, and closes the connection on destroy. Worker 3's
//! connection fails: it never becomes ready, and its replacement is delayed.
//!
//! ```text
//! cargo run --example custom_init
//! ```

use std::time::Duration;

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, WorkerExit, WorkerReady};
use isotropic_cluster::worker::{ClusterWorker, InitializeComplete};

/// A stand-in for a database connection.
struct Database {
    worker: u64,
}

impl Database {
    async fn connect(worker: u64) -> Result<Self, String> {
        tokio::time::sleep(Duration::from_millis(50)).await; // the "network"
        if worker == 3 {
            return Err("connection refused".into());
        }
        Ok(Self { worker })
    }

    async fn disconnect(self) {
        println!("Worker {} closing database connection", self.worker);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let mut ready = 0;
    let primary = ClusterPrimary::builder()
        .on::<WorkerReady>(move |event| {
            println!("Worker {} is ready (database connected)", event.worker.id());
            ready += 1;
            if ready == 3 {
                event.context().shut_down();
            }
        })
        .on::<WorkerExit>(|event| {
            if !event.voluntary {
                println!(
                    "Worker {} failed to start (exit code {:?})",
                    event.worker.id(),
                    event.code()
                );
            }
        })
        .start()
        .await?;
    primary.fork(3).await?;
    primary.shut_down_complete().await?;
    println!("Three workers were ready; all have exited.");
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let id = ClusterWorker::worker_id().map_or(0, |id| id.get());
    let (tx, rx) = tokio::sync::oneshot::channel::<Database>();
    let worker = ClusterWorker::builder()
        .initialize(move |_| async move {
            println!("Worker {id} connecting to database...");
            let db = Database::connect(id).await?;
            let _ = tx.send(db);
            Ok::<(), String>(())
        })
        .on::<InitializeComplete>(move |_| println!("Worker {id} database initialized"))
        .on_destroy(move || async move {
            if let Ok(db) = rx.await {
                db.disconnect().await;
            }
        })
        .start()
        .await;
    match worker {
        Ok(worker) => worker.closed().await,
        Err(error) => {
            eprintln!(
                "Worker {id} could not initialize: {}",
                std::error::Error::source(&error).map_or(error.to_string(), ToString::to_string)
            );
            std::process::exit(1);
        }
    }
    Ok(())
}
