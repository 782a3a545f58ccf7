//! The original README's HTTP example, as it was meant to work: one worker
//! per CPU, all serving http://127.0.0.1:3000 through one shared socket, each
//! response naming the worker that answered. Ctrl-C or SIGTERM shuts it down
//! gracefully: workers stop accepting, finish their requests, then exit.
//!
//! ```text
//! cargo run --release --example http_server [WORKERS] [ADDRESS]
//! curl http://127.0.0.1:3000/     # again and again: the workers take turns
//! ```

use axum::Router;
use axum::routing::get;
use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, WorkerExit, WorkerListening};
use isotropic_cluster::worker::ClusterWorker;
use tokio::signal::unix::{SignalKind, signal};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result {
    let mut args = std::env::args().skip(1);
    let workers = args.next().and_then(|n| n.parse().ok());
    let address = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    if isotropic_cluster::is_worker() {
        return worker(&address).await;
    }
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    primary(workers).await
}

async fn primary(workers: usize) -> Result {
    let primary = ClusterPrimary::builder()
        .on::<WorkerListening>(|event| {
            println!(
                "Worker {} is listening on http://{}/",
                event.worker.id(),
                event.address
            );
        })
        .on::<WorkerExit>(|event| {
            if event.context().is_active() {
                println!(
                    "Worker {} exited ({:?}); replacing it",
                    event.worker.id(),
                    event.code()
                );
            }
        })
        .start()
        .await?;
    println!("Starting {workers} workers");
    primary.fork(workers).await?;

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    println!("Shutting down gracefully");
    primary.shut_down().await?;
    println!("All workers have exited");
    Ok(())
}

async fn worker(address: &str) -> Result {
    let worker = ClusterWorker::builder().start().await?;
    let listener = worker
        .listen(address)
        .await?
        .into_tcp()
        .ok_or("not a TCP address")?;
    let id = worker.id();
    let app = Router::new().route(
        "/",
        get(move || async move { format!("Hello from worker {id}\n") }),
    );
    let closing = worker.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { closing.closing().await })
        .await?;
    worker.closed().await;
    Ok(())
}
