//! Liveness: which workers are watched for signs of life, the heartbeats
//! sent to those that answer them, and when a watched worker is silent
//! (`PrimaryBuilder::watchdog`).
//!
//! The rules, pure and unit-tested below ([`Liveness`]):
//! - a worker is watched from its first sign of life while it is online or
//!   ready (the hello of a worker that answers heartbeats, a heartbeat, or
//!   a notify worker's `WATCHDOG=1`): never before it is online, never one
//!   that gives none;
//! - every `period / 4` (a tick), each watched worker that answers
//!   heartbeats is sent one, and a watched worker not heard from for
//!   `period` is silent: `workerUnresponsive`. Prevented, it is silent
//!   again after another `period` without a sign of life;
//! - a worker that is leaving (or gone) is no longer watched;
//! - a tick that comes more than a tick late (the primary itself did not
//!   run: stopped, or its actor busy) pushes every deadline back by its
//!   lateness: silence while the primary was not listening does not count.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::context::{PrimaryContext, Timer};
use super::events::WorkerUnresponsive;
use super::state::{Trigger, Why, WorkerState};
use crate::WorkerId;
use crate::events;
use crate::protocol::{self, Frame};

/// The shortest time between two ticks.
const MIN_TICK: Duration = Duration::from_millis(1);

/// The watched workers, and when each was last heard from.
#[derive(Debug)]
pub(super) struct Liveness {
    /// How long a watched worker may stay silent; `None`: not watching.
    period: Option<Duration>,
    watched: BTreeMap<WorkerId, Watch>,
    /// When the armed tick is due (`None`: none is armed).
    tick_at: Option<Instant>,
}

/// One watched worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watch {
    /// Its last sign of life.
    heard: Instant,
    /// When it is silent, unless heard from before.
    due: Instant,
    /// It answers heartbeats: it is sent them.
    pings: bool,
}

/// What a tick found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tick {
    /// Send each a heartbeat.
    ping: Vec<WorkerId>,
    /// Silent, each for this long since its last sign of life.
    silent: Vec<(WorkerId, Duration)>,
    /// Arm the next tick, this long from now (`None`: nobody is watched).
    next: Option<Duration>,
}

/// Whether a worker in `state` can be watched: online or ready.
fn watchable(state: Option<WorkerState>) -> bool {
    matches!(state, Some(WorkerState::Online | WorkerState::Ready))
}

impl Liveness {
    /// Watching for `period` of silence; `None`: off.
    pub(super) fn new(period: Option<Duration>) -> Self {
        Self {
            period,
            watched: BTreeMap::new(),
            tick_at: None,
        }
    }

    /// The time between two ticks.
    fn tick_every(period: Duration) -> Duration {
        (period / 4).max(MIN_TICK)
    }

    /// A sign of life from worker `id`, in `state`, at `now`; `pings`: it
    /// answers heartbeats. Returns when to arm the tick, if it is not armed.
    fn heard(
        &mut self,
        (id, state): (WorkerId, Option<WorkerState>),
        now: Instant,
        pings: bool,
    ) -> Option<Duration> {
        let period = self.period?;
        if !watchable(state) {
            return None;
        }
        let pings = pings || self.watched.get(&id).is_some_and(|watch| watch.pings);
        let watch = Watch {
            heard: now,
            due: now + period,
            pings,
        };
        self.watched.insert(id, watch);
        if self.tick_at.is_some() {
            return None;
        }
        let every = Self::tick_every(period);
        self.tick_at = Some(now + every);
        Some(every)
    }

    /// A tick at `now`, each worker's state given by `state_of`.
    fn tick(&mut self, now: Instant, state_of: impl Fn(WorkerId) -> Option<WorkerState>) -> Tick {
        let Some(period) = self.period else {
            return Tick::default();
        };
        let every = Self::tick_every(period);
        let late = self
            .tick_at
            .take()
            .map_or(Duration::ZERO, |due| now.saturating_duration_since(due));
        self.watched.retain(|id, _| watchable(state_of(*id)));
        let mut tick = Tick::default();
        for (id, watch) in &mut self.watched {
            if late > every {
                watch.due += late;
            }
            if now >= watch.due {
                tick.silent
                    .push((*id, now.saturating_duration_since(watch.heard)));
                watch.due = now + period;
            }
            if watch.pings {
                tick.ping.push(*id);
            }
        }
        if !self.watched.is_empty() {
            self.tick_at = Some(now + every);
            tick.next = Some(every);
        }
        tick
    }

