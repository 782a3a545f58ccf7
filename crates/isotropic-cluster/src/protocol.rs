//! The wire format of a channel (see `docs/protocol.md`): length-prefixed
//! frames, each a kind byte and a payload.
//!
//! ```text
//! +----------------+--------+---------------------+
//! | length: u32 BE |  kind  | payload (length - 1) |
//! +----------------+--------+---------------------+
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

use crate::error::ProtocolError;
use crate::message::Message;
use crate::net::{ListenAddress, ListenError, ListenErrorKind};

/// The protocol version this library speaks.
pub(crate) const VERSION: u32 = 1;
/// The default largest frame (kind byte and payload), 16 MiB.
pub(crate) const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

const HEADER: usize = 4;
const HELLO: u8 = 1;
const READY: u8 = 2;
const DISCONNECT: u8 = 3;
const MESSAGE: u8 = 4;
const LISTEN: u8 = 5;
const LISTENING: u8 = 6;
const CONNECTION: u8 = 7;
const REQUEST: u8 = 8;
const REPLY: u8 = 9;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// First frame in each direction: the sender's protocol version.
    Hello { protocol: u32 },
    /// Worker to primary: initialization is done, put me in the pool.
    Ready,
    /// Primary to worker: please finish and exit. Worker to primary: I am leaving.
    Disconnect,
    /// A user message.
    Message(Message),
    /// Worker to primary: a listening socket for this address, please.
    Listen { id: u64, address: ListenAddress },
    /// Primary to worker: the answer to `Listen` `id`; on success, the socket
    /// came with the frame's first byte, unless `passed`: then the primary
    /// accepts, and passes each connection in a `Connection` frame.
    Listening {
        id: u64,
        result: Result<ListenAddress, (ListenErrorKind, String)>,
        passed: bool,
    },
    /// Primary to worker: a connection accepted for listen request
    /// `listener`, attached to the frame's first byte.
    Connection { listener: u64 },
    /// Either way: a message that wants a reply.
    Request { id: u64, message: Message },
    /// Either way: the reply to request `id`, or the error its handler gave.
    Reply {
        id: u64,
        result: Result<Message, String>,
    },
}

impl Frame {
    /// The frame's kind, by name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Ready => "ready",
            Frame::Disconnect => "disconnect",
            Frame::Message(_) => "message",
            Frame::Listen { .. } => "listen",
            Frame::Listening { .. } => "listening",
            Frame::Connection { .. } => "connection",
            Frame::Request { .. } => "request",
            Frame::Reply { .. } => "reply",
        }
    }

    /// Roughly the memory the frame holds, in bytes: its payload, counted
    /// as at least 64.
    pub(crate) fn weight(&self) -> usize {
        let payload = match self {
            Frame::Message(message)
            | Frame::Request { message, .. }
            | Frame::Reply {
                result: Ok(message),
                ..
            } => message.as_bytes().len(),
            Frame::Reply {
                result: Err(error), ..
            } => error.len(),
            _ => 0,
        };
        payload.max(64)
    }
}

#[derive(Serialize, Deserialize)]
struct ListenBody {
    id: u64,
    address: String,
}

#[derive(Serialize, Deserialize)]
struct ListeningBody {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    message: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    passed: bool,
}

#[derive(Serialize, Deserialize)]
struct ConnectionBody {
    listener: u64,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    protocol: u32,
}

