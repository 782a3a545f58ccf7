//! Large payloads in memfds (`docs/protocol.md`, "Sealed payloads" and
//! "Shared segments"): sealed ones, written once by the sender and mapped
//! read-only by the receiver; and segments, filled again and again by their
//! maker, mapped read-only by its peer.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::ProtocolError;

/// The seals a payload's memfd must carry: its contents and size are fixed
/// for good, whoever else holds it.
const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A memfd (close-on-exec) holding `payload`, sealed with [`SEALS`].
pub(crate) fn sealed_memfd(payload: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "isotropic-cluster-payload",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut left = payload;
    while !left.is_empty() {
        match rustix::io::write(&fd, left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => left = &left[written..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// The first `len` bytes of `fd`, a memfd sealed with [`SEALS`], mapped
/// read-only (the mapping lives as long as the returned bytes; `fd` is
/// closed here, as on error).
///
/// # Errors
///
/// [`ProtocolError::UnsealedMemfd`] if `fd` is not a memfd with those seals,
/// [`ProtocolError::ShortMemfd`] if it holds fewer than `len` bytes,
/// [`ProtocolError::Io`] if it cannot be mapped.
pub(crate) fn map_sealed(fd: OwnedFd, len: u64) -> Result<Bytes, ProtocolError> {
    match rustix::fs::fcntl_get_seals(&fd) {
        Ok(seals) if seals.contains(SEALS) => {}
        _ => return Err(ProtocolError::UnsealedMemfd),
    }
    let len = checked_len(&fd, len)?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(Mapping::new(fd.as_fd(), len, false)?))
}

/// A shared mapping of a memfd, unmapped on drop: read-only, or (only for
/// the [`Segment`]s we made) read-write.
struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

// SAFETY: the pointer is only dereferenced as documented at each use (reads
// of bytes nobody writes meanwhile; writes by `Segment::fill` alone, while no
// view exists); sharing or moving it across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Self> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address of the kernel's choosing
        // (nothing of ours is replaced); `len` is nonzero and within the
        // file, whose seals forbid shrinking it, so every mapped byte stays
        // backed (no SIGBUS).
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        Ok(Self { ptr, len })
    }

    /// The `len` bytes at `offset` (within the mapping).
    ///
    /// Sound while nobody writes them: a sealed payload's bytes never
    /// change; a segment's change only by [`Segment::fill`], which refuses
    /// while a view exists (ours), or by the peer that lent them, which
    /// does not before we release them (`docs/protocol.md`, "Shared
    /// segments": the worker trusts its primary).
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        debug_assert!(offset.saturating_add(len) <= self.len);
        // SAFETY: `ptr + offset .. + len` lies within the `len` mapped bytes
        // (callers check), mapped until drop; nobody writes them while
        // borrowed (see above).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>().add(offset), len) }
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self.bytes(0, self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once;
        // no borrow of it outlives `self` (see `bytes`).
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

// ===== Shared segments =====

/// The seals of a reusable segment: nobody may write it, grow or shrink it,
/// but through a writable mapping made before sealing (its maker's).
const SEGMENT_SEALS: SealFlags = SealFlags::FUTURE_WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// The view count of a segment being filled.
const FILLING: usize = usize::MAX;

/// A memfd segment mapped into this process (`docs/protocol.md`, "Shared
/// segments"): by its maker, read-write, to fill it again and again; by its
/// peer, read-only. Its bytes are handed out as [`Bytes`] views.
pub(crate) struct Segment {
    map: Mapping,
    writable: bool,
    /// Live views, or [`FILLING`] while `fill` copies.
    views: AtomicUsize,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("len", &self.map.len)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

/// A new segment of `len` bytes (nonzero): its memfd (close-on-exec, to
/// pass to the peer) and our read-write mapping of it, made before the
/// memfd is sealed with [`SEGMENT_SEALS`].
pub(crate) fn new_segment(len: usize) -> io::Result<(OwnedFd, Arc<Segment>)> {
    if len == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let fd = rustix::fs::memfd_create(
        "isotropic-cluster-segment",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    let map = Mapping::new(fd.as_fd(), len, true)?;
    rustix::fs::fcntl_add_seals(&fd, SEGMENT_SEALS)?;
    let segment = Segment {
        map,
        writable: true,
        views: AtomicUsize::new(0),
    };
    Ok((fd, Arc::new(segment)))
}

/// A peer's segment `fd` of `len` bytes, mapped read-only (`fd` is closed
/// here, as on error).
///
/// # Errors
///
/// [`ProtocolError::UnsealedMemfd`] if `fd` is not a memfd sealed against
/// writes (`F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE`), shrinking, growing and
/// further sealing; [`ProtocolError::ShortMemfd`] if it holds fewer than
/// `len` bytes; [`ProtocolError::Io`] if it cannot be mapped.
pub(crate) fn map_segment(fd: OwnedFd, len: u64) -> Result<Arc<Segment>, ProtocolError> {
    let fixed = SEGMENT_SEALS.difference(SealFlags::FUTURE_WRITE);
    match rustix::fs::fcntl_get_seals(&fd) {
        Ok(seals)
            if seals.contains(fixed)
                && seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) => {}
        _ => return Err(ProtocolError::UnsealedMemfd),
    }
    let len = checked_len(&fd, len)?;
    if len == 0 {
        return Err(ProtocolError::ShortMemfd {
            announced: 0,
            size: 0,
        });
    }
    Ok(Arc::new(Segment {
        map: Mapping::new(fd.as_fd(), len, false)?,
        writable: false,
        views: AtomicUsize::new(0),
    }))
}

impl Segment {
    /// Its size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len
    }

    /// Whether `bytes` lie within this mapping: their offset in it.
    pub(crate) fn offset_of(&self, bytes: &[u8]) -> Option<usize> {
        let start = (bytes.as_ptr() as usize).checked_sub(self.map.ptr as usize)?;
        (start.checked_add(bytes.len())? <= self.map.len).then_some(start)
    }

    /// Copies `data` to the start of the segment (ours, read-write); false,
    /// and nothing written, while a view of it exists, or if `data` does
    /// not fit.
    pub(crate) fn fill(&self, data: &[u8]) -> bool {
        if !self.writable
            || data.len() > self.map.len
            || self
                .views
                .compare_exchange(0, FILLING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // SAFETY: the mapping is writable (`writable`: ours, mapped
        // read-write before sealing) and `data` fits in it; no view of it
        // exists, and none can be made until `views` is reset below, so no
        // shared borrow of these bytes is alive in this process (the peer
        // maps them read-only and reads them only once lent, after this).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.ptr.cast::<u8>(), data.len());
        }
        self.views.store(0, Ordering::Release);
        true
    }

    /// The `len` bytes at `offset` as [`Bytes`], which hold the segment and
    /// `guard` (dropped after the view is gone); `None` if out of bounds,
    /// or while the segment is being filled.
    pub(crate) fn view<G: Send + 'static>(
        self: &Arc<Self>,
        offset: usize,
        len: usize,
        guard: G,
    ) -> Option<Bytes> {
        if offset.checked_add(len)? > self.map.len {
            return None;
        }
        let mut views = self.views.load(Ordering::Relaxed);
        loop {
            if views >= FILLING - 1 {
                return None;
            }
            match self.views.compare_exchange_weak(
                views,
                views + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => views = now,
            }
        }
        Some(Bytes::from_owner(View {
            segment: self.clone(),
            offset,
            len,
            _guard: guard,
        }))
    }
}

/// Bytes of a [`Segment`], counted in its views while they live.
struct View<G> {
    segment: Arc<Segment>,
    offset: usize,
    len: usize,
    /// Dropped after the view is uncounted (field drops follow `drop`).
    _guard: G,
}

impl<G> AsRef<[u8]> for View<G> {
    fn as_ref(&self) -> &[u8] {
        // Counted in `views`, so not filled meanwhile (see `Mapping::bytes`).
        self.segment.map.bytes(self.offset, self.len)
    }
}

impl<G> Drop for View<G> {
    fn drop(&mut self) {
        self.segment.views.fetch_sub(1, Ordering::Release);
    }
}

/// `len`, if `fd` holds that many bytes, as a `usize`.
fn checked_len(fd: &OwnedFd, len: u64) -> Result<usize, ProtocolError> {
    let size =
        u64::try_from(rustix::fs::fstat(fd).map_err(io::Error::from)?.st_size).unwrap_or_default();
    if size < len {
        return Err(ProtocolError::ShortMemfd {
            announced: len,
            size,
        });
    }
    usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_maps_back_whole() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let fd = sealed_memfd(&payload).expect("a memfd");
        let flags = rustix::io::fcntl_getfd(&fd).expect("fd flags");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert_eq!(map_sealed(fd, 100_000).expect("mapped"), payload);
    }

    #[test]
    fn an_unsealed_or_short_memfd_is_refused() {
        let unsealed = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).expect("memfd");
        rustix::io::write(&unsealed, b"abc").expect("written");
        assert!(matches!(
            map_sealed(unsealed, 3),
            Err(ProtocolError::UnsealedMemfd)
        ));
        let short = sealed_memfd(b"abc").expect("a memfd");
        assert!(matches!(
            map_sealed(short, 4),
            Err(ProtocolError::ShortMemfd {
                announced: 4,
                size: 3
            })
        ));
    }
}