    /// Worker `id` is stopped for its silence: no longer watched (its exit
    /// is a failure: it leaves with [`Why::Failed`]).
    fn stop(&mut self, id: WorkerId) {
        self.watched.remove(&id);
    }
}

impl PrimaryContext {
    /// Records a sign of life from worker `id`: the one place that does
    /// (a heartbeat answered, `WATCHDOG=1`). The first one while it is
    /// online starts watching it; nothing when the watchdog is off.
    pub(super) fn heard_from(&mut self, id: WorkerId) {
        self.sign_of_life(id, false);
    }

    /// Worker `id`'s hello says it answers heartbeats: watch it, and send it
    /// some.
    pub(super) fn answers_heartbeats(&mut self, id: WorkerId) {
        self.sign_of_life(id, true);
    }

    fn sign_of_life(&mut self, id: WorkerId, pings: bool) {
        let state = self.registry.get(id).map(|entry| entry.state);
        if let Some(tick) = self.liveness.heard((id, state), Instant::now(), pings) {
            self.timers.insert(Timer::Heartbeat, tick);
        }
    }

    /// A tick: heartbeats out, silent workers reported.
    pub(super) fn heartbeat_tick(&mut self) {
        let registry = &self.registry;
        let tick = self.liveness.tick(Instant::now(), |id| {
            registry.get(id).map(|entry| entry.state)
        });
        if let Some(next) = tick.next {
            self.timers.insert(Timer::Heartbeat, next);
        }
        if !tick.ping.is_empty() {
            let heartbeat = protocol::encode_control(&Frame::Heartbeat);
            for id in tick.ping {
                if let Some(worker) = self.registry.worker(id) {
                    // A full queue: the worker is not reading, and silent.
                    let _ = worker.try_send_frame(heartbeat.clone());
                }
            }
        }
        for (id, silent_for) in tick.silent {
            // (A handler of an earlier one may have moved this one on.)
            let state = self.registry.get(id).map(|entry| entry.state);
            if let (Some(worker), true) = (self.registry.worker(id), watchable(state)) {
                events::publish(self, WorkerUnresponsive { worker, silent_for });
            }
        }
    }

