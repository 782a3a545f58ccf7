//! Why a listening socket could not be had.

/// Why a listening socket could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenErrorKind {
    /// The address is already in use.
    AddrInUse,
    /// Binding was not permitted (a low port, a protected path).
    PermissionDenied,
    /// The address is not one of this machine's.
    AddrNotAvailable,
    /// The address did not parse.
    InvalidAddress,
    /// The primary's [`ListenPolicy`](crate::ListenPolicy) does not let
    /// workers listen there (by default, workers running as another user
    /// get nothing that user could not bind itself).
    NotAllowed,
    /// The worker already holds as many sockets as the primary lets one
    /// worker hold ([`max_listens_per_worker`](crate::primary::PrimaryBuilder::max_listens_per_worker)).
    TooMany,
    /// The channel to the primary is closed.
    Disconnected,
    /// Anything else (see the message).
    Other,
}

impl ListenErrorKind {
    pub(crate) fn of(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::AddrInUse => Self::AddrInUse,
            std::io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            std::io::ErrorKind::AddrNotAvailable => Self::AddrNotAvailable,
            std::io::ErrorKind::InvalidInput => Self::InvalidAddress,
            _ => Self::Other,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AddrInUse => "AddrInUse",
            Self::PermissionDenied => "PermissionDenied",
            Self::AddrNotAvailable => "AddrNotAvailable",
            Self::InvalidAddress => "InvalidAddress",
            Self::NotAllowed => "NotAllowed",
            Self::TooMany => "TooMany",
            Self::Disconnected => "Disconnected",
            Self::Other => "Other",
        }
    }

    pub(crate) fn from_name(name: &str) -> Self {
        [
            Self::AddrInUse,
            Self::PermissionDenied,
            Self::AddrNotAvailable,
            Self::InvalidAddress,
            Self::NotAllowed,
            Self::TooMany,
            Self::Disconnected,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
        .unwrap_or(Self::Other)
    }
}

/// A listening socket could not be had: the address, why, and what the
/// system said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot listen on {address}: {message}")]
#[non_exhaustive]
pub struct ListenError {
    /// The address asked for.
    pub address: String,
    /// Why, as a kind.
    pub kind: ListenErrorKind,
    /// What the system said.
    pub message: String,
}

impl From<std::convert::Infallible> for ListenError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
