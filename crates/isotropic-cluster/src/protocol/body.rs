//! Frames with a body of bytes (a bytes request, a successful bytes reply):
//! their head, then the body sent as any bytes message is
//! ([`encode_payload`]: in a `bytes` frame below the sealed threshold, in a
//! sealed memfd from it on).

use super::codec::{Encoded, Sizes, encode, encode_payload};
use super::frame::Frame;
use crate::error::ProtocolError;

/// `frame` whole: its head, then its body if it has one. Only peers of
/// version 3 are sent such frames, and they take sealed payloads.
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] when the head, or a body below the
/// sealed threshold, exceeds `sizes.max_frame`; [`ProtocolError::Encode`]
/// if the memfd cannot be made.
pub(crate) fn encode_with_body(frame: &Frame, sizes: Sizes) -> Result<Encoded, ProtocolError> {
    let head = encode(frame, sizes.max_frame)?;
    let body = match frame {
        Frame::BytesRequest { body, .. }
        | Frame::BytesReply {
            result: Ok(body), ..
        } => body.clone(),
        _ => return Ok(head.into()),
    };
    let mut whole = encode_payload(body, sizes, true)?;
    whole.head = super::codec::Head::Frame([&head[..], &whole.head].concat().into());
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder as _;

    use super::*;
    use crate::channel::{Inbox, Outbox};
    use crate::protocol::{DEFAULT_MAX_FRAME, FrameCodec, encode_control};

    fn request(id: u64, name: &str, body: &'static [u8]) -> Frame {
        let (name, body) = (name.to_owned(), Bytes::from_static(body));
        Frame::BytesRequest { id, name, body }
    }

    fn small() -> Sizes {
        Sizes {
            max_frame: 64,
            sealed_from: 100,
        }
    }

    /// The documented bytes (`docs/protocol.md`): a bytes request is its
    /// head (id, name), then its body as a bytes frame; an ok reply its
    /// head (id, 0), then its body; an error reply one frame.
    #[test]
    fn bytes_requests_and_replies_have_the_documented_bytes() {
        let cases: [(Frame, &[u8]); 3] = [
            (
                request(5, "rev", b"\0\xff"),
                b"\0\0\0\x0c\x10\0\0\0\0\0\0\0\x05rev\0\0\0\x03\x0d\0\xff",
            ),
            (
                Frame::BytesReply {
                    id: 5,
                    result: Ok(Bytes::from_static(b"ab")),
                },
                b"\0\0\0\x0a\x11\0\0\0\0\0\0\0\x05\0\0\0\0\x03\x0dab",
            ),
            (
                Frame::BytesReply {
                    id: 5,
                    result: Err("no".into()),
                },
                b"\0\0\0\x0e\x11\0\0\0\0\0\0\0\x05\x01\"no\"",
            ),
        ];
        for (frame, bytes) in &cases {
            let whole = encode_with_body(frame, small()).expect("fits");
            assert!(whole.fds.is_empty());
            assert_eq!(
                [&whole.head[..], &whole.body[..]].concat(),
                *bytes,
                "{frame:?}"
            );
        }
        // The decoder alone gives the head, with an empty body, then the body.
        let mut wire = BytesMut::from(cases[0].1);
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let head = codec.decode(&mut wire).expect("valid").expect("a head");
        assert!(head.awaits_body());
        assert_eq!(head, request(5, "rev", b""));
        let body = codec.decode(&mut wire).expect("valid").expect("a body");
        assert_eq!(head.with_body(body).expect("a body"), cases[0].0);
    }

    #[test]
    fn a_large_body_goes_sealed_and_a_bad_head_is_a_typed_error() {
        let body: &'static [u8] = &[7; 100];
        let whole = encode_with_body(&request(1, "x", body), small()).expect("sealed");
        assert_eq!(whole.fds.len(), 1, "the memfd");
        assert!(whole.body.is_empty());
        let frames = decode(&whole.head).expect("valid");
        assert_eq!(
            frames,
            [request(1, "x", b""), Frame::Sealed { len: 100 }],
            "the head, then the sealed frame"
        );
        // A body too large for a frame, below the sealed threshold.
        let sizes = Sizes {
            max_frame: 50,
            sealed_from: 1000,
        };
        let error = encode_with_body(&request(1, "x", body), sizes).expect_err("too large");
        assert!(matches!(
            error,
            ProtocolError::FrameTooLarge { size: 101, max: 50 }
        ));
        let cases: [&[u8]; 5] = [
            b"\0\0\0\x04\x10\0\0\0",                     // an id cut short
            b"\0\0\0\x0b\x10\0\0\0\0\0\0\0\x01\xff\xfe", // a name not UTF-8
            b"\0\0\0\x09\x11\0\0\0\0\0\0\0\x01",         // no status
            b"\0\0\0\x0a\x11\0\0\0\0\0\0\0\x01\x02",     // status 2
            b"\0\0\0\x0b\x11\0\0\0\0\0\0\0\x01\0\0",     // ok, then a payload
        ];
        for bad in cases {
            let error = decode(bad).expect_err("refused");
            assert!(
                matches!(error, ProtocolError::InvalidControl(_)),
                "{bad:?}: {error:?}"
            );
        }
        let error = request(1, "x", b"")
            .with_body(Frame::Heartbeat)
            .expect_err("no body");
        assert!(matches!(
            error,
            ProtocolError::MissingBody {
                head: "bytes request",
                next: "heartbeat"
            }
        ));
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut wire = BytesMut::from(bytes);
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut wire)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// An outbox on one end of a socket pair, and an inbox on the other.
    fn channel() -> (Outbox, Inbox) {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let outbox = Outbox::spawn(ours.into_split().1, Default::default(), None);
        let inbox = Inbox::new(theirs.into_split().0, FrameCodec::new(DEFAULT_MAX_FRAME));
        (outbox, inbox)
    }

    /// The channel's reader hands on each head with its body, inline or
    /// sealed, in order with the other frames.
    #[tokio::test]
    async fn the_reader_hands_on_heads_with_their_bodies() {
        let (outbox, mut inbox) = channel();
        let large = Bytes::from(vec![3_u8; 300]);
        let frames = [
            request(1, "small", b"abc"),
            Frame::Heartbeat,
            Frame::BytesRequest {
                id: 2,
                name: "large".into(),
                body: large.clone(),
            },
            Frame::BytesReply {
                id: 3,
                result: Ok(large),
            },
            Frame::BytesReply {
                id: 4,
                result: Err("failed".into()),
            },
            Frame::BytesReply {
                id: 5,
                result: Ok(Bytes::new()),
            },
        ];
        for frame in &frames {
            let whole = encode_with_body(frame, small()).expect("encodes");
            outbox.send(whole).await.expect("written");
        }
        for frame in frames {
            assert_eq!(inbox.next().await.expect("a frame").expect("valid"), frame);
        }
    }

    #[tokio::test]
    async fn a_head_without_its_body_breaks_the_channel() {
        let (outbox, mut inbox) = channel();
        let head = encode(&request(1, "x", b""), DEFAULT_MAX_FRAME).expect("head");
        outbox.send(head.clone()).await.expect("written");
        outbox
            .send(encode_control(&Frame::Heartbeat))
            .await
            .expect("written");
        assert!(matches!(
            inbox.next().await,
            Some(Err(ProtocolError::MissingBody {
                next: "heartbeat",
                ..
            }))
        ));
        let (outbox, mut inbox) = channel();
        outbox.send(head).await.expect("written");
        outbox.close();
        assert!(matches!(
            inbox.next().await,
            Some(Err(ProtocolError::MissingBody {
                next: "the end of the channel",
                ..
            }))
        ));
    }
}
