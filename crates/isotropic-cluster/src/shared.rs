//! Shared segments (`docs/protocol.md`, "Shared segments"): the primary's
//! [`Lender`] copies a large payload for one worker into a memfd segment it
//! reuses (warm pages: no page allocation per message); the worker's
//! [`Borrower`] maps each segment once and hands its payloads out as
//! [`Bytes`], releasing each once its last clone drops; a payload the
//! worker sends back while it holds it is `returned`, not copied.
//!
//! Only the primary lends: a worker's payloads reach the primary in fresh
//! sealed memfds, which nobody can write (the primary does not trust a
//! worker's memory; the worker trusts its primary's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use crate::channel::Outbox;
use crate::error::ProtocolError;
use crate::protocol::{self, Encoded, Frame};
use crate::sys::{self, Segment};

/// The most segments a lender keeps per channel.
const MAX_SEGMENTS: usize = 4;
/// The most bytes of segments a lender keeps per channel; a larger payload
/// goes in a sealed memfd of its own.
const MAX_POOL_BYTES: usize = 64 * 1024 * 1024;
/// Segments are sized in multiples of this.
const GRAIN: usize = 1024 * 1024;
/// A free segment unused this long is retired: by a sweep that runs while
/// the lender has segments, and at the channel's next lend.
const IDLE: Duration = Duration::from_secs(10);
/// The most segments a borrower maps at once (more than a lender keeps).
const MAX_PEER_SEGMENTS: usize = 16;

/// What one end of a channel does with shared segments: the primary lends,
/// a worker borrows; a channel without them (Node's, tests) neither. Its
/// segments are let go when it drops (with the channel's inbox).
#[derive(Debug)]
pub(crate) enum Sharing {
    None,
    Lender(Arc<Lender>),
    Borrower(Arc<Borrower>),
}

impl Sharing {
    /// The lender, for a frame of `kind` only a lender takes.
    pub(crate) fn lender(&self, kind: &'static str) -> Result<&Arc<Lender>, ProtocolError> {
        match self {
            Self::Lender(lender) => Ok(lender),
            _ => Err(ProtocolError::UnexpectedFrame {
                frame: kind,
                reason: "this side lends no segments",
            }),
        }
    }

