//! Our frames: [`FrameCodec`] reads and writes them.
//!
//! ```text
//! +----------------+--------+----------------------+
//! | length: u32 BE |  kind  | payload (length - 1) |
//! +----------------+--------+----------------------+
//! ```

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::buffers;
use super::frame::{Frame, Kind, User};
use super::payload;
use crate::error::ProtocolError;
use crate::message::Codec;

const HEADER: usize = 4;

/// Reads and writes frames of at most `max` bytes (kind byte and payload),
/// refusing a larger one before allocating for it; user messages in
/// `codec` (JSON unless [`with_codec`](Self::with_codec) says otherwise).
/// Each kind's payload is in `payload.rs`; this is the framing around it.
#[derive(Debug, Clone)]
pub(crate) struct FrameCodec {
    max: usize,
    codec: Codec,
}

impl FrameCodec {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            codec: Codec::Json,
        }
    }

    /// The same, with messages in `codec`.
    pub(crate) fn with_codec(self, codec: Codec) -> Self {
        Self { codec, ..self }
    }

    /// Appends a frame of `kind` whose payload `payload` writes; on error
    /// `dst` is left as it was.
    fn put(
        &self,
        kind: Kind,
        dst: &mut BytesMut,
        payload: impl FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(kind as u8);
        let length = payload(dst).and_then(|()| {
            let len = dst.len() - start - HEADER;
            match u32::try_from(len) {
                Ok(length) if len <= self.max => Ok(length),
                _ => Err(ProtocolError::FrameTooLarge {
                    size: len,
                    max: self.max,
                }),
            }
        });
        match length {
            Ok(length) => {
                dst[start..start + HEADER].copy_from_slice(&length.to_be_bytes());
                Ok(())
            }
            Err(error) => {
                dst.truncate(start);
                Err(error)
            }
        }
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
        let kind = Kind::try_from(body.get_u8())?;
        payload::take(kind, body, self.codec).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        decode_to_end(self, src)
    }
}

/// A decoder that can take bytes frames' payloads without building a
/// [`Frame`] each: the common case of small messages, where moving a `Frame`
/// (a large enum) through the layers of a decode and into a batch showed in
/// profiles.
pub(crate) trait TakeBytes {
    /// The whole bytes frames within bounds at the start of `src`, at most
    /// `most.0` of them and none past the first to end beyond `most.1`
    /// bytes; `None` if there is none there (the next frame, left in `src`,
    /// is then for `decode`).
    fn take_run(&mut self, src: &mut BytesMut, most: (usize, usize)) -> Option<BytesRun>;
}

impl TakeBytes for FrameCodec {
    fn take_run(&mut self, src: &mut BytesMut, most: (usize, usize)) -> Option<BytesRun> {
        let (mut end, mut count) = (0, 0);
        while count < most.0 && end < most.1 {
            let Some(header) = src.get(end..=end + HEADER) else {
                break;
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            // (Bounded by `max` before `HEADER + len` is summed: no overflow
            // where `usize` is 32 bits, as in `decode`.)
            let bytes = header[HEADER] == Kind::Bytes as u8 && len != 0 && len <= self.max;
            if !bytes || src.len() - end < HEADER + len {
                break;
            }
            end += HEADER + len;
            count += 1;
        }
        (count > 0).then(|| BytesRun {
            wire: src.split_to(end).freeze(),
            count,
        })
    }
}

/// Bytes frames as they came, one after the other ([`TakeBytes::take_run`]):
/// an iterator of their payloads, in order.
#[derive(Debug)]
pub(crate) struct BytesRun {
    /// Whole bytes frames, each checked.
    wire: Bytes,
    /// How many are left.
    count: usize,
}

impl BytesRun {
    /// The bytes the frames left take on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// About what the frames left weigh together as [`Frame::weight`]
    /// counts them: at least [`MIN_WEIGHT`](super::frame::MIN_WEIGHT) each
    /// (so that a worker's budget counts tiny messages as it counts frames).
    pub(crate) fn weight(&self) -> usize {
        self.wire.len().max(self.count * super::frame::MIN_WEIGHT)
    }
}

impl Iterator for BytesRun {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let header = self.wire.get(..=HEADER)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        // (Checked whole by `take_run`: `min` only keeps a slip from panicking.)
        let end = (HEADER + len).min(self.wire.len());
        let mut payload = if end == self.wire.len() {
            std::mem::take(&mut self.wire)
        } else {
            self.wire.split_to(end)
        };
        payload.advance(HEADER + 1);
        self.count = self.count.saturating_sub(1);
        Some(payload)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count, Some(self.count))
    }
}

