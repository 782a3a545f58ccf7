//! Staged events, with the original's semantics (isotropic-pubsub).
//!
//! Every publish runs its stages in order: [`Stage::Before`], [`Stage::On`],
//! [`Stage::Complete`] (the event's default action, which is not a
//! subscriber) and [`Stage::After`]. A handler may [`prevent`](Event::prevent)
//! the default action (which also skips `after`), stop the event after the
//! current stage, stop the rest of the current stage, or unsubscribe itself.
//! Publishing is synchronous and depth-first: an event published by a handler
//! or a default action runs to its end before the outer one goes on.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream as _;
use serde::de::DeserializeOwned;

use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{Message, MessageError};

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
    const ALL: [Stage; 4] = [Stage::Before, Stage::On, Stage::Complete, Stage::After];

    fn index(self) -> usize {
        self as usize
    }
}

/// An event type: the data of one kind of event, and what it does by default.
///
/// Implemented by the event types of [`crate::primary::events`] and
/// [`crate::worker::events`]; sealed.
pub trait Topic: sealed::TopicImpl + Clone + Send + Sync + fmt::Debug + 'static {
    /// The context that handlers of this event act on ([`crate::primary::PrimaryContext`]
    /// or [`crate::worker::WorkerContext`]).
    type Host: sealed::HostImpl;
    /// The original's name of the event, e.g. `"workerExit"`.
    const NAME: &'static str;
}

#[allow(unreachable_pub, missing_docs, missing_debug_implementations)]
pub(crate) mod sealed {
    use super::{Event, Hub, Topic};
    use crate::{Message, MessageError};

    /// A handler of events of type `E`.
    pub type Handler<E> = Box<dyn FnMut(&mut Event<'_, E>) + Send>;
    /// A typed-routing handler: decodes the message and handles it.
    pub type RouteFn<E> =
        Box<dyn FnMut(&mut Event<'_, E>, &Message) -> Result<(), MessageError> + Send>;

    /// What a subscription is attached to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Target {
        Stage(std::any::TypeId, super::Stage),
        Route(std::sync::Arc<str>),
    }

    /// Identifies one subscription.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SubscriptionKey {
        pub(crate) target: Target,
        pub(crate) id: u64,
    }

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
        fn stream(&self) -> &super::StreamSource<Self::Stream>;
    }
}
pub(crate) use sealed::{Handler, SubscriptionKey};
use sealed::{HostImpl, Once, RouteFn, Target};

/// One publish of an event, as a handler sees it: the event's data (through
/// `Deref`), the controls of its dispatch, and the context to act on.
pub struct Event<'a, E: Topic> {
    data: &'a E,
    pub(crate) host: &'a mut E::Host,
    control: &'a mut Control,
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

#[derive(Debug, Default)]
pub(crate) struct Control {
    stage: Stage,
    prevented: [bool; 4],
    event_stopped: bool,
    dispatch_stopped: bool,
    unsubscribed: bool,
}

// ===== Hub =====

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
/// profiles.
type ByTypeId = BuildHasherDefault<FoldHasher>;

#[derive(Default)]
struct FoldHasher(u64);

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

/// A route's subscription id, and its handler (taken out while it runs).
type RouteSlot = (u64, Option<Box<dyn Any + Send>>);

/// The subscriptions of one host, by event type and stage.
#[derive(Default)]
pub struct Hub {
    slots: HashMap<(TypeId, Stage), BTreeMap<u64, Slot>, ByTypeId>,
    stored: HashMap<TypeId, Stored, ByTypeId>,
    routes: HashMap<Arc<str>, RouteSlot>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count: usize = self.slots.values().map(BTreeMap::len).sum();
        f.debug_struct("Hub")
            .field("subscriptions", &count)
            .finish()
    }
}

impl Hub {
    fn take_next(
        &mut self,
        key: (TypeId, Stage),
        after: u64,
    ) -> Option<(u64, bool, Box<dyn Any + Send>)> {
        let slots = self.slots.get_mut(&key)?;
        let (&id, slot) = slots
            .range_mut(after + 1..)
            .find(|(_, slot)| slot.handler.is_some())?;
        let once = slot.once;
        let handler = slot.handler.take()?;
        if once {
            slots.remove(&id);
        }
        Some((id, once, handler))
    }

