//! The HTTP floor: our HTTP stack (axum) in one process, 2 runtime threads,
//! no cluster, under wrk: `floor-http http SECONDS`.

use bench::{Result, args, report};

fn main() -> Result {
    let (_, seconds) = args();
    report(http(seconds)?);
    Ok(())
}

/// Our HTTP stack (axum) in one process with 2 runtime threads, no cluster:
/// what the cluster layer costs per request shows against it.
fn http(seconds: u64) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/", listener.local_addr()?);
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    runtime.spawn(async move { axum::serve(listener, app).await });
    let rate = bench::wrk(&url, seconds)?;
    runtime.shutdown_background();
    Ok(rate)
}
