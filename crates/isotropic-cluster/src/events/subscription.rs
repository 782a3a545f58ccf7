//! Subscribing: the [`Subscribe`] methods, and the [`Subscription`] handle
//! that removes one.

use std::fmt;

use serde::de::DeserializeOwned;

use super::event::{Event, Handler, RouteFn, Stage, Topic};
use super::host::HostImpl;
use super::key::SubscriptionKey;

/// Subscribing to events and routing messages by type, with the same methods
/// on the builders, the handles and the handler contexts of the primary and
/// the worker.
///
/// Handlers run synchronously on the side's one task: a handler that blocks
/// (a slow computation, blocking I/O) stalls every worker's traffic until it
/// returns. Hand slow work to a task of its own (`tokio::spawn` with
/// `event.context().handle()` for an async handle), or answer requests with
/// `handle_async`.
///
/// A handler that panics (a typed route included) never leaves a half-dead
/// side. In the primary the panic is caught, logged and published as
/// [`HandlerPanicked`](crate::primary::HandlerPanicked), and the event goes
/// on as if the handler had returned; supervision goes on. In a worker the
/// process exits at once with code 101 (as an uncaught panic in `main`; no
/// destructor runs, nothing queued is flushed), so the primary sees an
/// involuntary exit and replaces it.
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