    fn put_back(&mut self, key: (TypeId, Stage), id: u64, handler: Box<dyn Any + Send>) {
        if let Some(slot) = self
            .slots
            .get_mut(&key)
            .and_then(|slots| slots.get_mut(&id))
        {
            slot.handler = Some(handler);
        }
    }

    pub(crate) fn remove(&mut self, key: SubscriptionKey) {
        match key.target {
            Target::Stage(topic, stage) => {
                if let Some(slots) = self.slots.get_mut(&(topic, stage)) {
                    slots.remove(&key.id);
                }
            }
            Target::Route(name) => {
                if self.routes.get(&name).is_some_and(|(id, _)| *id == key.id) {
                    self.routes.remove(&name);
                }
            }
        }
    }

    /// Removes every subscription and route (and the stored once-events).
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.stored.clear();
        self.routes.clear();
    }

    /// Adds a subscription (no late-subscriber check: for builders).
    pub(crate) fn insert<E: Topic>(
        &mut self,
        key: SubscriptionKey,
        once: bool,
        handler: Handler<E>,
    ) {
        if let Target::Stage(topic, stage) = key.target {
            self.slots.entry((topic, stage)).or_default().insert(
                key.id,
                Slot {
                    once,
                    handler: Some(Box::new(handler)),
                },
            );
        }
    }

    /// Sets the route for `key`'s type name, replacing any earlier one.
    pub(crate) fn insert_route<E: Topic>(&mut self, key: SubscriptionKey, route: RouteFn<E>) {
        if let Target::Route(name) = key.target {
            self.routes.insert(name, (key.id, Some(Box::new(route))));
        }
    }

    fn store<E: Topic>(&mut self, event: &E) {
        self.stored.insert(
            TypeId::of::<E>(),
            Stored {
                event: Box::new(event.clone()),
                blocked: false,
            },
        );
    }
}

/// Publishes `data` on `host`, running every stage (see the module docs).
pub(crate) fn publish<E: Topic>(host: &mut E::Host, data: E) {
    let topic = TypeId::of::<E>();
    if host.hub().stored.contains_key(&topic) {
        return;
    }
    let mut stored_here = false;
    if E::ONCE == Once::Publish {
        host.hub().store(&data);
        stored_here = true;
    }
    let mut control = Control::default();
    for stage in Stage::ALL {
        control.stage = stage;
        control.dispatch_stopped = false;
        if control.prevented[stage.index()] {
            break;
        }
        if stage == Stage::Complete {
            if E::ONCE == Once::Complete {
                if host.hub().stored.contains_key(&topic) {
                    break;
                }
                host.hub().store(&data);
                stored_here = true;
            }
            host.stream().publish(|| data.clone().into_stream());
            E::complete(host, &data);
        } else {
            dispatch(host, stage, &data, &mut control);
        }
        if control.event_stopped {
            break;
        }
    }
    if stored_here && let Some(stored) = host.hub().stored.get_mut(&topic) {
        stored.blocked = control.prevented[control.stage.index()];
    }
}

fn dispatch<E: Topic>(host: &mut E::Host, stage: Stage, data: &E, control: &mut Control) {
    let key = (TypeId::of::<E>(), stage);
    let mut after = 0;
    while let Some((id, once, handler)) = host.hub().take_next(key, after) {
        after = id;
        let Ok(mut handler) = handler.downcast::<Handler<E>>() else {
            continue;
        };
        control.unsubscribed = false;
        handler(&mut Event {
            data,
            host: &mut *host,
            control: &mut *control,
        });
        if !once && !control.unsubscribed {
            host.hub().put_back(key, id, handler);
        }
        if control.dispatch_stopped {
            break;
        }
    }
}

