//! The callee's side: handlers of requests by message type, and of bytes
//! requests by name; and their replies.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::Outbox;
use crate::error::{ProtocolError, SendError};
use crate::events::catch;
use crate::message::Message;
use crate::protocol::{self, Encoded, Frame, Sizes};

/// A handler's reply, or its error's text: for a request, in the request's
/// codec.
type Replied<T> = Result<T, String>;
/// An async handler's reply, to come.
type Later<T> = Pin<Box<dyn Future<Output = Replied<T>> + Send>>;
type SyncHandler = Box<dyn FnMut(&Message) -> Replied<Message> + Send>;
type AsyncHandler = Box<dyn FnMut(&Message) -> Later<Message> + Send>;

enum Handler {
    Sync(SyncHandler),
    Async(AsyncHandler),
}

/// A handler of bytes requests.
enum BytesHandler {
    Sync(Box<dyn FnMut(Bytes) -> Replied<Bytes> + Send>),
    Async(Box<dyn FnMut(Bytes) -> Later<Bytes> + Send>),
}

/// What a handler gave, its panics caught: a reply now, or one to come.
enum Ran<T> {
    Now(Replied<T>),
    Later(Later<T>),
}

const PANICKED: &str = "the handler panicked";

impl<T: Send + 'static> Ran<T> {
    /// A sync handler's call, run now.
    fn now(call: impl FnOnce() -> Replied<T>) -> Self {
        Ran::Now(catch(call).unwrap_or_else(|_| Err(PANICKED.into())))
    }

    /// An async handler's call, whose future is to run in a task of its own.
    fn later(call: impl FnOnce() -> Later<T>) -> Self {
        match catch(call) {
            Ok(future) => Ran::Later(future),
            Err(_) => Ran::Now(Err(PANICKED.into())),
        }
    }

    /// The answer whose reply frame `frame` makes of the reply.
    fn answer(self, frame: impl FnOnce(Replied<T>) -> Encoded + Send + 'static) -> Answer {
        match self {
            Ran::Now(result) => Answer::Now(frame(result)),
            Ran::Later(future) => Answer::Later(Box::pin(async move {
                let result = tokio::spawn(future)
                    .await
                    .unwrap_or_else(|_| Err(PANICKED.into()));
                frame(result)
            })),
        }
    }
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
    /// back to the asker as [`RequestError::Remote`](super::RequestError::Remote).
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

    /// Answers bytes requests named `name` (names match exactly) with
    /// `handler`'s reply: raw bytes both ways, neither serialized nor
    /// copied, in a sealed memfd from the
    /// `sealed_payload_threshold` on (`docs/protocol.md`); routed by name
    /// as requests are by `type`. Its error, or a panic, goes back to the
    /// asker as [`RequestError::Remote`](super::RequestError::Remote); a
    /// name with no handler is answered so too.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use isotropic_cluster::HandleRequests;
    /// use isotropic_cluster::worker::ClusterWorker;
    ///
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// let worker = ClusterWorker::builder()
    ///     .handle_bytes("reverse", |body: Bytes| {
    ///         Ok::<_, String>(body.iter().rev().copied().collect::<Vec<u8>>())
    ///     })
    ///     .start()
    ///     .await?;
    /// // The primary asks: `primary.request_bytes(&worker, "reverse", body).await?`.
    /// # Ok(()) }
    /// ```
    fn handle_bytes<Resp, E, F>(mut self, name: &str, mut handler: F) -> Self
    where
        Resp: Into<Bytes>,
        E: std::fmt::Display,
        F: FnMut(Bytes) -> Result<Resp, E> + Send + 'static,
    {
        let handler = move |body| handler(body).map(Into::into).map_err(|e| e.to_string());
        self.handlers()
            .add_bytes(name, BytesHandler::Sync(Box::new(handler)));
        self
    }

    /// As [`handle_bytes`](Self::handle_bytes), with an async handler (run
    /// in a task of its own).
    fn handle_bytes_async<Resp, E, F, Fut>(mut self, name: &str, mut handler: F) -> Self
    where
        Resp: Into<Bytes>,
        E: std::fmt::Display,
        F: FnMut(Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        let handler = move |body| -> Later<Bytes> {
            let reply = handler(body);
            Box::pin(async move { reply.await.map(Into::into).map_err(|e| e.to_string()) })
        };
        self.handlers()
            .add_bytes(name, BytesHandler::Async(Box::new(handler)));
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

/// Request handlers by message `type` (`""`: the catch-all), and bytes
/// request handlers by name.
#[derive(Default)]
pub struct Handlers {
    by_type: HashMap<String, Handler>,
    by_name: HashMap<String, BytesHandler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("types", &self.by_type.len())
            .field("names", &self.by_name.len())
            .finish()
    }
}

