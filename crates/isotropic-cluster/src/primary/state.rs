//! The rules of one worker's life, as a state and pure transitions.
//!
//! ```text
//! Starting ──hello──▶ Online ──ready──▶ Ready
//!    │                  │                 │
//!    └──── leave, disconnect, failure ────┴──▶ Leaving{why} ──exit──▶ Gone
//! ```
//!
//! [`WorkerState::on`] takes what happened ([`Trigger`]) and returns what to
//! do ([`Action`]); the primary's context carries the actions out (events,
//! signals, timers). Nothing here does I/O, so every state × trigger is unit
//! tested below.

use std::process::ExitStatus;
use std::time::Duration;

use super::config::Readiness;
use crate::error::ProtocolError;
use crate::protocol;

/// Where one worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Started; on our framed channel, its hello has not arrived yet.
    Starting,
    /// Connected, not ready yet.
    Online,
    /// Said it is ready (in the pool unless a handler kept it out).
    Ready,
    /// On its way out. A worker that is leaving no longer becomes online or
    /// ready; its frames are still delivered until its channel closes.
    Leaving(Leaving),
    /// Exited and reaped: its `workerExit` is being published.
    Gone {
        /// What follows its exit while the primary is active.
        after: AfterExit,
    },
}

/// What follows a worker's exit while the primary is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// What the restart policy says, paced by its backoff.
    Policy,
    /// What the restart policy says of a failure, whatever the exit status
    /// (it was stopped for one: not ready in time, a protocol error,
    /// unresponsive), paced by its backoff.
    Failure,
    /// A replacement at once: it was recycled.
    Replace,
    /// Nothing: its replacement is already running, or the pool shrank.
    Nothing,
}

/// A leaving worker: why, and how far its stop has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leaving {
    /// Why it leaves.
    pub(crate) why: Why,
    /// Its channel is closed, and `workerDisconnect` was published.
    pub(crate) disconnected: bool,
    /// SIGTERM is sent or scheduled.
    pub(crate) terminating: bool,
}

/// Why a worker leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its channel closed unasked.
    Disconnected,
    /// It broke the protocol, or was not ready in time.
    Failed,
    /// It said it leaves (a disconnect on its channel).
    Announced,
    /// A shutdown asked it to leave.
    ShutDown,
    /// [`stop_worker`](super::PrimaryContext::stop_worker) asked it to
    /// leave: it is replaced at once, outside the restart policy.
    Recycled,
    /// Its replacement is ready (a drained recycle), or it was a
    /// replacement kept out of the pool: it is not replaced.
    Replaced,
    /// The pool shrank ([`scale_to`](super::PrimaryContext::scale_to)): it
    /// is not replaced.
    ScaledDown,
}

impl Why {
    /// Whether its exit is voluntary (asked for, or announced).
    pub(crate) fn voluntary(self) -> bool {
        !matches!(self, Self::Disconnected | Self::Failed)
    }

    /// What follows the exit of a worker that left for this reason.
    pub(crate) fn after_exit(self) -> AfterExit {
        match self {
            Self::Recycled => AfterExit::Replace,
            Self::Replaced | Self::ScaledDown => AfterExit::Nothing,
            Self::Failed => AfterExit::Failure,
            _ => AfterExit::Policy,
        }
    }
}

/// What happened to a worker.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq, Eq))]
pub(crate) enum Trigger {
    /// Its process was started (`workerFork` was published). On a channel
    /// with a `hello`, it comes online at its hello; otherwise now.
    Started {
        /// Its channel begins with a hello.
        hello: bool,
        /// When it counts as ready.
        ready_on: Readiness,
    },
    /// Its hello, with the protocol version it speaks.
    Hello {
        /// The version.
        version: u32,
        /// When it counts as ready.
        ready_on: Readiness,
    },
    /// It said it is ready ([`Readiness::Message`], [`Readiness::Notify`]),
    /// or was found listening ([`Readiness::Listening`]).
    Ready,
    /// It said it leaves.
    Announce,
    /// It broke the protocol (a frame it may not send, or its channel ended
    /// with an error).
    Broke(ProtocolError),
    /// Its channel ended cleanly.
    Closed,
    /// Its ready timeout passed.
    ReadyTimeout(Duration),
    /// The primary asks it to leave (why: a shutdown or a recycle), and
    /// terminates it after `grace` if it has not exited.
    Leave(Why, Duration),
    /// Terminate it: now (`None`), or after a grace period unless that is
    /// already under way.
    Terminate(Option<Duration>),
    /// It exited and was reaped (`None`: waiting for it failed).
    Exited(Option<ExitStatus>),
}

