//! What makes a type an event host ([`HostImpl`]: its subscriptions and its
//! stream) and what an event does on its host ([`TopicImpl`]: its default
//! action and how often it can happen). `topics!` and `host!` implement them
//! (see `crate::topics`).
#![allow(unreachable_pub, missing_docs)]

use super::event::Topic;
use super::hub::Hub;
use super::panic::HandlerPanic;
use super::stream::{StreamEvent, StreamSource};

/// How often an event can complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// Any number of times.
    No,
    /// The first publish that reaches the default action is the only one.
    Complete,
    /// The first publish is the only one, prevented or not.
    Publish,
}

pub trait HostImpl: Send + Sized + 'static {
    type Stream: StreamEvent;
    /// The event that carries incoming messages (for typed routing).
    type Inbound: Topic<Host = Self>;
    fn hub(&mut self) -> &mut Hub;
    fn stream(&self) -> &StreamSource<Self::Stream>;
    /// A handler panicked (caught); when this returns, the event goes on as
    /// if the handler had returned.
    fn handler_panicked(&mut self, panic: HandlerPanic);
}

pub trait TopicImpl: Topic<Host: HostImpl> {
    const ONCE: Once = Once::No;
    /// The default action.
    fn complete(host: &mut Self::Host, event: &Self);
    /// This event as an item of the host's event stream.
    fn into_stream(self) -> <Self::Host as HostImpl>::Stream;
}
