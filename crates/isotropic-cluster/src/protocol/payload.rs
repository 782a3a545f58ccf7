//! Each kind's payload, kind by kind: how it is written, then how it is read
//! (`docs/protocol.md`, section 2). [`put`] and [`take`] only dispatch.

use std::cell::RefCell;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::frame::{Frame, Kind, User};
use crate::error::ProtocolError;
use crate::message::{Codec, Message};
use crate::net::{ListenAddress, ListenError, ListenErrorKind};

/// Writes `frame`'s payload (a hello names `codec`, the channel's).
pub(super) fn put(frame: &Frame, codec: Codec, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    match frame {
        Frame::Hello {
            protocol,
            heartbeat,
            served,
            segments,
        } => put_json(
            &Hello {
                protocol: *protocol,
                heartbeat: *heartbeat,
                served: *served,
                segments: *segments,
                codec: (codec != Codec::Json).then(|| codec.name().to_owned()),
            },
            dst,
        ),
        Frame::Ready | Frame::Disconnect | Frame::Heartbeat => Ok(()),
        Frame::Message(message) => {
            dst.put_slice(message.as_bytes());
            Ok(())
        }
        Frame::Listen { id, address, acks } => put_listen(*id, address, *acks, dst),
        Frame::Listening {
            id,
            result,
            passed,
            acks,
        } => put_listening(*id, result, (*passed, *acks), dst),
        Frame::Connection { listener } | Frame::Accepted { listener } => {
            put_connection(*listener, dst)
        }
        Frame::Request { id, message } => {
            dst.put_u64(*id);
            dst.put_slice(message.as_bytes());
            Ok(())
        }
        Frame::Reply { id, result } => put_reply(*id, result, dst),
        Frame::Bytes(bytes) => {
            dst.put_slice(bytes);
            Ok(())
        }
        Frame::Fds { count } => {
            dst.put_u8(*count);
            Ok(())
        }
        Frame::Sealed { len } => {
            dst.put_u64(*len);
            Ok(())
        }
        Frame::Segment { id, len } => {
            dst.put_u32(*id);
            dst.put_u64(*len);
            Ok(())
        }
        Frame::Lent {
            segment,
            token,
            offset,
            len,
        } => {
            dst.put_u32(*segment);
            for n in [token, offset, len] {
                dst.put_u64(*n);
            }
            Ok(())
        }
        Frame::Release(tokens) => {
            tokens.iter().for_each(|token| dst.put_u64(*token));
            Ok(())
        }
        Frame::Returned { token, offset, len } => {
            for n in [token, offset, len] {
                dst.put_u64(*n);
            }
            Ok(())
        }
        Frame::Retire { id } => {
            dst.put_u32(*id);
            Ok(())
        }
        Frame::Attached(frame, _) => put(frame, codec, dst),
        Frame::BytesRequest { id, name, .. } => put_bytes_request(*id, name, dst),
        Frame::BytesReply { id, result } => put_bytes_reply(*id, result, dst),
        Frame::Served { requests } => put_json(
            &ServedBody {
                requests: *requests,
            },
            dst,
        ),
    }
}

