//! A program that is both a primary and its own workers (the default
//! program), for the end-to-end tests of re-execution and of orphans.
//!
//! `fixture-primary N [--delete-self] [--then-shut-down] [--silent]`: starts N
//! workers, prints `{"pids": [...], "args": [[...], ...]}` once all are ready
//! (each worker reports the arguments it was started with, and prints
//! `worker ID says hi` on its stdout), then either shuts down or waits to be
//! killed.
//!
//! `fixture-primary worker MODE N`: the same with N `fixture-worker MODE`
//! workers.
//!
//! `fixture-primary serve ADDRESS N`: N `fixture-worker serve ADDRESS`
//! workers; prints `listening ADDRESS` once all listen (or `error KIND`),
//! then shuts down on SIGTERM.

use std::io::Write;
use std::sync::{Arc, Mutex};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerMessage, WorkerStdio};
use isotropic_cluster::worker::ClusterWorker;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

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
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "serve") {
        return serve(&args[1..]).await;
    }
    let mut builder = ClusterPrimary::builder();
    if args.first().is_some_and(|a| a == "worker") && args.len() > 1 {
        let worker = std::env::current_exe()?.with_file_name("fixture-worker");
        builder = builder.program(worker).arg(&args[1]);
        args.drain(..2);
    }
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
    let primary = builder
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

async fn serve(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let address = args.first().cloned().unwrap_or_default();
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let mut terminate = signal(SignalKind::terminate())?;
    let worker = std::env::current_exe()?.with_file_name("fixture-worker");
    let primary = ClusterPrimary::builder()
        .program(worker)
        .args(["serve", &address])
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(count).await?;
    let mut listening = 0;
    while listening < count {
        match events.next().await {
            Some(PrimaryEvent::WorkerListening(l)) => {
                listening += 1;
                if listening == count {
                    println!("listening {}", l.address);
                }
            }
            Some(PrimaryEvent::WorkerListenError(e)) => {
                println!("error {:?}", e.error.kind);
                break;
            }
            Some(_) => {}
            None => return Err("the primary ended".into()),
        }
    }
    std::io::stdout().flush()?;
    terminate.recv().await;
    primary.shut_down().await?;
    Ok(())
}