/// What to do with a request: a reply frame to send now, or one to send
/// when the future is done.
pub(crate) enum Answer {
    Now(Encoded),
    Later(Pin<Box<dyn Future<Output = Encoded> + Send>>),
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
            Message::encode_as(message.codec(), &reply).map_err(|e| e.to_string())
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
        let handler = move |message: &Message| -> Later<Message> {
            match message.decode::<Req>() {
                Ok(request) => {
                    let reply = handler(request);
                    let codec = message.codec();
                    Box::pin(async move {
                        let reply = reply.await.map_err(|e| e.to_string())?;
                        Message::encode_as(codec, &reply).map_err(|e| e.to_string())
                    })
                }
                Err(e) => Box::pin(std::future::ready(Err(e.to_string()))),
            }
        };
        self.by_type
            .insert(type_name.to_owned(), Handler::Async(Box::new(handler)));
    }

    fn add_bytes(&mut self, name: &str, handler: BytesHandler) {
        self.by_name.insert(name.to_owned(), handler);
    }

    /// Runs the handler for request `id`: a handler's error or panic
    /// becomes an error reply, as does a request no handler takes.
    pub(crate) fn answer(&mut self, id: u64, message: &Message, max: usize) -> Answer {
        let name = message
            .type_name()
            .filter(|name| self.by_type.contains_key(*name))
            .unwrap_or("");
        let ran = match self.by_type.get_mut(name) {
            None => Ran::Now(Err(format!(
                "no handler for requests of type {:?}",
                message.type_name().unwrap_or("")
            ))),
            Some(Handler::Sync(handler)) => Ran::now(|| handler(message)),
            Some(Handler::Async(handler)) => Ran::later(|| handler(message)),
        };
        ran.answer(move |result| reply_frame(id, result, max).into())
    }

    /// Runs the handler named `name` for bytes request `id`, as
    /// [`answer`](Self::answer); the reply's body goes as a bytes message
    /// does, within `sizes`.
    pub(crate) fn answer_bytes(
        &mut self,
        id: u64,
        name: &str,
        body: Bytes,
        sizes: Sizes,
    ) -> Answer {
        let ran = match self.by_name.get_mut(name) {
            None => Ran::Now(Err(format!("no handler for bytes requests named {name:?}"))),
            Some(BytesHandler::Sync(handler)) => Ran::now(|| handler(body)),
            Some(BytesHandler::Async(handler)) => Ran::later(|| handler(body)),
        };
        ran.answer(move |result| bytes_reply_frame(id, result, sizes))
    }
}

impl Answer {
    /// Queues the reply for `outbox`'s peer, now or once it is ready and
    /// the queue has room (never dropped while the peer is connected);
    /// `hold` is given back once it is queued.
    pub(crate) fn send<T: Send + 'static>(self, outbox: &Outbox, hold: T) {
        let reply = match self {
            Answer::Now(reply) => match outbox.try_send(reply.clone()) {
                Err(SendError::Full { .. }) => Answer::Now(reply),
                _ => return,
            },
            later => later,
        };
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let reply = match reply {
                Answer::Now(reply) => reply,
                Answer::Later(reply) => reply.await,
            };
            let _ = outbox.send(reply).await;
            drop(hold);
        });
    }
}

