//! Our library serving HTTP (axum) with 2 workers on one port under wrk, in
//! each distribution mode: `ours-http http|http-reuseport|http-rr SECONDS`.
//! Separate from `ours` so that the HTTP stack does not weigh on its figures
//! (memory above all).

use std::sync::Arc;

use bench::Result;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent};
use isotropic_cluster::worker::ClusterWorker;
use isotropic_cluster::{Connection, Distribution, ListenAddress, Listener, PassedListener};
use tokio::sync::Notify;

fn main() -> Result {
    bench::run(
        |_, _| serve_http(),
        |metric, seconds| async move {
            let distribution = match metric.as_str() {
                "http-reuseport" => Distribution::ReusePort,
                "http-rr" => Distribution::RoundRobin,
                _ => Distribution::Shared,
            };
            let (rate, shares) = http(&metric, seconds, distribution).await?;
            bench::report_with(rate, &format!("requests per worker: {shares}"));
            Ok(())
        },
    )
}

/// Requests per second (wrk, 64 connections) for 2 workers serving a tiny
/// response with axum on one shared port; `seconds` of load. Also how the
/// requests were shared between the workers (each reports its count when it
/// is asked to close).
async fn http(metric: &str, seconds: u64, distribution: Distribution) -> Result<(f64, String)> {
    let primary = ClusterPrimary::builder()
        .args([metric, "0"])
        .distribution(distribution)
        .start()
        .await?;
    let mut events = primary.events();
    primary.fork(2).await?;
    let mut address = None;
    let mut listening = 0;
    while listening < 2 {
        match events.next().await {
            Some(PrimaryEvent::WorkerListening(l)) => {
                listening += 1;
                address = Some(l.address);
            }
            Some(_) => {}
            None => return Err("the primary ended".into()),
        }
    }
    let url = format!("http://{}/", address.ok_or("no address")?);
    let rate = tokio::task::spawn_blocking(move || bench::wrk(&url, seconds)).await??;
    primary.shut_down().await?;
    let mut served = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            PrimaryEvent::WorkerMessage(m) => served.extend(m.message.decode::<u64>()),
            PrimaryEvent::ShutDownComplete(_) => break,
            _ => {}
        }
    }
    let total: u64 = served.iter().sum::<u64>().max(1);
    let shares: Vec<String> = served
        .iter()
        .map(|n| format!("{:.0}%", 100.0 * *n as f64 / total as f64))
        .collect();
    Ok((rate, shares.join(" / ")))
}

async fn serve_http() -> Result {
    // The destroy's cleanup waits until this worker has reported its count
    // (messages sent after the cleanup are not delivered).
    let reported = Arc::new(Notify::new());
    let wait = reported.clone();
    let worker = ClusterWorker::builder()
        .on_destroy(move || async move { wait.notified().await })
        .start()
        .await?;
    let listener = worker.listen("127.0.0.1:0").await?;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = served.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { "hello" }
        }),
    );
    let closing = worker.clone();
    let graceful = async move {
        closing.closing().await;
        // The load is over by now: report this worker's share.
        let _ = closing
            .send(&served.load(std::sync::atomic::Ordering::Relaxed))
            .await;
        reported.notify_one();
    };
    match listener {
        Listener::Tcp(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await?
        }
        Listener::Passed(listener) => {
            axum::serve(Passed(listener), app)
                .with_graceful_shutdown(graceful)
                .await?
        }
        _ => return Err("not TCP".into()),
    }
    worker.closed().await;
    Ok(())
}

/// Serves the connections the primary passes (round robin) with axum.
struct Passed(PassedListener);

impl axum::serve::Listener for Passed {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(Connection::Tcp(stream)) => {
                    if let Ok(peer) = stream.peer_addr() {
                        return (stream, peer);
                    }
                }
                Ok(_) => {}
                // The primary is gone: nothing more will come.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match self.0.address() {
            ListenAddress::Tcp(address) => Ok(*address),
            ListenAddress::Unix(_) => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }
}
