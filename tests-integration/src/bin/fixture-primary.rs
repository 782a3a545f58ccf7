//! A program that is both a primary and its own workers (the default
//! program), for the end-to-end tests of re-execution and of orphans.
//!
//! `fixture-primary N [--delete-self] [--then-shut-down] [--silent]`: starts N
//! workers, prints `{"pids": [...], "args": [[...], ...]}` once all are ready
//! (each worker reports the arguments it was started with, and prints
//! `worker ID says hi` on its stdout), then either shuts down or waits to be
//! killed.

use std::io::Write;
use std::sync::{Arc, Mutex};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerMessage, WorkerStdio};
use isotropic_cluster::worker::ClusterWorker;
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if isotropic_cluster::is_worker() {
        let worker = ClusterWorker::builder()
            .initialize(|worker| async move {
                println!("worker {} says hi", worker.id());
                let args: Vec<String> = std::env::args().skip(1).collect();
                worker.send(&json!({"args": args})).await
            })
            .start()
            .await?;
        worker.closed().await;
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1);
    if args.iter().any(|a| a == "--delete-self") {
        std::fs::remove_file(std::env::current_exe()?)?;
    }
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = reported.clone();
    let stdio = if args.iter().any(|a| a == "--silent") {
        WorkerStdio::Null
    } else {
        WorkerStdio::Inherit
    };
    let primary = ClusterPrimary::builder()
        .stdio(stdio)
        .on::<WorkerMessage>(move |event| {
            if let Ok(message) = event.message.decode::<Value>() {
                sink.lock().expect("lock").push(message["args"].clone());
            }
        })
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(count).await?;
    let mut pids = Vec::new();
    while pids.len() < count {
        match events.next().await {
            Some(PrimaryEvent::AddWorker(add)) => pids.push(add.worker.pid()),
            Some(_) => {}
            None => return Err("the primary ended".into()),
        }
    }
    let args = reported.lock().expect("lock").clone();
    println!("{}", json!({"pids": pids, "args": args}));
    std::io::stdout().flush()?;
    if args.iter().any(|a| a == "--then-shut-down")
        || std::env::args().any(|a| a == "--then-shut-down")
    {
        primary.shut_down().await?;
        println!("shut down");
        return Ok(());
    }
    std::future::pending::<()>().await;
    Ok(())
}
