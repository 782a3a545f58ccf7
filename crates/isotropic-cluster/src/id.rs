//! The id of a worker, as the primary numbers its workers and as a worker
//! learns its own (see `role.rs`).

/// A worker's id: 1 for a primary's first worker, then 2, 3, … never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub(crate) u64);

impl WorkerId {
    /// The id with this number.
    pub fn new(id: u64) -> Self {
        Self(id)
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for WorkerId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}