    /// `workerUnresponsive`'s default action: out of the pool, SIGTERM now
    /// (then SIGKILL after the kill grace), its exit a failure.
    pub(super) fn complete_unresponsive(&mut self, event: &WorkerUnresponsive) {
        let id = event.worker.id();
        let state = self.registry.get(id).map(|entry| entry.state);
        if !watchable(state) {
            return;
        }
        tracing::error!(worker_id = %id, silent_for = ?event.silent_for, "Worker unresponsive: stopping it");
        self.liveness.stop(id);
        self.leave_pool(&event.worker);
        self.apply(id, Trigger::Leave(Why::Failed, Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::state::Leaving;

    const PERIOD: Duration = Duration::from_secs(4);
    const TICK: Duration = Duration::from_secs(1);

    fn id(n: u64) -> WorkerId {
        WorkerId::new(n)
    }

    fn ready(_: WorkerId) -> Option<WorkerState> {
        Some(WorkerState::Ready)
    }

    #[tokio::test(start_paused = true)]
    async fn off_watches_nobody() {
        let mut liveness = Liveness::new(None);
        let now = Instant::now();
        assert_eq!(liveness.heard((id(1), ready(id(1))), now, true), None);
        assert_eq!(liveness.tick(now + PERIOD * 10, ready), Tick::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_is_watched_from_its_first_sign_of_life_once_online() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let now = Instant::now();
        for state in [None, Some(WorkerState::Starting)] {
            assert_eq!(liveness.heard((id(1), state), now, true), None);
        }
        let online = Some(WorkerState::Online);
        assert_eq!(liveness.heard((id(1), online), now, true), Some(TICK));
        // Armed once.
        assert_eq!(liveness.heard((id(2), online), now, false), None);
        let tick = liveness.tick(now + TICK, ready);
        assert_eq!(
            tick,
            Tick {
                ping: vec![id(1)],
                silent: vec![],
                next: Some(TICK),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_for_the_period_then_again_after_another_period() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        liveness.heard((id(1), ready(id(1))), start, true);
        liveness.heard((id(2), ready(id(2))), start, true);
        let mut silent = Vec::new();
        for n in 1..=12 {
            let now = start + TICK * n;
            if n == 2 {
                // Worker 2 answers once, then no more.
                liveness.heard((id(2), ready(id(2))), now, false);
            }
            let tick = liveness.tick(now, ready);
            assert_eq!(tick.ping, [id(1), id(2)], "tick {n}");
            silent.extend(
                tick.silent
                    .into_iter()
                    .map(|(id, silent_for)| (n, id, silent_for)),
            );
        }
        assert_eq!(
            silent,
            [
                (4, id(1), PERIOD),
                (6, id(2), PERIOD),
                (8, id(1), PERIOD * 2),
                (10, id(2), PERIOD * 2),
                (12, id(1), PERIOD * 3),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_answers_is_never_silent() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        liveness.heard((id(1), ready(id(1))), start, true);
        for n in 1..=40 {
            let now = start + TICK * n;
            let tick = liveness.tick(now, ready);
            assert!(tick.silent.is_empty(), "tick {n}");
            // The answer comes most of a tick later.
            liveness.heard((id(1), ready(id(1))), now + TICK * 9 / 10, false);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaving_or_gone_worker_is_no_longer_watched() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        liveness.heard((id(1), ready(id(1))), start, true);
        liveness.heard((id(2), ready(id(2))), start, true);
        let state_of = |worker: WorkerId| {
            (worker == id(1)).then_some(WorkerState::Leaving(Leaving {
                why: Why::ShutDown,
                disconnected: false,
                terminating: true,
            }))
        };
        let tick = liveness.tick(start + PERIOD, state_of);
        assert_eq!(tick, Tick::default(), "nobody left: no tick armed");
        // A sign of life while leaving does not bring it back.
        let leaving = state_of(id(1));
        assert_eq!(
            liveness.heard((id(1), leaving), start + PERIOD, false),
            None
        );
        assert_eq!(liveness.tick(start + PERIOD * 3, ready), Tick::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_does_not_count_the_time_the_primary_did_not_run() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        liveness.heard((id(1), ready(id(1))), start, true);
        // Due at 1 s, runs at 11 s.
        let tick = liveness.tick(start + TICK * 11, ready);
        assert!(tick.silent.is_empty());
        assert_eq!(tick.ping, [id(1)]);
        // Without an answer, silent once a period passed while it listened.
        // (It was silent a tick before the primary stopped: three more.)
        assert!(liveness.tick(start + TICK * 12, ready).silent.is_empty());
        assert!(liveness.tick(start + TICK * 13, ready).silent.is_empty());
        assert_eq!(
            liveness.tick(start + TICK * 14, ready).silent,
            [(id(1), TICK * 14)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_workers_that_answer_heartbeats_are_sent_them() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        // A notify worker's WATCHDOG=1.
        liveness.heard((id(1), ready(id(1))), start, false);
        liveness.heard((id(2), ready(id(2))), start, true);
        // A later sign of life keeps it pinged.
        liveness.heard((id(2), ready(id(2))), start, false);
        assert_eq!(liveness.tick(start + TICK, ready).ping, [id(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_worker_is_forgotten() {
        let mut liveness = Liveness::new(Some(PERIOD));
        let start = Instant::now();
        liveness.heard((id(1), ready(id(1))), start, true);
        liveness.stop(id(1));
        assert_eq!(liveness.tick(start + TICK, ready), Tick::default());
    }
}