    /// The borrower, for a frame of `kind` only a borrower takes.
    pub(crate) fn borrower(&self, kind: &'static str) -> Result<&Arc<Borrower>, ProtocolError> {
        match self {
            Self::Borrower(borrower) => Ok(borrower),
            _ => Err(ProtocolError::UnexpectedFrame {
                frame: kind,
                reason: "only a primary lends segments",
            }),
        }
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        match self {
            Self::None => {}
            Self::Lender(lender) => lender.close(),
            Self::Borrower(borrower) => borrower.close(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ===== The lender's side =====

/// The primary's segments for one worker, and what of them is lent.
#[derive(Debug)]
pub(crate) struct Lender {
    /// Where segments are announced and retired.
    outbox: Outbox,
    pool: Mutex<Pool<Arc<Segment>>>,
    /// Itself, for its sweep.
    weak: Weak<Lender>,
}

impl Lender {
    /// A lender whose segments are announced on `outbox`.
    pub(crate) fn new(outbox: Outbox) -> Arc<Self> {
        Arc::new_cyclic(|weak| Self {
            outbox,
            pool: Mutex::default(),
            weak: weak.clone(),
        })
    }

    /// A frame for `payload`, and the token it is lent as: lent from a
    /// segment when one is free or can be made within the pool's bounds
    /// (a new one announced first, unless the queue is full), else
    /// `fallback`'s (a sealed memfd), with no token. Never waits. Segments
    /// idle too long are retired (`try_send_control`). A lent frame
    /// that is not queued after all must be given back with
    /// [`unsent`](Self::unsent).
    ///
    /// # Errors
    ///
    /// `fallback`'s.
    pub(crate) fn lend<E>(
        &self,
        payload: &[u8],
        fallback: impl FnOnce() -> Result<Encoded, E>,
    ) -> Result<(Encoded, Option<u64>), E> {
        let mut new_fd = None;
        let (taken, retired, sweep) = {
            let mut pool = lock(&self.pool);
            let taken = pool.take(payload.len(), Instant::now(), |len| {
                let (fd, segment) = sys::new_segment(len)?;
                new_fd = Some(fd);
                Ok(segment)
            });
            let sweep = new_fd.is_some() && !std::mem::replace(&mut pool.sweeping, true);
            (taken, std::mem::take(&mut pool.retired), sweep)
        };
        self.announce_retired(retired);
        if sweep {
            self.sweep();
        }
        let lent = taken.and_then(|(id, segment)| {
            if let Some(fd) = new_fd {
                // Queued as frames are, before the lent frame; refused when
                // the queue is full (or closed): then the payload is sealed.
                let len = segment.len() as u64;
                let mut announce =
                    Encoded::from(protocol::encode_control(&Frame::Segment { id, len }));
                announce.fds.push(Arc::new(fd));
                if self.outbox.try_send(announce).is_err() {
                    lock(&self.pool).forget(id);
                    return None;
                }
            }
            if segment.fill(payload) {
                return Some((id, lock(&self.pool).lend(id, payload.len())));
            }
            // (Not reached: a taken segment has no view.)
            lock(&self.pool).unhold(id, Instant::now());
            None
        });
        match lent {
            Some((segment, token)) => {
                let lent = Frame::Lent {
                    segment,
                    token,
                    offset: 0,
                    len: payload.len() as u64,
                };
                Ok((protocol::encode_control(&lent).into(), Some(token)))
            }
            None => Ok((fallback()?, None)),
        }
    }

    /// Tells the worker of the segments `retired` (in any order: a retired
    /// id is never named again; closed: the peer lets every segment go
    /// anyway).
    fn announce_retired(&self, retired: Vec<u32>) {
        for id in retired {
            let retire = protocol::encode_control(&Frame::Retire { id });
            let _ = self.outbox.try_send_control(retire.into());
        }
    }

    /// Starts the sweep: every [`IDLE`], the free segments idle that long
    /// are retired, until none is left (the next new segment starts it
    /// again) or the lender is gone. Without a runtime (a send from a plain
    /// thread), none: they are retired at the next lend.
    fn sweep(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            lock(&self.pool).sweeping = false;
            return;
        };
        let lender = self.weak.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(IDLE).await;
                let Some(lender) = lender.upgrade() else {
                    return;
                };
                let (retired, more) = {
                    let mut pool = lock(&lender.pool);
                    let now = Instant::now();
                    pool.retire(|slot| now.duration_since(slot.idle_since) >= IDLE);
                    if pool.slots.is_empty() {
                        pool.sweeping = false;
                    }
                    (std::mem::take(&mut pool.retired), pool.sweeping)
                };
                lender.announce_retired(retired);
                if !more {
                    return;
                }
            }
        });
    }

    /// How many payloads are lent (for tests).
    #[cfg(test)]
    pub(crate) fn loans(&self) -> usize {
        lock(&self.pool).loans.len()
    }

    /// Every payload lent, released as a worker would (for tests).
    #[cfg(test)]
    pub(crate) fn release_all(&self) {
        let tokens: Vec<u64> = lock(&self.pool).loans.keys().copied().collect();
        self.release(&tokens).expect("lent");
    }

    /// The frame lending `token` was not queued: the loan is void.
    pub(crate) fn unsent(&self, token: u64) {
        let _ = lock(&self.pool).release(token, Instant::now());
    }

    /// The worker no longer holds the payloads lent as `tokens`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownToken`] for a token not lent.
    pub(crate) fn release(&self, tokens: &[u64]) -> Result<(), ProtocolError> {
        let mut pool = lock(&self.pool);
        let now = Instant::now();
        tokens
            .iter()
            .try_for_each(|&token| pool.release(token, now))
    }

