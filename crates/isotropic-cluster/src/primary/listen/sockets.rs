//! The listening sockets the primary holds for its workers, and which live
//! workers hold each: a socket goes [`LINGER`] after its last holder, unless
//! another worker (a replacement) takes it meanwhile.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::WorkerId;
use crate::net::{self, ListenAddress, WorkerUser};

/// How many ports chosen for port 0 are remembered (see [`Sockets::ports`]).
const REMEMBERED_PORTS: usize = 64;

/// How long a socket we bound outlives its last holder: time for a
/// replacement to take it over with no gap (connections wait in its backlog
/// meanwhile instead of being refused).
pub(in crate::primary) const LINGER: Duration = Duration::from_secs(5);

/// A listening socket the primary holds for its workers.
#[derive(Debug)]
struct Shared {
    fd: OwnedFd,
    bound: ListenAddress,
    /// `None`: passed by socket activation, kept until the end. Otherwise
    /// bound by us: released when its last holder goes.
    ours: Option<Ours>,
    /// The live workers it was given to.
    holders: HashSet<WorkerId>,
    /// Since when no live worker holds it (a socket we bound).
    unheld: Option<tokio::time::Instant>,
}

/// What a socket we bound leaves behind: for a Unix path, its file, known
/// by device and inode so that only that very file is removed.
///
/// Under `ListenPolicy::AsWorkerUser`, for workers of another user, the
/// file is made and removed as that user ([`WorkerUser::act`]): whatever its
/// directory turns out to be (a component swapped for a symlink between
/// check and use), the kernel lets us do there only what the workers could
/// do themselves.
#[derive(Debug)]
struct Ours {
    file: Option<(PathBuf, u64, u64)>,
}

impl Ours {
    fn of(bound: &ListenAddress) -> Self {
        let file = match bound {
            ListenAddress::Unix(path) => std::fs::symlink_metadata(path)
                .ok()
                .map(|meta| (path.clone(), meta.dev(), meta.ino())),
            ListenAddress::Tcp(_) => None,
        };
        Self { file }
    }

    /// Removes the socket file, as `user`, if it is still the one we made.
    fn remove_file(&self, user: Option<WorkerUser>) {
        let Some((path, dev, ino)) = &self.file else {
            return;
        };
        let remove = || match std::fs::symlink_metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == (*dev, *ino) => std::fs::remove_file(path),
            _ => {
                tracing::debug!(path = %path.display(), "the socket file is no longer ours");
                Ok(())
            }
        };
        if let Err(error) = WorkerUser::act(user, remove) {
            tracing::warn!(%error, path = %path.display(), "cannot remove a socket file");
        }
    }
}

/// Sockets by the address asked for.
#[derive(Debug, Default)]
pub(super) struct Sockets {
    by_address: HashMap<ListenAddress, Shared>,
    /// The port last chosen for each address asked with port 0, tried
    /// first when it is bound again: a replacement asking after its
    /// predecessor's socket was released gets the same port while it is free.
    ports: HashMap<ListenAddress, SocketAddr>,
    /// Who binds the sockets, and removes their files, when not the
    /// primary: the workers' user (see `ListenPolicy::binder`).
    user: Option<WorkerUser>,
}

impl Sockets {
    /// The sockets passed by socket activation, if any; the others to be
    /// bound as `user` (`None`: as the primary).
    pub(super) fn activated(user: Option<WorkerUser>) -> Self {
        let by_address = net::take_activated()
            .into_iter()
            .map(|(fd, bound)| {
                let shared = Shared {
                    fd,
                    bound: bound.clone(),
                    ours: None,
                    holders: HashSet::new(),
                    unheld: None,
                };
                (bound, shared)
            })
            .collect();
        Self {
            by_address,
            ports: HashMap::new(),
            user,
        }
    }

    /// The key of the socket for `address`: asked for as such, or bound to it.
    fn key(&self, address: &ListenAddress) -> Option<&ListenAddress> {
        if let Some((key, _)) = self.by_address.get_key_value(address) {
            return Some(key);
        }
        self.by_address
            .iter()
            .find_map(|(key, shared)| (shared.bound == *address).then_some(key))
    }

    /// Whether the socket for `address` was passed by socket activation.
    pub(super) fn is_activated(&self, address: &ListenAddress) -> bool {
        self.key(address)
            .is_some_and(|key| self.by_address[key].ours.is_none())
    }

    /// Whether `worker` holds the socket for `address`.
    pub(super) fn holds(&self, worker: WorkerId, address: &ListenAddress) -> bool {
        self.key(address)
            .is_some_and(|key| self.by_address[key].holders.contains(&worker))
    }

    /// How many sockets `worker` holds.
    pub(super) fn held_by(&self, worker: WorkerId) -> usize {
        let holds = |shared: &&Shared| shared.holders.contains(&worker);
        self.by_address.values().filter(holds).count()
    }

