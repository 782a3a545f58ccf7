//! The async event stream: every event that reaches its default action, sent
//! to the [`EventStream`]s of its host through the host's [`StreamSource`].
//! Each stream has its own queue, bounded in events and in bytes; a reader
//! that falls behind loses the oldest events and reads [`Skipped`] in their
//! place.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use futures_core::Stream as _;

/// What an [`EventStream`] yields: a host's events, and the gaps of a reader
/// that fell behind. Implemented by each host's stream enum.
#[allow(unreachable_pub)]
pub trait StreamEvent: Clone + Send + From<Skipped> + 'static {
    /// The bytes the event holds beyond its own size (a message's payload, a
    /// line of output), counted against [`EventStream::MAX_BYTES`].
    fn weight(&self) -> usize {
        0
    }
}

/// Events an [`EventStream`] skipped because its reader fell behind (more than
/// [`EventStream::CAPACITY`] events or [`EventStream::MAX_BYTES`] waiting):
/// the oldest ones went, and this takes their place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Skipped {
    /// How many events were skipped.
    pub events: u64,
}

/// An async stream of every event of a cluster (or worker) that reached its
/// default action, in publish order (an event comes before the events its
/// default action publishes).
///
/// An event is sent to the streams just before its default action runs, so
/// state that the action changes (the pool, after `AddWorker`) may not show
/// the change yet when a stream yields it. To act once it has, subscribe to
/// the event's `after` stage instead.
///
/// A stream is lossy: one that falls more than [`CAPACITY`](Self::CAPACITY)
/// events or [`MAX_BYTES`](Self::MAX_BYTES) behind loses the oldest events,
/// and yields a `Skipped` item (see [`Skipped`]) with their count in their
/// place. Handlers (see [`Subscribe`](crate::Subscribe)) see every event.
pub struct EventStream<T> {
    reader: Option<Reader<T>>,
}

/// An open stream's queue, counted among its source's readers while it
/// lives (publishing to no reader costs one atomic load).
struct Reader<T> {
    queue: Arc<Queue<T>>,
    open: Arc<AtomicUsize>,
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Release);
    }
}

impl<T: StreamEvent> EventStream<T> {
    /// How many events a stream holds for its reader at most.
    pub const CAPACITY: usize = 4096;
    /// How many bytes of events (see [`Skipped`]) a stream holds for its
    /// reader at most, besides the newest event.
    pub const MAX_BYTES: usize = 32 * 1024 * 1024;

    /// The next event, or `None` once the instance has been destroyed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call loses no event.
    pub async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The bytes of events held for the reader (tests).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.reader
            .as_ref()
            .map_or(0, |reader| reader.queue.lock().bytes)
    }
}

impl<T: StreamEvent> futures_core::Stream for EventStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(reader) = self.reader.as_ref() else {
            return Poll::Ready(None);
        };
        let mut state = reader.queue.lock();
        if state.skipped > 0 {
            let events = std::mem::take(&mut state.skipped);
            return Poll::Ready(Some(Skipped { events }.into()));
        }
        if let Some((event, weight)) = state.events.pop_front() {
            state.bytes -= weight;
            return Poll::Ready(Some(event));
        }
        if state.ended {
            drop(state);
            self.reader = None;
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ended", &self.reader.is_none())
            .finish()
    }
}

/// One stream's queue.
struct Queue<T>(Mutex<QueueState<T>>);

struct QueueState<T> {
    /// Each event with its weight.
    events: VecDeque<(T, usize)>,
    bytes: usize,
    /// Events dropped since the reader last read.
    skipped: u64,
    ended: bool,
    waker: Option<Waker>,
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: StreamEvent> Queue<T> {
    /// Queues `event`, dropping the oldest ones over the bounds.
    fn push(&self, event: T, weight: usize) {
        let mut state = self.lock();
        state.events.push_back((event, weight));
        state.bytes += weight;
        while state.events.len() > EventStream::<T>::CAPACITY
            || (state.bytes > EventStream::<T>::MAX_BYTES && state.events.len() > 1)
        {
            if let Some((_, weight)) = state.events.pop_front() {
                state.bytes -= weight;
                state.skipped += 1;
            }
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The event streams of a host, shared with its handles (which outlive it).
pub struct StreamSource<T> {
    shared: Arc<Mutex<Readers<T>>>,
    /// How many streams are open.
    open: Arc<AtomicUsize>,
}

/// The queues of the open streams.
struct Readers<T> {
    queues: Vec<Weak<Queue<T>>>,
    closed: bool,
}

impl<T> fmt::Debug for StreamSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource").finish_non_exhaustive()
    }
}

impl<T> Clone for StreamSource<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            open: self.open.clone(),
        }
    }
}

