//! Request/response over a channel: the caller's table of requests waiting
//! for a reply, and the callee's handlers.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::WorkerId;
use crate::channel::Outbox;
use crate::error::{MessageError, SendError};
use crate::message::Message;
use crate::protocol::{self, Frame};

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the deadline.
    #[error("no reply within {after:?}{}", worker_label(*worker_id))]
    Timeout {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
        /// The deadline.
        after: Duration,
    },
    /// The peer exited or disconnected before replying.
    #[error("the peer went away before replying{}", worker_label(*worker_id))]
    Gone {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
    },
    /// The peer's handler failed (returned an error, or panicked).
    #[error("the handler failed{}: {message}", worker_label(*worker_id))]
    Remote {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
        /// The handler's error, as text.
        message: String,
    },
    /// The request could not be sent.
    #[error("cannot send the request")]
    Send(#[source] SendError),
    /// The reply does not fit the type asked for.
    #[error("the reply does not decode")]
    Decode(#[source] MessageError),
    /// No worker was left to ask (`dispatch`).
    #[error("no ready worker to dispatch to")]
    NoWorker,
}

/// A closed channel means the peer is gone: [`RequestError::Gone`], the one
/// error that says so whether the peer left before or after the request was
/// sent.
impl From<SendError> for RequestError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed { worker_id } => Self::Gone { worker_id },
            other => Self::Send(other),
        }
    }
}

fn worker_label(worker_id: Option<WorkerId>) -> String {
    worker_id
        .map(|id| format!(" (worker {id})"))
        .unwrap_or_default()
}

type Outcome = Result<Message, RequestError>;

/// The requests sent to one peer and not answered yet.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    gone: AtomicBool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many requests wait for a reply.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a new request; the waiter forgets it when dropped.
    pub(crate) fn begin(
        self: &Arc<Self>,
        worker_id: Option<WorkerId>,
    ) -> Result<Waiter, RequestError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self.lock();
        if self.gone.load(Ordering::Acquire) {
            return Err(RequestError::Gone { worker_id });
        }
        waiting.insert(id, tx);
        Ok(Waiter {
            pending: self.clone(),
            id,
            worker_id,
            reply: rx,
        })
    }

    /// Hands a reply to its waiter (a late one, whose waiter is gone, is
    /// dropped).
    pub(crate) fn resolve(
        &self,
        id: u64,
        result: Result<Message, String>,
        worker_id: Option<WorkerId>,
    ) {
        if let Some(waiter) = self.lock().remove(&id) {
            let _ =
                waiter.send(result.map_err(|message| RequestError::Remote { worker_id, message }));
        }
    }

    /// The peer is gone: every waiter fails now, and so will later requests.
    pub(crate) fn fail_all(&self, worker_id: Option<WorkerId>) {
        let mut waiting = self.lock();
        self.gone.store(true, Ordering::Release);
        for (_, waiter) in waiting.drain() {
            let _ = waiter.send(Err(RequestError::Gone { worker_id }));
        }
    }
}

/// One request waiting for its reply.
#[derive(Debug)]
pub(crate) struct Waiter {
    pending: Arc<Pending>,
    id: u64,
    worker_id: Option<WorkerId>,
    reply: oneshot::Receiver<Outcome>,
}

impl Waiter {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The reply, decoded into `R`, or why there is none.
    pub(crate) async fn reply<R: DeserializeOwned>(
        mut self,
        deadline: Duration,
    ) -> Result<R, RequestError> {
        let worker_id = self.worker_id;
        let message = match tokio::time::timeout(deadline, &mut self.reply).await {
            Ok(Ok(outcome)) => outcome?,
            Ok(Err(_)) => return Err(RequestError::Gone { worker_id }),
            Err(_) => {
                return Err(RequestError::Timeout {
                    worker_id,
                    after: deadline,
                });
            }
        };
        message.decode().map_err(RequestError::Decode)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

// ===== handlers =====

type Encoded = Result<Bytes, String>;
type SyncHandler = Box<dyn FnMut(&Message) -> Encoded + Send>;
type AsyncHandler =
    Box<dyn FnMut(&Message) -> Pin<Box<dyn Future<Output = Encoded> + Send>> + Send>;

enum Handler {
    Sync(SyncHandler),
    Async(AsyncHandler),
}

/// Answering requests, on the builders of the primary and the worker.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::HandleRequests;
/// use isotropic_cluster::worker::ClusterWorker;
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// #[derive(serde::Deserialize)]
/// struct Square { n: u64 }
/// let worker = ClusterWorker::builder()
///     .handle("square", |Square { n }| Ok::<_, String>(n * n))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub trait HandleRequests: Sized + sealed::HasHandlers {
    /// Answers requests whose `type` is `type_name` (`""`: any type without a
    /// handler of its own) with `handler`'s reply; its error, or a panic, goes
    /// back to the asker as [`RequestError::Remote`].
    fn handle<Req, Resp, E, F>(mut self, type_name: &str, handler: F) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        F: FnMut(Req) -> Result<Resp, E> + Send + 'static,
    {
        self.handlers().add(type_name, handler);
        self
    }

    /// As [`handle`](Self::handle), with an async handler (run in a task of
    /// its own).
    fn handle_async<Req, Resp, E, F, Fut>(mut self, type_name: &str, handler: F) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        F: FnMut(Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        self.handlers().add_async(type_name, handler);
        self
    }
}

#[allow(unreachable_pub, missing_docs)]
pub(crate) mod sealed {
    pub trait HasHandlers {
        fn handlers(&mut self) -> &mut super::Handlers;
    }
}

impl<T: sealed::HasHandlers> HandleRequests for T {}

/// Request handlers by message `type` (`""`: the catch-all).
#[derive(Default)]
pub struct Handlers {
    by_type: HashMap<String, Handler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("types", &self.by_type.len())
            .finish()
    }
}

