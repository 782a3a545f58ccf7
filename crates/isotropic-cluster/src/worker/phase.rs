//! The worker's own lifecycle as a type: its [`Phase`], and the one pure rule
//! ([`Phase::step`]) that says, for each input, the next phase and what the
//! context does.
//!
//! ```text
//! Starting ──initialized──▶ Running ──destroy started──▶ Destroying ──cleanup done──▶ Destroyed
//!     └─────────────────destroy started───────────────────────▲
//! ```
//!
//! Beside the phase, the handshake: until the primary's hello came, any other
//! frame is a protocol error; after it, a second hello is one.

use crate::protocol::{self, Frame};

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `initialize` has not completed (the actor does not run yet).
    Starting,
    /// Initialized; `greeted` once the primary's hello came.
    Running { greeted: bool },
    /// `destroy` completed: the cleanup runs, and frames are still handled.
    Destroying { greeted: bool },
    /// Disconnected: the actor ends.
    Destroyed,
}

/// What happened to the worker.
#[derive(Debug, Clone, Copy)]
pub(super) enum Input<'a> {
    /// `initialize`'s default action ran.
    Initialized,
    /// A frame from the primary.
    Frame(&'a Frame),
    /// The channel from the primary ended, or broke.
    ChannelEnd,
    /// A destroy was asked for: `destroy`, SIGTERM, the last handle dropped,
    /// or `primaryDisconnect`'s default action.
    DestroyRequested,
    /// `destroy`'s default action ran.
    DestroyStarted,
    /// The cleanup is done, or timed out.
    CleanupDone,
}

/// What the context does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing.
    None,
    /// Handle the frame by its kind.
    Handle,
    /// The frame is out of place: log it, then as [`PrimaryGone`](Self::PrimaryGone).
    Reject { announce: bool },
    /// The primary is gone: fail the requests waiting for it, and publish
    /// `primaryDisconnect` if `announce`.
    PrimaryGone { announce: bool },
    /// Publish `destroy`.
    Destroy,
    /// Wake the `closing` waiters and start the cleanup.
    Cleanup,
    /// Disconnect, publish `destroyComplete`, tear down.
    Finish,
}

impl Phase {
    /// The phase after `input`, and what to do.
    pub(super) fn step(self, input: Input<'_>) -> (Phase, Action) {
        use Phase::*;
        match (self, input) {
            (Starting, Input::Initialized) => (Running { greeted: false }, Action::None),
            (Starting | Running { .. }, Input::DestroyRequested) => (self, Action::Destroy),
            (Starting, Input::DestroyStarted) => (Destroying { greeted: false }, Action::Cleanup),
            (Running { greeted }, Input::DestroyStarted) => {
                (Destroying { greeted }, Action::Cleanup)
            }
            (Running { greeted } | Destroying { greeted }, Input::Frame(frame)) => {
                self.frame(greeted, frame)
            }
            (Running { .. } | Destroying { .. }, Input::ChannelEnd) => (
                self,
                Action::PrimaryGone {
                    announce: self.announces(),
                },
            ),
            (Destroying { .. }, Input::CleanupDone) => (Destroyed, Action::Finish),
            // Already done (`initialize`, a destroy), or cannot happen here:
            // no frame is read before `Running`, no cleanup runs before
            // `Destroying`, and nothing happens after `Destroyed`.
            (Starting, Input::Frame(_) | Input::ChannelEnd | Input::CleanupDone)
            | (Running { .. }, Input::Initialized | Input::CleanupDone)
            | (
                Destroying { .. },
                Input::Initialized | Input::DestroyRequested | Input::DestroyStarted,
            )
            | (Destroyed, _) => (self, Action::None),
        }
    }

    /// The handshake, then the kinds of frame a primary sends.
    fn frame(self, greeted: bool, frame: &Frame) -> (Phase, Action) {
        let announce = self.announces();
        match frame {
            Frame::Hello { protocol, .. }
                if !greeted
                    && (protocol::OLDEST_VERSION..=protocol::VERSION).contains(protocol) =>
            {
                (self.greeted(), Action::None)
            }
            Frame::Disconnect if greeted => (self, Action::PrimaryGone { announce }),
            Frame::Message(_)
            | Frame::Listening { .. }
            | Frame::Connection { .. }
            | Frame::Request { .. }
            | Frame::Reply { .. }
            | Frame::Heartbeat
            | Frame::Bytes(_)
            | Frame::Attached(..)
            | Frame::BytesRequest { .. }
            | Frame::BytesReply { .. }
                if greeted =>
            {
                (self, Action::Handle)
            }
            _ => (self, Action::Reject { announce }),
        }
    }