/// Reads the payload of a frame of `kind` on a channel whose messages are
/// `codec`'s (a hello naming another is refused). Inlined into the decoder, which
/// then builds the frame in place (as a call, it cost 2% of decoding small
/// frames).
#[inline(always)]
pub(super) fn take(kind: Kind, body: Bytes, codec: Codec) -> Result<Frame, ProtocolError> {
    match kind {
        Kind::Hello => take_hello(&body, codec),
        Kind::Ready => take_empty(kind, &body, Frame::Ready),
        Kind::Disconnect => take_empty(kind, &body, Frame::Disconnect),
        Kind::Message => Ok(Frame::Message(take_message(body, codec)?)),
        Kind::Listen => take_listen(&body),
        Kind::Listening => take_listening(&body),
        Kind::Connection => take_connection(&body),
        Kind::Request => take_request(body, codec),
        Kind::Reply => take_reply(body, codec),
        Kind::Accepted => take_accepted(&body),
        Kind::Heartbeat => take_empty(kind, &body, Frame::Heartbeat),
        Kind::Bytes => Ok(Frame::Bytes(body)),
        Kind::Fds => match *body {
            [count] => Ok(Frame::Fds { count }),
            _ => Err(ProtocolError::InvalidControl(
                "an fds frame holds one byte".into(),
            )),
        },
        Kind::Sealed => match <[u8; 8]>::try_from(&*body) {
            Ok(len) => Ok(Frame::Sealed {
                len: u64::from_be_bytes(len),
            }),
            Err(_) => Err(ProtocolError::InvalidControl(
                "a sealed frame holds an 8-byte length".into(),
            )),
        },
        Kind::BytesRequest => take_bytes_request(body),
        Kind::BytesReply => take_bytes_reply(body),

        Kind::Segment => take_segment(&body),
        Kind::Lent => take_lent(&body),
        Kind::Release => take_release(&body),
        Kind::Returned => take_returned(&body),
        Kind::Retire => Ok(Frame::Retire {
            id: u32::from_be_bytes(fixed(&body, "a retire frame holds a 4-byte segment id")?),
        }),
        Kind::Served => {
            let body: ServedBody = control_body(&body)?;
            Ok(Frame::Served {
                requests: body.requests,
            })
        }
    }
}

/// Writes a user value's payload, in `codec`: as a message's, or a request's.
pub(super) fn put_user<T: Serialize + ?Sized>(
    user: &User<'_, T>,
    codec: Codec,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let value = match user {
        User::Message(value) => value,
        User::Request(id, value) => {
            dst.put_u64(*id);
            value
        }
    };
    match codec {
        Codec::Json => put_json(value, dst),
        Codec::MessagePack => rmp_serde::encode::write_named(&mut dst.writer(), value)
            .map_err(|e| ProtocolError::Encode(e.to_string())),
    }
}

// Hello: `{"protocol": N}`, with `"heartbeat": true` from a worker that
// answers heartbeats, and `"codec": NAME` when messages are not JSON.

#[derive(Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    heartbeat: bool,
    /// (From the primary.) It takes `served` frames.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    served: bool,
    /// (From a worker.) It takes shared segments.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    segments: bool,
    /// The codec of the sender's messages (`Codec::name`); none: JSON.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    codec: Option<String>,
}

/// A hello, refused when it names another codec than `codec`.
fn take_hello(body: &[u8], codec: Codec) -> Result<Frame, ProtocolError> {
    let hello: Hello =
        serde_json::from_slice(body).map_err(|e| ProtocolError::InvalidHello(e.to_string()))?;
    let theirs = hello.codec.as_deref().unwrap_or(Codec::Json.name());
    if theirs != codec.name() {
        return Err(ProtocolError::CodecMismatch {
            received: theirs.to_owned(),
            expected: codec.name(),
        });
    }
    Ok(Frame::Hello {
        protocol: hello.protocol,
        heartbeat: hello.heartbeat,
        served: hello.served,
        segments: hello.segments,
    })
}

// Ready, disconnect and heartbeat: nothing.

fn take_empty(kind: Kind, body: &[u8], frame: Frame) -> Result<Frame, ProtocolError> {
    if body.is_empty() {
        Ok(frame)
    } else {
        Err(ProtocolError::UnexpectedPayload { kind: kind as u8 })
    }
}

// Message: one value of the channel's codec, written as is (or serialized
// by `put_user`).

/// A message payload of `codec`, validated.
pub(super) fn take_message(body: Bytes, codec: Codec) -> Result<Message, ProtocolError> {
    Message::from_encoded(codec, body).map_err(|e| ProtocolError::InvalidMessage(e.to_string()))
}

// Listen: `{"id": N, "address": A}`, with `"acks": true` from a worker that
// acknowledges passed connections.

#[derive(Serialize, Deserialize)]
struct ListenBody {
    id: u64,
    address: String,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    acks: bool,
}

fn put_listen(
    id: u64,
    address: &ListenAddress,
    acks: bool,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let address = address.to_string();
    put_json(&ListenBody { id, address, acks }, dst)
}

fn take_listen(body: &[u8]) -> Result<Frame, ProtocolError> {
    let listen: ListenBody = control_body(body)?;
    Ok(Frame::Listen {
        id: listen.id,
        address: address(&listen.address)?,
        acks: listen.acks,
    })
}

