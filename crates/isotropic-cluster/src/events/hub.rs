//! The subscriptions of one host: handlers by event type and stage, routes by
//! message type, and the once-only events that have happened.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::event::{Handler, RouteFn, Stage, Topic};
use super::key::{SubscriptionKey, Target};

struct Slot {
    once: bool,
    handler: Option<Box<dyn Any + Send>>,
}

struct Stored {
    event: Box<dyn Any + Send>,
    /// The first publish was prevented where it stopped: late subscribers are
    /// not called.
    blocked: bool,
}

/// Hashes keys made of `TypeId`s (already hashes) by folding their words:
/// publishing looks the hub up a few times per event, so SipHash showed in
/// profiles. Also for maps by worker id looked up per frame (not keys an
/// attacker picks).
pub(crate) type ByTypeId = BuildHasherDefault<FoldHasher>;

#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_ne_bytes(word));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Handlers taken out, with their subscription ids.
pub(super) type Taken = Vec<(u64, Box<dyn Any + Send>)>;

/// A route's subscription id, and its handler (taken out while it runs).
type RouteSlot = (u64, Option<Box<dyn Any + Send>>);

/// The handlers of one event type, per stage (by [`Stage::index`]), in
/// subscription order (by id).
type Stages = [Vec<(u64, Slot)>; 4];

/// Where an event type's handlers are in a [`Hub`]: its
/// [`SLOT`](super::event::SealedTopic::SLOT).
#[derive(Debug, Clone, Copy)]
pub(super) struct TopicIndex(pub(super) usize);

/// The subscriptions of one host, by event type and stage.
///
/// A handler is taken out of its slot while it runs (it gets the host, hub
/// included) and put back after, unless it was removed meanwhile. An event
/// type's handlers are at its slot (no lookup by `TypeId`), in small sorted
/// vectors (an event has few).
#[derive(Default)]
pub struct Hub {
    /// By slot; grown as events get their first subscription.
    topics: Vec<Stages>,
    stored: HashMap<TypeId, Stored, ByTypeId>,
    routes: HashMap<Arc<str>, RouteSlot>,
    /// Panics of handlers' destructors, caught when the hub dropped them,
    /// for the host to hear of (see [`take_drop_panics`](Self::take_drop_panics)).
    drop_panics: Vec<String>,
    /// Counts the changes to the stage handlers (added, removed): see
    /// [`version`](Self::version).
    version: u64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("subscriptions", &self.subscriptions())
            .finish()
    }
}

impl Hub {
    /// Drops `value` (handlers, and what they own), catching a panic of its
    /// destructor: a handler's `Drop` is user code too.
    pub(super) fn discard(&mut self, value: impl Send) {
        if let Err(message) = super::catch(move || drop(value)) {
            self.drop_panics.push(message);
        }
    }

    /// Changes whenever a stage handler is added or removed (or may have
    /// been): handlers taken out while it stays the same are still
    /// subscribed, in the same places.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Takes out every handler of `topic`, by stage (by [`Stage::index`])
    /// in subscription order, with their ids; `None` (and nothing taken) if
    /// one of them is once-only.
    pub(super) fn take_all(&mut self, topic: TopicIndex) -> Option<[Taken; 4]> {
        let Some(stages) = self.topics.get_mut(topic.0) else {
            return Some(Default::default());
        };
        if stages.iter().flatten().any(|(_, slot)| slot.once) {
            return None;
        }
        Some(stages.each_mut().map(|slots| {
            (slots.iter_mut())
                .filter_map(|(id, slot)| Some((*id, slot.handler.take()?)))
                .collect()
        }))
    }

    /// The panics caught while dropping handlers since the last call.
    pub(crate) fn take_drop_panics(&mut self) -> Vec<String> {
        std::mem::take(&mut self.drop_panics)
    }

    /// How many handlers are subscribed (routes not counted).
    pub(super) fn subscriptions(&self) -> usize {
        self.topics.iter().flatten().map(Vec::len).sum()
    }

    /// Whether `topic` has handlers at `stage`.
    pub(super) fn has_handlers(&self, topic: TopicIndex, stage: Stage) -> bool {
        (self.topics.get(topic.0)).is_some_and(|stages| !stages[stage.index()].is_empty())
    }

    fn slots(&mut self, topic: TopicIndex, stage: Stage) -> Option<&mut Vec<(u64, Slot)>> {
        self.topics
            .get_mut(topic.0)
            .map(|stages| &mut stages[stage.index()])
    }

    /// Takes out the first handler of `topic` at `stage` subscribed after
    /// `after`: its id, whether it is once-only (and so already removed),
    /// and the handler.
    pub(super) fn take_next(
        &mut self,
        topic: TopicIndex,
        stage: Stage,
        after: u64,
    ) -> Option<(u64, bool, Box<dyn Any + Send>)> {
        let slots = self.slots(topic, stage)?;
        let from = slots.partition_point(|(id, _)| *id <= after);
        let at = from
            + slots[from..]
                .iter()
                .position(|(_, slot)| slot.handler.is_some())?;
        let (id, slot) = &mut slots[at];
        let (id, once) = (*id, slot.once);
        let handler = slot.handler.take()?;
        if once {
            slots.remove(at);
            self.version += 1;
        }
        Some((id, once, handler))
    }

