//! File descriptors passed with a message ([`PassedFds`]), and the bound on
//! how many one message carries ([`MAX_FDS`]).

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

/// The most file descriptors one message carries, either way. Sending more
/// is refused ([`ProtocolError::TooManyFds`](crate::ProtocolError::TooManyFds));
/// a peer that sends more breaks the channel with the same error, and the
/// fds that came are closed.
pub const MAX_FDS: usize = 16;

/// The file descriptors that came with a message: taken once, by whichever
/// clone of the event takes them first ([`take`](Self::take)); closed with
/// the last clone if never taken. They are received close-on-exec, so never
/// inherited by the receiver's children unless it hands them on itself.
#[derive(Clone, Default)]
pub struct PassedFds(Arc<Mutex<Vec<OwnedFd>>>);

impl PassedFds {
    pub(crate) fn new(fds: Vec<OwnedFd>) -> Self {
        Self(Arc::new(Mutex::new(fds)))
    }

    /// Takes the fds, in the order they were sent; empty if there were
    /// none or another clone took them.
    pub fn take(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many fds are left to take.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no fd is left to take.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for PassedFds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PassedFds({})", self.len())
    }
}

/// Clones are equal (the same fds).
impl PartialEq for PassedFds {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PassedFds {}
