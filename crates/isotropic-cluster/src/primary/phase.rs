//! The primary's own phase, and its transitions.
//!
//! ```text
//! Starting ─initialize─▶ Running ─shutDown─▶ ShuttingDown ─all exited─▶ ShutDown
//!                           │                     │                        │
//!                           └─destroy─▶ ShuttingDown{destroy} ─all exited─▶ Destroyed
//! ```

/// Where the primary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `start` is running the `initialize` events.
    Starting,
    /// Starting and replacing workers.
    Running,
    /// A destroy is publishing its `shutDown`: still running meanwhile.
    DestroyRequested,
    /// Every worker was asked to leave; waiting for their exits.
    ShuttingDown {
        /// Then tear down.
        destroy: bool,
    },
    /// Every worker exited after a shutdown.
    ShutDown {
        /// Tear down now.
        destroy: bool,
    },
    /// Torn down: the actor ends.
    Destroyed,
}

/// What follows a turn of the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Nothing.
    Nothing,
    /// The shutdown is complete: publish `shutDownComplete`.
    ShutDownComplete,
    /// Tear down: publish `destroyComplete`.
    TearDown,
}

impl Phase {
    /// Whether workers are started and replaced (`fork` does nothing otherwise).
    pub(crate) fn is_active(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::DestroyRequested
        )
    }

    /// Whether a destroy is asked for (or done).
    pub(crate) fn destroying(self) -> bool {
        matches!(
            self,
            Self::DestroyRequested
                | Self::ShuttingDown { destroy: true }
                | Self::ShutDown { destroy: true }
                | Self::Destroyed
        )
    }

    /// The `initialize` event's default action ran.
    pub(crate) fn initialized(self) -> Self {
        match self {
            Self::Starting => Self::Running,
            other => other,
        }
    }

    /// A destroy was asked for (its `destroy` event was not prevented).
    pub(crate) fn destroy(self) -> Self {
        match self {
            Self::Starting | Self::Running => Self::DestroyRequested,
            Self::ShuttingDown { .. } => Self::ShuttingDown { destroy: true },
            Self::ShutDown { .. } => Self::ShutDown { destroy: true },
            other => other,
        }
    }

    /// The workers are asked to leave (a `shutDown`'s default action, or a
    /// destroy whose `shutDown` was prevented).
    pub(crate) fn shut_down(self) -> Self {
        match self {
            Self::Starting | Self::Running => Self::ShuttingDown { destroy: false },
            Self::DestroyRequested => Self::ShuttingDown { destroy: true },
            other => other,
        }
    }

    /// At the end of a turn, with `live` workers left: the next phase, and
    /// what to publish.
    pub(crate) fn settle(self, live: usize) -> (Self, Settled) {
        match self {
            Self::ShuttingDown { destroy } if live == 0 => {
                (Self::ShutDown { destroy }, Settled::ShutDownComplete)
            }
            Self::ShutDown { destroy: true } => (Self::Destroyed, Settled::TearDown),
            other => (other, Settled::Nothing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settles until nothing changes; what was published on the way.
    fn settle_all(mut phase: Phase, live: usize) -> (Phase, Vec<Settled>) {
        let mut published = Vec::new();
        loop {
            let (next, settled) = phase.settle(live);
            if settled == Settled::Nothing {
                return (next, published);
            }
            published.push(settled);
            phase = next;
        }
    }

    #[test]
    fn a_shutdown_completes_once_every_worker_exited() {
        let phase = Phase::Starting.initialized().shut_down();
        assert_eq!(phase, Phase::ShuttingDown { destroy: false });
        assert!(!phase.is_active());
        assert_eq!(settle_all(phase, 2), (phase, vec![]));
        assert_eq!(
            settle_all(phase, 0),
            (
                Phase::ShutDown { destroy: false },
                vec![Settled::ShutDownComplete]
            )
        );
        // Done is done: a second shutdown changes nothing.
        let done = Phase::ShutDown { destroy: false };
        assert_eq!(done.shut_down(), done);
        assert_eq!(settle_all(done, 0), (done, vec![]));
    }

    #[test]
    fn a_destroy_shuts_down_first_then_tears_down() {
        let running = Phase::Running;
        let asked = running.destroy();
        assert_eq!(asked, Phase::DestroyRequested);
        assert!(
            asked.is_active(),
            "still running while its shutDown is published"
        );
        let shutting = asked.shut_down();
        assert_eq!(shutting, Phase::ShuttingDown { destroy: true });
        assert_eq!(
            settle_all(shutting, 0),
            (
                Phase::Destroyed,
                vec![Settled::ShutDownComplete, Settled::TearDown]
            )
        );
    }

    #[test]
    fn a_destroy_during_or_after_a_shutdown_tears_down_once_it_completes() {
        let during = Phase::ShuttingDown { destroy: false }.destroy();
        assert_eq!(during, Phase::ShuttingDown { destroy: true });
        let after = Phase::ShutDown { destroy: false }.destroy();
        assert_eq!(
            settle_all(after, 0),
            (Phase::Destroyed, vec![Settled::TearDown])
        );
        assert!(Phase::Destroyed.destroying());
        assert_eq!(Phase::Destroyed.destroy(), Phase::Destroyed);
        assert_eq!(Phase::Destroyed.shut_down(), Phase::Destroyed);
    }

    #[test]
    fn a_destroy_before_initialization_still_shuts_down() {
        let phase = Phase::Starting.destroy().shut_down();
        assert_eq!(phase, Phase::ShuttingDown { destroy: true });
        assert_eq!(phase.initialized(), phase);
    }
}