impl ExactSizeIterator for BytesRun {}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.put(frame.kind(), dst, |dst| {
            payload::put(frame, self.codec, dst)
        })
    }
}

impl<T: Serialize + ?Sized> Encoder<User<'_, T>> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, user: User<'_, T>, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.put(user.kind(), dst, |dst| {
            payload::put_user(&user, self.codec, dst)
        })
    }
}

/// Encodes `frame`, refusing it over `max` bytes.
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] when the frame would exceed `max`.
pub(crate) fn encode(frame: &Frame, max: usize) -> Result<Bytes, ProtocolError> {
    buffers::encoded(|dst| FrameCodec::new(max).encode(frame, dst))
}

/// Encodes a control frame (hello, ready, disconnect, listen, listening,
/// connection, accepted): small, so never refused.
pub(crate) fn encode_control(frame: &Frame) -> Bytes {
    // Only a frame over 4 GiB could fail.
    encode(frame, usize::MAX).unwrap_or_default()
}

/// Encodes our hello (see [`Frame::Hello`]) for a channel whose messages
/// are `codec`'s, which it names.
pub(crate) fn encode_hello(heartbeat: bool, served: bool, segments: bool, codec: Codec) -> Bytes {
    let hello = Frame::Hello {
        protocol: super::VERSION,
        heartbeat,
        served,
        segments,
    };
    // Only a frame over 4 GiB could fail.
    buffers::encoded(|dst| {
        FrameCodec::new(usize::MAX)
            .with_codec(codec)
            .encode(&hello, dst)
    })
    .unwrap_or_default()
}

/// A frame ready to write: `head`, then `body`, with `fds` attached to the
/// first byte. A bytes message is its 5-byte header and the payload as the
/// sender gave it, never copied into a frame; any other frame is all
/// `head`. The fds are shared by the clones (a broadcast passes one memfd
/// to every worker), and closed with the last.
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoded {
    pub(crate) head: Head,
    pub(crate) body: Bytes,
    pub(crate) fds: Vec<Arc<OwnedFd>>,
}

impl Encoded {
    /// The bytes message of `header` and `payload`.
    pub(crate) fn bytes(header: BytesHeader, payload: Bytes) -> Self {
        Self {
            head: Head::Header(header),
            body: payload,
            fds: Vec::new(),
        }
    }

    /// The frame's size on the wire.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

impl From<Bytes> for Encoded {
    fn from(head: Bytes) -> Self {
        Self {
            head: Head::Frame(head),
            body: Bytes::new(),
            fds: Vec::new(),
        }
    }
}

/// The first part of an [`Encoded`] frame: a bytes message's header, held
/// inline (a small message then costs no allocation of its own), or
/// encoded bytes.
#[derive(Debug, Clone)]
pub(crate) enum Head {
    Header(BytesHeader),
    Frame(Bytes),
}

impl Default for Head {
    fn default() -> Self {
        Self::Frame(Bytes::new())
    }
}

impl std::ops::Deref for Head {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Header(header) => header,
            Self::Frame(bytes) => bytes,
        }
    }
}

/// A bytes message of `payload`, refused over `max` bytes (kind byte and
/// payload).
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] when the frame would exceed `max`.
pub(crate) fn encode_bytes(payload: Bytes, max: usize) -> Result<Encoded, ProtocolError> {
    Ok(Encoded::bytes(bytes_header(payload.len(), max)?, payload))
}

/// A bytes message's header: its length and kind.
pub(crate) type BytesHeader = [u8; HEADER + 1];

