//! Large payloads in sealed memfds: written once by the sender, mapped
//! read-only by the receiver (`docs/protocol.md`, "Sealed payloads").

use std::io;
use std::os::fd::{AsFd, OwnedFd};

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
    let size =
        u64::try_from(rustix::fs::fstat(&fd).map_err(io::Error::from)?.st_size).unwrap_or_default();
    if size < len {
        return Err(ProtocolError::ShortMemfd {
            announced: len,
            size,
        });
    }
    let Ok(len) = usize::try_from(len) else {
        return Err(io::Error::from(io::ErrorKind::OutOfMemory).into());
    };
    if len == 0 {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(Mapping::new(fd.as_fd(), len)?))
}

/// A read-only shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and backed by a memfd sealed against
// writes and shrinking, so its bytes never change and stay mapped until
// drop; sharing or moving the pointer across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above: only shared reads of immutable bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a new mapping at an address of the kernel's choosing
        // (nothing of ours is replaced); `len` is nonzero and within the
        // file, whose seals forbid shrinking it, so every mapped byte stays
        // backed (no SIGBUS).
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(Self { ptr, len })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until drop, and the seals
        // forbid writes, so they never change while borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once;
        // no borrow of it outlives `self` (see `as_ref`).
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
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