/// Encodes a control frame (hello, ready or disconnect).
pub(crate) fn encode_control(frame: &Frame) -> Bytes {
    match frame {
        Frame::Hello { protocol } => {
            let json = serde_json::to_vec(&Hello {
                protocol: *protocol,
            })
            .unwrap_or_default();
            raw_frame(HELLO, &json)
        }
        Frame::Ready => raw_frame(READY, &[]),
        Frame::Disconnect => raw_frame(DISCONNECT, &[]),
        Frame::Message(message) => raw_frame(MESSAGE, message.as_bytes()),
        Frame::Listen { id, address } => {
            let body = ListenBody {
                id: *id,
                address: address.to_string(),
            };
            raw_frame(LISTEN, &serde_json::to_vec(&body).unwrap_or_default())
        }
        Frame::Listening { id, result, passed } => {
            let body = match result {
                Ok(address) => ListeningBody {
                    id: *id,
                    address: Some(address.to_string()),
                    error: None,
                    message: None,
                    passed: *passed,
                },
                Err((kind, message)) => ListeningBody {
                    id: *id,
                    address: None,
                    error: Some(kind.name().to_owned()),
                    message: Some(message.clone()),
                    passed: false,
                },
            };
            raw_frame(LISTENING, &serde_json::to_vec(&body).unwrap_or_default())
        }
        Frame::Request { id, message } => raw_frame(
            REQUEST,
            &[&id.to_be_bytes()[..], message.as_bytes()].concat(),
        ),
        Frame::Reply { id, result } => {
            let (status, body) = match result {
                Ok(message) => (0, message.as_bytes().to_vec()),
                Err(error) => (1, serde_json::to_vec(error).unwrap_or_default()),
            };
            raw_frame(REPLY, &[&id.to_be_bytes()[..], &[status], &body].concat())
        }
        Frame::Connection { listener } => raw_frame(
            CONNECTION,
            &serde_json::to_vec(&ConnectionBody {
                listener: *listener,
            })
            .unwrap_or_default(),
        ),
    }
}

fn raw_frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER + 1 + payload.len());
    buf.put_u32(u32::try_from(payload.len() + 1).unwrap_or(u32::MAX));
    buf.put_u8(kind);
    buf.put_slice(payload);
    buf.freeze()
}

/// Serializes `value` straight into a message frame, ready to write (and to
/// share between the destinations of a broadcast).
///
/// # Errors
///
/// [`ProtocolError::Encode`] when serialization fails, and
/// [`ProtocolError::FrameTooLarge`] when the frame would exceed `max`.
pub(crate) fn encode_message<T: Serialize + ?Sized>(
    value: &T,
    max: usize,
) -> Result<Bytes, ProtocolError> {
    encode_with(MESSAGE, &[], value, max)
}

/// What a channel speaks: our frames, or Node's child-process IPC (one JSON
/// value per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Frames,
    NodeJson,
}

impl Wire {
    /// Encodes a user message for this wire.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        self,
        value: &T,
        max: usize,
    ) -> Result<Bytes, ProtocolError> {
        match self {
            Wire::Frames => encode_message(value, max),
            Wire::NodeJson => {
                let mut line =
                    serde_json::to_vec(value).map_err(|e| ProtocolError::Encode(e.to_string()))?;
                if line.len() > max {
                    return Err(ProtocolError::FrameTooLarge {
                        size: line.len(),
                        max,
                    });
                }
                line.push(b'\n');
                Ok(Bytes::from(line))
            }
        }
    }
}

/// The last frames of a channel that ended: bytes left after them are a
/// frame cut short.
fn decode_to_end<D>(codec: &mut D, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError>
where
    D: Decoder<Item = Frame, Error = ProtocolError>,
{
    match codec.decode(src)? {
        Some(frame) => Ok(Some(frame)),
        None if src.is_empty() => Ok(None),
        None => Err(ProtocolError::Truncated {
            received: src.len(),
        }),
    }
}

/// Decodes Node's IPC: one JSON value per line. The first message that is the
/// string `"ready"` is also a `Ready` (Node workers of the original signal
/// ready that way), after it goes through as a message.
#[derive(Debug)]
pub(crate) struct NodeCodec {
    max: usize,
    ready_seen: bool,
    pending: Option<Frame>,
    /// How much of the buffer is known to hold no newline (a long line
    /// arriving in pieces is scanned once, not once per piece).
    searched: usize,
}

impl NodeCodec {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            ready_seen: false,
            pending: None,
            searched: 0,
        }
    }
}