/// The header of a bytes message of `len` bytes, refused over `max` bytes
/// (kind byte and payload).
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] when the frame would exceed `max`.
pub(crate) fn bytes_header(len: usize, max: usize) -> Result<BytesHeader, ProtocolError> {
    let len = len + 1;
    let length = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(ProtocolError::FrameTooLarge { size: len, max })?;
    let [a, b, c, d] = length.to_be_bytes();
    Ok([a, b, c, d, Kind::Bytes as u8])
}

/// The default size from which a bytes payload goes in a sealed memfd.
pub(crate) const DEFAULT_SEALED_FROM: usize = 1024 * 1024;

/// How large frames may be, and how large payloads travel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// The largest frame (kind byte and payload).
    pub(crate) max_frame: usize,
    /// Bytes payloads of this size or more go in a sealed memfd.
    pub(crate) sealed_from: usize,
}

#[cfg(test)]
impl Sizes {
    /// Frames up to `max_frame`, and the default sealed threshold.
    pub(crate) fn frames(max_frame: usize) -> Self {
        Self {
            max_frame,
            sealed_from: DEFAULT_SEALED_FROM,
        }
    }
}

/// A bytes message of `payload`: in a sealed memfd (one copy, then passed
/// by reference) from `sizes.sealed_from` bytes on, when the peer takes
/// `sealed` frames (`sealed`); otherwise as [`encode_bytes`]. A sealed
/// payload is not bound by the maximum frame.
///
/// # Errors
///
/// As [`encode_bytes`]; [`ProtocolError::Encode`] if the memfd cannot be
/// made.
pub(crate) fn encode_payload(
    payload: Bytes,
    sizes: Sizes,
    sealed: bool,
) -> Result<Encoded, ProtocolError> {
    match sizes.sealed_from {
        from if sealed && payload.len() >= from => {
            let memfd = crate::sys::sealed_memfd(&payload)
                .map_err(|e| ProtocolError::Encode(format!("cannot make a memfd: {e}")))?;
            let mut frame = Encoded::from(encode_control(&Frame::Sealed {
                len: payload.len() as u64,
            }));
            frame.fds.push(Arc::new(memfd));
            Ok(frame)
        }
        _ => encode_bytes(payload, sizes.max_frame),
    }
}

/// `frame` with `fds` passed along: an `fds` frame announcing them goes
/// first, with them attached.
///
/// # Errors
///
/// [`ProtocolError::TooManyFds`] for more than [`MAX_FDS`](crate::MAX_FDS).
pub(crate) fn attach_fds(mut frame: Encoded, fds: Vec<OwnedFd>) -> Result<Encoded, ProtocolError> {
    if fds.is_empty() {
        return Ok(frame);
    }
    let count = u8::try_from(fds.len())
        .ok()
        .filter(|&n| usize::from(n) <= crate::fds::MAX_FDS)
        .ok_or(ProtocolError::TooManyFds {
            count: fds.len(),
            max: crate::fds::MAX_FDS,
        })?;
    let announce = encode_control(&Frame::Fds { count });
    frame.head = Head::Frame([&announce[..], &frame.head[..]].concat().into());
    // The user's fds first, then the memfd of a sealed payload.
    let sealed = std::mem::take(&mut frame.fds);
    frame.fds = fds.into_iter().map(Arc::new).chain(sealed).collect();
    Ok(frame)
}

