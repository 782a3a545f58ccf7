//! [`Signal`]: a Unix signal, by name.

use std::fmt;

/// A Unix signal the primary sends to workers, or that ended one.
///
/// # Examples
///
/// ```
/// use isotropic_cluster::Signal;
///
/// assert_eq!(Signal::TERM.to_string(), "SIGTERM");
/// assert_eq!(Signal::from_raw(9), Signal::KILL);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// `SIGHUP`.
    pub const HUP: Self = Self(libc::SIGHUP);
    /// `SIGINT`.
    pub const INT: Self = Self(libc::SIGINT);
    /// `SIGQUIT`.
    pub const QUIT: Self = Self(libc::SIGQUIT);
    /// `SIGKILL`.
    pub const KILL: Self = Self(libc::SIGKILL);
    /// `SIGPIPE`.
    pub const PIPE: Self = Self(libc::SIGPIPE);
    /// `SIGSEGV`.
    pub const SEGV: Self = Self(libc::SIGSEGV);
    /// `SIGTERM`.
    pub const TERM: Self = Self(libc::SIGTERM);
    /// `SIGUSR1`.
    pub const USR1: Self = Self(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Self = Self(libc::SIGUSR2);
    /// `SIGABRT`.
    pub const ABRT: Self = Self(libc::SIGABRT);
    /// `SIGTTIN` (the CLI adds a worker on it, as gunicorn does).
    pub const TTIN: Self = Self(libc::SIGTTIN);
    /// `SIGTTOU` (the CLI removes a worker on it, as gunicorn does).
    pub const TTOU: Self = Self(libc::SIGTTOU);

    /// The signal with this number.
    pub const fn from_raw(number: i32) -> Self {
        Self(number)
    }

    /// The signal's number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The signal's name, `"SIGTERM"` say; `None` for one without a
    /// constant here.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HUP => "SIGHUP",
            Self::INT => "SIGINT",
            Self::QUIT => "SIGQUIT",
            Self::KILL => "SIGKILL",
            Self::PIPE => "SIGPIPE",
            Self::SEGV => "SIGSEGV",
            Self::TERM => "SIGTERM",
            Self::USR1 => "SIGUSR1",
            Self::USR2 => "SIGUSR2",
            Self::ABRT => "SIGABRT",
            _ => return None,
        })
    }
}

impl fmt::Display for Signal {
    /// The name, or `signal N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_by_name_and_round_trip_by_number() {
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal::from_raw(Signal::TERM.as_raw()), Signal::TERM);
        assert_eq!(Signal::from_raw(64).to_string(), "signal 64");
        assert_eq!(format!("{:?}", Signal::HUP), "SIGHUP");
    }
}
