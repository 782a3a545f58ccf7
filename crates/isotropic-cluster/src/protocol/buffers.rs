//! Buffers for encoding: a scratch buffer per thread to serialize into, and
//! a pool of buffers for the large frames copied out of it.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;

/// The most the scratch buffer keeps between frames.
const SCRATCH_KEEP: usize = 4 * 1024 * 1024;
/// Frames from this size on use a pooled buffer.
const POOL_FROM: usize = 16 * 1024;
/// Buffers kept in the pool, and the largest kept.
const POOL_KEEP: usize = 64;
const POOL_LARGEST: usize = 4 * 1024 * 1024;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

thread_local! {
    /// Serialization happens here, then the frame is copied out at its
    /// exact size: growing a fresh buffer for each large message cost more
    /// (reallocations and page faults) than the copy.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// What `write` writes into this thread's scratch buffer, copied out.
pub(super) fn encoded(
    write: impl FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
) -> Result<Bytes, ProtocolError> {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        let result = write(buf).map(|()| frame(buf));
        if buf.capacity() > SCRATCH_KEEP {
            *buf = BytesMut::new();
        }
        result
    })
}

/// A frame holding a copy of `bytes`; a large one in a reused buffer: a
/// fresh allocation of tens of KiB for each message costs page faults (the
/// allocator returns such memory to the kernel on free), which profiles
/// showed as the main cost of bulk sends.
fn frame(bytes: &[u8]) -> Bytes {
    if bytes.len() < POOL_FROM {
        return Bytes::copy_from_slice(bytes);
    }
    let mut buf = FREE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(bytes);
    Bytes::from_owner(Pooled(buf))
}

/// A pooled buffer, back to the pool when its frame is dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.0.capacity() <= POOL_LARGEST {
            let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
            if free.len() < POOL_KEEP {
                free.push(std::mem::take(&mut self.0));
            }
        }
    }
}