/// What the primary does about it.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq, Eq))]
pub(crate) enum Action {
    /// Publish `workerOnline`.
    Online,
    /// Publish `workerReady`.
    Ready,
    /// Look whether it listens yet (now, then again shortly).
    PollListening,
    /// Publish `workerError` with this error.
    Fail(ProtocolError),
    /// Fail its requests and publish `workerDisconnect`.
    Disconnect,
    /// Send it a disconnect request (on our framed channel) and close its
    /// channel for sending.
    AskToLeave,
    /// Send it SIGTERM now.
    Terminate,
    /// Send it SIGTERM after this grace period.
    TerminateAfter(Duration),
    /// Publish `workerExit`.
    Exit {
        /// How it ended.
        status: Option<ExitStatus>,
        /// Whether it left voluntarily.
        voluntary: bool,
    },
}

/// The error for a frame that comes at the wrong moment.
fn unexpected(frame: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::UnexpectedFrame { frame, reason }
}

impl WorkerState {
    /// The state after `trigger`, and what to do.
    pub(crate) fn on(self, trigger: Trigger) -> (Self, Vec<Action>) {
        use Action as A;
        use WorkerState::{Online, Ready, Starting};
        let first_hello = |frame| unexpected(frame, "the first frame must be hello");
        match (self, trigger) {
            (Self::Gone { .. }, _) => (self, vec![]),
            (state, Trigger::Exited(status)) => {
                let (why, disconnected) = match state {
                    Self::Leaving(leaving) => (Some(leaving.why), leaving.disconnected),
                    _ => (None, false),
                };
                let mut actions = if disconnected {
                    vec![]
                } else {
                    vec![A::Disconnect]
                };
                actions.push(A::Exit {
                    status,
                    voluntary: why.is_some_and(Why::voluntary),
                });
                let after = why.map_or(AfterExit::Policy, Why::after_exit);
                (Self::Gone { after }, actions)
            }
            (Starting, Trigger::Started { hello: true, .. }) => (Starting, vec![]),
            (Starting, Trigger::Started { ready_on, .. }) => Self::online(ready_on),
            (state, Trigger::Started { .. }) => (state, vec![]),
            (Starting, Trigger::Hello { version, .. })
                if !(protocol::OLDEST_VERSION..=protocol::VERSION).contains(&version) =>
            {
                let error = ProtocolError::Version {
                    received: version,
                    oldest: protocol::OLDEST_VERSION,
                    supported: protocol::VERSION,
                };
                self.fail(error)
            }
            (Starting, Trigger::Hello { ready_on, .. }) => Self::online(ready_on),
            (Online | Ready, Trigger::Hello { .. }) => {
                self.fail(unexpected("hello", "hello was already received"))
            }
            (Starting, Trigger::Ready) => self.fail(first_hello("ready")),
            (Online, Trigger::Ready) => (Ready, vec![A::Ready]),
            (Ready, Trigger::Ready) => self.fail(unexpected("ready", "ready was already received")),
            (Starting, Trigger::Announce) => self.fail(first_hello("disconnect")),
            (Starting | Online, Trigger::ReadyTimeout(after)) => {
                self.fail(ProtocolError::ReadyTimeout(after))
            }
            (_, Trigger::ReadyTimeout(_)) => (self, vec![]),
            (_, Trigger::Broke(error)) => self.fail(error),
            (_, Trigger::Closed) => self.disconnect(Why::Disconnected),
            (_, Trigger::Announce) => self.disconnect(Why::Announced),
            (Starting | Online | Ready, Trigger::Terminate(_)) => (self, vec![]),
            (Self::Leaving(leaving), trigger) => leaving.on(trigger),
            (Starting | Online | Ready, Trigger::Leave(why, grace)) => {
                let leaving = Leaving {
                    why,
                    disconnected: false,
                    terminating: true,
                };
                (
                    Self::Leaving(leaving),
                    vec![A::AskToLeave, A::TerminateAfter(grace)],
                )
            }
        }
    }

    /// Connected: online, and what follows by its readiness.
    fn online(ready_on: Readiness) -> (Self, Vec<Action>) {
        match ready_on {
            Readiness::Message | Readiness::Notify => (Self::Online, vec![Action::Online]),
            Readiness::Started => (Self::Ready, vec![Action::Online, Action::Ready]),
            Readiness::Listening => (Self::Online, vec![Action::Online, Action::PollListening]),
        }
    }

    /// Whether it stays: started, online or ready, not leaving.
    pub(crate) fn staying(self) -> bool {
        matches!(self, Self::Starting | Self::Online | Self::Ready)
    }