impl Decoder for NodeCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some(frame) = self.pending.take() {
            return Ok(Some(frame));
        }
        let from = self.searched.min(src.len());
        let newline = src[from..].iter().position(|&b| b == b'\n');
        let end = newline.map_or(src.len(), |at| from + at);
        // A line over the maximum is refused whether or not its end came.
        if end > self.max {
            return Err(ProtocolError::FrameTooLarge {
                size: end,
                max: self.max,
            });
        }
        if newline.is_none() {
            self.searched = end;
            return Ok(None);
        }
        self.searched = 0;
        let line = src.split_to(end + 1).freeze().slice(..end);
        let message = message(line)?;
        if !self.ready_seen && message.as_json() == "\"ready\"" {
            self.ready_seen = true;
            self.pending = Some(Frame::Ready);
        }
        Ok(Some(Frame::Message(message)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        decode_to_end(self, src)
    }
}

/// Checks that decoding `bytes` in pieces of `piece` bytes gives what
/// decoding them at once gives: the same frames, then an error or none (the
/// error's figures may differ). Panics otherwise; never otherwise. The fuzz
/// target and a property test run it on both wires.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn check_any_split(node: bool, bytes: &[u8], piece: usize, max: usize) {
    let decode = |piece: usize| {
        let mut codec = if node {
            AnyCodec::Node(NodeCodec::new(max))
        } else {
            AnyCodec::Frames(FrameCodec::new(max))
        };
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(format!("{frame:?}")),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(format!("{frame:?}")),
                Ok(None) => return (frames, false),
                Err(_) => return (frames, true),
            }
        }
    };
    assert_eq!(
        decode(bytes.len()),
        decode(piece),
        "decoding depends on how the input is split"
    );
}

/// The primary's reader of a worker's channel, for either wire.
#[derive(Debug)]
pub(crate) enum AnyCodec {
    Frames(FrameCodec),
    Node(NodeCodec),
}

impl Decoder for AnyCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self {
            Self::Frames(codec) => codec.decode(src),
            Self::Node(codec) => codec.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self {
            Self::Frames(codec) => codec.decode_eof(src),
            Self::Node(codec) => codec.decode_eof(src),
        }
    }
}

/// Encodes a request: its id, then the message.
pub(crate) fn encode_request<T: Serialize + ?Sized>(
    id: u64,
    value: &T,
    max: usize,
) -> Result<Bytes, ProtocolError> {
    encode_with(REQUEST, &id.to_be_bytes(), value, max)
}

/// A frame of `kind`: `prefix`, then `value` as JSON.
fn encode_with<T: Serialize + ?Sized>(
    kind: u8,
    prefix: &[u8],
    value: &T,
    max: usize,
) -> Result<Bytes, ProtocolError> {
    thread_local! {
        /// Serialization happens here, then the frame is copied out at its
        /// exact size: growing a fresh buffer for each large message cost
        /// more (reallocations and page faults) than the copy.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(&[0, 0, 0, 0, kind]);
        buf.extend_from_slice(prefix);
        let written = serde_json::to_writer(&mut *buf, value)
            .map_err(|e| ProtocolError::Encode(e.to_string()));
        let len = buf.len() - HEADER;
        let result = written.and_then(|()| match u32::try_from(len) {
            Ok(len32) if len <= max => {
                buf[..HEADER].copy_from_slice(&len32.to_be_bytes());
                Ok(pool::frame(buf))
            }
            _ => Err(ProtocolError::FrameTooLarge { size: len, max }),
        });
        // Keep a few MiB at most between messages.
        if buf.capacity() > 4 * 1024 * 1024 {
            *buf = Vec::new();
        }
        result
    })
}

/// Buffers for large frames, reused: a fresh allocation of tens of KiB for
/// each message costs page faults (the allocator returns such memory to the
/// kernel on free), which profiles showed as the main cost of bulk sends.
mod pool {
    use std::sync::{Mutex, PoisonError};

    use bytes::Bytes;

    /// Frames from this size on use a pooled buffer.
    const FROM: usize = 16 * 1024;
    /// Buffers kept, and the largest kept.
    const KEEP: usize = 64;
    const LARGEST: usize = 4 * 1024 * 1024;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// A frame holding a copy of `bytes`.
    pub(super) fn frame(bytes: &[u8]) -> Bytes {
        if bytes.len() < FROM {
            return Bytes::copy_from_slice(bytes);
        }
        let mut buf = FREE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        Bytes::from_owner(Pooled(buf))
    }

