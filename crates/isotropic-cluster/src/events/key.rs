//! The keys that identify subscriptions: what each is attached to (an event
//! type and stage, or a route), and its place in subscription order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::event::{Stage, Topic};

/// What a subscription is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// An event, by its [`SLOT`](super::event::SealedTopic::SLOT), at a stage.
    Stage(usize, Stage),
    Route(Arc<str>),
}

/// Identifies one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionKey {
    pub(super) target: Target,
    pub(super) id: u64,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl SubscriptionKey {
    /// A new key for `E` at `stage`, ordered after every earlier one.
    pub(crate) fn new<E: Topic>(stage: Stage) -> Self {
        Self {
            target: Target::Stage(E::SLOT, stage),
            id: next_id(),
        }
    }

    /// A new key for the route of `type_name`.
    pub(crate) fn route(type_name: &str) -> Self {
        Self {
            target: Target::Route(type_name.into()),
            id: next_id(),
        }
    }
}