/// Subscribes `handler` to `key`'s event and stage. For a once-only event that
/// has already happened, the handler is called at once instead (unless that
/// event was prevented) and no subscription is made; returns whether one was.
pub(crate) fn subscribe<E: Topic>(
    host: &mut E::Host,
    key: SubscriptionKey,
    once: bool,
    mut handler: Handler<E>,
) -> bool {
    if let Some(stored) = host.hub().stored.get(&TypeId::of::<E>()) {
        let late = (!stored.blocked)
            .then(|| stored.event.downcast_ref::<E>().cloned())
            .flatten();
        if let Some(data) = late {
            let mut control = Control {
                stage: Stage::After,
                ..Control::default()
            };
            handler(&mut Event {
                data: &data,
                host,
                control: &mut control,
            });
        }
        return false;
    }
    host.hub().insert(key, once, handler);
    true
}

/// Typed routing: hands `message` to the route registered for its `type`, if
/// any. The route runs in the default action of `event`.
pub(crate) fn route<E: Topic>(
    host: &mut E::Host,
    event: &E,
    message: &Message,
) -> Result<(), MessageError> {
    let Some(name) = message.type_name() else {
        return Ok(());
    };
    let Some((id, handler)) = host
        .hub()
        .routes
        .get_mut(name)
        .and_then(|(id, handler)| Some((*id, handler.take()?)))
    else {
        return Ok(());
    };
    let Ok(mut handler) = handler.downcast::<RouteFn<E>>() else {
        return Ok(());
    };
    let mut control = Control {
        stage: Stage::Complete,
        ..Control::default()
    };
    let result = handler(
        &mut Event {
            data: event,
            host: &mut *host,
            control: &mut control,
        },
        message,
    );
    if let Some((current, slot)) = host.hub().routes.get_mut(name)
        && *current == id
    {
        *slot = Some(handler);
    }
    result
}

/// Subscribing to events and routing messages by type, with the same methods
/// on the builders, the handles and the handler contexts of the primary and
/// the worker.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, WorkerExit, WorkerReady};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let primary = ClusterPrimary::builder()
///     .on::<WorkerReady>(|event| println!("worker {} is ready", event.worker.id()))
///     .start()
///     .await?;
/// // Keep a worker that crashed out of the replacement logic:
/// primary.before::<WorkerExit>(|event| {
///     if event.code() == Some(3) {
///         event.prevent();
///     }
/// });
/// # Ok(()) }
/// ```
pub trait Subscribe: Sized {
    /// The context that handlers act on.
    type Host: HostImpl;
    /// What subscribing returns: a [`Subscription`], or the builder itself.
    type Output;

    #[doc(hidden)]
    fn subscribe_with<E: Topic<Host = Self::Host>>(
        self,
        key: SubscriptionKey,
        once: bool,
        handler: Handler<E>,
    ) -> Self::Output;

    #[doc(hidden)]
    fn route_with(
        self,
        key: SubscriptionKey,
        route: RouteFn<<Self::Host as HostImpl>::Inbound>,
    ) -> Self::Output;

    /// Calls `handler` in the `before` stage of every `E`.
    fn before<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnMut(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(
            SubscriptionKey::new::<E>(Stage::Before),
            false,
            Box::new(handler),
        )
    }

    /// Calls `handler` in the `on` stage of every `E`.
    fn on<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnMut(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(
            SubscriptionKey::new::<E>(Stage::On),
            false,
            Box::new(handler),
        )
    }

    /// Calls `handler` in the `after` stage of every `E` that was not prevented.
    fn after<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnMut(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(
            SubscriptionKey::new::<E>(Stage::After),
            false,
            Box::new(handler),
        )
    }

    /// Like [`before`](Self::before), for the next `E` only.
    fn once_before<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnOnce(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(
            SubscriptionKey::new::<E>(Stage::Before),
            true,
            once(handler),
        )
    }

    /// Like [`on`](Self::on), for the next `E` only.
    fn once_on<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnOnce(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(SubscriptionKey::new::<E>(Stage::On), true, once(handler))
    }

