//! What workers may listen on through the primary.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::ListenAddress;

/// What workers may listen on through the primary, which binds the sockets
/// they ask for: with the primary's own privileges, except under
/// [`AsWorkerUser`](Self::AsWorkerUser).
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::ListenPolicy;
/// use isotropic_cluster::primary::ClusterPrimary;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // Workers may have this port and this socket path, nothing else.
/// let primary = ClusterPrimary::builder()
///     .listen_policy(ListenPolicy::Only(vec![
///         "0.0.0.0:8080".parse()?,
///         "unix:/run/app/http.sock".parse()?,
///     ]))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ListenPolicy {
    /// The default: what the workers' user could bind itself. Anything for
    /// workers running as the primary's own user; for workers given another
    /// [`uid`](crate::primary::PrimaryBuilder::uid) or
    /// [`gid`](crate::primary::PrimaryBuilder::gid), the primary binds (and
    /// removes the socket files) on a thread that has taken that user and
    /// group, so the kernel checks that user's rights: no TCP port below
    /// `/proc/sys/net/ipv4/ip_unprivileged_port_start`, no Unix path where
    /// it may not create a file (whatever symlinks the path crosses), no
    /// `SO_REUSEPORT` group of another user's. Such requests are refused as
    /// `NotAllowed` beforehand when the mode bits already say no (of the
    /// directory, and of its ancestors, which must be searchable). Sockets
    /// passed to the primary by socket activation are theirs to use.
    #[default]
    AsWorkerUser,
    /// Any address the primary can bind, with its own privileges.
    Any,
    /// Only these addresses, exactly as asked (`127.0.0.1:0` allows asking
    /// for `127.0.0.1:0`, not for another port), bound with the primary's
    /// own privileges (a port below 1024 for unprivileged workers, say).
    Only(Vec<ListenAddress>),
    /// Nothing: every listen request is refused.
    Nothing,
}

/// The user and group workers run as, when not the primary's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl WorkerUser {
    /// Workers started with `uid` and `gid` (each `None`: the primary's):
    /// `None` when they run as the primary does.
    pub(crate) fn of(uid: Option<u32>, gid: Option<u32>) -> Option<Self> {
        if uid.is_none() && gid.is_none() {
            return None;
        }
        Some(Self {
            uid: uid.unwrap_or_else(|| rustix::process::geteuid().as_raw()),
            gid: gid.unwrap_or_else(|| rustix::process::getegid().as_raw()),
        })
    }
}

impl WorkerUser {
    /// Runs `work` as this user (see `sys::as_user`), or as the primary
    /// when `user` is `None`: the sockets bound and files removed for
    /// workers of another user are checked by the kernel against that
    /// user's rights, never the primary's.
    ///
    /// # Errors
    ///
    /// Those of `work`, or this user cannot be taken.
    pub(crate) fn act<T: Send>(
        user: Option<Self>,
        work: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        match user {
            Some(user) => crate::sys::as_user(user.uid, user.gid, work),
            None => work(),
        }
    }
}

impl ListenPolicy {
    /// Who binds the sockets of workers running as `user` (`None`: the
    /// primary, with its own privileges): that user under
    /// [`AsWorkerUser`](Self::AsWorkerUser), the primary under a policy
    /// that names what it may bind for them.
    pub(crate) fn binder(&self, user: Option<WorkerUser>) -> Option<WorkerUser> {
        user.filter(|_| *self == Self::AsWorkerUser)
    }

    /// Why workers running as `user` (`None`: as the primary) may not have
    /// `address`; `None` when they may. `activated`: the primary was given
    /// that socket by socket activation.
    pub(crate) fn refusal(
        &self,
        address: &ListenAddress,
        user: Option<WorkerUser>,
        activated: bool,
    ) -> Option<String> {
        match self {
            Self::Any => None,
            Self::Nothing => Some("the primary lets workers listen on nothing".into()),
            Self::Only(allowed) if allowed.contains(address) => None,
            Self::Only(_) => Some("not among the addresses the primary allows".into()),
            Self::AsWorkerUser if activated => None,
            Self::AsWorkerUser => user.and_then(|user| user.refusal(address)),
        }
    }
}