    /// Puts back a handler taken by [`take_next`](Self::take_next) (or
    /// [`take_all`](Self::take_all)), unless its subscription was removed
    /// meanwhile; whether handlers subscribed after it may follow (the
    /// common case of the last one saves a search).
    pub(super) fn put_back(
        &mut self,
        (topic, stage): (TopicIndex, Stage),
        id: u64,
        handler: Box<dyn Any + Send>,
    ) -> bool {
        let slot = self.slots(topic, stage).and_then(|slots| {
            let at = slots.binary_search_by_key(&id, |(id, _)| *id).ok()?;
            let last = at + 1 == slots.len();
            Some((&mut slots[at].1, last))
        });
        match slot {
            Some((slot, last)) => {
                slot.handler = Some(handler);
                !last
            }
            None => {
                self.discard(handler);
                true
            }
        }
    }

    /// Ends subscription `id` of `topic` at `stage`, whose handler (taken
    /// out) unsubscribed itself while it ran: its slot goes, and the handler.
    pub(super) fn unsubscribed(
        &mut self,
        (topic, stage): (TopicIndex, Stage),
        id: u64,
        handler: impl Send,
    ) {
        let target = Target::Stage(topic.0, stage);
        self.remove(SubscriptionKey { target, id });
        self.discard(handler);
    }

    /// Takes out the route for `name`, with its subscription id.
    pub(super) fn take_route(&mut self, name: &str) -> Option<(u64, Box<dyn Any + Send>)> {
        self.routes
            .get_mut(name)
            .and_then(|(id, handler)| Some((*id, handler.take()?)))
    }

    /// Puts back a route taken by [`take_route`](Self::take_route), unless it
    /// was removed or replaced meanwhile.
    pub(super) fn put_back_route(&mut self, name: &str, id: u64, handler: Box<dyn Any + Send>) {
        match self.routes.get_mut(name) {
            Some((current, slot)) if *current == id => *slot = Some(handler),
            _ => self.discard(handler),
        }
    }

    pub(crate) fn remove(&mut self, key: SubscriptionKey) {
        let removed = match key.target {
            Target::Stage(topic, stage) => self.slots(TopicIndex(topic), stage).and_then(|slots| {
                let at = slots.binary_search_by_key(&key.id, |(id, _)| *id).ok()?;
                slots.remove(at).1.handler
            }),
            Target::Route(name) if self.routes.get(&name).is_some_and(|(id, _)| *id == key.id) => {
                self.routes.remove(&name).and_then(|(_, handler)| handler)
            }
            Target::Route(_) => None,
        };
        self.version += 1;
        self.discard(removed);
    }

    /// Removes every subscription and route (and the stored once-events).
    pub(crate) fn clear(&mut self) {
        // (The topics keep their places: an index found before stays
        // the same type's.)
        let topics: Vec<Stages> = self.topics.iter_mut().map(std::mem::take).collect();
        let stored = std::mem::take(&mut self.stored);
        let routes = std::mem::take(&mut self.routes);
        self.version += 1;
        self.discard((topics, stored, routes));
    }

    /// Adds a subscription (no late-subscriber check: for builders).
    pub(crate) fn insert<E: Topic>(
        &mut self,
        key: SubscriptionKey,
        once: bool,
        handler: Handler<E>,
    ) {
        if let Target::Stage(topic, stage) = key.target {
            if self.topics.len() <= topic {
                self.topics.resize_with(topic + 1, Stages::default);
            }
            let slots = &mut self.topics[topic][stage.index()];
            let slot = Slot {
                once,
                handler: Some(Box::new(handler)),
            };
            // (Ids grow: normally the last.)
            let at = slots.partition_point(|(id, _)| *id < key.id);
            slots.insert(at, (key.id, slot));
            self.version += 1;
        }
    }

    /// Sets the route for `key`'s type name, replacing any earlier one.
    pub(crate) fn insert_route<E: Topic>(&mut self, key: SubscriptionKey, route: RouteFn<E>) {
        if let Target::Route(name) = key.target {
            let replaced = self.routes.insert(name, (key.id, Some(Box::new(route))));
            self.discard(replaced);
        }
    }

    /// Whether the once-only event `topic` has happened.
    pub(super) fn happened(&self, topic: TypeId) -> bool {
        self.stored.contains_key(&topic)
    }

    /// Records that the once-only event `event` has happened.
    pub(super) fn store<E: Topic>(&mut self, event: &E) {
        self.stored.insert(
            TypeId::of::<E>(),
            Stored {
                event: Box::new(event.clone()),
                blocked: false,
            },
        );
    }

    /// Sets whether the stored event `topic` blocks late subscribers.
    pub(super) fn set_blocked(&mut self, topic: TypeId, blocked: bool) {
        if let Some(stored) = self.stored.get_mut(&topic) {
            stored.blocked = blocked;
        }
    }

    /// `None` unless the once-only `E` has happened; then the data to call a
    /// late subscriber with, or `None` if it is blocked.
    pub(super) fn late<E: Topic>(&self) -> Option<Option<E>> {
        let stored = self.stored.get(&TypeId::of::<E>())?;
        Some(
            (!stored.blocked)
                .then(|| stored.event.downcast_ref::<E>().cloned())
                .flatten(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_hasher_tells_type_ids_and_stages_apart() {
        use std::hash::BuildHasher as _;
        let hash = |key: (TypeId, Stage)| ByTypeId::default().hash_one(key);
        let keys = [
            (TypeId::of::<u8>(), Stage::On),
            (TypeId::of::<u8>(), Stage::After),
            (TypeId::of::<u16>(), Stage::On),
        ];
        assert_ne!(hash(keys[0]), hash(keys[1]));
        assert_ne!(hash(keys[0]), hash(keys[2]));
        assert_eq!(hash(keys[0]), hash((TypeId::of::<u8>(), Stage::On)));
    }
}
