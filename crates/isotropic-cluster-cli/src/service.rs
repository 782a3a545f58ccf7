//! What the service manager (systemd, through `NOTIFY_SOCKET`) is told about
//! this primary: `READY=1` once every worker of its pools is ready,
//! `RELOADING=1` then `READY=1` around a reload (SIGHUP), `STOPPING=1` at
//! the shutdown, a `STATUS=` line as the pool changes, and `WATCHDOG=1` at
//! half of `WATCHDOG_USEC`. (An upgrade's `MAINPID=` is upgrade.rs's.)
//!
//! Only the primary that speaks for the service says anything: a new
//! primary (an upgrade) once it has taken over, an old one until it hands
//! over. The workers never see this `NOTIFY_SOCKET`.

use std::collections::BTreeSet;

use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerFigures, WorkerPhase};
use isotropic_cluster::systemd::{self, Notice};

use crate::report::Report;

/// The primary's side of `sd_notify(3)`.
#[derive(Debug)]
pub(crate) struct ServiceManager {
    report: Report,
    /// The primary of each pool.
    primaries: Vec<ClusterPrimary>,
    /// Whether there is a service manager to tell (`NOTIFY_SOCKET`).
    present: bool,
    /// Whether this primary speaks for the service.
    speaking: bool,
    /// Whether `READY=1` was sent for the start.
    started: bool,
    /// Whether a reload (SIGHUP) is under way: `READY=1` is owed at its end.
    reloading: bool,
    /// The generation being rolled out.
    rollout: Option<u64>,
    /// How the last rollout failed, shown after the counts.
    note: Option<String>,
    stopping: bool,
    /// The last `STATUS=` sent.
    status: String,
    /// Whether a notice could not be sent (said once).
    failed: bool,
    /// Pings, when the service manager watches this process.
    watchdog: Option<tokio::time::Interval>,
}

impl ServiceManager {
    /// The notices of this primary, which speaks for the service from the
    /// start unless it is `taking_over` from an old one.
    /// `primaries` are its pools'.
    pub(crate) fn new(report: Report, primaries: Vec<ClusterPrimary>, taking_over: bool) -> Self {
        let watchdog = systemd::watchdog_interval().map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        Self {
            report,
            primaries,
            present: std::env::var_os("NOTIFY_SOCKET").is_some(),
            speaking: !taking_over,
            started: false,
            reloading: false,
            rollout: None,
            note: None,
            stopping: false,
            status: String::new(),
            failed: false,
            watchdog,
        }
    }

    /// Whether [`event`](Self::event) follows `event` (the pools hand on
    /// only those).
    pub(crate) fn follows(event: &PrimaryEvent) -> bool {
        matches!(
            event,
            PrimaryEvent::AddWorker(_)
                | PrimaryEvent::RemoveWorker(_)
                | PrimaryEvent::RolloutStarted(_)
                | PrimaryEvent::RolloutComplete(_)
                | PrimaryEvent::RolloutFailed(_)
                | PrimaryEvent::RolledBack(_)
        )
    }

    /// Follows `event`: the status, and `READY=1` once the pools are ready.
    pub(crate) async fn event(&mut self, event: &PrimaryEvent) {
        match event {
            PrimaryEvent::AddWorker(_) | PrimaryEvent::RemoveWorker(_) => {}
            PrimaryEvent::RolloutStarted(e) => {
                self.rollout = Some(e.generation);
                self.note = None;
            }
            PrimaryEvent::RolloutComplete(_) => self.rollout = None,
            PrimaryEvent::RolloutFailed(e) => {
                self.rollout = None;
                self.note = Some(format!(
                    "generation {} failed ({}), rolling back to generation {}",
                    e.generation, e.reason, e.to
                ));
            }
            PrimaryEvent::RolledBack(e) => {
                self.note = Some(format!(
                    "rolled back: generation {} serves again, {} failed",
                    e.generation, e.failed
                ));
            }
            // (A pool's shutdown is the service's only when no other pool
            // serves on: the driver says so, with `stopping`.)
            _ => return,
        }
        self.update().await;
    }

    /// SIGHUP: a reload begins.
    pub(crate) fn reloading(&mut self) {
        if !self.reloading && !self.stopping {
            self.reloading = true;
            self.status = "reloading".to_owned();
            self.send(&[Notice::Reloading, Notice::Status("reloading")]);
        }
    }

