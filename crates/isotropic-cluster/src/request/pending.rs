//! The caller's side: the requests sent to one peer and not answered yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::RequestError;
use crate::WorkerId;
use crate::error::MessageError;
use crate::message::Message;

/// A reply as it came: to a request (a message), or to a bytes request.
#[derive(Debug)]
enum Reply {
    Message(Message),
    Bytes(Bytes),
}

type Outcome = Result<Reply, RequestError>;

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
        self.hand_over(id, result.map(Reply::Message), worker_id);
    }

    /// Hands a bytes reply to its waiter, as [`resolve`](Self::resolve).
    pub(crate) fn resolve_bytes(
        &self,
        id: u64,
        result: Result<Bytes, String>,
        worker_id: Option<WorkerId>,
    ) {
        self.hand_over(id, result.map(Reply::Bytes), worker_id);
    }

    fn hand_over(&self, id: u64, result: Result<Reply, String>, worker_id: Option<WorkerId>) {
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

    /// The reply, decoded into `R`, or why there is none (a bytes reply
    /// does not decode).
    pub(crate) async fn reply<R: DeserializeOwned>(
        self,
        deadline: Duration,
    ) -> Result<R, RequestError> {
        match self.outcome(deadline).await? {
            Reply::Message(message) => message.decode().map_err(RequestError::Decode),
            Reply::Bytes(_) => Err(mismatch(std::any::type_name::<R>(), None)),
        }
    }

    /// The bytes reply, or why there is none (a message reply does not fit).
    pub(crate) async fn reply_bytes(self, deadline: Duration) -> Result<Bytes, RequestError> {
        match self.outcome(deadline).await? {
            Reply::Bytes(bytes) => Ok(bytes),
            Reply::Message(message) => Err(mismatch("bytes", message.type_name())),
        }
    }

    async fn outcome(mut self, deadline: Duration) -> Outcome {
        let worker_id = self.worker_id;
        match tokio::time::timeout(deadline, &mut self.reply).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(RequestError::Gone { worker_id }),
            Err(_) => Err(RequestError::Timeout {
                worker_id,
                after: deadline,
            }),
        }
    }
}

/// A reply of the other kind (bytes to a request, a message to a bytes
/// request): it does not decode as `target`.
fn mismatch(target: &'static str, type_name: Option<&str>) -> RequestError {
    RequestError::Decode(MessageError::Decode {
        type_name: type_name.map(str::to_owned),
        target,
        reason: "the reply is not of the request's kind (message or bytes)".into(),
    })
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn message(value: serde_json::Value) -> Message {
        Message::encode(&value).expect("encodes")
    }

    #[test]
    fn ids_are_unique_and_a_dropped_waiter_is_forgotten() {
        let pending = Arc::new(Pending::default());
        let waiters: Vec<Waiter> = (0..3).map(|_| pending.begin(None).expect("open")).collect();
        let ids: std::collections::HashSet<u64> = waiters.iter().map(Waiter::id).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(pending.len(), 3);
        drop(waiters);
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn a_reply_resolves_its_waiter_only() {
        let pending = Arc::new(Pending::default());
        let asked = pending.begin(None).expect("open");
        let other = pending.begin(None).expect("open");
        pending.resolve(asked.id(), Ok(message(json!(42))), None);
        assert_eq!(asked.reply::<u64>(DEADLINE).await.expect("a reply"), 42);
        assert_eq!(pending.len(), 1);
        drop(other);
    }

    #[tokio::test]
    async fn an_error_reply_is_remote_and_a_bad_one_does_not_decode() {
        let pending = Arc::new(Pending::default());
        let worker_id = Some(WorkerId(2));
        let failed = pending.begin(worker_id).expect("open");
        pending.resolve(failed.id(), Err("boom".into()), worker_id);
        match failed.reply::<u64>(DEADLINE).await {
            Err(RequestError::Remote {
                worker_id: id,
                message,
            }) => {
                assert_eq!((id, message.as_str()), (worker_id, "boom"));
            }
            other => panic!("not remote: {other:?}"),
        }
        let odd = pending.begin(None).expect("open");
        pending.resolve(odd.id(), Ok(message(json!("text"))), None);
        assert!(matches!(
            odd.reply::<u64>(DEADLINE).await,
            Err(RequestError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn bytes_replies_resolve_bytes_requests_and_a_reply_of_the_other_kind_does_not_decode() {
        let pending = Arc::new(Pending::default());
        let worker_id = Some(WorkerId(3));
        let asked = pending.begin(worker_id).expect("open");
        pending.resolve_bytes(asked.id(), Ok(Bytes::from_static(b"\0\xff")), worker_id);
        assert_eq!(
            &asked.reply_bytes(DEADLINE).await.expect("a reply")[..],
            b"\0\xff"
        );
        let failed = pending.begin(worker_id).expect("open");
        pending.resolve_bytes(failed.id(), Err("no".into()), worker_id);
        assert!(matches!(
            failed.reply_bytes(DEADLINE).await,
            Err(RequestError::Remote { message, .. }) if message == "no"
        ));
        let bytes_for_a_message = pending.begin(worker_id).expect("open");
        pending.resolve_bytes(bytes_for_a_message.id(), Ok(Bytes::new()), worker_id);
        assert!(matches!(
            bytes_for_a_message.reply::<u64>(DEADLINE).await,
            Err(RequestError::Decode(_))
        ));
        let message_for_bytes = pending.begin(worker_id).expect("open");
        pending.resolve(message_for_bytes.id(), Ok(message(json!(1))), worker_id);
        assert!(matches!(
            message_for_bytes.reply_bytes(DEADLINE).await,
            Err(RequestError::Decode(_))
        ));
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_reply_within_the_deadline_is_a_timeout_and_a_late_one_is_dropped() {
        let pending = Arc::new(Pending::default());
        let waiter = pending.begin(Some(WorkerId(1))).expect("open");
        let id = waiter.id();
        let begun = tokio::time::Instant::now();
        assert!(matches!(
            waiter.reply::<u64>(DEADLINE).await,
            Err(RequestError::Timeout {
                worker_id: Some(WorkerId(1)),
                after: DEADLINE
            })
        ));
        assert_eq!(begun.elapsed(), DEADLINE);
        assert_eq!(pending.len(), 0);
        pending.resolve(id, Ok(message(json!(1))), None);
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn fail_all_fails_every_waiter_and_every_later_request() {
        let pending = Arc::new(Pending::default());
        let worker_id = Some(WorkerId(4));
        let waiters = [
            pending.begin(worker_id).expect("open"),
            pending.begin(worker_id).expect("open"),
        ];
        pending.fail_all(worker_id);
        for waiter in waiters {
            assert!(matches!(
                waiter.reply::<u64>(DEADLINE).await,
                Err(RequestError::Gone {
                    worker_id: Some(WorkerId(4))
                })
            ));
        }
        assert!(matches!(
            pending.begin(worker_id),
            Err(RequestError::Gone {
                worker_id: Some(WorkerId(4))
            })
        ));
    }
}