    /// The socket for `address` (bound on first use), given to `worker`,
    /// and its bound address; with `reuseport`, a socket of the worker's own
    /// on the port the primary reserves.
    pub(super) fn socket(
        &mut self,
        worker: WorkerId,
        address: &ListenAddress,
        reuseport: bool,
    ) -> std::io::Result<(OwnedFd, ListenAddress)> {
        let (fd, bound, key) = match self.key(address).cloned() {
            Some(key) => {
                let shared = &self.by_address[&key];
                let fd = match (&shared.bound, &shared.ours) {
                    (ListenAddress::Tcp(bound), Some(_)) if reuseport => {
                        let bound = *bound;
                        WorkerUser::act(self.user, || net::reuseport(bound, true))?.0
                    }
                    _ => shared.fd.try_clone()?,
                };
                (fd, shared.bound.clone(), key)
            }
            None => {
                let (kept, fd, bound) = self.bind(address, reuseport)?;
                let shared = Shared {
                    fd: kept,
                    ours: Some(Ours::of(&bound)),
                    bound: bound.clone(),
                    holders: HashSet::new(),
                    unheld: None,
                };
                self.by_address.insert(address.clone(), shared);
                (fd, bound, address.clone())
            }
        };
        if let Some(shared) = self.by_address.get_mut(&key) {
            shared.holders.insert(worker);
            shared.unheld = None;
        }
        Ok((fd, bound))
    }

    /// Binds `address` (or the port it got last time): the socket the
    /// primary keeps, the worker's, and the bound address. With
    /// `reuseport`, the primary's only reserves the port (bound, not
    /// listening).
    fn bind(
        &self,
        address: &ListenAddress,
        reuseport: bool,
    ) -> std::io::Result<(OwnedFd, OwnedFd, ListenAddress)> {
        let bind = |address: &ListenAddress| match address {
            ListenAddress::Tcp(asked) if reuseport => {
                let (anchor, bound) = net::reuseport(*asked, false)?;
                let (fd, bound) = net::reuseport(bound, true)?;
                Ok((anchor, fd, ListenAddress::Tcp(bound)))
            }
            _ => {
                let (fd, bound) = net::bind(address)?;
                Ok((fd.try_clone()?, fd, bound))
            }
        };
        let last = self.ports.get(address).copied();
        WorkerUser::act(self.user, || match last {
            Some(last) => bind(&ListenAddress::Tcp(last)).or_else(|_| bind(address)),
            None => bind(address),
        })
    }

    /// Takes `worker` off every socket it holds; returns (by the address
    /// asked for) the sockets we bound that no live worker holds now: each
    /// to be [`expire`](Self::expire)d after [`LINGER`] (at once when no
    /// replacement is coming), or [released](Self::release_unheld) before.
    pub(super) fn forget(&mut self, worker: WorkerId) -> Vec<ListenAddress> {
        let now = tokio::time::Instant::now();
        let mut unheld = Vec::new();
        for (key, shared) in &mut self.by_address {
            if shared.holders.remove(&worker) && shared.holders.is_empty() && shared.ours.is_some()
            {
                shared.unheld = Some(now);
                unheld.push(key.clone());
            }
        }
        unheld
    }

    /// Releases the oldest sockets no live worker holds, all but `kept` of
    /// them; returns their bound addresses.
    pub(super) fn release_unheld(&mut self, kept: usize) -> Vec<ListenAddress> {
        let mut oldest: Vec<(tokio::time::Instant, ListenAddress)> = self
            .by_address
            .iter()
            .filter_map(|(key, shared)| Some((shared.unheld?, key.clone())))
            .collect();
        let excess = oldest.len().saturating_sub(kept);
        oldest.sort_by_key(|(since, _)| *since);
        oldest
            .into_iter()
            .take(excess)
            .filter_map(|(_, key)| self.release(&key))
            .collect()
    }

    /// Releases the socket asked for as `key` if no live worker has held it
    /// for `linger`; returns its bound address if it did.
    pub(super) fn expire(
        &mut self,
        key: &ListenAddress,
        linger: Duration,
    ) -> Option<ListenAddress> {
        let since = self.by_address.get(key)?.unheld?;
        (since.elapsed() >= linger)
            .then(|| self.release(key))
            .flatten()
    }

    /// Closes the socket asked for as `key` (and removes its file);
    /// remembers the port it got for port 0; returns its bound address.
    fn release(&mut self, key: &ListenAddress) -> Option<ListenAddress> {
        let shared = self.by_address.remove(key)?;
        if let Some(ours) = &shared.ours {
            ours.remove_file(self.user);
        }
        if let (ListenAddress::Tcp(asked), ListenAddress::Tcp(bound)) = (key, &shared.bound)
            && asked.port() == 0
            && (self.ports.len() < REMEMBERED_PORTS || self.ports.contains_key(key))
        {
            self.ports.insert(key.clone(), *bound);
        }
        tracing::debug!(address = %shared.bound, "released a socket no live worker holds");
        Some(shared.bound)
    }

    /// Closes every socket, and removes the socket files we made.
    pub(super) fn close(&mut self) {
        let keys: Vec<ListenAddress> = self.by_address.keys().cloned().collect();
        for key in keys {
            self.release(&key);
        }
    }
}
