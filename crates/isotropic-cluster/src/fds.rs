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
// (None when none came: most messages, which then cost no allocation.)
#[derive(Clone, Default)]
pub struct PassedFds(Option<Arc<Mutex<Vec<OwnedFd>>>>);

impl PassedFds {
    pub(crate) fn new(fds: Vec<OwnedFd>) -> Self {
        Self(Some(Arc::new(Mutex::new(fds))))
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Vec<OwnedFd>>> {
        let fds = self.0.as_ref()?;
        Some(fds.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Takes the fds, in the order they were sent; empty if there were
    /// none or another clone took them.
    pub fn take(&self) -> Vec<OwnedFd> {
        self.lock()
            .map(|mut fds| std::mem::take(&mut *fds))
            .unwrap_or_default()
    }

    /// How many fds are left to take.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |fds| fds.len())
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

/// Clones are equal (the same fds), and so are two that never had any.
impl PartialEq for PassedFds {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(ours), Some(theirs)) => Arc::ptr_eq(ours, theirs),
            (ours, theirs) => ours.is_none() && theirs.is_none(),
        }
    }
}

impl Eq for PassedFds {}
