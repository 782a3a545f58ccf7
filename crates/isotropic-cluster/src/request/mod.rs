//! Request/response over a channel: the caller's table of requests waiting
//! for a reply (`pending`), and the callee's handlers (`handlers`).

mod handlers;
mod pending;

use std::time::Duration;

pub use handlers::HandleRequests;
pub(crate) use handlers::Handlers;
pub(crate) use handlers::sealed;
pub(crate) use pending::{Pending, Waiter};

use crate::WorkerId;
use crate::error::{MessageError, SendError};

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the deadline.
    #[error("no reply within {after:?}{}", worker_label(*worker_id))]
    Timeout {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
        /// The deadline.
        after: Duration,
    },
    /// The peer exited or disconnected before replying.
    #[error("the peer went away before replying{}", worker_label(*worker_id))]
    Gone {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
    },
    /// The peer's handler failed (returned an error, or panicked).
    #[error("the handler failed{}: {message}", worker_label(*worker_id))]
    Remote {
        /// The worker asked, when the primary asked.
        worker_id: Option<WorkerId>,
        /// The handler's error, as text.
        message: String,
    },
    /// The request could not be sent.
    #[error("cannot send the request")]
    Send(#[source] SendError),
    /// The reply does not fit the type asked for.
    #[error("the reply does not decode")]
    Decode(#[source] MessageError),
    /// No worker was left to ask (`dispatch`).
    #[error("no ready worker to dispatch to")]
    NoWorker,
}

/// A closed channel means the peer is gone: [`RequestError::Gone`], the one
/// error that says so whether the peer left before or after the request was
/// sent.
impl From<SendError> for RequestError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed { worker_id } => Self::Gone { worker_id },
            other => Self::Send(other),
        }
    }
}

fn worker_label(worker_id: Option<WorkerId>) -> String {
    worker_id
        .map(|id| format!(" (worker {id})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_channel_means_gone() {
        let worker_id = Some(WorkerId(5));
        assert!(matches!(
            RequestError::from(SendError::Closed { worker_id }),
            RequestError::Gone {
                worker_id: Some(WorkerId(5))
            }
        ));
        assert!(matches!(
            RequestError::from(SendError::Full { worker_id }),
            RequestError::Send(SendError::Full { .. })
        ));
    }
}
