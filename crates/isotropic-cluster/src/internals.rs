//! Hooks for the criterion micro-benchmarks and the fuzz targets (feature
//! `internals`): the hot paths of the core, without processes. Not an API.
#![allow(missing_docs, missing_debug_implementations, unreachable_pub)]

use bytes::BytesMut;
use serde::Serialize;
use tokio_util::codec::Decoder;

use crate::events::{self, Hub, StreamSource, SubscriptionKey};
use crate::protocol::{self, FrameCodec, User, Wire};
use crate::topics::topics;

/// Encodes `value` as a message frame; returns its length.
pub fn encode<T: Serialize>(value: &T) -> usize {
    Wire::Frames(crate::Codec::Json)
        .encode(User::Message(value), protocol::DEFAULT_MAX_FRAME)
        .map_or(0, |frame| frame.len())
}

/// Decodes every frame in `bytes` (validating each message); returns how many.
pub fn decode(bytes: &[u8]) -> usize {
    let mut codec = FrameCodec::new(protocol::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    while let Ok(Some(_)) = codec.decode(&mut buf) {
        frames += 1;
    }
    frames
}

/// Decodes `bytes` on the framed wire, or Node's if `node`, at once and in
/// pieces of `piece` bytes, with frames of at most `max` bytes; panics if the
/// two differ (see `cargo fuzz` in `fuzz/`). Never panics otherwise.
pub fn check_any_split(node: bool, bytes: &[u8], piece: usize, max: usize) {
    protocol::check_any_split(node, bytes, piece, max);
}

/// A host with one event, `Tick`, whose handlers count calls.
#[derive(Default)]
pub struct Dispatch {
    hub: Hub,
    stream: StreamSource<BenchEvent>,
    calls: u64,
}

#[derive(Debug, Clone)]
pub struct Tick;

impl Dispatch {
    /// A host with `handlers` handlers on the `on` stage of `Tick`.
    pub fn new(handlers: usize) -> Self {
        let mut host = Self::default();
        for _ in 0..handlers {
            let key = SubscriptionKey::new::<Tick>(events::Stage::On);
            events::subscribe::<Tick>(
                &mut host,
                key,
                false,
                Box::new(|event| event.host.calls += 1),
            );
        }
        host
    }

    /// Publishes one `Tick`; returns the calls so far.
    pub fn publish(&mut self) -> u64 {
        events::publish(self, Tick);
        self.calls
    }

    fn complete_tick(&mut self, _: &Tick) {}
}

impl events::sealed::HostImpl for Dispatch {
    type Stream = BenchEvent;
    type Inbound = Tick;
    fn hub(&mut self) -> &mut Hub {
        &mut self.hub
    }
    fn stream(&self) -> &StreamSource<BenchEvent> {
        &self.stream
    }
    fn handler_panicked(&mut self, panic: events::HandlerPanic) {
        panic!("a benchmark's handler panicked: {}", panic.message);
    }
}

topics!(Dispatch => BenchEvent {
    Tick: "tick" => complete_tick;
});

impl events::sealed::StreamEvent for BenchEvent {}