    /// Whether a frame that is not a step of the lifecycle (a message, a
    /// request, a reply, a listen request; `primary_only`: a frame only the
    /// primary sends) is delivered (`Ok(true)`), dropped because the channel
    /// is deemed closed (`Ok(false)`), or breaks the protocol.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnexpectedFrame`] before hello, or for a frame only
    /// the primary sends.
    pub(crate) fn admits(
        self,
        frame: &'static str,
        primary_only: bool,
    ) -> Result<bool, ProtocolError> {
        let open = match self {
            Self::Starting => return Err(unexpected(frame, "the first frame must be hello")),
            Self::Online | Self::Ready => true,
            Self::Leaving(leaving) => !leaving.disconnected,
            Self::Gone { .. } => false,
        };
        if open && primary_only {
            return Err(unexpected(frame, "only the primary sends it"));
        }
        Ok(open)
    }

    /// Its channel closed (or is deemed closed): it leaves, for `why` unless
    /// it was already leaving.
    fn disconnect(self, why: Why) -> (Self, Vec<Action>) {
        let leaving = match self {
            Self::Leaving(leaving) if leaving.disconnected => return (self, vec![]),
            // A worker asked to leave (or stopped, unresponsive) that then
            // says it leaves keeps its reason.
            Self::Leaving(leaving) => Leaving {
                disconnected: true,
                ..leaving
            },
            _ => Leaving {
                why,
                disconnected: true,
                terminating: false,
            },
        };
        (Self::Leaving(leaving), vec![Action::Disconnect])
    }

    /// It broke the protocol: `workerError`, then it is disconnected. Once
    /// disconnected, nothing it sent is read any more.
    fn fail(self, error: ProtocolError) -> (Self, Vec<Action>) {
        let (state, mut actions) = self.disconnect(Why::Failed);
        if actions.is_empty() {
            return (state, actions);
        }
        actions.insert(0, Action::Fail(error));
        (state, actions)
    }
}

