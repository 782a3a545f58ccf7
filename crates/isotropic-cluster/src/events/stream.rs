//! The async event stream: every event that reaches its default action, sent
//! to the [`EventStream`]s of its host through the host's [`StreamSource`].

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream as _;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// An async stream of every event of a cluster (or worker) that reached its
/// default action, in publish order (an event comes before the events its
/// default action publishes).
///
/// An event is sent to the streams just before its default action runs, so
/// state that the action changes (the pool, after `AddWorker`) may not show
/// the change yet when a stream yields it. To act once it has, subscribe to
/// the event's `after` stage instead.
///
/// A stream that falls more than [`EventStream::CAPACITY`] events behind skips
/// the oldest ones (and logs a warning); read it promptly or drop it.
pub struct EventStream<T> {
    inner: Option<BroadcastStream<Option<T>>>,
}

impl<T: Clone + Send + 'static> EventStream<T> {
    /// How many events a stream buffers.
    pub const CAPACITY: usize = 4096;

    /// The next event, or `None` once the instance has been destroyed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call loses no event.
    pub async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<T: Clone + Send + 'static> futures_core::Stream for EventStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            return match Pin::new(inner).poll_next(cx) {
                Poll::Ready(Some(Ok(Some(event)))) => Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(lagged))) => {
                    tracing::warn!(%lagged, "event stream fell behind");
                    continue;
                }
                // The end marker, or every sender gone.
                Poll::Ready(Some(Ok(None)) | None) => {
                    self.inner = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ended", &self.inner.is_none())
            .finish()
    }
}

/// The event stream of a host, shared with its handles. The channel is only
/// made when someone first asks for a stream (its buffer is not small); the
/// end is marked in-band, since handles outlive the host.
pub struct StreamSource<T> {
    shared: Arc<StreamShared<T>>,
}

struct StreamShared<T> {
    sender: std::sync::OnceLock<broadcast::Sender<Option<T>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl<T> fmt::Debug for StreamSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("open", &self.shared.sender.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for StreamSource<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Default for StreamSource<T> {
    fn default() -> Self {
        Self {
            shared: Arc::new(StreamShared {
                sender: std::sync::OnceLock::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl<T: Clone + Send + 'static> StreamSource<T> {
    /// A stream of the events from now on; an ended one after `close`.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return EventStream { inner: None };
        }
        let sender = self
            .shared
            .sender
            .get_or_init(|| broadcast::channel(EventStream::<T>::CAPACITY).0);
        EventStream {
            inner: Some(BroadcastStream::new(sender.subscribe())),
        }
    }

    /// Sends `make()` to the streams, if there are any.
    pub(crate) fn publish(&self, make: impl FnOnce() -> T) {
        if let Some(sender) = self.shared.sender.get()
            && sender.receiver_count() > 0
        {
            let _ = sender.send(Some(make()));
        }
    }

    /// Ends every stream.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(sender) = self.shared.sender.get() {
            let _ = sender.send(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// The stream's next item if it is ready: `Some(None)` is its end.
    fn ready<T: Clone + Send + 'static>(stream: &mut EventStream<T>) -> Option<Option<T>> {
        stream.next().now_or_never()
    }

    #[test]
    fn a_stream_gets_the_events_sent_after_it_opened_then_its_end() {
        let source = StreamSource::<u32>::default();
        source.publish(|| unreachable!("with no stream, no event is made"));
        let mut early = source.subscribe();
        source.publish(|| 1);
        assert_eq!(ready(&mut early), Some(Some(1)));
        assert_eq!(ready(&mut early), None, "no event is pending");
        let mut late = source.subscribe();
        source.publish(|| 2);
        source.close();
        assert_eq!(ready(&mut early), Some(Some(2)));
        assert_eq!(ready(&mut early), Some(None));
        assert_eq!(ready(&mut late), Some(Some(2)));
        assert_eq!(ready(&mut late), Some(None));
        assert_eq!(
            ready(&mut source.subscribe()),
            Some(None),
            "opened after close"
        );
    }

    #[test]
    fn a_stream_that_falls_behind_skips_the_oldest_events() {
        let source = StreamSource::<usize>::default();
        let mut stream = source.subscribe();
        for n in 0..EventStream::<usize>::CAPACITY + 2 {
            source.publish(|| n);
        }
        assert_eq!(ready(&mut stream), Some(Some(2)));
    }
}