    /// The `len` bytes at `offset` in the payload lent as `token`, sent
    /// back: our own segment's bytes (no copy), which it holds while they
    /// live.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownToken`] for a token not lent,
    /// [`ProtocolError::OutOfBounds`] for bytes beyond its payload.
    pub(crate) fn returned(
        self: &Arc<Self>,
        token: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ProtocolError> {
        let mut pool = lock(&self.pool);
        let (id, segment, size) = pool.lent(token)?;
        let out_of_bounds = ProtocolError::OutOfBounds {
            offset,
            len,
            size: size as u64,
        };
        let (Ok(start), Ok(count)) = (usize::try_from(offset), usize::try_from(len)) else {
            return Err(out_of_bounds);
        };
        if start.checked_add(count).is_none_or(|end| end > size) {
            return Err(out_of_bounds);
        }
        pool.hold(id);
        drop(pool);
        // (The hold is let go when the view drops, or here if none is made.)
        let hold = Hold {
            lender: Arc::downgrade(self),
            id,
        };
        segment.view(start, count, hold).ok_or(out_of_bounds)
    }

    /// Lets every segment go (the channel closed): what is lent is not
    /// coming back; bytes returned to us stay valid while they live.
    fn close(&self) {
        let mut pool = lock(&self.pool);
        pool.closed = true;
        pool.slots.clear();
        pool.loans.clear();
    }
}

/// Held by bytes returned to the lender: their segment is not reused while
/// they live.
struct Hold {
    lender: Weak<Lender>,
    id: u32,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(lender) = self.lender.upgrade() {
            lock(&lender.pool).unhold(self.id, Instant::now());
        }
    }
}

/// The lender's bookkeeping, apart from what a segment is (`M`; the unit
/// tests use `()`): which segments exist, which are held (lent, or returned
/// and still referenced), and the rules that pick one for a payload.
#[derive(Debug)]
struct Pool<M> {
    slots: Vec<Slot<M>>,
    /// Token → the segment lent, and the payload's length (from offset 0).
    loans: HashMap<u64, (u32, usize)>,
    /// Segments retired since the last frame, to announce.
    retired: Vec<u32>,
    next_id: u32,
    next_token: u64,
    closed: bool,
    /// A sweep of idle segments is under way (see [`Lender::sweep`]).
    sweeping: bool,
}

impl<M> Default for Pool<M> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            loans: HashMap::new(),
            retired: Vec::new(),
            next_id: 0,
            next_token: 0,
            closed: false,
            sweeping: false,
        }
    }
}

#[derive(Debug)]
struct Slot<M> {
    id: u32,
    len: usize,
    /// Loans outstanding, bytes returned and alive, or a fill under way.
    holds: usize,
    idle_since: Instant,
    segment: M,
}

impl<M: Clone> Pool<M> {
    /// A free segment for `len` bytes, held (for the fill), and its memory:
    /// the smallest free one that fits (the last freed of those), or a new one that `make` maps (of
    /// `len` rounded up to [`GRAIN`]) if the bounds allow, after retiring
    /// free ones if that makes room; `None` when nothing fits (the payload
    /// then goes in a sealed memfd of its own). Free segments idle for
    /// [`IDLE`] are retired first.
    fn take(
        &mut self,
        len: usize,
        now: Instant,
        make: impl FnOnce(usize) -> std::io::Result<M>,
    ) -> Option<(u32, M)> {
        if self.closed || len == 0 {
            return None;
        }
        self.retire(|slot| now.duration_since(slot.idle_since) >= IDLE);
        let free = self
            .slots
            .iter_mut()
            .filter(|slot| slot.holds == 0 && slot.len >= len)
            // Of the smallest, the last freed: its pages are the likeliest
            // to be in the cache still.
            .min_by_key(|slot| (slot.len, std::cmp::Reverse(slot.idle_since)));
        if let Some(slot) = free {
            slot.holds = 1;
            return Some((slot.id, slot.segment.clone()));
        }
        let size = len.div_ceil(GRAIN).checked_mul(GRAIN)?;
        let held = self.slots.iter().filter(|slot| slot.holds > 0);
        let held_bytes: usize = held.clone().map(|slot| slot.len).sum();
        if held.count() >= MAX_SEGMENTS || held_bytes + size > MAX_POOL_BYTES {
            return None;
        }
        // Room is made by retiring free segments (all too small), oldest
        // idle first.
        self.slots.sort_by_key(|slot| slot.idle_since);
        while self.slots.len() >= MAX_SEGMENTS
            || self.slots.iter().map(|slot| slot.len).sum::<usize>() + size > MAX_POOL_BYTES
        {
            let at = self.slots.iter().position(|slot| slot.holds == 0)?;
            self.retired.push(self.slots.remove(at).id);
        }
        let segment = match make(size) {
            Ok(segment) => segment,
            Err(error) => {
                tracing::debug!(%error, "no segment of {size} bytes: a sealed memfd instead");
                return None;
            }
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.slots.push(Slot {
            id,
            len: size,
            holds: 1,
            idle_since: now,
            segment: segment.clone(),
        });
        Some((id, segment))
    }

    /// Retires the free segments `idle` picks.
    fn retire(&mut self, idle: impl Fn(&Slot<M>) -> bool) {
        let retired = &mut self.retired;
        self.slots.retain(|slot| {
            let retire = slot.holds == 0 && idle(slot);
            if retire {
                retired.push(slot.id);
            }
            !retire
        });
    }

    /// Segment `id`, filled with `len` bytes, is lent: its token (the hold
    /// of the fill becomes the loan's).
    fn lend(&mut self, id: u32, len: usize) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.loans.insert(token, (id, len));
        token
    }

