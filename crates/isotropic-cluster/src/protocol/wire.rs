//! What a channel speaks: our frames, or Node's JSON lines; and what works
//! on either.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::buffers;
use super::codec::FrameCodec;
use super::frame::{Frame, User};
use super::node::NodeCodec;
use crate::error::ProtocolError;
use crate::message::Codec;

/// What a channel speaks: our frames, with messages in a codec, or Node's
/// child-process IPC (one JSON value per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Frames(Codec),
    NodeJson,
}

impl Wire {
    /// Encodes a user value for this wire, at most `max` bytes: the one way
    /// messages and requests are encoded. The result is ready to write, and
    /// to share between the destinations of a broadcast.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] when serialization fails (or for a request
    /// on Node's wire), and [`ProtocolError::FrameTooLarge`] when the frame
    /// would exceed `max`.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        self,
        user: User<'_, T>,
        max: usize,
    ) -> Result<Bytes, ProtocolError> {
        buffers::encoded(|dst| match self {
            Wire::Frames(codec) => FrameCodec::new(max).with_codec(codec).encode(user, dst),
            Wire::NodeJson => NodeCodec::new(max).encode(user, dst),
        })
    }
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

impl super::TakeBytes for AnyCodec {
    fn take_run(&mut self, src: &mut BytesMut, most: (usize, usize)) -> Option<super::BytesRun> {
        match self {
            Self::Frames(codec) => codec.take_run(src, most),
            // (Node's channel has no bytes frames.)
            Self::Node(_) => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DEFAULT_MAX_FRAME;
    use proptest::prelude::*;

    /// User values' bytes on both wires, pinned (`docs/protocol.md`).
    #[test]
    fn user_values_have_the_documented_bytes() {
        let value = serde_json::json!({"type": "x"});
        let encode = |wire: Wire, user| wire.encode(user, 64).expect("encodes");
        let message = encode(Wire::Frames(Codec::Json), User::Message(&value));
        assert_eq!(&message[..], b"\0\0\0\x0d\x04{\"type\":\"x\"}");
        let request = encode(Wire::Frames(Codec::Json), User::Request(5, &value));
        assert_eq!(
            &request[..],
            b"\0\0\0\x15\x08\0\0\0\0\0\0\0\x05{\"type\":\"x\"}"
        );
        let line = encode(Wire::NodeJson, User::Message(&value));
        assert_eq!(&line[..], b"{\"type\":\"x\"}\n");
        // Large frames come from the buffer pool: the same bytes.
        let big = "y".repeat(20_000);
        let frame = Wire::Frames(Codec::Json)
            .encode(User::Message(&big), DEFAULT_MAX_FRAME)
            .expect("encodes");
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
    fn node_lines_refuse_requests_and_lines_over_the_limit() {
        let err = Wire::NodeJson
            .encode(User::Request(1, "x"), DEFAULT_MAX_FRAME)
            .expect_err("no requests");
        assert!(matches!(err, ProtocolError::Encode(_)));
        let big = "x".repeat(100);
        let err = Wire::NodeJson
            .encode(User::Message(&big), 50)
            .expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { size: 102, max: 50 }
        ));
    }

    proptest! {
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
            let wire = if node { Wire::NodeJson } else { Wire::Frames(Codec::Json) };
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| wire.encode(User::Message(v), DEFAULT_MAX_FRAME).expect("encodes"))
                .collect();
            check_any_split(node, &bytes, piece, 24);
        }
    }
}