    /// The reload ended (complete, or rolled back): `READY=1`.
    pub(crate) async fn reloaded(&mut self) {
        if std::mem::take(&mut self.reloading) && !self.stopping && self.speaking && self.present {
            self.status = self.status_line().await.0;
            let status = self.status.clone();
            self.send(&[Notice::Ready, Notice::Status(&status)]);
        }
    }

    /// The shutdown began: `STOPPING=1` (once).
    pub(crate) fn stopping(&mut self) {
        if !std::mem::replace(&mut self.stopping, true) {
            self.send(&[Notice::Stopping, Notice::Status("shutting down")]);
        }
    }

    /// A new primary took over the service from this one (it told the
    /// service manager `MAINPID=`): nothing more is said from here.
    pub(crate) fn hand_over(&mut self) {
        self.speaking = false;
        self.watchdog = None;
    }

    /// This primary (an upgrade's new one) took the service over: it
    /// speaks for it from now on.
    pub(crate) async fn take_over(&mut self) {
        self.speaking = true;
        self.update().await;
    }

    /// Whether the service manager watches this primary (see [`Self::tick`]).
    pub(crate) fn watched(&self) -> bool {
        self.watchdog.is_some() && self.speaking && self.present
    }

    /// The next watchdog tick, then `WATCHDOG=1` if the primary answers.
    /// Only while [`watched`](Self::watched).
    ///
    /// Cancel safe.
    pub(crate) async fn tick(&mut self) {
        if let Some(timer) = &mut self.watchdog {
            timer.tick().await;
            let answers = self.primaries.iter().map(ClusterPrimary::pool_size);
            if futures_util::future::join_all(answers)
                .await
                .iter()
                .all(Result::is_ok)
            {
                self.send(&[Notice::Watchdog]);
            }
        }
    }

    /// Sends the status if it changed, with `READY=1` the first time every
    /// worker is ready.
    async fn update(&mut self) {
        if self.stopping || !self.speaking || !self.present {
            return;
        }
        let (status, all_ready) = self.status_line().await;
        if !self.started && self.rollout.is_none() && all_ready {
            self.started = true;
            self.status = status;
            let status = self.status.clone();
            self.send(&[Notice::Ready, Notice::Status(&status)]);
        } else if status != self.status {
            self.status = status;
            let status = self.status.clone();
            self.send(&[Notice::Status(&status)]);
        }
    }

    /// `4 of 4 workers ready`, `rolling out generation 3: 2 of 4`, or
    /// `3 of 4 workers ready; rolled back: …`; and whether every worker of
    /// the pools is ready (the counts are the sums of every pool's).
    async fn status_line(&self) -> (String, bool) {
        let (mut size, mut pools) = (0, Vec::new());
        for primary in &self.primaries {
            size += primary.pool_size().await.unwrap_or(0);
            pools.push(primary.figures().await);
        }
        let ready = |generation: Option<u64>| {
            let slots = |figures: &Vec<_>| {
                let slots: BTreeSet<u32> = (figures.iter())
                    .filter(|f: &&WorkerFigures| f.phase == WorkerPhase::Ready)
                    .filter(|f| generation.is_none_or(|g| f.generation == g))
                    .map(|f| f.slot)
                    .collect();
                slots.len()
            };
            pools.iter().map(slots).sum::<usize>()
        };
        if let Some(generation) = self.rollout {
            let text = format!(
                "rolling out generation {generation}: {} of {size}",
                ready(Some(generation))
            );
            return (text, false);
        }
        let ready = ready(None).min(size);
        let counts = format!("{ready} of {size} workers ready");
        let text = match &self.note {
            Some(note) => format!("{counts}; {note}"),
            None => counts,
        };
        (text, ready == size && size > 0)
    }

    fn send(&mut self, notices: &[Notice<'_>]) {
        if !self.speaking || !self.present {
            return;
        }
        if let Err(error) = systemd::notify(notices)
            && !std::mem::replace(&mut self.failed, true)
        {
            let text = format!("cannot notify the service manager (NOTIFY_SOCKET): {error}");
            self.report.warn("serviceManager", &text);
        }
    }
}