/// What to do with a request: a reply frame to send now, or one to send
/// when the future is done.
pub(crate) enum Answer {
    Now(Bytes),
    Later(Pin<Box<dyn Future<Output = Bytes> + Send>>),
}

impl Handlers {
    pub(crate) fn add<Req, Resp, E, F>(&mut self, type_name: &str, mut handler: F)
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        F: FnMut(Req) -> Result<Resp, E> + Send + 'static,
    {
        let handler = move |message: &Message| {
            let request = message.decode::<Req>().map_err(|e| e.to_string())?;
            let reply = handler(request).map_err(|e| e.to_string())?;
            serde_json::to_vec(&reply)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        };
        self.by_type
            .insert(type_name.to_owned(), Handler::Sync(Box::new(handler)));
    }

    pub(crate) fn add_async<Req, Resp, E, F, Fut>(&mut self, type_name: &str, mut handler: F)
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        F: FnMut(Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        let handler = move |message: &Message| -> Pin<Box<dyn Future<Output = Encoded> + Send>> {
            match message.decode::<Req>() {
                Ok(request) => {
                    let reply = handler(request);
                    Box::pin(async move {
                        let reply = reply.await.map_err(|e| e.to_string())?;
                        serde_json::to_vec(&reply)
                            .map(Bytes::from)
                            .map_err(|e| e.to_string())
                    })
                }
                Err(e) => Box::pin(std::future::ready(Err(e.to_string()))),
            }
        };
        self.by_type
            .insert(type_name.to_owned(), Handler::Async(Box::new(handler)));
    }

    /// Runs the handler for request `id`: a handler's error or panic
    /// becomes an error reply, as does a request no handler takes.
    pub(crate) fn answer(&mut self, id: u64, message: &Message, max: usize) -> Answer {
        let name = message
            .type_name()
            .filter(|name| self.by_type.contains_key(*name))
            .unwrap_or("");
        let handler = self.by_type.get_mut(name);
        let reply = move |result: Encoded| reply_frame(id, result, max);
        match handler {
            None => Answer::Now(reply(Err(format!(
                "no handler for requests of type {:?}",
                message.type_name().unwrap_or("")
            )))),
            Some(Handler::Sync(handler)) => {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| handler(message)));
                Answer::Now(reply(
                    result.unwrap_or_else(|_| Err("the handler panicked".into())),
                ))
            }
            Some(Handler::Async(handler)) => {
                let future = std::panic::catch_unwind(AssertUnwindSafe(|| handler(message)));
                Answer::Later(Box::pin(async move {
                    let result = match future {
                        Ok(future) => match tokio::spawn(future).await {
                            Ok(result) => result,
                            Err(_) => Err("the handler panicked".into()),
                        },
                        Err(_) => Err("the handler panicked".into()),
                    };
                    reply(result)
                }))
            }
        }
    }
}

impl Answer {
    /// Sends the reply through `outbox`, now or when it is ready.
    pub(crate) fn send(self, outbox: &Outbox) {
        match self {
            Answer::Now(reply) => drop(outbox.try_send(reply)),
            Answer::Later(reply) => {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.send(reply.await).await });
            }
        }
    }
}

/// A reply frame: the JSON of a successful reply, or the error's text.
fn reply_frame(id: u64, result: Encoded, max: usize) -> Bytes {
    let frame = match result {
        Ok(json) => match Message::from_json(json) {
            Ok(message) => Frame::Reply {
                id,
                result: Ok(message),
            },
            Err(e) => Frame::Reply {
                id,
                result: Err(e.to_string()),
            },
        },
        Err(error) => Frame::Reply {
            id,
            result: Err(error),
        },
    };
    protocol::encode(&frame, max).unwrap_or_else(|error| {
        protocol::encode_control(&Frame::Reply {
            id,
            result: Err(format!("the reply cannot be sent: {error}")),
        })
    })
}