    /// The loan `token`: its segment's id and memory, and its length.
    fn lent(&self, token: u64) -> Result<(u32, M, usize), ProtocolError> {
        let &(id, len) = self
            .loans
            .get(&token)
            .ok_or(ProtocolError::UnknownToken(token))?;
        let slot = self.slot(id).ok_or(ProtocolError::UnknownToken(token))?;
        Ok((id, slot.segment.clone(), len))
    }

    fn release(&mut self, token: u64, now: Instant) -> Result<(), ProtocolError> {
        let (id, _) = self
            .loans
            .remove(&token)
            .ok_or(ProtocolError::UnknownToken(token))?;
        self.unhold(id, now);
        Ok(())
    }

    /// Drops segment `id`, never announced.
    fn forget(&mut self, id: u32) {
        self.slots.retain(|slot| slot.id != id);
    }

    fn slot(&self, id: u32) -> Option<&Slot<M>> {
        self.slots.iter().find(|slot| slot.id == id)
    }

    fn hold(&mut self, id: u32) {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.id == id) {
            slot.holds += 1;
        }
    }

    fn unhold(&mut self, id: u32, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.id == id) {
            slot.holds = slot.holds.saturating_sub(1);
            if slot.holds == 0 {
                slot.idle_since = now;
            }
        }
    }
}

// ===== The borrower's side =====

/// A worker's view of its primary's segments: each mapped once, read-only;
/// the payloads lent from them that it holds.
#[derive(Debug)]
pub(crate) struct Borrower {
    /// Where releases go.
    outbox: Outbox,
    state: Mutex<Borrowed>,
}

#[derive(Debug, Default)]
struct Borrowed {
    segments: HashMap<u32, Arc<Segment>>,
    /// Token → where its payload is (segment, offset, length), while held.
    held: HashMap<u64, (Arc<Segment>, usize, usize)>,
}

