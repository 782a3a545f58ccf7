//! What the public traits name but users cannot: the sealing traits
//! implemented by `topics!` and `host!` (see `crate::topics`), and the handler
//! types.
#![allow(unreachable_pub, missing_docs, missing_debug_implementations)]

use super::{Event, Hub, StreamSource, Topic};
use crate::{Message, MessageError};

/// A handler of events of type `E`.
pub type Handler<E> = Box<dyn FnMut(&mut Event<'_, E>) + Send>;
/// A typed-routing handler: decodes the message and handles it.
pub type RouteFn<E> =
    Box<dyn FnMut(&mut Event<'_, E>, &Message) -> Result<(), MessageError> + Send>;

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

pub trait TopicImpl: Sized {
    const ONCE: Once = Once::No;
    /// The default action.
    fn complete(host: &mut <Self as Topic>::Host, event: &Self)
    where
        Self: Topic;
    /// This event as an item of the host's event stream.
    fn into_stream(self) -> <<Self as Topic>::Host as HostImpl>::Stream
    where
        Self: Topic;
}

pub trait HostImpl: Send + Sized + 'static {
    type Stream: Clone + Send + 'static;
    /// The event that carries incoming messages (for typed routing).
    type Inbound: Topic<Host = Self>;
    fn hub(&mut self) -> &mut Hub;
    fn stream(&self) -> &StreamSource<Self::Stream>;
}