    struct Pooled(Vec<u8>);

    impl AsRef<[u8]> for Pooled {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Pooled {
        fn drop(&mut self) {
            if self.0.capacity() <= LARGEST {
                let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
                if free.len() < KEEP {
                    free.push(std::mem::take(&mut self.0));
                }
            }
        }
    }
}

/// Decodes frames, refusing any larger than `max` before allocating for them.
#[derive(Debug, Clone)]
pub(crate) struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub(crate) fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some(header) = src.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        if len > self.max {
            return Err(ProtocolError::FrameTooLarge {
                size: len,
                max: self.max,
            });
        }
        if src.len() < HEADER + len {
            // Grow towards the frame, but never by more than 64 KiB ahead of
            // the bytes that have actually arrived.
            src.reserve((HEADER + len - src.len()).min(64 * 1024));
            return Ok(None);
        }
        src.advance(HEADER);
        let mut body = src.split_to(len).freeze();
        let kind = body.get_u8();
        let expect_empty = |frame: Frame| {
            if body.is_empty() {
                Ok(Some(frame))
            } else {
                Err(ProtocolError::UnexpectedPayload { kind })
            }
        };
        match kind {
            HELLO => {
                let hello: Hello = serde_json::from_slice(&body)
                    .map_err(|e| ProtocolError::InvalidHello(e.to_string()))?;
                Ok(Some(Frame::Hello {
                    protocol: hello.protocol,
                }))
            }
            READY => expect_empty(Frame::Ready),
            DISCONNECT => expect_empty(Frame::Disconnect),
            MESSAGE => Ok(Some(Frame::Message(message(body)?))),
            REQUEST => {
                let id = request_id(&mut body)?;
                Ok(Some(Frame::Request {
                    id,
                    message: message(body)?,
                }))
            }
            REPLY => {
                let id = request_id(&mut body)?;
                let result = match body.first() {
                    Some(0) => Ok(message(body.slice(1..))?),
                    Some(1) => Err(control_body::<String>(&body[1..])?),
                    _ => {
                        return Err(ProtocolError::InvalidControl(
                            "reply status must be 0 or 1".into(),
                        ));
                    }
                };
                Ok(Some(Frame::Reply { id, result }))
            }
            LISTEN => {
                let listen: ListenBody = control_body(&body)?;
                let address = listen
                    .address
                    .parse()
                    .map_err(|e: ListenError| ProtocolError::InvalidControl(e.to_string()))?;
                Ok(Some(Frame::Listen {
                    id: listen.id,
                    address,
                }))
            }
            LISTENING => {
                let body: ListeningBody = control_body(&body)?;
                let result = match (body.address, body.error) {
                    (Some(address), None) => Ok(address
                        .parse()
                        .map_err(|e: ListenError| ProtocolError::InvalidControl(e.to_string()))?),
                    (None, Some(error)) => Err((
                        ListenErrorKind::from_name(&error),
                        body.message.unwrap_or_default(),
                    )),
                    _ => {
                        return Err(ProtocolError::InvalidControl(
                            "listening needs address or error".into(),
                        ));
                    }
                };
                Ok(Some(Frame::Listening {
                    id: body.id,
                    result,
                    passed: body.passed,
                }))
            }
            CONNECTION => {
                let body: ConnectionBody = control_body(&body)?;
                Ok(Some(Frame::Connection {
                    listener: body.listener,
                }))
            }
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        decode_to_end(self, src)
    }
}

/// A message payload, validated.
fn message(body: Bytes) -> Result<Message, ProtocolError> {
    Message::from_json(body).map_err(|e| ProtocolError::InvalidMessage(e.to_string()))
}

/// Takes the 8-byte request id at the start of `body`.
fn request_id(body: &mut Bytes) -> Result<u64, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::InvalidControl(
            "a request id is 8 bytes".into(),
        ));
    }
    Ok(body.get_u64())
}