    /// Whether a message frame is handled now (what [`Phase::step`] says
    /// of one: after the hello, until destroyed).
    pub(super) fn delivers(self) -> bool {
        matches!(
            self,
            Phase::Running { greeted: true } | Phase::Destroying { greeted: true }
        )
    }

    fn greeted(self) -> Phase {
        match self {
            Phase::Running { .. } => Phase::Running { greeted: true },
            Phase::Destroying { .. } => Phase::Destroying { greeted: true },
            other => other,
        }
    }

    /// Whether losing the primary is news (not while being destroyed anyway).
    fn announces(self) -> bool {
        !self.is_closing()
    }

    /// Whether the worker is being destroyed, or is.
    pub(super) fn is_closing(self) -> bool {
        matches!(self, Phase::Destroying { .. } | Phase::Destroyed)
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;
    use super::*;
    use crate::message::Message;

    const RUNNING: Phase = Running { greeted: true };
    const DESTROYING: Phase = Destroying { greeted: true };

    fn hello() -> Frame {
        Frame::Hello {
            protocol: protocol::VERSION,
            heartbeat: false,
            served: false,
            segments: false,
        }
    }

    fn message() -> Frame {
        Frame::Message(Message::from_json("1").expect("valid json"))
    }

    fn step(phase: Phase, input: Input<'_>) -> (Phase, Action) {
        phase.step(input)
    }

    #[test]
    fn starting_becomes_running_once_initialized() {
        assert_eq!(
            step(Starting, Input::Initialized),
            (Running { greeted: false }, Action::None)
        );
        assert_eq!(step(RUNNING, Input::Initialized), (RUNNING, Action::None));
    }

    #[test]
    fn the_primary_s_hello_comes_first_and_once() {
        let fresh = Running { greeted: false };
        assert_eq!(step(fresh, Input::Frame(&hello())), (RUNNING, Action::None));
        let reject = (fresh, Action::Reject { announce: true });
        assert_eq!(step(fresh, Input::Frame(&message())), reject);
        assert_eq!(step(fresh, Input::Frame(&Frame::Disconnect)), reject);
        assert_eq!(step(fresh, Input::Frame(&Frame::Heartbeat)), reject);
        for version in [0, protocol::VERSION + 1] {
            let wrong = Frame::Hello {
                protocol: version,
                heartbeat: false,
                served: false,
                segments: false,
            };
            assert_eq!(step(fresh, Input::Frame(&wrong)), reject);
        }
        // A primary of the oldest version still speaks with us.
        let oldest = Frame::Hello {
            protocol: protocol::OLDEST_VERSION,
            heartbeat: false,
            served: false,
            segments: false,
        };
        assert_eq!(step(fresh, Input::Frame(&oldest)), (RUNNING, Action::None));
        assert_eq!(
            step(RUNNING, Input::Frame(&hello())),
            (RUNNING, Action::Reject { announce: true })
        );
    }

    #[test]
    fn a_hello_still_counts_while_destroying() {
        let fresh = Destroying { greeted: false };
        assert_eq!(
            step(fresh, Input::Frame(&hello())),
            (DESTROYING, Action::None)
        );
        assert_eq!(
            step(fresh, Input::Frame(&message())),
            (fresh, Action::Reject { announce: false })
        );
    }

    #[test]
    fn after_the_hello_the_primary_s_frames_are_handled() {
        let frames = [
            message(),
            Frame::Listening {
                id: 1,
                result: Err((crate::net::ListenErrorKind::Other, "no".into())),
                passed: false,
                acks: false,
            },
            Frame::Connection { listener: 1 },
            Frame::Request {
                id: 1,
                message: Message::from_json("2").expect("valid json"),
            },
            Frame::Reply {
                id: 1,
                result: Err("no".into()),
            },
            Frame::BytesRequest {
                id: 2,
                name: "x".into(),
                body: bytes::Bytes::new(),
            },
            Frame::BytesReply {
                id: 2,
                result: Err("no".into()),
            },
            Frame::Heartbeat,
        ];
        for phase in [RUNNING, DESTROYING] {
            for frame in &frames {
                assert_eq!(step(phase, Input::Frame(frame)), (phase, Action::Handle));
            }
        }
    }

    #[test]
    fn frames_only_a_worker_sends_are_rejected() {
        let listen = Frame::Listen {
            id: 1,
            address: "127.0.0.1:0".parse().expect("an address"),
            acks: true,
        };
        for frame in [Frame::Ready, listen, Frame::Accepted { listener: 1 }] {
            assert_eq!(
                step(RUNNING, Input::Frame(&frame)),
                (RUNNING, Action::Reject { announce: true })
            );
        }
    }

    #[test]
    fn losing_the_primary_is_announced_unless_destroying() {
        for input in [Input::ChannelEnd, Input::Frame(&Frame::Disconnect)] {
            assert_eq!(
                step(RUNNING, input),
                (RUNNING, Action::PrimaryGone { announce: true })
            );
            assert_eq!(
                step(DESTROYING, input),
                (DESTROYING, Action::PrimaryGone { announce: false })
            );
        }
        let fresh = Running { greeted: false };
        assert_eq!(
            step(fresh, Input::ChannelEnd),
            (fresh, Action::PrimaryGone { announce: true })
        );
    }

    #[test]
    fn a_destroy_is_asked_for_until_one_started() {
        for phase in [Starting, RUNNING] {
            assert_eq!(
                step(phase, Input::DestroyRequested),
                (phase, Action::Destroy)
            );
        }
        for phase in [DESTROYING, Destroyed] {
            assert_eq!(step(phase, Input::DestroyRequested), (phase, Action::None));
        }
    }

    #[test]
    fn a_started_destroy_runs_the_cleanup_and_keeps_the_handshake() {
        assert_eq!(
            step(RUNNING, Input::DestroyStarted),
            (DESTROYING, Action::Cleanup)
        );
        let fresh = Running { greeted: false };
        assert_eq!(
            step(fresh, Input::DestroyStarted),
            (Destroying { greeted: false }, Action::Cleanup)
        );
        // A handler of `initialize` may destroy the worker.
        assert_eq!(
            step(Starting, Input::DestroyStarted),
            (Destroying { greeted: false }, Action::Cleanup)
        );
        assert_eq!(
            step(DESTROYING, Input::Initialized),
            (DESTROYING, Action::None)
        );
    }

    #[test]
    fn the_cleanup_s_end_finishes_the_destroy() {
        assert_eq!(
            step(DESTROYING, Input::CleanupDone),
            (Destroyed, Action::Finish)
        );
    }

    #[test]
    fn nothing_happens_after_destroyed() {
        for input in [
            Input::Initialized,
            Input::Frame(&hello()),
            Input::ChannelEnd,
            Input::DestroyRequested,
            Input::DestroyStarted,
            Input::CleanupDone,
        ] {
            assert_eq!(step(Destroyed, input), (Destroyed, Action::None));
        }
    }

    #[test]
    fn closing_covers_destroying_and_destroyed() {
        assert!(!Starting.is_closing());
        assert!(!RUNNING.is_closing());
        assert!(DESTROYING.is_closing());
        assert!(Destroyed.is_closing());
    }

    /// The worker's shortcut for bytes frames says what the rule says.
    #[test]
    fn delivers_agrees_with_the_rule_for_messages() {
        let bytes = Frame::Bytes(bytes::Bytes::from_static(b"x"));
        for phase in [
            Starting,
            Running { greeted: false },
            RUNNING,
            Destroying { greeted: false },
            DESTROYING,
            Destroyed,
        ] {
            let handled = step(phase, Input::Frame(&bytes)).1 == Action::Handle;
            assert_eq!(phase.delivers(), handled, "{phase:?}");
            let handled = step(phase, Input::Frame(&message())).1 == Action::Handle;
            assert_eq!(phase.delivers(), handled, "{phase:?}");
        }
    }
}
