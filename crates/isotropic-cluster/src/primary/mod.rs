//! The primary side: [`ClusterPrimary`] starts workers, talks to them, keeps
//! the pool of ready ones, replaces the dead and shuts everything down.
//!
//! # Theory of operation
//!
//! One background task owns the primary's state and publishes every event;
//! [`ClusterPrimary`] is a cloneable handle that sends it commands, and
//! handlers act on it synchronously through [`PrimaryContext`]. For each
//! worker, a watcher task reports its frames, its output lines, the end of its
//! channel and its exit, in that order; so for one worker `workerDisconnect`
//! always comes before `workerExit`, and every message it sent before exiting
//! comes before both. The lifecycle of one worker:
//!
//! ```text
//! fork → workerFork → workerOnline (hello) → workerReady → addWorker
//!      → workerMessage* → workerDisconnect [→ removeWorker] → workerExit [→ fork]
//! ```

mod actions;
mod builder;
mod config;
mod context;
mod events;
mod expiry;
mod figures;
mod handle;
mod input;
mod listen;
mod liveness;
mod metrics;
mod notify;
mod orphans;
mod output;
mod phase;
mod pool;
mod process;
mod ready;
mod recycle;
mod registry;
mod resources;
mod restart;
mod rollout;
mod run;
mod scaling;
mod spawner;
mod state;
#[cfg(test)]
mod tests;
mod watch;
mod worker;

pub use builder::PrimaryBuilder;
pub use config::{NODE_TERM_AFTER, Readiness, WorkerChannel, WorkerStdio};
pub use context::{PrimaryContext, PrimaryEvent};
pub use events::*;
pub use figures::{MemorySource, ResourceUsage, WorkerFigures, WorkerPhase};
pub use handle::{ClusterPrimary, Forking};
pub use metrics::{Metrics, PoolStatus};
pub use orphans::OrphanReaper;
pub use output::{OutputLine, OutputLines, OutputSink, output_channel};
pub use pool::Destination;
pub use restart::{OnIntensity, Restart, RestartPolicy};
pub use worker::WorkerHandle;