/// Decodes the JSON body of a control frame.
fn control_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::InvalidControl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        if let Some(frame) = codec.decode_eof(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    fn message(json: &str) -> Frame {
        Frame::Message(Message::from_json(json.to_owned()).expect("valid json"))
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { protocol: VERSION },
            Frame::Ready,
            message(r#"{"type":"greet","name":"User"}"#),
            message("\"ready\""),
            Frame::Disconnect,
        ];
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|f| encode_control(f).to_vec())
            .collect();
        let decoded = decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &bytes).expect("decodes");
        assert_eq!(decoded, frames);
    }

    /// Every kind's bytes, pinned (`docs/protocol.md` is the contract).
    #[test]
    fn every_kind_has_the_documented_bytes() {
        let address: ListenAddress = "127.0.0.1:3000".parse().expect("address");
        let cases: [(Frame, &[u8]); 12] = [
            (
                Frame::Hello { protocol: VERSION },
                b"\0\0\0\x0f\x01{\"protocol\":1}",
            ),
            (Frame::Ready, b"\0\0\0\x01\x02"),
            (Frame::Disconnect, b"\0\0\0\x01\x03"),
            (message("[1]"), b"\0\0\0\x04\x04[1]"),
            (
                Frame::Listen {
                    id: 7,
                    address: address.clone(),
                },
                b"\0\0\0\x24\x05{\"id\":7,\"address\":\"127.0.0.1:3000\"}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Ok(address.clone()),
                    passed: false,
                },
                b"\0\0\0\x24\x06{\"id\":7,\"address\":\"127.0.0.1:3000\"}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Ok(address),
                    passed: true,
                },
                b"\0\0\0\x32\x06{\"id\":7,\"address\":\"127.0.0.1:3000\",\"passed\":true}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Err((ListenErrorKind::AddrInUse, "taken".into())),
                    passed: false,
                },
                b"\0\0\0\x2f\x06{\"id\":7,\"error\":\"AddrInUse\",\"message\":\"taken\"}",
            ),
            (
                Frame::Connection { listener: 7 },
                b"\0\0\0\x0f\x07{\"listener\":7}",
            ),
            (
                Frame::Request {
                    id: 0x0102,
                    message: Message::from_json("{}").expect("json"),
                },
                b"\0\0\0\x0b\x08\0\0\0\0\0\0\x01\x02{}",
            ),
            (
                Frame::Reply {
                    id: 3,
                    result: Ok(Message::from_json("[2]").expect("json")),
                },
                b"\0\0\0\x0d\x09\0\0\0\0\0\0\0\x03\0[2]",
            ),
            (
                Frame::Reply {
                    id: 3,
                    result: Err("no".into()),
                },
                b"\0\0\0\x0e\x09\0\0\0\0\0\0\0\x03\x01\"no\"",
            ),
        ];
        for (frame, bytes) in cases {
            let encoded = encode_control(&frame);
            assert_eq!(&encoded[..], bytes, "{frame:?}");
            let decoded =
                decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &encoded).expect("decodes");
            assert_eq!(decoded, [frame]);
        }
        let value = serde_json::json!({"type": "x"});
        let message = b"\0\0\0\x0d\x04{\"type\":\"x\"}";
        assert_eq!(&encode_message(&value, 64).expect("encodes")[..], message);
        assert_eq!(
            &Wire::Frames.encode(&value, 64).expect("encodes")[..],
            message
        );
        let request = encode_request(5, &value, 64).expect("encodes");
        assert_eq!(
            &request[..],
            b"\0\0\0\x15\x08\0\0\0\0\0\0\0\x05{\"type\":\"x\"}"
        );
        let line = Wire::NodeJson.encode(&value, 64).expect("encodes");
        assert_eq!(&line[..], b"{\"type\":\"x\"}\n");
        // Large frames come from the buffer pool: the same bytes.
        let big = "y".repeat(20_000);
        let frame = encode_message(&big, DEFAULT_MAX_FRAME).expect("encodes");
        let expected = [
            &20_003_u32.to_be_bytes()[..],
            b"\x04\"",
            big.as_bytes(),
            b"\"",
        ]
        .concat();
        assert_eq!(&frame[..], &expected[..]);
    }

    #[test]
    fn a_user_message_ready_is_not_the_ready_frame() {
        let bytes = encode_message("ready", DEFAULT_MAX_FRAME).expect("encodes");
        let decoded = decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &bytes).expect("decodes");
        assert_eq!(decoded, [message("\"ready\"")]);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, MESSAGE][..]);
        let err = codec.decode(&mut buf).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                size: 0xffff_ffff,
                max: 1024
            }
        ));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn encoder_refuses_messages_over_the_limit() {
        let big = "x".repeat(100);
        let err = encode_message(&big, 50).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { size: 103, max: 50 }
        ));
    }

    #[test]
    fn truncated_frame_is_an_error_at_eof() {
        let bytes = encode_message(&[1, 2, 3], DEFAULT_MAX_FRAME).expect("encodes");
        let err = decode_all(
            &mut FrameCodec::new(DEFAULT_MAX_FRAME),
            &bytes[..bytes.len() - 1],
        )
        .expect_err("truncated");
        assert!(matches!(err, ProtocolError::Truncated { .. }));
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        type Check = fn(&ProtocolError) -> bool;
        let cases: [(&[u8], Check); 6] = [
            (&[0, 0, 0, 0], |e| matches!(e, ProtocolError::EmptyFrame)),
            (&[0, 0, 0, 1, 99], |e| {
                matches!(e, ProtocolError::UnknownKind(99))
            }),
            (&[0, 0, 0, 2, READY, 1], |e| {
                matches!(e, ProtocolError::UnexpectedPayload { .. })
            }),
            (&[0, 0, 0, 3, MESSAGE, b'{', b'x'], |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            (&[0, 0, 0, 3, MESSAGE, 0xff, 0xfe], |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            (&[0, 0, 0, 2, HELLO, b'1'], |e| {
                matches!(e, ProtocolError::InvalidHello(_))
            }),
        ];
        for (bytes, check) in cases {
            let err = decode_all(&mut codec, bytes).expect_err("refused");
            assert!(check(&err), "{bytes:?} gave {err:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let json = "[".repeat(100_000) + &"]".repeat(100_000);
        let frame = raw_frame(MESSAGE, json.as_bytes());
        let result = decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &frame);
        assert!(
            matches!(result, Err(ProtocolError::InvalidMessage(_))),
            "deep nesting accepted"
        );
        // 127 levels are fine (brackets inside strings do not count), 128 are not.
        let nested =
            |depth: usize| "[".repeat(depth - 1) + r#"{"a":"[[[[\"["}"# + &"]".repeat(depth - 1);
        assert!(Message::from_json(nested(127)).is_ok());
        assert!(Message::from_json(nested(128)).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_give_frames_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&mut FrameCodec::new(256), &bytes);
        }

        #[test]
        fn any_bytes_decode_alike_whole_or_in_pieces(
            node in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            piece in 1..64_usize,
        ) {
            check_any_split(node, &bytes, piece, 256);
        }

        #[test]
        fn frames_near_the_maximum_decode_alike_whole_or_in_pieces(
            node in any::<bool>(),
            values in proptest::collection::vec(".{0,40}", 1..6),
            piece in 1..64_usize,
        ) {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| {
                    if node {
                        let mut line = serde_json::to_vec(v).expect("encodes");
                        line.push(b'\n');
                        line
                    } else {
                        encode_message(v, DEFAULT_MAX_FRAME).expect("encodes").to_vec()
                    }
                })
                .collect();
            check_any_split(node, &bytes, piece, 24);
        }

        #[test]
        fn any_split_decodes_like_the_whole(
            values in proptest::collection::vec(any::<(u32, String)>(), 1..8),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| encode_message(v, DEFAULT_MAX_FRAME).expect("encodes").to_vec())
                .collect();
            let cut = cut.index(bytes.len());
            let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut frames = Vec::new();
            while let Some(frame) = codec.decode(&mut buf).expect("valid") {
                frames.push(frame);
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(frame) = codec.decode(&mut buf).expect("valid") {
                frames.push(frame);
            }
            let decoded: Vec<(u32, String)> = frames
                .iter()
                .map(|f| match f {
                    Frame::Message(m) => m.decode().expect("decodes"),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            prop_assert_eq!(decoded, values);
        }
    }
}
