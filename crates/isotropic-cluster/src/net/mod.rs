//! Addresses to listen on, and listeners shared by the workers of a primary:
//! the typed layer over the sockets that `sys` makes.

mod activated;
mod address;
mod error;
mod listener;
mod policy;

pub(crate) use activated::{address_of, take_activated, take_activated_as_passed};
pub use address::ListenAddress;
pub(crate) use address::{bind, reuseport};
pub use error::{ListenError, ListenErrorKind};
pub use listener::{Connection, Distribution, Listener, PassedListener};
pub(crate) use listener::{PassedSender, adopt, passed};
pub use policy::ListenPolicy;
pub(crate) use policy::WorkerUser;