impl<T> Default for StreamSource<T> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Mutex::new(Readers {
                queues: Vec::new(),
                closed: false,
            })),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<T: StreamEvent> StreamSource<T> {
    fn readers(&self) -> MutexGuard<'_, Readers<T>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream of the events from now on; an ended one after `close`.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        let mut readers = self.readers();
        if readers.closed {
            return EventStream { reader: None };
        }
        let queue = Arc::new(Queue(Mutex::new(QueueState {
            events: VecDeque::new(),
            bytes: 0,
            skipped: 0,
            ended: false,
            waker: None,
        })));
        readers.queues.push(Arc::downgrade(&queue));
        self.open.fetch_add(1, Ordering::Release);
        let open = self.open.clone();
        EventStream {
            reader: Some(Reader { queue, open }),
        }
    }

    /// Sends `make()` to the streams, if there are any.
    pub(crate) fn publish(&self, make: impl FnOnce() -> T) {
        if self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut readers = self.readers();
        readers.queues.retain(|queue| queue.strong_count() > 0);
        let Some((last, others)) = readers.queues.split_last() else {
            return;
        };
        let event = make();
        let weight = std::mem::size_of::<T>() + event.weight();
        for queue in others.iter().filter_map(Weak::upgrade) {
            queue.push(event.clone(), weight);
        }
        if let Some(queue) = last.upgrade() {
            queue.push(event, weight);
        }
    }

    /// Ends every stream.
    pub(crate) fn close(&self) {
        let mut readers = self.readers();
        readers.closed = true;
        for queue in readers.queues.drain(..).filter_map(|queue| queue.upgrade()) {
            queue.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// An event (its number and weight), or a gap.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Item {
        Event(usize, usize),
        Skipped(u64),
    }

    impl From<Skipped> for Item {
        fn from(skipped: Skipped) -> Self {
            Self::Skipped(skipped.events)
        }
    }

    impl StreamEvent for Item {
        fn weight(&self) -> usize {
            match self {
                Self::Event(_, weight) => *weight,
                Self::Skipped(_) => 0,
            }
        }
    }

    fn event(n: usize) -> Item {
        Item::Event(n, 0)
    }

    /// The stream's next item if it is ready: `Some(None)` is its end.
    fn ready(stream: &mut EventStream<Item>) -> Option<Option<Item>> {
        stream.next().now_or_never()
    }

    #[test]
    fn a_stream_gets_the_events_sent_after_it_opened_then_its_end() {
        let source = StreamSource::<Item>::default();
        source.publish(|| unreachable!("with no stream, no event is made"));
        let mut early = source.subscribe();
        source.publish(|| event(1));
        assert_eq!(ready(&mut early), Some(Some(event(1))));
        assert_eq!(ready(&mut early), None, "no event is pending");
        let mut late = source.subscribe();
        source.publish(|| event(2));
        source.close();
        assert_eq!(ready(&mut early), Some(Some(event(2))));
        assert_eq!(ready(&mut early), Some(None));
        assert_eq!(ready(&mut late), Some(Some(event(2))));
        assert_eq!(ready(&mut late), Some(None));
        assert_eq!(
            ready(&mut source.subscribe()),
            Some(None),
            "opened after close"
        );
    }

    #[test]
    fn a_stream_that_falls_behind_in_count_reads_how_many_it_skipped() {
        let source = StreamSource::<Item>::default();
        let mut stream = source.subscribe();
        for n in 0..EventStream::<Item>::CAPACITY + 2 {
            source.publish(|| event(n));
        }
        assert_eq!(ready(&mut stream), Some(Some(Item::Skipped(2))));
        assert_eq!(ready(&mut stream), Some(Some(event(2))));
    }

    #[test]
    fn a_held_stream_is_bounded_in_bytes_and_a_reading_one_is_not_disturbed() {
        // 40 messages of 8 MiB, as in issue 13: 320 MiB if all were kept.
        const MESSAGE: usize = 8 * 1024 * 1024;
        let source = StreamSource::<Item>::default();
        let mut held = source.subscribe();
        let mut reading = source.subscribe();
        let mut most = 0;
        for n in 0..40 {
            source.publish(|| Item::Event(n, MESSAGE));
            most = most.max(held.held_bytes());
            assert_eq!(ready(&mut reading), Some(Some(Item::Event(n, MESSAGE))));
        }
        assert!(most <= EventStream::<Item>::MAX_BYTES + MESSAGE, "{most}");
        let kept =
            (EventStream::<Item>::MAX_BYTES / (MESSAGE + std::mem::size_of::<Item>())) as u64;
        assert_eq!(ready(&mut held), Some(Some(Item::Skipped(40 - kept))));
        for n in 40 - kept..40 {
            let n = usize::try_from(n).expect("small");
            assert_eq!(ready(&mut held), Some(Some(Item::Event(n, MESSAGE))));
        }
        assert_eq!(ready(&mut held), None);
        assert_eq!(held.held_bytes(), 0);
    }

    #[test]
    fn an_event_heavier_than_the_bound_is_still_delivered() {
        let source = StreamSource::<Item>::default();
        let mut stream = source.subscribe();
        source.publish(|| Item::Event(0, EventStream::<Item>::MAX_BYTES * 2));
        assert_eq!(
            ready(&mut stream),
            Some(Some(Item::Event(0, EventStream::<Item>::MAX_BYTES * 2)))
        );
    }
}
