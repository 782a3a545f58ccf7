//! What the public traits name but users cannot, in one place for `topics!`
//! and `host!` (see `crate::topics`) and the hosts: the sealing of [`Topic`],
//! the host traits and the handler types. Re-exports only.
//!
//! [`Topic`]: super::Topic
#![allow(unreachable_pub)]

pub use super::event::{RouteFn, SealedTopic};
pub use super::host::{HostImpl, Once, TopicImpl};
pub use super::stream::StreamEvent;