/// A reply frame: a successful reply, or the error's text.
fn reply_frame(id: u64, result: Replied<Message>, max: usize) -> Bytes {
    let frame = Frame::Reply { id, result };
    protocol::encode(&frame, max).unwrap_or_else(|error| {
        protocol::encode_control(&Frame::Reply {
            id,
            result: Err(unsendable(&error)),
        })
    })
}

/// A bytes reply: its head and body, or the error's text.
fn bytes_reply_frame(id: u64, result: Replied<Bytes>, sizes: Sizes) -> Encoded {
    let frame = Frame::BytesReply { id, result };
    protocol::encode_with_body(&frame, sizes).unwrap_or_else(|error| {
        let result = Err(unsendable(&error));
        protocol::encode_control(&Frame::BytesReply { id, result }).into()
    })
}

/// Why a reply cannot be sent, for the asker.
fn unsendable(error: &ProtocolError) -> String {
    match error {
        ProtocolError::FrameTooLarge { size, .. } => {
            format!("the reply of {size} bytes exceeds the maximum frame")
        }
        other => format!("the reply cannot be sent: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use serde_json::json;
    use tokio_util::codec::Decoder as _;

    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME, FrameCodec};

    fn message(value: serde_json::Value) -> Message {
        Message::encode(&value).expect("encodes")
    }

    /// The reply frame an answer gives: its request id, and its result.
    async fn reply(answer: Answer) -> (u64, Result<Message, String>) {
        let frame = match answer {
            Answer::Now(frame) => frame,
            Answer::Later(frame) => frame.await,
        };
        let decoded =
            FrameCodec::new(DEFAULT_MAX_FRAME).decode(&mut BytesMut::from(&frame.head[..]));
        match decoded {
            Ok(Some(Frame::Reply { id, result })) => (id, result),
            other => panic!("not a reply: {other:?}"),
        }
    }

    async fn answer(
        handlers: &mut Handlers,
        request: serde_json::Value,
        max: usize,
    ) -> Result<String, String> {
        let (id, result) = reply(handlers.answer(7, &message(request), max)).await;
        assert_eq!(id, 7);
        result.map(|message| message.as_json().to_owned())
    }

    #[tokio::test]
    async fn a_handler_s_error_or_panic_goes_back_as_an_error() {
        type Any = serde_json::Value;
        let mut handlers = Handlers::default();
        handlers.add("fail", |_: Any| Err::<(), _>("refused"));
        handlers.add("panic", |_: Any| -> Result<(), String> {
            panic!("in a handler")
        });
        handlers.add_async("panic later", |_: Any| async move {
            if true {
                panic!("in an async handler");
            }
            Ok::<(), String>(())
        });
        handlers.add_async(
            "panic at once",
            |_: Any| -> std::future::Ready<Result<(), String>> { panic!("before the future") },
        );
        let cases = [
            ("fail", "refused"),
            ("panic", "the handler panicked"),
            ("panic later", "the handler panicked"),
            ("panic at once", "the handler panicked"),
        ];
        for (type_name, error) in cases {
            let request = json!({ "type": type_name });
            assert_eq!(
                answer(&mut handlers, request, DEFAULT_MAX_FRAME).await,
                Err(error.into()),
                "{type_name}"
            );
        }
    }

    #[tokio::test]
    async fn handlers_answer_by_type() {
        let mut handlers = Handlers::default();
        handlers.add("double", |r: serde_json::Value| {
            Ok::<_, String>(r["n"].as_u64().unwrap_or_default() * 2)
        });
        handlers.add_async("later", |r: serde_json::Value| async move {
            Ok::<_, String>(r["n"].as_u64().unwrap_or_default() + 1)
        });
        let max = DEFAULT_MAX_FRAME;
        let double = json!({"type": "double", "n": 21});
        assert_eq!(answer(&mut handlers, double, max).await, Ok("42".into()));
        let later = json!({"type": "later", "n": 41});
        assert_eq!(answer(&mut handlers, later, max).await, Ok("42".into()));
        let unknown = json!({"type": "nope"});
        assert_eq!(
            answer(&mut handlers, unknown.clone(), max).await,
            Err("no handler for requests of type \"nope\"".into())
        );
        handlers.add("", |_: serde_json::Value| Ok::<_, String>("caught"));
        assert_eq!(
            answer(&mut handlers, unknown, max).await,
            Ok("\"caught\"".into())
        );
    }

    #[tokio::test]
    async fn a_request_that_does_not_decode_or_a_reply_too_large_is_an_error() {
        let mut handlers = Handlers::default();
        handlers.add("n", |r: Number| Ok::<_, String>("x".repeat(r.n)));
        let bad = answer(&mut handlers, json!({"type": "n", "n": "many"}), 1024).await;
        assert!(bad.expect_err("does not decode").contains("invalid type"));
        let large = answer(&mut handlers, json!({"type": "n", "n": 2000}), 1024).await;
        assert!(
            large
                .expect_err("too large")
                .contains("exceeds the maximum frame")
        );
        let fits = answer(&mut handlers, json!({"type": "n", "n": 10}), 1024).await;
        assert_eq!(fits, Ok(format!("\"{}\"", "x".repeat(10))));
    }

    /// The bytes reply an answer gives: its request id, and its result
    /// (with the memfd's count, for a sealed body).
    async fn bytes_reply(answer: Answer) -> (u64, Result<Bytes, String>, usize) {
        let frame = match answer {
            Answer::Now(frame) => frame,
            Answer::Later(frame) => frame.await,
        };
        let mut wire = BytesMut::from(&[&frame.head[..], &frame.body[..]].concat()[..]);
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut next = || codec.decode(&mut wire).expect("valid").expect("a frame");
        match next() {
            Frame::BytesReply {
                id,
                result: Err(error),
            } => (id, Err(error), frame.fds.len()),
            head @ Frame::BytesReply { id, .. } => match next() {
                Frame::Sealed { len } => {
                    (id, Ok(Bytes::from(vec![0; len as usize])), frame.fds.len())
                }
                body => match head.with_body(body) {
                    Ok(Frame::BytesReply { result, .. }) => (id, result, frame.fds.len()),
                    other => panic!("no body: {other:?}"),
                },
            },
            other => panic!("not a bytes reply: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bytes_handlers_answer_by_name_and_their_errors_go_back() {
        use super::super::HandleRequests as _;
        #[derive(Default)]
        struct Builder(Handlers);
        impl sealed::HasHandlers for Builder {
            fn handlers(&mut self) -> &mut Handlers {
                &mut self.0
            }
        }
        let Builder(mut handlers) = Builder::default()
            .handle_bytes("reverse", |body: Bytes| {
                Ok::<_, String>(body.iter().rev().copied().collect::<Vec<u8>>())
            })
            .handle_bytes_async("zeros", |body: Bytes| async move {
                Ok::<_, String>(vec![0_u8; body.len()])
            })
            .handle_bytes("fail", |_| Err::<Bytes, _>("refused"))
            .handle_bytes("panic", |_| -> Result<Bytes, String> {
                panic!("in a handler")
            })
            .handle_bytes_async("panic later", |_| async move {
                if true {
                    panic!("in an async handler");
                }
                Ok::<Bytes, String>(Bytes::new())
            });
        let sizes = Sizes {
            max_frame: 1024,
            sealed_from: 2048,
        };
        let mut ask = |name: &str, body: &'static [u8], sizes| {
            handlers.answer_bytes(9, name, Bytes::from_static(body), sizes)
        };
        assert_eq!(
            bytes_reply(ask("reverse", b"abc", sizes)).await,
            (9, Ok(Bytes::from_static(b"cba")), 0)
        );
        let cases = [
            ("fail", "refused"),
            ("panic", "the handler panicked"),
            ("panic later", "the handler panicked"),
            ("nope", "no handler for bytes requests named \"nope\""),
        ];
        for (name, error) in cases {
            assert_eq!(
                bytes_reply(ask(name, b"", sizes)).await,
                (9, Err(error.into()), 0),
                "{name}"
            );
        }
        // A reply from the sealed threshold on goes in a memfd; one over
        // the maximum frame below it cannot go.
        let (_, sealed, memfds) = bytes_reply(ask("zeros", &[1; 2048], sizes)).await;
        assert_eq!((sealed.map(|b| b.len()), memfds), (Ok(2048), 1));
        let (_, large, _) = bytes_reply(ask("zeros", &[1; 1500], sizes)).await;
        assert!(
            large
                .expect_err("too large")
                .contains("exceeds the maximum frame"),
            "a reply over the maximum frame"
        );
    }

    #[derive(serde::Deserialize)]
    struct Number {
        n: usize,
    }

    #[tokio::test]
    async fn an_answer_is_sent_now_or_once_ready() {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let outbox = Outbox::spawn(ours.into_split().1, Default::default(), None);
        let mut inbox =
            crate::channel::Inbox::new(theirs.into_split().0, FrameCodec::new(DEFAULT_MAX_FRAME));
        let mut handlers = Handlers::default();
        handlers.add("now", |_: serde_json::Value| Ok::<_, String>(1));
        handlers.add_async("later", |_: serde_json::Value| async { Ok::<_, String>(2) });
        for (id, type_name) in [(1, "later"), (2, "now")] {
            handlers
                .answer(
                    id,
                    &message(json!({ "type": type_name })),
                    DEFAULT_MAX_FRAME,
                )
                .send(&outbox, ());
        }
        let mut replies = Vec::new();
        for _ in 0..2 {
            match inbox.next().await {
                Some(Ok(Frame::Reply { id, result })) => {
                    replies.push((id, result.expect("answered").as_json().to_owned()));
                }
                other => panic!("not a reply: {other:?}"),
            }
        }
        replies.sort();
        assert_eq!(replies, [(1, "2".to_owned()), (2, "1".to_owned())]);
    }

    #[tokio::test]
    async fn no_reply_is_dropped_when_the_queue_is_full_and_each_holds_its_permit_until_queued() {
        // (issue 13: replies that found the queue full were dropped.)
        const REQUESTS: usize = 20;
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let limits = crate::channel::QueueLimits {
            messages: 1,
            bytes: 1 << 20,
        };
        let outbox = Outbox::spawn(ours.into_split().1, limits, None);
        let mut inbox =
            crate::channel::Inbox::new(theirs.into_split().0, FrameCodec::new(DEFAULT_MAX_FRAME));
        let mut handlers = Handlers::default();
        handlers.add("big", |_: serde_json::Value| {
            Ok::<_, String>("x".repeat(100_000))
        });
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(REQUESTS));
        for id in 0..REQUESTS as u64 {
            let permit = budget.clone().try_acquire_owned().expect("a permit");
            handlers
                .answer(id, &message(json!({ "type": "big" })), DEFAULT_MAX_FRAME)
                .send(&outbox, permit);
        }
        // 2 MB of replies, more than the socket and the queue hold: some wait.
        tokio::task::yield_now().await;
        assert!(
            budget.available_permits() < REQUESTS,
            "replies wait, holding their permits"
        );
        let mut ids = Vec::new();
        while ids.len() < REQUESTS {
            match tokio::time::timeout(std::time::Duration::from_secs(30), inbox.next()).await {
                Ok(Some(Ok(Frame::Reply { id, result }))) => {
                    assert!(result.is_ok());
                    ids.push(id);
                }
                other => panic!(
                    "not a reply in time after {} of {REQUESTS}: {other:?}",
                    ids.len()
                ),
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..REQUESTS as u64).collect::<Vec<_>>());
        let all = budget.acquire_many(u32::try_from(REQUESTS).expect("small"));
        let all = tokio::time::timeout(std::time::Duration::from_secs(30), all).await;
        drop(all.expect("every permit given back").expect("open"));
    }
}
