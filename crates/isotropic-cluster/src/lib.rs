//! Local process clusters for Rust: a primary process starts worker
//! processes, talks to each over a private channel, keeps the pool of ready
//! ones, replaces the ones that die, and shuts them all down cleanly.
//!
//! A Rust re-implementation of the Node.js package `isotropic-cluster`, with
//! its events, their stages and their order, and with its defects fixed (see
//! `docs/seed-mapping.md`).
//!
//! # Quick start
//!
//! One program is both the primary and its workers: workers re-execute it,
//! and it branches on [`is_worker`].
//!
//! ```no_run
//! use isotropic_cluster::primary::{ClusterPrimary, WorkerMessage, WorkerReady};
//! use isotropic_cluster::worker::{ClusterWorker, PrimaryMessage};
//! use isotropic_cluster::Subscribe;
//! use serde_json::json;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let worker = isotropic_cluster::is_worker(); // before any thread starts
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(async {
//!         if worker {
//!             let worker = ClusterWorker::builder()
//!                 .on::<PrimaryMessage>(|event| {
//!                     let name = event.message.decode::<serde_json::Value>().unwrap_or_default();
//!                     let _ = event.context().try_send(&json!({"type": "greeted", "name": name["name"]}));
//!                 })
//!                 .start()
//!                 .await?;
//!             worker.closed().await;
//!         } else {
//!             let primary = ClusterPrimary::builder()
//!                 .on::<WorkerReady>(|event| {
//!                     let worker = event.worker.clone();
//!                     let _ = event.context().try_send(&worker, &json!({"type": "greet", "name": "User"}));
//!                 })
//!                 .on::<WorkerMessage>(|event| {
//!                     println!("worker {}: {}", event.worker.id(), event.message);
//!                     event.context().shut_down();
//!                 })
//!                 .start()
//!                 .await?;
//!             primary.fork(2).await?;
//!             primary.shut_down().await.ok(); // waits for every worker to exit
//!         }
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # Events
//!
//! Events are Rust types ([`primary::WorkerExit`], [`worker::PrimaryMessage`],
//! …) subscribed to with [`Subscribe`], in the stages of [`Stage`]; handlers
//! get an [`Event`] that derefs to the data and can prevent the default
//! action. [`ClusterPrimary::events`](primary::ClusterPrimary::events) is the
//! same as an async stream.
//!
//! # Shared sockets
//!
//! Workers serve one address together: [`ClusterWorker::listen`](worker::ClusterWorker::listen)
//! gives every worker the same listening socket, bound once by the primary
//! and kept for replacements; or, with
//! [`PrimaryBuilder::distribution`](primary::PrimaryBuilder::distribution)
//! ([`Distribution`]), a `SO_REUSEPORT` socket each, or connections passed
//! in round robin. A primary started by systemd's socket activation serves
//! with the sockets it was given. Programs in any language get the
//! primary's sockets by that same convention (fds 3, 4, … with
//! `LISTEN_FDS`): [`PrimaryBuilder::pass_fds`](primary::PrimaryBuilder::pass_fds)
//! and [`socket_activation`].
//!
//! # Any program: the CLI
//!
//! The `isotropic-cluster-cli` package is this library as a command:
//! `isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 -- COMMAND`
//! runs any program (gunicorn, uvicorn, a Node server, …) as a supervised
//! pool on one shared socket, with rollouts on SIGHUP, upgrades of itself on
//! SIGUSR2 ([`upgrade`]) and systemd's readiness protocol ([`systemd`]). Its
//! recipes are in the README; running it under systemd, in a container or on
//! Kubernetes, in `docs/deployment.md`.
//!
//! # Metrics
//!
//! [`ClusterPrimary::metrics`](primary::ClusterPrimary::metrics) renders the
//! pool's and each worker's series in Prometheus' text format for an
//! endpoint of your own; the `prometheus` feature adds `Metrics::register`,
//! into a `prometheus_client` registry (see `docs/metrics.md`).
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod actor;
mod channel;
mod error;
mod events;
mod fds;
mod id;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod message;
mod net;
pub mod primary;
mod protocol;
mod request;
mod role;
mod shared;
mod signal;
pub mod socket_activation;
mod sys;
pub mod systemd;
mod topics;
mod traffic;
pub mod upgrade;
pub mod worker;

pub use error::{BoxError, Error, MessageError, ProtocolError, SendError};
pub use events::{Event, EventStream, Skipped, Stage, Subscribe, Subscription, Topic};
pub use fds::{MAX_FDS, PassedFds};
pub use id::WorkerId;
pub use message::{Codec, Message};
pub use net::{
    Connection, Distribution, ListenAddress, ListenError, ListenErrorKind, ListenPolicy, Listener,
    PassedListener,
};
pub use request::{HandleRequests, RequestError};
pub use role::{is_primary, is_worker};
pub use signal::Signal;

/// The README's examples compile.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