impl WorkerUser {
    /// Why this user could not bind `address` itself; `None` if it could.
    fn refusal(self, address: &ListenAddress) -> Option<String> {
        if self.uid == 0 {
            return None;
        }
        match address {
            ListenAddress::Tcp(socket) => {
                let start = unprivileged_port_start();
                (socket.port() != 0 && socket.port() < start).then(|| {
                    format!(
                        "uid {} may not bind a port below {start} (ip_unprivileged_port_start)",
                        self.uid
                    )
                })
            }
            ListenAddress::Unix(path) => {
                let dir = directory_of(path)?;
                (!self.may_create_in(&dir)).then(|| {
                    format!(
                        "uid {} gid {} may not create a file in {}",
                        self.uid,
                        self.gid,
                        dir.display()
                    )
                })
            }
        }
    }

    /// Whether this user may create a file in `dir`: write and search on it,
    /// search on each ancestor (a directory that cannot be read says no).
    fn may_create_in(self, dir: &Path) -> bool {
        const WRITE_SEARCH: u32 = 0o3;
        const SEARCH: u32 = 0o1;
        dir.ancestors().enumerate().all(|(depth, dir)| {
            let wanted = if depth == 0 { WRITE_SEARCH } else { SEARCH };
            std::fs::metadata(dir).is_ok_and(|meta| {
                let mode = meta.mode();
                let granted = if meta.uid() == self.uid {
                    mode >> 6
                } else if meta.gid() == self.gid {
                    mode >> 3
                } else {
                    mode
                };
                granted & wanted == wanted
            })
        })
    }
}

/// The directory a socket file at `path` is created in, absolute.
fn directory_of(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    Some(absolute.parent()?.to_path_buf())
}

/// The lowest port an unprivileged process may bind (1024 when unknown).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const NOBODY: WorkerUser = WorkerUser {
        uid: 65534,
        gid: 65534,
    };

    fn address(text: &str) -> ListenAddress {
        text.parse().expect("an address")
    }

    #[test]
    fn explicit_policies_allow_what_they_name() {
        let named = address("127.0.0.1:81");
        for user in [None, Some(NOBODY)] {
            assert_eq!(ListenPolicy::Any.refusal(&named, user, false), None);
            let only = ListenPolicy::Only(vec![named.clone()]);
            assert_eq!(only.refusal(&named, user, false), None);
            assert!(only.refusal(&address("127.0.0.1:0"), user, false).is_some());
            assert!(ListenPolicy::Nothing.refusal(&named, user, true).is_some());
            // Named explicitly: the primary binds it, with its privileges.
            assert_eq!(only.binder(user), None);
            assert_eq!(ListenPolicy::AsWorkerUser.binder(user), user);
        }
    }

    #[test]
    fn another_user_gets_no_privileged_port_and_no_path_it_cannot_write() {
        let policy = ListenPolicy::AsWorkerUser;
        let low = address("127.0.0.1:81");
        assert_eq!(policy.refusal(&low, None, false), None, "our own user");
        let root = WorkerUser { uid: 0, gid: 0 };
        assert_eq!(policy.refusal(&low, Some(root), false), None);
        if unprivileged_port_start() > 81 {
            let why = policy.refusal(&low, Some(NOBODY), false).expect("refused");
            assert!(why.contains("uid 65534"), "{why}");
        }
        assert_eq!(policy.refusal(&low, Some(NOBODY), true), None, "activated");
        let high = address("127.0.0.1:0");
        assert_eq!(policy.refusal(&high, Some(NOBODY), false), None);

        let dir = std::env::temp_dir().join(format!("isotropic-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = address(&format!("unix:{}/app.sock", dir.display()));
        let mode = |bits| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(bits));
        let me = rustix::process::geteuid().as_raw();
        let stranger = WorkerUser {
            uid: me.wrapping_add(1),
            gid: rustix::process::getegid().as_raw().wrapping_add(1),
        };
        mode(0o755).expect("chmod");
        assert!(policy.refusal(&path, Some(stranger), false).is_some());
        mode(0o777).expect("chmod");
        assert_eq!(policy.refusal(&path, Some(stranger), false), None);
        let owner = WorkerUser {
            uid: me,
            gid: stranger.gid,
        };
        mode(0o700).expect("chmod");
        assert_eq!(policy.refusal(&path, Some(owner), false), None);
        std::fs::remove_dir(&dir).expect("removed");
    }
}