impl Borrower {
    /// A borrower whose releases go to `outbox`.
    pub(crate) fn new(outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            state: Mutex::default(),
        })
    }

    /// Maps segment `id`, the memfd `fd` of `len` bytes.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::SegmentTwice`], [`ProtocolError::TooManySegments`],
    /// or [`sys::map_segment`]'s.
    pub(crate) fn map(
        &self,
        id: u32,
        len: u64,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), ProtocolError> {
        let mut state = lock(&self.state);
        if state.segments.contains_key(&id) {
            return Err(ProtocolError::SegmentTwice(id));
        }
        if state.segments.len() >= MAX_PEER_SEGMENTS {
            return Err(ProtocolError::TooManySegments {
                max: MAX_PEER_SEGMENTS,
            });
        }
        state.segments.insert(id, sys::map_segment(fd, len)?);
        Ok(())
    }

    /// Forgets segment `id` (unmapped once no bytes of it live).
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownSegment`].
    pub(crate) fn retire(&self, id: u32) -> Result<(), ProtocolError> {
        let mut state = lock(&self.state);
        state
            .segments
            .remove(&id)
            .map(drop)
            .ok_or(ProtocolError::UnknownSegment(id))
    }

    /// The payload lent as `token`: `len` bytes at `offset` in segment `id`,
    /// released once its last clone drops.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnknownSegment`], [`ProtocolError::UnknownToken`]
    /// for a token already held, [`ProtocolError::OutOfBounds`].
    pub(crate) fn lent(
        self: &Arc<Self>,
        id: u32,
        token: u64,
        (offset, len): (u64, u64),
    ) -> Result<Bytes, ProtocolError> {
        let mut state = lock(&self.state);
        let segment = state
            .segments
            .get(&id)
            .ok_or(ProtocolError::UnknownSegment(id))?
            .clone();
        if state.held.contains_key(&token) {
            return Err(ProtocolError::UnknownToken(token));
        }
        let out_of_bounds = ProtocolError::OutOfBounds {
            offset,
            len,
            size: segment.len() as u64,
        };
        let (Ok(start), Ok(count)) = (usize::try_from(offset), usize::try_from(len)) else {
            return Err(out_of_bounds);
        };
        if start
            .checked_add(count)
            .is_none_or(|end| end > segment.len())
        {
            return Err(out_of_bounds);
        }
        state.held.insert(token, (segment.clone(), start, count));
        drop(state);
        // (Released when the view drops, or here if none is made.)
        let release = Release {
            borrower: Arc::downgrade(self),
            token,
        };
        segment.view(start, count, release).ok_or(out_of_bounds)
    }

    /// A `returned` frame for `bytes` when they lie in a payload we hold,
    /// lent by this channel's primary (they are then not copied). The
    /// caller keeps `bytes` until the frame is queued, so that their
    /// release follows it.
    pub(crate) fn returned(&self, bytes: &Bytes) -> Option<Encoded> {
        if bytes.is_empty() {
            return None;
        }
        let state = lock(&self.state);
        state
            .held
            .iter()
            .find_map(|(&token, (segment, start, len))| {
                let at = segment.offset_of(bytes)?.checked_sub(*start)?;
                (at + bytes.len() <= *len).then(|| {
                    protocol::encode_control(&Frame::Returned {
                        token,
                        offset: at as u64,
                        len: bytes.len() as u64,
                    })
                    .into()
                })
            })
    }

    fn close(&self) {
        lock(&self.state).segments.clear();
    }
}

/// Held by a borrowed payload: its release, sent once it drops.
struct Release {
    borrower: Weak<Borrower>,
    token: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(borrower) = self.borrower.upgrade() else {
            return;
        };
        lock(&borrower.state).held.remove(&self.token);
        let release = protocol::encode_control(&Frame::Release(vec![self.token]));
        // Closed: the primary forgets its loans with the channel.
        let _ = borrower.outbox.try_send_control(release.into());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::channel::{Inbox, QueueLimits};
    use crate::protocol::{DEFAULT_MAX_FRAME, FrameCodec};

    const MIB: usize = 1024 * 1024;

    /// A pool of segments that are their sizes.
    fn pool() -> Pool<usize> {
        Pool::default()
    }

    fn take(pool: &mut Pool<usize>, len: usize, now: Instant) -> Option<u32> {
        pool.take(len, now, Ok).map(|(id, _)| id)
    }

    #[test]
    fn a_released_segment_is_reused_and_a_held_one_is_not() {
        let (mut pool, now) = (pool(), Instant::now());
        let a = take(&mut pool, 16 * MIB, now).expect("a new segment");
        let token = pool.lend(a, 16 * MIB);
        // Held: a second payload gets a segment of its own.
        let b = take(&mut pool, MIB, now).expect("another");
        assert_ne!(a, b);
        assert_eq!(pool.slot(b).map(|slot| slot.len), Some(MIB));
        pool.release(token, now).expect("lent");
        // Free again: the smallest that fits is taken.
        let t = pool.lend(b, MIB);
        pool.release(t, now).expect("lent");
        assert_eq!(take(&mut pool, MIB / 2, now), Some(b));
        assert_eq!(take(&mut pool, 3 * MIB, now), Some(a));
        assert!(pool.retired.is_empty());
        // A token released twice, or never lent: typed errors.
        assert!(matches!(
            pool.release(token, now),
            Err(ProtocolError::UnknownToken(t)) if t == token
        ));
        assert!(matches!(
            pool.lent(99),
            Err(ProtocolError::UnknownToken(99))
        ));
    }

