//! Node's child-process IPC (`docs/protocol.md`, section 5): one JSON value
//! per line, both ways.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::codec::decode_to_end;
use super::frame::{Frame, User};
use super::payload::{put_json, take_message};
use crate::error::ProtocolError;
use crate::message::Codec;

/// Reads and writes Node's IPC, lines of at most `max` bytes (newline not
/// counted). The first message that is the string `"ready"` is also a
/// `Ready` (Node workers of the original signal ready that way), after it
/// goes through as a message. Only messages go out: requests need our frames.
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
        let message = take_message(line, Codec::Json)?;
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

impl<T: Serialize + ?Sized> Encoder<User<'_, T>> for NodeCodec {
    type Error = ProtocolError;

    /// Appends the value's line; on error `dst` is left as it was.
    fn encode(&mut self, user: User<'_, T>, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let User::Message(value) = user else {
            return Err(ProtocolError::Encode(
                "requests need the framed channel".into(),
            ));
        };
        let start = dst.len();
        let written = put_json(value, dst).and_then(|()| match dst.len() - start {
            len if len > self.max => Err(ProtocolError::FrameTooLarge {
                size: len,
                max: self.max,
            }),
            _ => Ok(()),
        });
        match written {
            Ok(()) => {
                dst.put_u8(b'\n');
                Ok(())
            }
            Err(error) => {
                dst.truncate(start);
                Err(error)
            }
        }
    }
}
