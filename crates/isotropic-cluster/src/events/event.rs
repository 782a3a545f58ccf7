//! What a handler sees: the stages, the event types ([`Topic`]), one
//! publish of an event ([`Event`]) with the controls of its dispatch, and the
//! types of the handlers.

use std::fmt;
use std::ops::Deref;

use crate::{Message, MessageError};

/// A handler of events of type `E`.
#[allow(unreachable_pub)]
pub type Handler<E> = Box<dyn FnMut(&mut Event<'_, E>) + Send>;
/// A typed-routing handler: decodes the message and handles it.
#[allow(unreachable_pub)]
pub type RouteFn<E> =
    Box<dyn FnMut(&mut Event<'_, E>, &Message) -> Result<(), MessageError> + Send>;

/// Seals [`Topic`]: implemented by `topics!` only (see `crate::topics`),
/// which also implements `TopicImpl`, what an event does on its host.
pub trait SealedTopic {
    /// The event's place among its host's events (its position in the
    /// host's `topics!` list): where a hub keeps its handlers.
    #[doc(hidden)]
    const SLOT: usize;
}

/// The stages of an event, in the order they run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Runs first; may prevent any later stage.
    #[default]
    Before,
    /// The usual place to observe an event; may still prevent the default action.
    On,
    /// The default action (not a subscriber stage).
    Complete,
    /// Runs once the default action is done, unless the event was prevented.
    After,
}

impl Stage {
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// An event type: the data of one kind of event, and what it does by default.
///
/// Implemented by the event types of [`crate::primary`] and
/// [`crate::worker`]; sealed.
pub trait Topic: SealedTopic + Clone + Send + Sync + fmt::Debug + 'static {
    /// The context that handlers of this event act on ([`crate::primary::PrimaryContext`]
    /// or [`crate::worker::WorkerContext`]).
    type Host: Send + 'static;
    /// The original's name of the event, e.g. `"workerExit"`.
    const NAME: &'static str;
}

/// One publish of an event, as a handler sees it: the event's data (through
/// `Deref`), the controls of its dispatch, and the context to act on.
pub struct Event<'a, E: Topic> {
    pub(super) data: &'a E,
    pub(crate) host: &'a mut E::Host,
    pub(super) control: &'a mut Control,
}

impl<E: Topic> Deref for Event<'_, E> {
    type Target = E;
    fn deref(&self) -> &E {
        self.data
    }
}

impl<E: Topic> fmt::Debug for Event<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &E::NAME)
            .field("stage", &self.control.stage)
            .field("data", self.data)
            .finish_non_exhaustive()
    }
}

impl<E: Topic> Event<'_, E> {
    /// The context to act on from the handler: the primary's
    /// ([`PrimaryContext`](crate::primary::PrimaryContext): fork, send, shut
    /// down, …) or the worker's ([`WorkerContext`](crate::worker::WorkerContext):
    /// send, destroy, …). What it does runs inside the event, depth-first.
    pub fn context(&mut self) -> &mut E::Host {
        self.host
    }

    /// The event's data.
    pub fn data(&self) -> &E {
        self.data
    }

    /// The stage being dispatched.
    pub fn stage(&self) -> Stage {
        self.control.stage
    }

    /// Cancels the default action and the `after` stage. The rest of the
    /// current stage (and all of `on`, when called in `before`) still runs.
    /// No effect in `after`.
    pub fn prevent(&mut self) {
        self.prevent_stage(Stage::Complete);
    }

    /// Cancels `stage` and every later one (when the publish reaches it).
    pub fn prevent_stage(&mut self, stage: Stage) {
        self.control.prevented[stage.index()] = true;
    }

    /// Whether the default action has been prevented.
    pub fn is_prevented(&self) -> bool {
        self.control.prevented[Stage::Complete.index()]
    }

    /// Ends the event after the current stage: the remaining handlers of this
    /// stage still run, every later stage (the default action included) does not.
    pub fn stop_event(&mut self) {
        self.control.event_stopped = true;
    }

    /// Skips the remaining handlers of the current stage only.
    pub fn stop_dispatch(&mut self) {
        self.control.dispatch_stopped = true;
    }

    /// Removes the running subscription once this call returns.
    pub fn unsubscribe(&mut self) {
        self.control.unsubscribed = true;
    }
}

/// The state of one publish that its handlers control.
#[derive(Debug, Default)]
pub(super) struct Control {
    pub(super) stage: Stage,
    pub(super) prevented: [bool; 4],
    pub(super) event_stopped: bool,
    pub(super) dispatch_stopped: bool,
    pub(super) unsubscribed: bool,
}