    #[test]
    fn the_pool_is_bounded_and_falls_back_when_full() {
        let (mut pool, now) = (pool(), Instant::now());
        let held: Vec<u32> = (0..MAX_SEGMENTS)
            .map(|_| take(&mut pool, MIB, now).expect("room"))
            .collect();
        assert_eq!(take(&mut pool, MIB, now), None, "as many as allowed");
        // Larger than the whole pool: never lent.
        assert_eq!(take(&mut pool, MAX_POOL_BYTES + 1, now), None);
        // Freed, a segment too small is retired to make room for a large one.
        pool.unhold(held[0], now);
        let large = take(&mut pool, 32 * MIB, now).expect("room made");
        assert_eq!(pool.retired, [held[0]]);
        assert_eq!(pool.slots.len(), MAX_SEGMENTS);
        // Bytes bound: 3 MiB + 32 MiB held; 32 MiB more would exceed 64.
        assert_eq!(take(&mut pool, 32 * MIB, now), None);
        pool.unhold(large, now);
        assert_eq!(take(&mut pool, 32 * MIB, now), Some(large));
    }

    #[test]
    fn idle_segments_are_retired_and_a_returned_hold_keeps_one() {
        let (mut pool, start) = (pool(), Instant::now());
        let a = take(&mut pool, MIB, start).expect("a");
        let b = take(&mut pool, MIB, start).expect("b");
        let token = pool.lend(a, MIB);
        pool.hold(a);
        pool.release(token, start).expect("lent");
        pool.unhold(b, start);
        // `a` is still held by bytes returned to us; `b` idles.
        let later = start + IDLE;
        let c = take(&mut pool, 2 * MIB, later).expect("c");
        assert_eq!(pool.retired, [b]);
        assert!(pool.slot(a).is_some() && pool.slot(c).is_some());
        pool.unhold(a, later);
        assert_eq!(take(&mut pool, MIB, later), Some(a));
    }

    #[test]
    fn a_closed_pool_lends_nothing() {
        let mut pool = pool();
        pool.closed = true;
        assert_eq!(take(&mut pool, MIB, Instant::now()), None);
        assert_eq!(take(&mut Pool::default(), 0, Instant::now()), None);
    }

    /// Both ends of a channel: the primary's outbox and inbox (lending),
    /// the worker's (borrowing).
    pub(crate) struct Ends {
        pub(crate) lender: Arc<Lender>,
        pub(crate) primary: (Outbox, Inbox),
        pub(crate) borrower: Arc<Borrower>,
        pub(crate) worker: (Outbox, Inbox),
    }

    pub(crate) fn ends() -> Ends {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let (our_read, our_write) = ours.into_split();
        let (their_read, their_write) = theirs.into_split();
        let primary = Outbox::spawn(our_write, QueueLimits::default(), None);
        let worker = Outbox::spawn(their_write, QueueLimits::default(), None);
        let lender = Lender::new(primary.clone());
        let borrower = Borrower::new(worker.clone());
        let codec = || FrameCodec::new(DEFAULT_MAX_FRAME);
        Ends {
            primary: (
                primary,
                Inbox::new(our_read, codec()).sharing(Sharing::Lender(lender.clone())),
            ),
            worker: (
                worker,
                Inbox::new(their_read, codec()).sharing(Sharing::Borrower(borrower.clone())),
            ),
            lender,
            borrower,
        }
    }

