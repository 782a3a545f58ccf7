//! Listeners ready for tokio, the connections they accept, and how the
//! connections to a shared address are spread over the workers.

use std::os::fd::OwnedFd;

use tokio::sync::mpsc;

use super::ListenAddress;
use crate::channel::Outbox;
use crate::error::SendError;
use crate::protocol::{self, Frame};

/// A listening socket shared with the other workers, ready for tokio; or,
/// with [`Distribution::RoundRobin`], the connections the primary accepted
/// and passed to this worker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream listener.
    Unix(tokio::net::UnixListener),
    /// Connections accepted by the primary.
    Passed(PassedListener),
}

/// An accepted connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Connection {
    /// A TCP connection.
    Tcp(tokio::net::TcpStream),
    /// A Unix stream connection.
    Unix(tokio::net::UnixStream),
}

impl Connection {
    /// The connection's fd, to pass to another process.
    pub(crate) fn into_fd(self) -> std::io::Result<OwnedFd> {
        Ok(match self {
            Self::Tcp(stream) => stream.into_std()?.into(),
            Self::Unix(stream) => stream.into_std()?.into(),
        })
    }
}

/// The connections the primary accepts on an address and passes to this
/// worker, in turn with the other workers.
#[derive(Debug)]
pub struct PassedListener {
    address: ListenAddress,
    connections: mpsc::Receiver<OwnedFd>,
    /// Where to acknowledge each connection taken, when the primary asks.
    acks: Option<Acks>,
}

/// How a worker acknowledges the connections it takes: an `accepted` frame
/// for listen request `listener` (`docs/protocol.md`).
#[derive(Debug)]
struct Acks {
    outbox: Outbox,
    listener: u64,
}

/// How many passed connections may wait for the worker's accept. The
/// primary passes at most a few unacknowledged ones (see `primary/listen`):
/// this only bounds a primary that does not wait for acknowledgements.
const WAITING: usize = 1024;

/// Where the worker puts the connections passed for one listen request;
/// counts those it must drop.
#[derive(Debug)]
pub(crate) struct PassedSender {
    connections: mpsc::Sender<OwnedFd>,
    listener: u64,
    dropped: u64,
}

/// A listener for the connections passed for listen request `listener` on
/// `address`, and where they go; with `acks`, each connection the
/// listener's accept takes is acknowledged there.
pub(crate) fn passed(
    address: ListenAddress,
    listener: u64,
    acks: Option<Outbox>,
) -> (PassedSender, PassedListener) {
    let (connections, receiver) = mpsc::channel(WAITING);
    let sender = PassedSender {
        connections,
        listener,
        dropped: 0,
    };
    let listener = PassedListener {
        address,
        connections: receiver,
        acks: acks.map(|outbox| Acks { outbox, listener }),
    };
    (sender, listener)
}

impl PassedSender {
    /// Hands `connection` to the listener; drops it (counted, with a
    /// warning) when the listener is gone or full.
    pub(crate) fn pass(&mut self, connection: OwnedFd) {
        if self.connections.try_send(connection).is_err() {
            self.dropped += 1;
            tracing::warn!(
                listener = self.listener,
                dropped = self.dropped,
                "a passed connection was dropped: its listener is full or gone"
            );
        }
    }
}

impl Acks {
    /// Tells the primary that one more connection was taken. Never lost
    /// while the channel is open: when the queue is full, a task waits for
    /// room (the primary would otherwise count the connection as held).
    fn acknowledge(&self) {
        let frame = protocol::encode_control(&Frame::Accepted {
            listener: self.listener,
        });
        if let Err(SendError::Full { .. }) = self.outbox.try_send(frame.clone()) {
            let outbox = self.outbox.clone();
            tokio::spawn(async move { outbox.send(frame).await });
        }
    }
}

impl PassedListener {
    /// The address the primary listens on.
    pub fn address(&self) -> &ListenAddress {
        &self.address
    }

