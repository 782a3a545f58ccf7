//! `--metrics ADDR`: `GET /metrics` (the primary's metrics in Prometheus'
//! text format), `/healthz` (200 while the primary runs: while one of its
//! pools runs) and `/readyz` (200 while each pool that runs has its ready
//! minimum), over HTTP/1 with hyper.
//!
//! One request per connection, headers within 5 s and 16 KiB, at most
//! [`CONNECTIONS`] at once, each done within 30 s: a client that misbehaves
//! loses its connection (hyper answers what it cannot parse with 400 or 431)
//! and never reaches the primary, which only the rendering reads.
//!
//! An upgrade (SIGUSR2) hands the socket over with the `--listen` ones, as
//! [`SOCKET_NAME`]: the new primary serves on it as the old one stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::Metrics;
use isotropic_cluster::upgrade::Handover;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::listen::{self, CannotAdopt};
use crate::output::Output;
use crate::render::{Entry, Level};

/// The metrics socket's name in an upgrade's handover.
pub(crate) const SOCKET_NAME: &str = "metrics";

/// Connections served at once; more wait in the listen backlog.
const CONNECTIONS: usize = 32;
/// The time a client has to send its request's headers…
const HEADERS_WITHIN: Duration = Duration::from_secs(5);
/// …and a connection's whole life.
const CONNECTION_LIFE: Duration = Duration::from_secs(30);
/// The most a request's headers may take.
const MAX_HEADERS: usize = 16 * 1024;

/// The endpoint's socket: bound to `address`, or adopted from `handover`
/// (an upgrade's new primary); with a copy to hand over at the next
/// upgrade.
///
/// # Errors
///
/// When the address cannot be bound (in use, say), or the socket handed
/// over serves another address ([`CannotAdopt`]).
pub(crate) fn bind(
    address: SocketAddr,
    handover: Option<&mut Handover>,
) -> anyhow::Result<(TcpListener, OwnedFd)> {
    let listener = match handover.and_then(|handover| handover.take(SOCKET_NAME)) {
        Some((fd, bound)) if listen::serves(&ListenAddress::Tcp(address), &bound) => {
            std::net::TcpListener::from(fd)
        }
        Some((_, bound)) => Err(CannotAdopt(format!(
            "the old primary's metrics socket is {bound}, not --metrics {address}"
        )))?,
        None => std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot serve metrics on {address}"))?,
    };
    let copy = listener.try_clone()?.into();
    listener.set_nonblocking(true)?;
    Ok((TcpListener::from_std(listener)?, copy))
}

/// Serves `metrics` on `listener` until the task is aborted (a line on
/// `output` for a connection that cannot be accepted).
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, output: Output) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // (Out of fds, say: try again shortly rather than spin.)
                let text = format!("metrics: cannot accept a connection: {error}");
                output.line(&Entry::info("metricsError", text).at(Level::Warn));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                std::future::ready(Ok::<_, Infallible>(answer(&metrics, &request)))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADERS_WITHIN)
                .max_buf_size(MAX_HEADERS)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // (A client that breaks the protocol just loses its connection.)
            let _ = tokio::time::timeout(CONNECTION_LIFE, connection).await;
            drop(permit);
        });
    }
}

/// The answer to `request`.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            let content_type = HeaderValue::from_static(Metrics::CONTENT_TYPE);
            response.headers_mut().insert(CONTENT_TYPE, content_type);
            response
        }
        // (A pool that ended alone, with no worker left to replace, leaves
        // the primary alive and ready while another pool runs.)
        "/healthz" => {
            let pools = metrics.pools();
            match pools.iter().find(|pool| !pool.alive) {
                Some(stopped) if !pools.iter().any(|pool| pool.alive) => {
                    text(StatusCode::SERVICE_UNAVAILABLE, format!("{stopped}\n"))
                }
                _ => text(StatusCode::OK, "ok\n".into()),
            }
        }
        "/readyz" => {
            let pools = metrics.pools();
            let mut running = pools.iter().filter(|pool| pool.alive).peekable();
            let status = if running.peek().is_some() && running.all(|pool| pool.is_ready()) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body: String = pools.iter().map(|pool| format!("{pool}\n")).collect();
            text(status, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