impl Leaving {
    /// Triggers that matter while leaving (exit, failures and the end of the
    /// channel are handled with every state's).
    fn on(mut self, trigger: Trigger) -> (WorkerState, Vec<Action>) {
        let actions = match trigger {
            Trigger::Leave(why, grace) => {
                self.why = why;
                let mut actions = Vec::new();
                if !self.disconnected {
                    actions.push(Action::AskToLeave);
                }
                if !std::mem::replace(&mut self.terminating, true) {
                    actions.push(Action::TerminateAfter(grace));
                }
                actions
            }
            Trigger::Terminate(None) => {
                self.terminating = true;
                vec![Action::Terminate]
            }
            Trigger::Terminate(Some(grace)) if !self.terminating => {
                self.terminating = true;
                vec![Action::TerminateAfter(grace)]
            }
            // Hello and ready: a leaving worker does not come back.
            _ => vec![],
        };
        (WorkerState::Leaving(self), actions)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;
    use Action as A;
    use WorkerState::{Online, Ready, Starting};

    const GONE: WorkerState = WorkerState::Gone {
        after: AfterExit::Policy,
    };
    const GRACE: Duration = Duration::from_secs(5);

    fn leaving(why: Why, disconnected: bool, terminating: bool) -> WorkerState {
        WorkerState::Leaving(Leaving {
            why,
            disconnected,
            terminating,
        })
    }

    /// Every state a worker can be in.
    fn every_state() -> Vec<WorkerState> {
        let mut states = vec![Starting, Online, Ready, GONE];
        for why in [
            Why::Disconnected,
            Why::Failed,
            Why::Announced,
            Why::ShutDown,
            Why::Recycled,
            Why::Replaced,
            Why::ScaledDown,
        ] {
            for disconnected in [false, true] {
                for terminating in [false, true] {
                    states.push(leaving(why, disconnected, terminating));
                }
            }
        }
        states
    }

    fn hello(ready_on: Readiness) -> Trigger {
        Trigger::Hello {
            version: protocol::VERSION,
            ready_on,
        }
    }

    fn is_fail(actions: &[Action]) -> bool {
        matches!(actions, [A::Fail(_), A::Disconnect])
    }

    #[test]
    fn a_framed_worker_comes_online_at_its_hello_and_ready_when_it_says_so() {
        let (state, actions) = Starting.on(Trigger::Started {
            hello: true,
            ready_on: Readiness::Message,
        });
        assert_eq!((state, actions), (Starting, vec![]));
        let (state, actions) = state.on(hello(Readiness::Message));
        assert_eq!((state, actions), (Online, vec![A::Online]));
        let (state, actions) = state.on(Trigger::Ready);
        assert_eq!((state, actions), (Ready, vec![A::Ready]));
        assert_eq!(state.admits("message", false), Ok(true));
    }

    #[test]
    fn a_worker_once_connected_is_ready_as_its_readiness_says() {
        let expected = [
            (Readiness::Message, Online, vec![A::Online]),
            (Readiness::Notify, Online, vec![A::Online]),
            (Readiness::Started, Ready, vec![A::Online, A::Ready]),
            (
                Readiness::Listening,
                Online,
                vec![A::Online, A::PollListening],
            ),
        ];
        for (ready_on, state, actions) in expected {
            let started = Trigger::Started {
                hello: false,
                ready_on,
            };
            assert_eq!(Starting.on(started), (state, actions.clone()));
            assert_eq!(Starting.on(hello(ready_on)), (state, actions));
        }
        // Found listening.
        assert_eq!(Online.on(Trigger::Ready), (Ready, vec![A::Ready]));
    }

    #[test]
    fn frames_out_of_order_are_protocol_errors() {
        for version in [0, protocol::VERSION + 1] {
            let wrong_version = Starting.on(Trigger::Hello {
                version,
                ready_on: Readiness::Message,
            });
            assert_eq!(wrong_version.0, leaving(Why::Failed, true, false));
            assert!(matches!(
                wrong_version.1[..],
                [A::Fail(ProtocolError::Version { received, .. }), A::Disconnect] if received == version
            ));
        }
        // A worker of the oldest version still speaks with us.
        let oldest = Starting.on(Trigger::Hello {
            version: protocol::OLDEST_VERSION,
            ready_on: Readiness::Message,
        });
        assert_eq!(oldest.0, Online);
        for trigger in [Trigger::Ready, Trigger::Announce] {
            let (state, actions) = Starting.on(trigger.clone());
            assert!(is_fail(&actions), "{trigger:?} before hello: {actions:?}");
            assert_eq!(state, leaving(Why::Failed, true, false));
        }
        assert!(is_fail(&Online.on(hello(Readiness::Message)).1));
        assert!(is_fail(&Ready.on(hello(Readiness::Message)).1));
        assert!(is_fail(&Ready.on(Trigger::Ready).1));
        for (frame, primary_only) in [("message", false), ("listening", true)] {
            assert!(matches!(
                Starting.admits(frame, primary_only),
                Err(ProtocolError::UnexpectedFrame { reason, .. }) if reason.contains("hello")
            ));
        }
        assert!(matches!(
            Online.admits("connection", true),
            Err(ProtocolError::UnexpectedFrame { reason, .. }) if reason.contains("primary")
        ));
        let error = ProtocolError::InvalidMessage("x".into());
        assert_eq!(
            Ready.on(Trigger::Broke(error.clone())),
            (
                leaving(Why::Failed, true, false),
                vec![A::Fail(error), A::Disconnect]
            )
        );
    }

    #[test]
    fn a_ready_timeout_fails_only_workers_not_yet_ready() {
        let after = Duration::from_secs(1);
        for state in [Starting, Online] {
            let (next, actions) = state.on(Trigger::ReadyTimeout(after));
            assert_eq!(next, leaving(Why::Failed, true, false));
            assert_eq!(
                actions,
                [A::Fail(ProtocolError::ReadyTimeout(after)), A::Disconnect]
            );
        }
        for state in every_state().into_iter().skip(2) {
            assert_eq!(state.on(Trigger::ReadyTimeout(after)), (state, vec![]));
        }
    }

    #[test]
    fn the_end_of_the_channel_disconnects_once() {
        for state in [Starting, Online, Ready] {
            let (next, actions) = state.on(Trigger::Closed);
            assert_eq!(
                (next, actions),
                (leaving(Why::Disconnected, true, false), vec![A::Disconnect])
            );
            assert_eq!(next.on(Trigger::Closed), (next, vec![]));
            let error = ProtocolError::InvalidMessage("late".into());
            assert_eq!(next.on(Trigger::Broke(error)), (next, vec![]));
            assert_eq!(next.admits("message", false), Ok(false));
        }
        // Asked to leave, then disconnected: still voluntary.
        let asked = leaving(Why::ShutDown, false, true);
        assert_eq!(
            asked.on(Trigger::Closed),
            (leaving(Why::ShutDown, true, true), vec![A::Disconnect])
        );
    }

    #[test]
    fn a_worker_that_announces_it_leaves_exits_voluntarily() {
        let (state, actions) = Ready.on(Trigger::Announce);
        assert_eq!(
            (state, actions),
            (leaving(Why::Announced, true, false), vec![A::Disconnect])
        );
        let (state, actions) = state.on(Trigger::Exited(None));
        assert_eq!(state, GONE);
        assert_eq!(
            actions,
            [A::Exit {
                status: None,
                voluntary: true,
            }]
        );
    }

    #[test]
    fn asking_to_leave_sends_the_request_and_schedules_termination_once() {
        for state in [Starting, Online, Ready] {
            let (next, actions) = state.on(Trigger::Leave(Why::ShutDown, GRACE));
            assert_eq!(next, leaving(Why::ShutDown, false, true));
            assert_eq!(actions, [A::AskToLeave, A::TerminateAfter(GRACE)]);
            // Asked again (a shutdown after a recycle): nothing new to do but
            // the reason.
            let (again, actions) = next.on(Trigger::Leave(Why::Recycled, GRACE));
            assert_eq!(again, leaving(Why::Recycled, false, true));
            assert_eq!(actions, [A::AskToLeave]);
        }
        // Stopped as unresponsive, it says it leaves: still a failure.
        let (stopped, _) = Ready.on(Trigger::Leave(Why::Failed, Duration::ZERO));
        let (next, _) = stopped.on(Trigger::Announce);
        assert_eq!(next, leaving(Why::Failed, true, true));
        assert_eq!(
            next.on(Trigger::Exited(None)).1,
            [A::Exit {
                status: None,
                voluntary: false
            }]
        );
        // Already disconnected: no request, termination if not yet under way.
        let (next, actions) =
            leaving(Why::Disconnected, true, false).on(Trigger::Leave(Why::ShutDown, GRACE));
        assert_eq!(next, leaving(Why::ShutDown, true, true));
        assert_eq!(actions, [A::TerminateAfter(GRACE)]);
    }

    #[test]
    fn termination_is_scheduled_once_but_sent_now_whenever_asked() {
        let state = leaving(Why::Failed, true, false);
        let (state, actions) = state.on(Trigger::Terminate(Some(GRACE)));
        assert_eq!(actions, [A::TerminateAfter(GRACE)]);
        assert_eq!(state.on(Trigger::Terminate(Some(GRACE))).1, []);
        assert_eq!(state.on(Trigger::Terminate(None)).1, [A::Terminate]);
        for state in [Starting, Online, Ready, GONE] {
            assert_eq!(state.on(Trigger::Terminate(None)), (state, vec![]));
        }
    }

    #[test]
    fn a_leaving_worker_does_not_come_back_but_its_frames_are_delivered() {
        for state in every_state() {
            let WorkerState::Leaving(leaving) = state else {
                continue;
            };
            for trigger in [
                hello(Readiness::Message),
                Trigger::Ready,
                Trigger::Started {
                    hello: false,
                    ready_on: Readiness::Started,
                },
            ] {
                assert_eq!(state.on(trigger), (state, vec![]));
            }
            assert_eq!(state.admits("message", false), Ok(!leaving.disconnected));
        }
    }

    #[test]
    fn every_state_ends_in_one_exit_after_one_disconnect() {
        for state in every_state() {
            let status = Some(ExitStatus::from_raw(9));
            let (next, actions) = state.on(Trigger::Exited(status));
            let (voluntary, after, disconnected) = match state {
                WorkerState::Leaving(l) => (l.why.voluntary(), l.why.after_exit(), l.disconnected),
                WorkerState::Gone { .. } => {
                    assert_eq!((next, actions), (state, vec![]));
                    continue;
                }
                _ => (false, AfterExit::Policy, false),
            };
            assert_eq!(next, WorkerState::Gone { after });
            let mut expected = if disconnected {
                vec![]
            } else {
                vec![A::Disconnect]
            };
            expected.push(A::Exit { status, voluntary });
            assert_eq!(actions, expected, "exit from {state:?}");
        }
    }

    #[test]
    fn nothing_happens_to_a_gone_worker() {
        for trigger in [
            Trigger::Started {
                hello: false,
                ready_on: Readiness::Started,
            },
            hello(Readiness::Message),
            Trigger::Ready,
            Trigger::Announce,
            Trigger::Broke(ProtocolError::InvalidMessage("x".into())),
            Trigger::Closed,
            Trigger::ReadyTimeout(GRACE),
            Trigger::Leave(Why::ShutDown, GRACE),
            Trigger::Terminate(None),
            Trigger::Exited(None),
        ] {
            assert_eq!(GONE.on(trigger), (GONE, vec![]));
        }
        assert_eq!(GONE.admits("message", false), Ok(false));
    }
}