// Listening: `{"id": N, "address": A}`, with `"passed": true` when the
// primary accepts (and `"acks": true` when it wants each connection
// acknowledged); or `{"id": N, "error": KIND, "message": TEXT}`.

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
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    acks: bool,
}

/// `(passed, acks)`: see [`Frame::Listening`].
fn put_listening(
    id: u64,
    result: &Result<ListenAddress, (ListenErrorKind, String)>,
    (passed, acks): (bool, bool),
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let body = match result {
        Ok(address) => ListeningBody {
            id,
            address: Some(address.to_string()),
            error: None,
            message: None,
            passed,
            acks: passed && acks,
        },
        Err((kind, message)) => ListeningBody {
            id,
            address: None,
            error: Some(kind.name().to_owned()),
            message: Some(message.clone()),
            passed: false,
            acks: false,
        },
    };
    put_json(&body, dst)
}

fn take_listening(body: &[u8]) -> Result<Frame, ProtocolError> {
    let body: ListeningBody = control_body(body)?;
    let result = match (body.address, body.error) {
        (Some(listening), None) => Ok(address(&listening)?),
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
    Ok(Frame::Listening {
        id: body.id,
        result,
        passed: body.passed,
        acks: body.passed && body.acks,
    })
}

/// A listen address in a control frame.
fn address(text: &str) -> Result<ListenAddress, ProtocolError> {
    text.parse()
        .map_err(|e: ListenError| ProtocolError::InvalidControl(e.to_string()))
}

// Served: `{"requests": N}`.

#[derive(Serialize, Deserialize)]
struct ServedBody {
    requests: u64,
}

// Connection, and accepted: `{"listener": N}`.

#[derive(Serialize, Deserialize)]
struct ConnectionBody {
    listener: u64,
}

fn put_connection(listener: u64, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    put_json(&ConnectionBody { listener }, dst)
}

fn take_connection(body: &[u8]) -> Result<Frame, ProtocolError> {
    let body: ConnectionBody = control_body(body)?;
    Ok(Frame::Connection {
        listener: body.listener,
    })
}

fn take_accepted(body: &[u8]) -> Result<Frame, ProtocolError> {
    let body: ConnectionBody = control_body(body)?;
    Ok(Frame::Accepted {
        listener: body.listener,
    })
}

// Request: an 8-byte big-endian id, then a message (written by `put`, or by
// `put_user` from a value).

fn take_request(mut body: Bytes, codec: Codec) -> Result<Frame, ProtocolError> {
    let id = request_id(&mut body)?;
    Ok(Frame::Request {
        id,
        message: take_message(body, codec)?,
    })
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

// Reply: the request's id, a status byte (0: ok, 1: error), then the reply
// message (in the channel's codec), or the error's text as a JSON string.

fn put_reply(
    id: u64,
    result: &Result<Message, String>,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    dst.put_u64(id);
    match result {
        Ok(message) => {
            dst.put_u8(0);
            dst.put_slice(message.as_bytes());
            Ok(())
        }
        Err(error) => {
            dst.put_u8(1);
            put_json(error, dst)
        }
    }
}

fn take_reply(mut body: Bytes, codec: Codec) -> Result<Frame, ProtocolError> {
    let id = request_id(&mut body)?;
    let result = match body.first() {
        Some(0) => Ok(take_message(body.slice(1..), codec)?),
        Some(1) => Err(control_body::<String>(&body[1..])?),
        _ => {
            return Err(ProtocolError::InvalidControl(
                "reply status must be 0 or 1".into(),
            ));
        }
    };
    Ok(Frame::Reply { id, result })
}

// Bytes request: the 8-byte id, then the handler's name (UTF-8, the rest
// of the payload); its body is the next frame. Bytes reply: the id, a
// status byte (0: ok, the body is the next frame; 1: error, its text as a
// JSON string follows). The body is written by `encode_with_body`.

fn put_bytes_request(id: u64, name: &str, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    dst.put_u64(id);
    dst.put_slice(name.as_bytes());
    Ok(())
}

fn take_bytes_request(mut body: Bytes) -> Result<Frame, ProtocolError> {
    let id = request_id(&mut body)?;
    let name = String::from_utf8(body.to_vec())
        .map_err(|_| ProtocolError::InvalidControl("a request name is UTF-8".into()))?;
    Ok(Frame::BytesRequest {
        id,
        name,
        body: Bytes::new(),
    })
}

fn put_bytes_reply(
    id: u64,
    result: &Result<Bytes, String>,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    dst.put_u64(id);
    match result {
        Ok(_) => {
            dst.put_u8(0);
            Ok(())
        }
        Err(error) => {
            dst.put_u8(1);
            put_json(error, dst)
        }
    }
}

fn take_bytes_reply(mut body: Bytes) -> Result<Frame, ProtocolError> {
    let id = request_id(&mut body)?;
    let result = match &body[..] {
        [0] => Ok(Bytes::new()),
        [1, error @ ..] => Err(control_body::<String>(error)?),
        _ => {
            return Err(ProtocolError::InvalidControl(
                "a bytes reply's status is 0 (then nothing) or 1".into(),
            ));
        }
    };
    Ok(Frame::BytesReply { id, result })
}

// Segment: a 4-byte id, an 8-byte length. Lent: a 4-byte segment id, then
// 8-byte token, offset and length. Release: one or more 8-byte tokens.
// Returned: 8-byte token, offset and length. Retire: a 4-byte id. All
// big-endian.

fn take_segment(body: &[u8]) -> Result<Frame, ProtocolError> {
    let what = "a segment frame holds a 4-byte id and an 8-byte length";
    let mut body = &fixed::<12>(body, what)?[..];
    let id = body.get_u32();
    Ok(Frame::Segment {
        id,
        len: body.get_u64(),
    })
}

fn take_lent(body: &[u8]) -> Result<Frame, ProtocolError> {
    let what = "a lent frame holds a 4-byte segment id, a token, an offset and a length";
    let mut body = &fixed::<28>(body, what)?[..];
    let segment = body.get_u32();
    let [token, offset, len] = [(); 3].map(|()| body.get_u64());
    Ok(Frame::Lent {
        segment,
        token,
        offset,
        len,
    })
}

fn take_release(body: &[u8]) -> Result<Frame, ProtocolError> {
    if body.is_empty() || !body.len().is_multiple_of(8) {
        return Err(ProtocolError::InvalidControl(
            "a release frame holds one or more 8-byte tokens".into(),
        ));
    }
    let tokens = body
        .chunks_exact(8)
        .map(|mut token| token.get_u64())
        .collect();
    Ok(Frame::Release(tokens))
}

fn take_returned(body: &[u8]) -> Result<Frame, ProtocolError> {
    let what = "a returned frame holds a token, an offset and a length";
    let mut body = &fixed::<24>(body, what)?[..];
    let [token, offset, len] = [(); 3].map(|()| body.get_u64());
    Ok(Frame::Returned { token, offset, len })
}

/// `body`, which must be `N` bytes (`what` says what it holds).
fn fixed<const N: usize>(body: &[u8], what: &str) -> Result<[u8; N], ProtocolError> {
    <[u8; N]>::try_from(body).map_err(|_| ProtocolError::InvalidControl(what.into()))
}

// Shared by the kinds above.

/// Appends `value` as JSON.
///
/// Serialized into a `Vec` first, then copied: serde_json's string escaping
/// writes each run between escapes, and through a `Vec` those writes cost
/// half of what they cost through `BytesMut`'s writer (64 KiB messages: 2.2x
/// the CPU time, measured with `perf`); the copy is small beside that.
pub(super) fn put_json<T: Serialize + ?Sized>(
    value: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    thread_local! {
        static JSON: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    JSON.with_borrow_mut(|json| {
        json.clear();
        let written = serde_json::to_writer(&mut *json, value)
            .map_err(|e| ProtocolError::Encode(e.to_string()));
        if written.is_ok() {
            dst.extend_from_slice(json);
        }
        if json.capacity() > JSON_KEEP {
            *json = Vec::new();
        }
        written
    })
}

/// The most the JSON buffer keeps between values.
const JSON_KEEP: usize = 4 * 1024 * 1024;

/// Decodes the JSON body of a control frame.
fn control_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::InvalidControl(e.to_string()))
}
