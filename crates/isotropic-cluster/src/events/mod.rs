//! Staged events, with the original's semantics (isotropic-pubsub).
//!
//! Every publish runs its stages in order: [`Stage::Before`], [`Stage::On`],
//! [`Stage::Complete`] (the event's default action, which is not a
//! subscriber) and [`Stage::After`]. A handler may [`prevent`](Event::prevent)
//! the default action (which also skips `after`), stop the event after the
//! current stage, stop the rest of the current stage, or unsubscribe itself.
//! Publishing is synchronous and depth-first: an event published by a handler
//! or a default action runs to its end before the outer one goes on.
//!
//! - `event`: [`Stage`], [`Topic`] and [`Event`], what a handler sees;
//! - `hub`: [`Hub`], a host's subscriptions;
//! - `publish`: [`publish()`], [`subscribe()`] and [`route()`], the dispatch rules;
//! - `subscription`: the [`Subscribe`] methods and [`Subscription`] handles;
//! - `stream`: [`EventStream`], the async stream of a host's events;
//! - `sealed`: the traits `topics!` and `host!` implement (see `crate::topics`).

mod event;
mod hub;
mod publish;
pub(crate) mod sealed;
mod stream;
mod subscription;

pub use event::{Event, Stage, Topic};
pub(crate) use hub::Hub;
pub(crate) use publish::{publish, route, subscribe};
pub(crate) use sealed::Handler;
pub use stream::EventStream;
pub(crate) use stream::StreamSource;
pub(crate) use subscription::SubscriptionKey;
pub use subscription::{Subscribe, Subscription};
