//! What travels on a channel: [`Frame`]s, each of a [`Kind`].

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::fds::PassedFds;
use crate::message::Message;
use crate::net::{ListenAddress, ListenErrorKind};

/// The protocol version this library speaks: 2 added `bytes` frames, 3
/// `fds`, `sealed`, `bytes request` and `bytes reply` frames, and shared
/// segments (`segment`, `lent`, `release`, `returned`, `retire`).
pub(crate) const VERSION: u32 = 3;
/// The oldest version it still speaks with (a peer of version 1 is sent no
/// frame it does not know: see [`supports_bytes`]).
pub(crate) const OLDEST_VERSION: u32 = 1;

/// Whether a peer whose hello said `version` takes `bytes` frames (0: its
/// hello has not come yet, and it is taken to speak ours).
pub(crate) fn supports_bytes(version: u32) -> bool {
    version == 0 || version >= 2
}
/// Whether a peer whose hello said `version` takes `fds`, `sealed`,
/// `bytes request` and `bytes reply` frames (0: its hello has not come yet).
pub(crate) fn supports_fds(version: u32) -> bool {
    version == 0 || version >= 3
}

/// Whether a peer whose hello said `version` may take shared segments (if
/// it also said `"segments": true`): only once its hello came (a worker
/// whose version is not known yet is sent sealed payloads instead).
pub(crate) fn supports_segments(version: u32) -> bool {
    version >= 3
}

/// The default largest frame (kind byte and payload), 16 MiB.
pub(crate) const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// A frame's kind: its byte on the wire (`docs/protocol.md`, section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Hello = 1,
    Ready = 2,
    Disconnect = 3,
    Message = 4,
    Listen = 5,
    Listening = 6,
    Connection = 7,
    Request = 8,
    Reply = 9,
    Accepted = 10,
    Heartbeat = 11,
    Served = 12,
    Bytes = 13,
    Fds = 14,
    Sealed = 15,
    BytesRequest = 16,
    BytesReply = 17,
    Segment = 18,
    Lent = 19,
    Release = 20,
    Returned = 21,
    Retire = 22,
}

impl Kind {
    /// The kind's name, as the protocol's documentation spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Ready => "ready",
            Kind::Disconnect => "disconnect",
            Kind::Message => "message",
            Kind::Listen => "listen",
            Kind::Listening => "listening",
            Kind::Connection => "connection",
            Kind::Request => "request",
            Kind::Reply => "reply",
            Kind::Accepted => "accepted",
            Kind::Heartbeat => "heartbeat",
            Kind::Served => "served",
            Kind::Bytes => "bytes",
            Kind::Fds => "fds",
            Kind::Sealed => "sealed",
            Kind::BytesRequest => "bytes request",
            Kind::BytesReply => "bytes reply",
            Kind::Segment => "segment",
            Kind::Lent => "lent",
            Kind::Release => "release",
            Kind::Returned => "returned",
            Kind::Retire => "retire",
        }
    }
}

impl TryFrom<u8> for Kind {
    type Error = ProtocolError;

