//! A program that is both a primary and its own workers (the default
//! program), for the end-to-end tests of re-execution and of orphans.
//!
//! `fixture-primary N [FLAG…]` (flags: [`PrimaryFlag`]): starts N workers,
//! prints `{"pids": [...], "args": [[...], ...]}` once all are ready (each
//! worker reports the arguments it was started with, and prints
//! `worker ID says hi` on its stdout), then either shuts down or waits to be
//! killed. The other forms are the [`PrimaryMode`]s.

use std::io::Write;
use std::sync::{Arc, Mutex};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerMessage, WorkerStdio};
use isotropic_cluster::worker::ClusterWorker;
use serde_json::{Value, json};
use tests_integration::{Mode, PrimaryFlag, PrimaryMode};
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (builder, args) = match args.first().and_then(|first| first.parse().ok()) {
        Some(PrimaryMode::Serve) => return serve(&args[1..]).await,
        Some(PrimaryMode::Worker) => {
            let mode: Mode = args.get(1).ok_or("worker: no mode")?.parse()?;
            let worker = std::env::current_exe()?.with_file_name("fixture-worker");
            let builder = ClusterPrimary::builder().program(worker).arg(mode.as_str());
            (builder, &args[2..])
        }
        None => (ClusterPrimary::builder(), &args[..]),
    };
    let count: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1);
    let flags = args
        .iter()
        .skip(1)
        .map(|flag| flag.parse())
        .collect::<Result<Vec<PrimaryFlag>, _>>()?;
    if flags.contains(&PrimaryFlag::DeleteSelf) {
        std::fs::remove_file(std::env::current_exe()?)?;
    }
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = reported.clone();
    let stdio = if flags.contains(&PrimaryFlag::Silent) {
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
    if flags.contains(&PrimaryFlag::ThenShutDown) {
        primary.shut_down().await?;
        println!("shut down");
        return Ok(());
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// `serve ADDRESS N`: N `fixture-worker serve ADDRESS` workers; prints
/// `listening ADDRESS` once all listen (or `error KIND`), then shuts down on
/// SIGTERM.
async fn serve(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let address = args.first().cloned().unwrap_or_default();
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let mut terminate = signal(SignalKind::terminate())?;
    let worker = std::env::current_exe()?.with_file_name("fixture-worker");
    let primary = ClusterPrimary::builder()
        .program(worker)
        .args([Mode::Serve.as_str(), &address])
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