    /// The next connection the primary passes to this worker (the primary
    /// is told it was taken, and may pass another).
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::ConnectionAborted`] once the primary is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn accept(&mut self) -> std::io::Result<Connection> {
        let fd = self.connections.recv().await.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the primary stopped passing connections",
            )
        })?;
        if let Some(acks) = &self.acks {
            acks.acknowledge();
        }
        Ok(match self.address {
            ListenAddress::Tcp(_) => {
                let stream = std::net::TcpStream::from(fd);
                stream.set_nonblocking(true)?;
                Connection::Tcp(tokio::net::TcpStream::from_std(stream)?)
            }
            ListenAddress::Unix(_) => {
                let stream = std::os::unix::net::UnixStream::from(fd);
                stream.set_nonblocking(true)?;
                Connection::Unix(tokio::net::UnixStream::from_std(stream)?)
            }
        })
    }
}

impl Drop for PassedListener {
    /// Closes what was passed and not accepted (counted, with a warning).
    fn drop(&mut self) {
        self.connections.close();
        let mut closed = 0_u64;
        while self.connections.try_recv().is_ok() {
            closed += 1;
        }
        if closed > 0 {
            tracing::warn!(address = %self.address, closed, "connections passed to a listener dropped before accepting them were closed");
        }
    }
}

impl Listener {
    /// The next connection, whatever the kind of listener.
    ///
    /// # Errors
    ///
    /// What `accept` gives.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn accept(&mut self) -> std::io::Result<Connection> {
        Ok(match self {
            Self::Tcp(listener) => Connection::Tcp(listener.accept().await?.0),
            Self::Unix(listener) => Connection::Unix(listener.accept().await?.0),
            Self::Passed(listener) => return listener.accept().await,
        })
    }

    /// The TCP listener, if this is one.
    pub fn into_tcp(self) -> Option<tokio::net::TcpListener> {
        match self {
            Self::Tcp(listener) => Some(listener),
            _ => None,
        }
    }

    /// The Unix listener, if this is one.
    pub fn into_unix(self) -> Option<tokio::net::UnixListener> {
        match self {
            Self::Unix(listener) => Some(listener),
            _ => None,
        }
    }
}

/// How the connections to a shared address are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Distribution {
    /// One listening socket shared by every worker: the kernel hands each
    /// connection to whichever worker accepts first. Connections waiting in
    /// the queue survive the death of any worker but the last that holds
    /// the socket while a replacement comes (the primary closes a socket no
    /// live worker took in the 5 s after its last holder left). Can
    /// be very uneven under keep-alive load (one worker may take every
    /// connection of a burst).
    #[default]
    Shared,
    /// One listening socket per worker, all bound to the same address with
    /// `SO_REUSEPORT`: the kernel spreads connections evenly by hash. The
    /// primary keeps the port reserved (bound, not listening). Connections
    /// queued on a worker that dies are reset. TCP only; Unix paths are
    /// always shared.
    ReusePort,
    /// The primary accepts, and passes each connection to the next worker
    /// listening on that address, in turn (Node's default): even, and a
    /// connection is never queued on a worker that dies. A worker that does
    /// not keep up (stopped, stuck) holds at most 4 connections it has not
    /// accepted yet; the others go to the workers that do. Workers get a
    /// [`Listener::Passed`]; the primary is on the path of every new
    /// connection (not of its data).
    RoundRobin,
}

/// Makes a tokio listener of a socket received from the primary.
pub(crate) fn adopt(address: &ListenAddress, fd: OwnedFd) -> std::io::Result<Listener> {
    Ok(match address {
        ListenAddress::Tcp(_) => Listener::Tcp(tokio::net::TcpListener::from_std(fd.into())?),
        ListenAddress::Unix(_) => Listener::Unix(tokio::net::UnixListener::from_std(fd.into())?),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::channel::{self, QueueLimits};

    #[tokio::test]
    async fn each_connection_taken_is_acknowledged_once() {
        let (ours, primary) = tokio::net::UnixStream::pair().expect("a channel");
        let ours = ours.into_std().expect("std");
        let (_read, outbox) =
            channel::open(ours.into(), QueueLimits::default(), None).expect("opened");
        let address = ListenAddress::Unix("/run/app.sock".into());
        let (mut sender, mut listener) = passed(address, 7, Some(outbox));
        let (connection, _client) = UnixStream::pair().expect("a connection");
        sender.pass(connection.into());
        assert!(matches!(listener.accept().await, Ok(Connection::Unix(_))));
        drop(listener);
        // The `accepted` frame of `docs/protocol.md`, then the end of the
        // channel (every sender gone): nothing more.
        let mut primary = primary;
        let mut received = Vec::new();
        let read = primary.read_to_end(&mut received);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(received, b"\0\0\0\x0f\x0a{\"listener\":7}");
    }
}