    fn payload(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    pub(crate) async fn bytes(inbox: &mut Inbox) -> Bytes {
        match inbox.next().await {
            Some(Ok(Frame::Bytes(bytes))) => bytes,
            other => panic!("not bytes: {other:?}"),
        }
    }

    /// Lends `payload` (no fallback expected) and queues it.
    pub(crate) fn lend(ends: &Ends, payload: &Bytes) -> u64 {
        let (frame, token) = ends
            .lender
            .lend(payload, || Err::<Encoded, ()>(()))
            .expect("lent, not sealed");
        ends.primary.0.try_send(frame).expect("queued");
        token.expect("a token")
    }

    #[tokio::test]
    async fn a_lent_payload_comes_back_returned_and_its_segment_is_reused_once_released() {
        let mut ends = ends();
        let sent = payload(3 * MIB / 2, 1);
        lend(&ends, &sent);
        let received = bytes(&mut ends.worker.1).await;
        assert_eq!(received, sent);
        // Sent back while held: a `returned` frame, not a copy.
        let slice = received.slice(10..1000);
        let returned = ends.borrower.returned(&slice).expect("within a loan");
        assert_eq!(returned.len(), 5 + 24);
        ends.worker.0.try_send(returned).expect("queued");
        assert!(ends.borrower.returned(&payload(10, 0)).is_none());
        drop((slice, received));
        let echo = bytes(&mut ends.primary.1).await;
        assert_eq!(echo, sent.slice(10..1000));
        // Released (after the echo), but our echo still holds the segment.
        lend(&ends, &sent);
        let second = bytes(&mut ends.worker.1).await;
        assert_eq!(echo, sent.slice(10..1000), "the held echo is intact");
        {
            let pool = lock(&ends.lender.pool);
            assert_eq!(pool.slots.len(), 2, "a second segment");
        }
        drop((echo, second));
        // Both released: the frames are read, and the next lend reuses one.
        let third = payload(MIB, 3);
        ends.worker
            .0
            .try_send(Encoded::from(protocol::encode_control(&Frame::Heartbeat)))
            .expect("queued");
        assert!(matches!(
            ends.primary.1.next().await,
            Some(Ok(Frame::Heartbeat))
        ));
        lend(&ends, &third);
        assert_eq!(bytes(&mut ends.worker.1).await, third);
        assert_eq!(lock(&ends.lender.pool).slots.len(), 2, "reused");
    }

    /// Sends a heartbeat on `from` and reads `to` up to it: what came
    /// before it (releases, retires) has been taken in.
    async fn through(from: &Outbox, to: &mut Inbox) {
        let heartbeat = Encoded::from(protocol::encode_control(&Frame::Heartbeat));
        from.try_send(heartbeat).expect("queued");
        assert!(matches!(to.next().await, Some(Ok(Frame::Heartbeat))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_segment_idle_for_long_is_retired_by_the_sweep_without_another_send() {
        let mut ends = ends();
        lend(&ends, &payload(MIB, 7));
        let received = bytes(&mut ends.worker.1).await;
        tokio::time::sleep(2 * IDLE).await;
        assert_eq!(lock(&ends.lender.pool).slots.len(), 1, "held: kept");
        drop(received);
        through(&ends.worker.0, &mut ends.primary.1).await;
        tokio::time::sleep(2 * IDLE).await;
        {
            let pool = lock(&ends.lender.pool);
            assert!(pool.slots.is_empty(), "retired when idle");
            assert!(!pool.sweeping, "the sweep ends with the last segment");
        }
        through(&ends.primary.0, &mut ends.worker.1).await;
        assert!(lock(&ends.borrower.state).segments.is_empty(), "unmapped");
        // A new segment starts the sweep again.
        lend(&ends, &payload(MIB, 8));
        assert!(lock(&ends.lender.pool).sweeping);
    }

    /// What the worker's inbox makes of `frames` from the primary, the
    /// memfds `fds` attached.
    async fn borrowed(frames: &[Frame], fds: Vec<std::os::fd::OwnedFd>) -> ProtocolError {
        let ends = ends();
        let mut head = Vec::new();
        frames
            .iter()
            .for_each(|frame| head.extend_from_slice(&protocol::encode_control(frame)));
        let mut encoded = Encoded::from(Bytes::from(head));
        encoded.fds = fds.into_iter().map(Arc::new).collect();
        ends.primary.0.try_send(encoded).expect("queued");
        ends.primary.0.close();
        let mut inbox = ends.worker.1;
        // (Kept: a payload dropped is released.)
        let mut kept = Vec::new();
        loop {
            match inbox.next().await {
                Some(Err(error)) => return error,
                Some(Ok(frame)) => kept.push(frame),
                None => panic!("no error: {kept:?}"),
            }
        }
    }

    #[tokio::test]
    async fn bad_segments_and_loans_from_the_primary_are_typed_errors() {
        let segment = || sys::new_segment(MIB).expect("a segment").0;
        let announce = |id| Frame::Segment {
            id,
            len: MIB as u64,
        };
        let lent = |segment, token, offset, len| Frame::Lent {
            segment,
            token,
            offset,
            len,
        };
        let error = borrowed(&[announce(1), announce(1)], vec![segment(), segment()]).await;
        assert!(matches!(error, ProtocolError::SegmentTwice(1)), "{error:?}");
        let error = borrowed(&[lent(1, 0, 0, 1)], vec![]).await;
        assert!(
            matches!(error, ProtocolError::UnknownSegment(1)),
            "{error:?}"
        );
        let error = borrowed(&[announce(1), lent(1, 0, 1, MIB as u64)], vec![segment()]).await;
        assert!(
            matches!(error, ProtocolError::OutOfBounds { .. }),
            "{error:?}"
        );
        let error = borrowed(&[announce(1), lent(1, 0, u64::MAX, 2)], vec![segment()]).await;
        assert!(
            matches!(error, ProtocolError::OutOfBounds { .. }),
            "{error:?}"
        );
        let error = borrowed(
            &[announce(1), lent(1, 5, 0, 1), lent(1, 5, 0, 1)],
            vec![segment()],
        )
        .await;
        assert!(matches!(error, ProtocolError::UnknownToken(5)), "{error:?}");
        let error = borrowed(&[Frame::Retire { id: 3 }], vec![]).await;
        assert!(
            matches!(error, ProtocolError::UnknownSegment(3)),
            "{error:?}"
        );
        let error = borrowed(&[announce(1)], vec![]).await;
        assert!(matches!(error, ProtocolError::FdsMismatch(_)), "{error:?}");
        // Not a memfd; a memfd without the seals; a segment too short.
        let null = std::fs::File::open("/dev/null").expect("opened").into();
        let error = borrowed(&[announce(1)], vec![null]).await;
        assert!(matches!(error, ProtocolError::UnsealedMemfd), "{error:?}");
        let plain =
            rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::ALLOW_SEALING).expect("a memfd");
        rustix::fs::ftruncate(&plain, MIB as u64).expect("sized");
        let error = borrowed(&[announce(1)], vec![plain]).await;
        assert!(matches!(error, ProtocolError::UnsealedMemfd), "{error:?}");
        let error = borrowed(
            &[Frame::Segment {
                id: 1,
                len: MIB as u64 + 1,
            }],
            vec![segment()],
        )
        .await;
        assert!(
            matches!(error, ProtocolError::ShortMemfd { .. }),
            "{error:?}"
        );
        // More segments than a borrower maps.
        let many: Vec<Frame> = (0..=MAX_PEER_SEGMENTS as u32).map(announce).collect();
        let fds = (0..many.len()).map(|_| segment()).collect();
        let error = borrowed(&many, fds).await;
        assert!(
            matches!(
                error,
                ProtocolError::TooManySegments {
                    max: MAX_PEER_SEGMENTS
                }
            ),
            "{error:?}"
        );
        // A worker's frames, from the primary.
        let error = borrowed(&[Frame::Release(vec![1])], vec![]).await;
        assert!(
            matches!(error, ProtocolError::UnexpectedFrame { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn forged_releases_and_returns_from_the_worker_are_typed_errors() {
        let forged = [
            Frame::Release(vec![7]),
            Frame::Returned {
                token: 7,
                offset: 0,
                len: 1,
            },
            Frame::Segment { id: 0, len: 1 },
            Frame::Lent {
                segment: 0,
                token: 0,
                offset: 0,
                len: 1,
            },
            Frame::Retire { id: 0 },
        ];
        for frame in forged {
            let mut ends = ends();
            let frame = protocol::encode_control(&frame);
            ends.worker.0.try_send(frame).expect("queued");
            let error = ends.primary.1.next().await;
            assert!(
                matches!(
                    error,
                    Some(Err(
                        ProtocolError::UnknownToken(7) | ProtocolError::UnexpectedFrame { .. }
                    ))
                ),
                "{error:?}"
            );
        }
        // A real loan, returned beyond its payload.
        let mut ends = ends();
        let token = lend(&ends, &payload(MIB, 0));
        let _held = bytes(&mut ends.worker.1).await;
        let beyond = Frame::Returned {
            token,
            offset: 1,
            len: MIB as u64,
        };
        ends.worker
            .0
            .try_send(protocol::encode_control(&beyond))
            .expect("queued");
        let error = ends.primary.1.next().await;
        assert!(
            matches!(error, Some(Err(ProtocolError::OutOfBounds { size, .. })) if size == MIB as u64),
            "{error:?}"
        );
    }
}
