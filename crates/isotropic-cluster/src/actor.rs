//! The pattern shared by the primary and the worker: one task owns the state
//! (a *host*) and runs every event on it; cloneable handles send it commands.
//! [`run`] is that task's loop; [`Actor`] is what it needs of a host, and
//! what the host does when one of its handlers panics.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::events::{
    self, Handler, HandlerPanic, Subscription, SubscriptionKey, Topic, sealed::RouteFn,
};

/// A command run by the actor on its host.
pub(crate) type Command<H> = Box<dyn FnOnce(&mut H) + Send>;

/// The receiving side of an actor's command queue.
pub(crate) type Commands<H> = mpsc::UnboundedReceiver<Command<H>>;

/// A host that [`run`] drives: besides the commands of its handles, it
/// hears inputs of its own (a worker's frames, timers, signals).
pub(crate) trait Actor: Send + Sized + 'static {
    /// What the host hears besides commands.
    type Input: Send;

    /// The next input. Cancel safe: it races the commands.
    fn next_input(&mut self) -> impl Future<Output = Self::Input> + Send;

    /// Handles an input.
    fn handle(&mut self, input: Self::Input);

    /// Work that follows every command and input.
    fn end_turn(&mut self) {}

    /// Every handle is gone (a destroy, normally).
    fn orphaned(&mut self);

    /// Whether the actor is done: its task ends.
    fn finished(&self) -> bool;

    /// One of the host's handlers panicked; the panic was caught where the
    /// handler ran (see `crate::events`), the actor's task goes on. The
    /// side's decision: the worker exits, the primary reports it.
    fn handler_panicked(&mut self, panic: HandlerPanic);
}

/// Runs `host` until it is finished, one command or input per turn.
pub(crate) async fn run<A: Actor + events::sealed::HostImpl>(
    mut host: A,
    mut commands: Commands<A>,
) {
    let mut handles = true;
    // What happened before the task started (handlers of the first events).
    host.end_turn();
    while !host.finished() {
        tokio::select! {
            command = commands.recv(), if handles => match command {
                Some(command) => command(&mut host),
                None => {
                    handles = false;
                    tracing::debug!("every handle dropped");
                    host.orphaned();
                }
            },
            input = host.next_input() => host.handle(input),
        }
        host.end_turn();
        drop_panics(&mut host);
    }
    // The handlers left go now, not with the task (their `Drop` is user code).
    host.hub().clear();
    drop_panics(&mut host);
}

/// Reports the panics of handlers' destructors the hub caught.
fn drop_panics<A: Actor + events::sealed::HostImpl>(host: &mut A) {
    for message in host.hub().take_drop_panics() {
        Actor::handler_panicked(
            host,
            HandlerPanic {
                event: "(a handler being dropped)",
                stage: events::Stage::Complete,
                message,
            },
        );
    }
}

/// The sending side of an actor's command queue.
pub(crate) struct Mailbox<H> {
    tx: mpsc::UnboundedSender<Command<H>>,
}

impl<H> Clone for Mailbox<H> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<H> std::fmt::Debug for Mailbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<H: Send + 'static> Mailbox<H> {
    pub(crate) fn new() -> (Self, Commands<H>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Runs `f` on the host without waiting; false if the actor has ended.
    pub(crate) fn post(&self, f: impl FnOnce(&mut H) + Send + 'static) -> bool {
        self.tx.send(Box::new(f)).is_ok()
    }

    /// Runs `f` on the host and returns its result.
    ///
    /// # Errors
    ///
    /// [`Error::Destroyed`] when the actor has ended.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut H) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        if !self.post(move |host| drop(tx.send(f(host)))) {
            return Err(Error::Destroyed);
        }
        rx.await.map_err(|_| Error::Destroyed)
    }

    /// Whether the actor has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// A weak form that does not keep the actor alive.
    pub(crate) fn downgrade(&self) -> WeakMailbox<H> {
        WeakMailbox {
            tx: self.tx.downgrade(),
        }
    }
}

impl<H: events::sealed::HostImpl> Mailbox<H> {
    /// Subscribes through the queue: in order with every other command.
    pub(crate) fn subscribe<E: Topic<Host = H>>(
        &self,
        key: SubscriptionKey,
        once: bool,
        handler: Handler<E>,
    ) -> Subscription {
        let target = key.clone();
        self.post(move |host| {
            events::subscribe(host, target, once, handler);
        });
        self.downgrade().subscription(key)
    }

    /// Sets a route through the queue.
    pub(crate) fn route(&self, key: SubscriptionKey, route: RouteFn<H::Inbound>) -> Subscription {
        let target = key.clone();
        self.post(move |host: &mut H| host.hub().insert_route(target, route));
        self.downgrade().subscription(key)
    }
}

/// A command sender that does not keep the actor alive.
pub(crate) struct WeakMailbox<H> {
    tx: mpsc::WeakUnboundedSender<Command<H>>,
}

impl<H> Clone for WeakMailbox<H> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<H: Send + 'static> WeakMailbox<H> {
    pub(crate) fn upgrade(&self) -> Option<Mailbox<H>> {
        self.tx.upgrade().map(|tx| Mailbox { tx })
    }
}

impl<H: events::sealed::HostImpl> WeakMailbox<H> {
    /// A subscription handle whose `unsubscribe` goes through the queue.
    pub(crate) fn subscription(&self, key: SubscriptionKey) -> Subscription {
        let weak = self.clone();
        Subscription::new(key, move |key| {
            if let Some(mailbox) = weak.upgrade() {
                mailbox.post(move |host: &mut H| host.hub().remove(key));
            }
        })
    }
}