/// The last frames of a channel that ended: bytes left after them are a
/// frame cut short.
pub(super) fn decode_to_end<D>(
    codec: &mut D,
    src: &mut BytesMut,
) -> Result<Option<Frame>, ProtocolError>
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Codec, Message};
    use crate::net::{ListenAddress, ListenErrorKind};
    use crate::protocol::{DEFAULT_MAX_FRAME, VERSION};
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

    /// `value` as a message frame.
    fn encode_value<T: Serialize + ?Sized>(
        value: &T,
        max: usize,
    ) -> Result<BytesMut, ProtocolError> {
        let mut dst = BytesMut::new();
        FrameCodec::new(max).encode(User::Message(value), &mut dst)?;
        Ok(dst)
    }

    /// A frame of `kind` with any payload.
    fn raw(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len() + 1).expect("small");
        [&length.to_be_bytes()[..], &[kind as u8], payload].concat()
    }

    /// The payloads of the bytes frames a run took, in order.
    fn payloads(run: Option<BytesRun>) -> Vec<Bytes> {
        run.map(Iterator::collect).unwrap_or_default()
    }

    /// The shortcut takes whole bytes frames' payloads, as `decode` would,
    /// and leaves anything else (another kind, a frame not all there, one
    /// over the bound, an empty one) for `decode`.
    #[test]
    fn take_run_takes_only_whole_bytes_frames() {
        let mut codec = FrameCodec::new(16);
        let bytes = |payload: &[u8]| raw(Kind::Bytes, payload);
        let wire = [
            bytes(b"abc"),
            bytes(b"d"),
            raw(Kind::Heartbeat, b""),
            bytes(b"e"),
        ]
        .concat();
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            payloads(codec.take_run(&mut buf, (9, 99))),
            [&b"abc"[..], b"d"]
        );
        assert!(codec.take_run(&mut buf, (9, 99)).is_none());
        assert_eq!(
            codec.decode(&mut buf).expect("decodes"),
            Some(Frame::Heartbeat)
        );
        assert_eq!(payloads(codec.take_run(&mut buf, (9, 99))), [&b"e"[..]]);
        let whole = [bytes(b"abc"), bytes(b"xy")].concat();
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let taken = payloads(codec.take_run(&mut buf, (9, 99)));
            assert_eq!(taken.len(), usize::from(cut >= 8), "cut at {cut}");
            assert_eq!(taken.len() * 8 + buf.len(), cut, "the rest stays");
        }
        for wire in [
            raw(Kind::Bytes, &[0; 16]),
            vec![0, 0, 0, 0, Kind::Bytes as u8],
        ] {
            let mut buf = BytesMut::from(&wire[..]);
            assert!(codec.take_run(&mut buf, (9, 99)).is_none());
            assert!(codec.decode(&mut buf).is_err());
        }
    }

    /// A run stops at the count given, and at the first frame to end past
    /// the bytes given (taking that one).
    #[test]
    fn take_run_keeps_to_its_bounds() {
        let mut codec = FrameCodec::new(16);
        let wire = [b"ab", b"cd", b"ef", b"gh"]
            .map(|p| raw(Kind::Bytes, p))
            .concat();
        let mut buf = BytesMut::from(&wire[..]);
        let run = codec.take_run(&mut buf, (2, 99)).expect("a run");
        assert_eq!((run.len(), run.wire_len(), run.weight()), (2, 14, 128));
        assert_eq!(payloads(Some(run)), [&b"ab"[..], b"cd"]);
        assert_eq!(payloads(codec.take_run(&mut buf, (9, 1))), [&b"ef"[..]]);
        assert_eq!(payloads(codec.take_run(&mut buf, (9, 8))), [&b"gh"[..]]);
        assert!(buf.is_empty());
    }

    /// A header claiming the largest length never takes a run, whatever
    /// the bound (no arithmetic slip), and leaves the frame for `decode`.
    #[test]
    fn take_run_leaves_the_largest_lengths_alone() {
        for max in [16, u32::MAX as usize - 1, u32::MAX as usize, usize::MAX] {
            let mut codec = FrameCodec::new(max);
            for len in [u32::MAX, u32::MAX - 4, u32::MAX - 5, 1 << 31] {
                let mut wire = len.to_be_bytes().to_vec();
                wire.extend([Kind::Bytes as u8, 1, 2, 3]);
                let mut buf = BytesMut::from(&wire[..]);
                assert!(codec.take_run(&mut buf, (9, usize::MAX)).is_none());
                assert_eq!(&buf[..], &wire[..]);
            }
        }
    }

    /// The frames of `bytes` read in pieces of `piece` (as the inbox reads
    /// them), taking runs of at most `most` before each decode when `runs`:
    /// runs' payloads as bytes frames, then an error if any.
    fn read_in_pieces(
        bytes: &[u8],
        piece: usize,
        runs: Option<(usize, usize)>,
    ) -> (Vec<Frame>, bool) {
        let mut codec = FrameCodec::new(24);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(piece).chain([&[][..]]) {
            buf.extend_from_slice(chunk);
            loop {
                if let Some(most) = runs
                    && let Some(run) = codec.take_run(&mut buf, most)
                {
                    let expected = run.len();
                    let payloads: Vec<Frame> = run.map(Frame::Bytes).collect();
                    assert_eq!(payloads.len(), expected, "the run's count");
                    frames.extend(payloads);
                    continue;
                }
                let decoded = if chunk.is_empty() {
                    codec.decode_eof(&mut buf)
                } else {
                    codec.decode(&mut buf)
                };
                match decoded {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }

    /// Bytes frames (and others, and garbage) read in any pieces give the
    /// same frames, in the same order, with runs taken as without.
    fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
        let frame = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..30)
                .prop_map(|p| raw(Kind::Bytes, &p)),
            1 => Just(raw(Kind::Heartbeat, b"")),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(frame, 0..12).prop_map(|frames| frames.concat())
    }

    proptest! {
        #[test]
        fn runs_take_the_frames_decode_would(
            bytes in frame_bytes(),
            piece in 1..80_usize,
            most in (0..5_usize, 0..100_usize),
        ) {
            let plain = read_in_pieces(&bytes, piece, None);
            let runs = read_in_pieces(&bytes, piece, Some(most));
            prop_assert_eq!(runs, plain);
        }
    }

    fn message(json: &str) -> Frame {
        Frame::Message(Message::from_json(json.to_owned()).expect("valid json"))
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello {
                protocol: VERSION,
                heartbeat: true,
                served: false,
                segments: false,
            },
            Frame::Ready,
            Frame::Heartbeat,
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

    /// MessagePack messages, requests and replies: the documented bytes
    /// (maps keyed by field name), their `type` found, decoded into types;
    /// the hello names the codec.
    #[test]
    fn messagepack_frames_round_trip_typed() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Greet {
            r#type: String,
            n: u8,
        }
        let greet = Greet {
            r#type: "greet".into(),
            n: 7,
        };
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME).with_codec(Codec::MessagePack);
        let mut bytes = BytesMut::new();
        codec
            .encode(
                &Frame::Hello {
                    protocol: VERSION,
                    heartbeat: false,
                    served: true,
                    segments: false,
                },
                &mut bytes,
            )
            .expect("hello");
        assert_eq!(
            &bytes[5..],
            br#"{"protocol":3,"served":true,"codec":"msgpack"}"#
        );
        let start = bytes.len();
        codec
            .encode(User::Message(&greet), &mut bytes)
            .expect("message");
        // fixmap of 2: "type" => "greet", "n" => 7.
        assert_eq!(
            &bytes[start..],
            b"\0\0\0\x10\x04\x82\xa4type\xa5greet\xa1n\x07"
        );
        codec
            .encode(User::Request(9, &greet), &mut bytes)
            .expect("request");
        let reply = Message::encode_as(Codec::MessagePack, &49_u32).expect("reply");
        assert_eq!(reply.as_bytes(), b"\x31");
        codec
            .encode(
                &Frame::Reply {
                    id: 9,
                    result: Ok(reply),
                },
                &mut bytes,
            )
            .expect("reply");
        let frames = decode_all(&mut codec, &bytes).expect("decodes");
        let [
            _,
            Frame::Message(message),
            Frame::Request {
                id: 9,
                message: request,
            },
            Frame::Reply {
                result: Ok(reply), ..
            },
        ] = &frames[..]
        else {
            panic!("{frames:?}");
        };
        for message in [message, request] {
            assert_eq!(message.codec(), Codec::MessagePack);
            assert_eq!(message.type_name(), Some("greet"));
            assert_eq!(message.decode::<Greet>().expect("typed"), greet);
            // Shown as JSON (keys in order: `serde_json::Value`).
            assert_eq!(message.to_string(), r#"{"n":7,"type":"greet"}"#);
        }
        assert_eq!(reply.decode::<u32>().expect("typed"), 49);
    }

    /// A hello that names another codec than the channel's (none: JSON) is
    /// refused with a typed error, both ways; a malformed MessagePack
    /// message is an invalid message.
    #[test]
    fn codec_mismatches_and_malformed_messagepack_are_typed_errors() {
        let json_hello = encode_control(&Frame::Hello {
            protocol: VERSION,
            heartbeat: true,
            served: false,
            segments: false,
        });
        let mut msgpack = FrameCodec::new(DEFAULT_MAX_FRAME).with_codec(Codec::MessagePack);
        let err = decode_all(&mut msgpack, &json_hello).expect_err("mismatch");
        assert_eq!(
            err,
            ProtocolError::CodecMismatch {
                received: "json".into(),
                expected: "msgpack",
            }
        );
        let future = raw(Kind::Hello, br#"{"protocol":2,"codec":"cbor"}"#);
        let err =
            decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &future).expect_err("mismatch");
        assert_eq!(
            err,
            ProtocolError::CodecMismatch {
                received: "cbor".into(),
                expected: "json",
            }
        );
        // An array of 2 with one element; a value with bytes after it; JSON.
        for bad in [&b"\x92\x01"[..], b"\x01\x02", br#"{"type":"x"}"#] {
            let err = decode_all(&mut msgpack, &raw(Kind::Message, bad)).expect_err("invalid");
            assert!(matches!(err, ProtocolError::InvalidMessage(_)), "{err:?}");
        }
    }

    /// Every kind's bytes, pinned (`docs/protocol.md` is the contract).
    #[test]
    fn every_kind_has_the_documented_bytes() {
        let address: ListenAddress = "127.0.0.1:3000".parse().expect("address");
        let cases: [(Frame, &[u8]); 26] = [
            (
                Frame::Segment { id: 2, len: 1 << 20 },
                b"\0\0\0\x0d\x12\0\0\0\x02\0\0\0\0\0\x10\0\0",
            ),
            (
                Frame::Lent {
                    segment: 2,
                    token: 3,
                    offset: 4,
                    len: 5,
                },
                b"\0\0\0\x1d\x13\0\0\0\x02\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0\x04\0\0\0\0\0\0\0\x05",
            ),
            (
                Frame::Release(vec![3, 1]),
                b"\0\0\0\x11\x14\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0\x01",
            ),
            (
                Frame::Returned {
                    token: 3,
                    offset: 4,
                    len: 5,
                },
                b"\0\0\0\x19\x15\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0\x04\0\0\0\0\0\0\0\x05",
            ),
            (Frame::Retire { id: 2 }, b"\0\0\0\x05\x16\0\0\0\x02"),
            (Frame::Fds { count: 2 }, b"\0\0\0\x02\x0e\x02"),
            (
                Frame::Sealed { len: 1 << 24 },
                b"\0\0\0\x09\x0f\0\0\0\0\x01\0\0\0",
            ),
            (
                Frame::Bytes(Bytes::from_static(b"\0\xff{")),
                b"\0\0\0\x04\x0d\0\xff{",
            ),
            (Frame::Bytes(Bytes::new()), b"\0\0\0\x01\x0d"),
            (
                Frame::Hello {
                    protocol: VERSION,
                    heartbeat: false,
                    served: false,
                    segments: false,
                },
                b"\0\0\0\x0f\x01{\"protocol\":3}",
            ),
            (
                Frame::Hello {
                    protocol: VERSION,
                    heartbeat: true,
                    served: false,
                    segments: false,
                },
                b"\0\0\0\x20\x01{\"protocol\":3,\"heartbeat\":true}",
            ),
            (Frame::Heartbeat, b"\0\0\0\x01\x0b"),
            (Frame::Ready, b"\0\0\0\x01\x02"),
            (Frame::Disconnect, b"\0\0\0\x01\x03"),
            (message("[1]"), b"\0\0\0\x04\x04[1]"),
            (
                Frame::Listen {
                    id: 7,
                    address: address.clone(),
                    acks: false,
                },
                b"\0\0\0\x24\x05{\"id\":7,\"address\":\"127.0.0.1:3000\"}",
            ),
            (
                Frame::Listen {
                    id: 7,
                    address: address.clone(),
                    acks: true,
                },
                b"\0\0\0\x30\x05{\"id\":7,\"address\":\"127.0.0.1:3000\",\"acks\":true}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Ok(address.clone()),
                    passed: false,
                    acks: false,
                },
                b"\0\0\0\x24\x06{\"id\":7,\"address\":\"127.0.0.1:3000\"}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Ok(address.clone()),
                    passed: true,
                    acks: false,
                },
                b"\0\0\0\x32\x06{\"id\":7,\"address\":\"127.0.0.1:3000\",\"passed\":true}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Ok(address),
                    passed: true,
                    acks: true,
                },
                b"\0\0\0\x3e\x06{\"id\":7,\"address\":\"127.0.0.1:3000\",\"passed\":true,\"acks\":true}",
            ),
            (
                Frame::Listening {
                    id: 7,
                    result: Err((ListenErrorKind::AddrInUse, "taken".into())),
                    passed: false,
                    acks: false,
                },
                b"\0\0\0\x2f\x06{\"id\":7,\"error\":\"AddrInUse\",\"message\":\"taken\"}",
            ),
            (
                Frame::Connection { listener: 7 },
                b"\0\0\0\x0f\x07{\"listener\":7}",
            ),
            (
                Frame::Accepted { listener: 7 },
                b"\0\0\0\x0f\x0a{\"listener\":7}",
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
    }

    #[test]
    fn a_bytes_message_is_its_header_and_the_payload_itself() {
        let payload = Bytes::from(vec![7_u8; 100]);
        let frame = encode_bytes(payload.clone(), 101).expect("fits");
        assert_eq!(&frame.head[..], b"\0\0\0\x65\x0d");
        // The very payload, not a copy.
        assert_eq!(frame.body.as_ptr(), payload.as_ptr());
        assert_eq!(frame.len(), 105);
        let wire = [&frame.head[..], &frame.body[..]].concat();
        let decoded = decode_all(&mut FrameCodec::new(101), &wire).expect("decodes");
        assert_eq!(decoded, [Frame::Bytes(payload.clone())]);
        assert!(matches!(
            encode_bytes(payload, 100),
            Err(ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            })
        ));
        // Announced over the maximum, or cut short: typed errors.
        let err = decode_all(&mut FrameCodec::new(100), &wire).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            }
        ));
        let err = decode_all(&mut FrameCodec::new(101), &wire[..50]).expect_err("cut short");
        assert!(matches!(err, ProtocolError::Truncated { received: 50 }));
    }

    #[test]
    fn a_user_message_ready_is_not_the_ready_frame() {
        let bytes = encode_value("ready", DEFAULT_MAX_FRAME).expect("encodes");
        let decoded = decode_all(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &bytes).expect("decodes");
        assert_eq!(decoded, [message("\"ready\"")]);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, Kind::Message as u8][..]);
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
        let err = encode_value(&big, 50).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { size: 103, max: 50 }
        ));
        let reply = Frame::Reply {
            id: 1,
            result: Err(big),
        };
        let err = encode(&reply, 50).expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { size: 112, max: 50 }
        ));
    }

    #[test]
    fn a_refused_frame_leaves_the_buffer_as_it_was() {
        let mut codec = FrameCodec::new(50);
        let mut dst = BytesMut::new();
        codec.encode(User::Message("x"), &mut dst).expect("fits");
        let before = dst.clone();
        let big = "x".repeat(100);
        codec
            .encode(User::Message(&big), &mut dst)
            .expect_err("too large");
        codec
            .encode(User::Request(1, &big), &mut dst)
            .expect_err("too large");
        assert_eq!(dst, before);
    }

    #[test]
    fn truncated_frame_is_an_error_at_eof() {
        let bytes = encode_value(&[1, 2, 3], DEFAULT_MAX_FRAME).expect("encodes");
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
            (&[0, 0, 0, 2, Kind::Ready as u8, 1], |e| {
                matches!(e, ProtocolError::UnexpectedPayload { .. })
            }),
            (&[0, 0, 0, 3, Kind::Message as u8, b'{', b'x'], |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            (&[0, 0, 0, 3, Kind::Message as u8, 0xff, 0xfe], |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            (&[0, 0, 0, 2, Kind::Hello as u8, b'1'], |e| {
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
        let frame = raw(Kind::Message, json.as_bytes());
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
        fn any_split_decodes_like_the_whole(
            values in proptest::collection::vec(any::<(u32, String)>(), 1..8),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| encode_value(v, DEFAULT_MAX_FRAME).expect("encodes").to_vec())
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