    /// The kind of byte `byte`; [`ProtocolError::UnknownKind`] for a reserved one.
    fn try_from(byte: u8) -> Result<Self, ProtocolError> {
        Ok(match byte {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Disconnect,
            4 => Kind::Message,
            5 => Kind::Listen,
            6 => Kind::Listening,
            7 => Kind::Connection,
            8 => Kind::Request,
            9 => Kind::Reply,
            10 => Kind::Accepted,
            11 => Kind::Heartbeat,
            12 => Kind::Served,
            13 => Kind::Bytes,
            14 => Kind::Fds,
            15 => Kind::Sealed,
            16 => Kind::BytesRequest,
            17 => Kind::BytesReply,
            18 => Kind::Segment,
            19 => Kind::Lent,
            20 => Kind::Release,
            21 => Kind::Returned,
            22 => Kind::Retire,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// The least a frame weighs (see [`Frame::weight`]): its share of what is
/// held for it besides its payload.
pub(crate) const MIN_WEIGHT: usize = 64;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// First frame in each direction: the sender's protocol version;
    /// `heartbeat`: the sender (a worker) answers heartbeats.
    Hello {
        protocol: u32,
        heartbeat: bool,
        served: bool,
        /// (From a worker.) It takes shared segments (kinds 18 to 22).
        segments: bool,
    },
    /// Worker to primary: initialization is done, put me in the pool.
    Ready,
    /// Primary to worker: please finish and exit. Worker to primary: I am leaving.
    Disconnect,
    /// A user message.
    Message(Message),
    /// Worker to primary: a listening socket for this address, please;
    /// `acks`: I acknowledge each connection passed to me (`Accepted`).
    Listen {
        id: u64,
        address: ListenAddress,
        acks: bool,
    },
    /// Primary to worker: the answer to `Listen` `id`; on success, the socket
    /// came with the frame's first byte, unless `passed`: then the primary
    /// accepts, and passes each connection in a `Connection` frame, and
    /// `acks`: wants each acknowledged.
    Listening {
        id: u64,
        result: Result<ListenAddress, (ListenErrorKind, String)>,
        passed: bool,
        acks: bool,
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
    /// Worker to primary: a connection passed for listen request `listener`
    /// was taken by the worker's accept.
    Accepted { listener: u64 },
    /// Primary to worker: are you alive? Worker to primary: yes (sent from
    /// its event loop).
    Heartbeat,
    /// Worker to primary: I served this many more requests (toward
    /// `max_requests`; sent only to a primary whose hello said `served`).
    Served { requests: u64 },
    /// Either way: a user message of raw bytes (protocol version 2).
    Bytes(Bytes),
    /// Either way: the next frame, a message or bytes, comes with `count`
    /// fds, attached to this frame's first byte (version 3). Only the
    /// channel's reader sees it: it hands on [`Frame::Attached`].
    Fds { count: u8 },
    /// Either way: a bytes message of `len` bytes in a sealed memfd,
    /// attached to this frame's first byte (version 3). Only the channel's
    /// reader sees it: it hands on [`Frame::Bytes`].
    Sealed { len: u64 },
    /// Primary to worker: segment `id`, a memfd of `len` bytes attached to
    /// this frame's first byte, that `lent` frames will refer to (version
    /// 3). Only the channel's reader sees it.
    Segment { id: u32, len: u64 },
    /// Primary to worker: a bytes message of the `len` bytes at `offset` in
    /// segment `segment`, lent as `token` until released (version 3). Only
    /// the channel's reader sees it: it hands on [`Frame::Bytes`].
    Lent {
        segment: u32,
        token: u64,
        offset: u64,
        len: u64,
    },
    /// Worker to primary: the payloads lent as `tokens` are no longer held.
    Release(Vec<u64>),
    /// Worker to primary: a bytes message of the `len` bytes at `offset` in
    /// the payload lent as `token` (still held). Only the channel's reader
    /// sees it: it hands on [`Frame::Bytes`].
    Returned { token: u64, offset: u64, len: u64 },
    /// Primary to worker: segment `id` is gone (none of it is lent).
    Retire { id: u32 },
    /// A message or bytes frame with the fds announced before it (never on
    /// the wire as such: encoding it encodes the frame alone).
    Attached(Box<Frame>, PassedFds),
    /// Either way: a request of raw bytes for the handler named `name`
    /// (version 3). Two frames on the wire: this one's head (id and name),
    /// then its body as a bytes or sealed frame. The decoder gives it with
    /// an empty body ([`awaits_body`](Self::awaits_body)), the channel's
    /// reader with the body that followed; encoding it encodes the head
    /// alone (the whole: [`encode_with_body`](super::encode_with_body)).
    BytesRequest { id: u64, name: String, body: Bytes },
    /// Either way: the reply to bytes request `id`, or the error its
    /// handler gave. A successful one is two frames, as
    /// [`BytesRequest`](Self::BytesRequest); an error is one.
    BytesReply {
        id: u64,
        result: Result<Bytes, String>,
    },
}

impl Frame {
    /// The frame's kind.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Frame::Hello { .. } => Kind::Hello,
            Frame::Ready => Kind::Ready,
            Frame::Disconnect => Kind::Disconnect,
            Frame::Message(_) => Kind::Message,
            Frame::Listen { .. } => Kind::Listen,
            Frame::Listening { .. } => Kind::Listening,
            Frame::Connection { .. } => Kind::Connection,
            Frame::Request { .. } => Kind::Request,
            Frame::Reply { .. } => Kind::Reply,
            Frame::Accepted { .. } => Kind::Accepted,
            Frame::Heartbeat => Kind::Heartbeat,
            Frame::Served { .. } => Kind::Served,
            Frame::Bytes(_) => Kind::Bytes,
            Frame::Fds { .. } => Kind::Fds,
            Frame::Sealed { .. } => Kind::Sealed,
            Frame::Segment { .. } => Kind::Segment,
            Frame::Lent { .. } => Kind::Lent,
            Frame::Release(_) => Kind::Release,
            Frame::Returned { .. } => Kind::Returned,
            Frame::Retire { .. } => Kind::Retire,
            Frame::Attached(frame, _) => frame.kind(),
            Frame::BytesRequest { .. } => Kind::BytesRequest,
            Frame::BytesReply { .. } => Kind::BytesReply,
        }
    }

    /// Whether it is a request (of a message or of bytes): one the receiver
    /// owes a reply.
    pub(crate) fn is_request(&self) -> bool {
        matches!(self, Frame::Request { .. } | Frame::BytesRequest { .. })
    }

    /// Whether, as the decoder gives it, its body is the next frame: a bytes
    /// request, or a successful bytes reply.
    pub(crate) fn awaits_body(&self) -> bool {
        matches!(
            self,
            Frame::BytesRequest { .. } | Frame::BytesReply { result: Ok(_), .. }
        )
    }

    /// This head (see [`awaits_body`](Self::awaits_body)) with its body,
    /// `next`, the frame that followed it.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::MissingBody`] when `next` is not a bytes message.
    pub(crate) fn with_body(self, next: Frame) -> Result<Frame, ProtocolError> {
        let Frame::Bytes(body) = next else {
            return Err(ProtocolError::MissingBody {
                head: self.name(),
                next: next.name(),
            });
        };
        Ok(match self {
            Frame::BytesRequest { id, name, .. } => Frame::BytesRequest { id, name, body },
            Frame::BytesReply { id, .. } => Frame::BytesReply {
                id,
                result: Ok(body),
            },
            other => other,
        })
    }

    /// The frame's kind, by name.
    pub(crate) fn name(&self) -> &'static str {
        self.kind().name()
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
            Frame::Bytes(bytes)
            | Frame::BytesRequest { body: bytes, .. }
            | Frame::BytesReply {
                result: Ok(bytes), ..
            } => bytes.len(),
            Frame::BytesReply {
                result: Err(error), ..
            } => error.len(),
            Frame::Attached(frame, _) => frame.weight(),
            _ => 0,
        };
        payload.max(MIN_WEIGHT)
    }
}

