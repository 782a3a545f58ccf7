//! Staged events, with the original's semantics (isotropic-pubsub).
//!
//! Every publish runs its stages in order: [`Stage::Before`], [`Stage::On`],
//! [`Stage::Complete`] (the event's default action, which is not a
//! subscriber) and [`Stage::After`]. A handler may [`prevent`](Event::prevent)
//! the default action (which also skips `after`), stop the event after the
//! current stage, stop the rest of the current stage, or unsubscribe itself.
//! Publishing is synchronous and depth-first: an event published by a handler
//! or a default action runs to its end before the outer one goes on. A
//! handler that panics is caught: the host decides what follows
//! (`HostImpl::handler_panicked`), then the event goes on as if the handler
//! had returned.
//!
//! - `event`: [`Stage`], [`Topic`] and [`Event`], what a handler sees, and
//!   the handler types;
//! - `key`: [`SubscriptionKey`], what identifies a subscription;
//! - `panic`: catching a handler's panic (`catch`, `catch_async`), and what
//!   the host hears of it (`HandlerPanic`);
//! - `hub`: [`Hub`], a host's subscriptions;
//! - `stream`: [`EventStream`], the async stream of a host's events (lossy,
//!   bounded: [`Skipped`] marks a gap);
//! - `host`: the traits of a host and of its events (`HostImpl`, `TopicImpl`);
//! - `subscription`: the [`Subscribe`] methods and [`Subscription`] handles;
//! - `publish`: [`publish()`], [`subscribe()`] and [`route()`], the dispatch rules
//!   (and `publish_each`, the same for a run of events of one type);
//! - `sealed`: what `topics!` and `host!` implement and name (see
//!   `crate::topics`), re-exported in one place.
//!
//! Each module uses only those listed before it.

mod event;
mod host;
mod hub;
mod key;
mod panic;
mod publish;
pub(crate) mod sealed;
mod stream;
mod subscription;

pub(crate) use event::Handler;
pub use event::{Event, Stage, Topic};
pub(crate) use hub::{ByTypeId as FoldHash, Hub};
pub(crate) use key::SubscriptionKey;
pub(crate) use panic::{HandlerPanic, catch, catch_async};
pub(crate) use publish::{publish, publish_each, route, subscribe};
pub(crate) use stream::StreamSource;
pub use stream::{EventStream, Skipped};
pub use subscription::{Subscribe, Subscription};