    /// Like [`after`](Self::after), for the next `E` only.
    fn once_after<E: Topic<Host = Self::Host>>(
        self,
        handler: impl FnOnce(&mut Event<'_, E>) + Send + 'static,
    ) -> Self::Output {
        self.subscribe_with(SubscriptionKey::new::<E>(Stage::After), true, once(handler))
    }

    /// Typed routing: every incoming message whose `type` field is `type_name`
    /// is decoded into `T` and handed to `handler`, in the message event's
    /// default action (after its `on` stage, before its `after` stage). A
    /// message that does not decode becomes a message-error event. A later
    /// route for the same name replaces this one.
    fn route<T: DeserializeOwned>(
        self,
        type_name: &str,
        mut handler: impl FnMut(&mut Event<'_, <Self::Host as HostImpl>::Inbound>, T) + Send + 'static,
    ) -> Self::Output {
        let key = SubscriptionKey::route(type_name);
        self.route_with(
            key,
            Box::new(move |event, message| {
                handler(event, message.decode()?);
                Ok(())
            }),
        )
    }
}

fn once<E: Topic>(handler: impl FnOnce(&mut Event<'_, E>) + Send + 'static) -> Handler<E> {
    let mut handler = Some(handler);
    Box::new(move |event| {
        if let Some(handler) = handler.take() {
            handler(event);
        }
    })
}

// ===== Subscription =====

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl SubscriptionKey {
    /// A new key for `E` at `stage`, ordered after every earlier one.
    pub(crate) fn new<E: Topic>(stage: Stage) -> Self {
        Self {
            target: Target::Stage(TypeId::of::<E>(), stage),
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

/// A handle to a subscription, returned by the `on`/`before`/`after` family.
///
/// Dropping it keeps the subscription; call [`unsubscribe`](Self::unsubscribe)
/// to remove it.
pub struct Subscription {
    key: SubscriptionKey,
    remover: Box<dyn Fn(SubscriptionKey) + Send + Sync>,
}

impl Subscription {
    pub(crate) fn new(
        key: SubscriptionKey,
        remover: impl Fn(SubscriptionKey) + Send + Sync + 'static,
    ) -> Self {
        Self {
            key,
            remover: Box::new(remover),
        }
    }

    /// Removes the subscription. A once-only event that had already happened
    /// made no subscription; then this does nothing.
    pub fn unsubscribe(self) {
        (self.remover)(self.key);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("target", &self.key.target)
            .field("id", &self.key.id)
            .finish()
    }
}

// ===== EventStream =====

/// An async stream of every event of a cluster (or worker) that reached its
/// default action, in publish order (an event comes before the events its
/// default action publishes).
///
/// An event is sent to the streams just before its default action runs, so
/// state that the action changes (the pool, after `AddWorker`) may not show
/// the change yet when a stream yields it. To act once it has, subscribe to
/// the event's `after` stage instead.
///
/// A stream that falls more than [`EventStream::CAPACITY`] events behind skips
/// the oldest ones (and logs a warning); read it promptly or drop it.
pub struct EventStream<T> {
    inner: Option<BroadcastStream<Option<T>>>,
}

impl<T: Clone + Send + 'static> EventStream<T> {
    /// How many events a stream buffers.
    pub const CAPACITY: usize = 4096;

    /// The next event, or `None` once the instance has been destroyed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call loses no event.
    pub async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<T: Clone + Send + 'static> futures_core::Stream for EventStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            return match Pin::new(inner).poll_next(cx) {
                Poll::Ready(Some(Ok(Some(event)))) => Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(lagged))) => {
                    tracing::warn!(%lagged, "event stream fell behind");
                    continue;
                }
                // The end marker, or every sender gone.
                Poll::Ready(Some(Ok(None)) | None) => {
                    self.inner = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ended", &self.inner.is_none())
            .finish()
    }
}

/// The event stream of a host, shared with its handles. The channel is only
/// made when someone first asks for a stream (its buffer is not small); the
/// end is marked in-band, since handles outlive the host.
pub struct StreamSource<T> {
    shared: Arc<StreamShared<T>>,
}

struct StreamShared<T> {
    sender: std::sync::OnceLock<broadcast::Sender<Option<T>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl<T> fmt::Debug for StreamSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("open", &self.shared.sender.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for StreamSource<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Default for StreamSource<T> {
    fn default() -> Self {
        Self {
            shared: Arc::new(StreamShared {
                sender: std::sync::OnceLock::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl<T: Clone + Send + 'static> StreamSource<T> {
    /// A stream of the events from now on; an ended one after `close`.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return EventStream { inner: None };
        }
        let sender = self
            .shared
            .sender
            .get_or_init(|| broadcast::channel(EventStream::<T>::CAPACITY).0);
        EventStream {
            inner: Some(BroadcastStream::new(sender.subscribe())),
        }
    }

    /// Sends `make()` to the streams, if there are any.
    pub(crate) fn publish(&self, make: impl FnOnce() -> T) {
        if let Some(sender) = self.shared.sender.get()
            && sender.receiver_count() > 0
        {
            let _ = sender.send(Some(make()));
        }
    }

    /// Ends every stream.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(sender) = self.shared.sender.get() {
            let _ = sender.send(None);
        }
    }
}

#[cfg(test)]
#[allow(unreachable_pub)]
mod tests {
    //! The dispatch rules of spec §1.2-1.5, on a host with no processes.
    use super::*;
    use crate::topics::topics;

    #[derive(Default)]
    pub struct Host {
        hub: Hub,
        log: Vec<String>,
        stream: StreamSource<TestEvent>,
    }

    impl HostImpl for Host {
        type Stream = TestEvent;
        type Inbound = Ping;
        fn hub(&mut self) -> &mut Hub {
            &mut self.hub
        }
        fn stream(&self) -> &StreamSource<TestEvent> {
            &self.stream
        }
    }

    impl Host {
        fn new() -> Self {
            Self::default()
        }
        fn complete_ping(&mut self, _: &Ping) {
            self.log.push("complete ping".into());
        }
        fn complete_outer(&mut self, _: &Outer) {
            self.log.push("complete outer".into());
            publish(self, Ping);
        }
        fn complete_done(&mut self, _: &Done) {
            self.log.push("complete done".into());
        }
        fn complete_stop(&mut self, _: &Stop) {
            self.log.push("complete stop".into());
        }
    }

    #[derive(Debug, Clone)]
    pub struct Ping;
    #[derive(Debug, Clone)]
    pub struct Outer;
    #[derive(Debug, Clone)]
    pub struct Done;
    #[derive(Debug, Clone)]
    pub struct Stop;

    topics!(Host => TestEvent {
        Ping: "ping" => complete_ping;
        Outer: "outer" => complete_outer;
        Done: "done" once Publish => complete_done;
        Stop: "stop" once Complete => complete_stop;
    });

    fn sub<E: Topic<Host = Host>>(
        host: &mut Host,
        stage: Stage,
        label: &'static str,
        mut then: impl FnMut(&mut Event<'_, E>) + Send + 'static,
    ) -> SubscriptionKey {
        let key = SubscriptionKey::new::<E>(stage);
        subscribe(
            host,
            key.clone(),
            false,
            Box::new(move |event: &mut Event<'_, E>| {
                event.host.log.push(label.into());
                then(event);
            }),
        );
        key
    }

    fn nothing<E: Topic>(_: &mut Event<'_, E>) {}

    #[test]
    fn stages_run_in_order_whatever_the_subscription_order() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        sub::<Ping>(&mut host, Stage::Before, "before", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before", "on", "complete ping", "after"]);
    }

    #[test]
    fn prevent_in_before_still_runs_on_but_skips_complete_and_after() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::Before, "before 1", |e| e.prevent());
        sub::<Ping>(&mut host, Stage::Before, "before 2", nothing);
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before 1", "before 2", "on"]);
    }

    #[test]
    fn prevent_stage_on_skips_on_and_everything_after() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::Before, "before", |e| {
            e.prevent_stage(Stage::On)
        });
        sub::<Ping>(&mut host, Stage::On, "on", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["before"]);
    }

    #[test]
    fn prevent_stage_after_keeps_the_default_action() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on", |e| {
            e.prevent_stage(Stage::After)
        });
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on", "complete ping"]);
    }

    #[test]
    fn prevent_in_after_has_no_effect() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::After, "after 1", |e| e.prevent());
        sub::<Ping>(&mut host, Stage::After, "after 2", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["complete ping", "after 1", "after 2"]);
    }

    #[test]
    fn stop_event_finishes_the_stage_then_ends() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on 1", |e| e.stop_event());
        sub::<Ping>(&mut host, Stage::On, "on 2", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on 1", "on 2"]);
    }

    #[test]
    fn stop_dispatch_skips_only_the_rest_of_the_stage() {
        let mut host = Host::new();
        sub::<Ping>(&mut host, Stage::On, "on 1", |e| e.stop_dispatch());
        sub::<Ping>(&mut host, Stage::On, "on 2", nothing);
        sub::<Ping>(&mut host, Stage::After, "after", nothing);
        publish(&mut host, Ping);
        assert_eq!(host.log, ["on 1", "complete ping", "after"]);
    }

    #[test]
    fn nested_publishes_run_depth_first() {
        let mut host = Host::new();
        sub::<Outer>(&mut host, Stage::On, "on outer", nothing);
        sub::<Outer>(&mut host, Stage::After, "after outer", nothing);
        sub::<Ping>(&mut host, Stage::On, "on ping", nothing);
        sub::<Ping>(&mut host, Stage::After, "after ping", nothing);
        publish(&mut host, Outer);
        assert_eq!(
            host.log,
            [
                "on outer",
                "complete outer",
                "on ping",
                "complete ping",
                "after ping",
                "after outer"
            ]
        );
    }

    #[test]
    fn once_and_unsubscribe() {
        let mut host = Host::new();
        let key = SubscriptionKey::new::<Ping>(Stage::On);
        subscribe::<Ping>(
            &mut host,
            key,
            true,
            Box::new(|e| e.host.log.push("once".into())),
        );
        sub::<Ping>(&mut host, Stage::On, "self-removing", |e| e.unsubscribe());
        let removed = sub::<Ping>(&mut host, Stage::On, "removed", nothing);
        host.hub.remove(removed);
        publish(&mut host, Ping);
        publish(&mut host, Ping);
        assert_eq!(
            host.log,
            ["once", "self-removing", "complete ping", "complete ping"]
        );
    }

    #[test]
    fn a_subscription_added_during_its_stage_runs_in_the_same_dispatch() {
        let mut host = Host::new();
        let mut added = false;
        sub::<Ping>(&mut host, Stage::On, "first", move |e| {
            if !std::mem::replace(&mut added, true) {
                sub::<Ping>(e.host, Stage::On, "added", nothing);
            }
        });
        publish(&mut host, Ping);
        assert_eq!(host.log, ["first", "added", "complete ping"]);
    }

    #[test]
    fn publish_once_events_happen_once_and_call_late_subscribers() {
        let mut host = Host::new();
        sub::<Done>(&mut host, Stage::On, "on", nothing);
        publish(&mut host, Done);
        publish(&mut host, Done);
        let late = sub::<Done>(&mut host, Stage::After, "late", nothing);
        assert_eq!(host.log, ["on", "complete done", "late"]);
        // No subscription was made for the late subscriber.
        host.hub.remove(late);
        assert!(host.hub.slots.values().all(|s| s.len() <= 1));
    }

    #[test]
    fn a_prevented_publish_once_event_is_final_and_blocks_late_subscribers() {
        let mut host = Host::new();
        sub::<Done>(&mut host, Stage::Before, "before", |e| e.prevent());
        publish(&mut host, Done);
        publish(&mut host, Done);
        sub::<Done>(&mut host, Stage::After, "late", nothing);
        assert_eq!(host.log, ["before"]);
    }

    #[test]
    fn complete_once_counts_only_publishes_that_reach_the_default_action() {
        let mut host = Host::new();
        let mut first = true;
        sub::<Stop>(&mut host, Stage::Before, "before", move |e| {
            if std::mem::take(&mut first) {
                e.prevent();
            }
        });
        publish(&mut host, Stop);
        publish(&mut host, Stop);
        publish(&mut host, Stop);
        assert_eq!(host.log, ["before", "before", "complete stop"]);
    }

    #[test]
    fn the_stream_sees_events_that_reach_their_default_action() {
        use futures_util::FutureExt as _;
        let mut host = Host::new();
        let mut stream = host.stream().subscribe();
        sub::<Ping>(&mut host, Stage::Before, "before", |e| e.prevent());
        publish(&mut host, Ping);
        publish(&mut host, Outer);
        host.stream().close();
        let mut names = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            names.push(event.name());
        }
        assert_eq!(names, ["outer"]);
        assert!(
            stream
                .next()
                .now_or_never()
                .is_some_and(|end| end.is_none()),
            "closed streams end"
        );
    }
}