/// A user value on its way out, not serialized yet: as a message, or as
/// request `id`.
#[derive(Debug)]
pub(crate) enum User<'a, T: ?Sized> {
    Message(&'a T),
    Request(u64, &'a T),
}

impl<T: ?Sized> User<'_, T> {
    /// The kind of frame it goes out as.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            User::Message(_) => Kind::Message,
            User::Request(..) => Kind::Request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_a_kind_or_an_unknown_kind_error() {
        let mut kinds = Vec::new();
        for byte in 0..=u8::MAX {
            match Kind::try_from(byte) {
                Ok(kind) => {
                    assert_eq!(kind as u8, byte);
                    kinds.push(kind.name());
                }
                Err(error) => assert!(matches!(error, ProtocolError::UnknownKind(b) if b == byte)),
            }
        }
        // Kinds 1 to 22; 0 and 23 to 255 are reserved (`docs/protocol.md`).
        let names = [
            "hello",
            "ready",
            "disconnect",
            "message",
            "listen",
            "listening",
            "connection",
            "request",
            "reply",
            "accepted",
            "heartbeat",
            "served",
            "bytes",
            "fds",
            "sealed",
            "bytes request",
            "bytes reply",
            "segment",
            "lent",
            "release",
            "returned",
            "retire",
        ];
        assert_eq!(kinds, names);
    }
}
