//! The wire format of a channel (`docs/protocol.md` is the contract):
//! length-prefixed frames, each a kind byte and a payload; or, for Node
//! workers, JSON lines.
//!
//! - `frame`: [`Frame`], its [`Kind`](frame::Kind), and [`User`], a user
//!   value to encode;
//! - `payload`: each kind's payload, how it is written beside how it is read;
//! - `codec`: [`FrameCodec`], the framing around payloads, both ways;
//! - `node`: [`NodeCodec`], Node's JSON lines, both ways;
//! - `wire`: [`Wire`] (our frames with a message codec, or Node's lines),
//!   with [`Wire::encode`], the one way a user message or request is encoded, and [`AnyCodec`], a reader for either wire;
//! - `body`: frames whose body of bytes is the next frame (bytes requests
//!   and replies), encoded whole;
//! - `buffers`: the scratch and pooled buffers encoding goes through.
//!
//! A new frame kind is a `Kind` variant (its byte and name) and a `Frame`
//! variant in `frame.rs`, then a pair of functions and an arm in `put` and
//! `take` in `payload.rs`.

mod body;
mod buffers;
mod codec;
mod frame;
mod node;
mod payload;
mod wire;

pub(crate) use body::encode_with_body;
pub(crate) use codec::DEFAULT_SEALED_FROM;
pub(crate) use codec::{
    BytesHeader, BytesRun, Encoded, FrameCodec, Sizes, TakeBytes, attach_fds, bytes_header, encode,
    encode_control, encode_hello, encode_payload,
};
pub(crate) use frame::{
    DEFAULT_MAX_FRAME, Frame, Kind, OLDEST_VERSION, User, VERSION, supports_bytes, supports_fds,
    supports_segments,
};
pub(crate) use node::NodeCodec;
#[cfg(feature = "internals")]
pub(crate) use wire::check_any_split;
pub(crate) use wire::{AnyCodec, Wire};
