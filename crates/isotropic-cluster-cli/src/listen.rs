//! `--listen`: the primary binds every address once, and each worker starts
//! through the hidden `__exec-with-sockets` command, which places the
//! sockets at fd 3… (systemd's socket activation) and becomes the command.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryBuilder};
use isotropic_cluster::upgrade::Handover;

use crate::args::{EXEC_WITH_SOCKETS, Plan};
use crate::exit::ExitCode;
use crate::render::Entry;
use crate::report::Report;

/// The Unix socket files the CLI bound: removed when dropped (at exit), so
/// that the next start finds the path free; and a copy of every listening
/// socket with its name, for an upgrade (SIGUSR2).
#[derive(Debug, Default)]
pub(crate) struct SocketFiles {
    paths: Vec<PathBuf>,
    sockets: Vec<(String, OwnedFd)>,
    /// Left in place at exit: another primary serves them (a new one took
    /// over; or this one is a new one that has not, yet).
    kept: bool,
}

impl SocketFiles {
    /// The sockets an upgrade hands over: the listening ones, named
    /// `listen0`, `listen1`… in `--listen` order (`web/listen0`… for the
    /// pool `web`, when there are several), and the metrics'.
    pub(crate) fn sockets(&self) -> &[(String, OwnedFd)] {
        &self.sockets
    }

    /// Hands `socket` over at an upgrade too, as `name`.
    pub(crate) fn hand_over(&mut self, name: &str, socket: OwnedFd) {
        self.sockets.push((name.to_owned(), socket));
    }

    /// Whether the files are to be removed at exit: not while another
    /// primary serves them.
    pub(crate) fn keep(&mut self, kept: bool) {
        self.kept = kept;
    }
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in self.paths.iter().filter(|_| !self.kept) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A `--listen` address a new primary was handed by the old one (an
/// upgrade) but cannot find: it exits with [`ExitCode::CannotAdopt`].
#[derive(Debug)]
pub(crate) struct CannotAdopt(pub(crate) String);

impl std::fmt::Display for CannotAdopt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CannotAdopt {}

/// A builder whose workers start through the shim with the bound sockets,
/// and the socket files to remove at exit.
pub(crate) fn through_shim(
    plan: &Plan,
    report: &Report,
    handover: Option<&mut Handover>,
    activated: &mut Activated,
) -> anyhow::Result<(PrimaryBuilder, SocketFiles)> {
    // Find the command now, so that a missing one is an error here, as
    // without --listen.
    let program = executable(&plan.program)?;
    let (fds, names, files) = bind(&plan.listen, report, handover, activated)?;
    // The shim is this very binary (`/proc/self/exe` in the child), whatever
    // a deploy did to its file; the program is its release's.
    let shim = [OsString::from(EXEC_WITH_SOCKETS), names.into(), "--".into()];
    let builder = ClusterPrimary::builder()
        .program(program)
        .args(&plan.args)
        .launcher("/proc/self/exe", shim)
        .pass_fds(fds);
    Ok((builder, files))
}

/// Makes way for a Unix socket at `path`: a stale socket file (one nobody
/// accepts on, left by a run that died) is removed, as gunicorn does; a live
/// socket or a file that is not a socket is left alone, and binding then
/// fails with "address in use".
fn clear_stale(path: &Path) {
    use std::os::unix::fs::FileTypeExt as _;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    let refused = || {
        std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    if is_socket && refused() {
        let _ = std::fs::remove_file(path);
    }
}

/// The shim: places the sockets and becomes `command`; returns only if that
/// fails.
pub(crate) fn exec_with_sockets(names: &str, command: &[OsString]) -> ExitCode {
    // Still a single thread here: place the sockets and exec.
    let (program, args) = command.split_first().expect("clap requires a command");
    let error = isotropic_cluster::socket_activation::exec_with_listen_fds(names, program, args);
    eprintln!(
        "isotropic-cluster: cannot start {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::ExecFailed
}

/// The executable file `program` names, directly or through `PATH`.
fn executable(program: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |path: &std::path::Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        Some(std::path::PathBuf::from(program)).filter(|path| runnable(path))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| runnable(path))
        })
    };
    found.ok_or_else(|| anyhow::anyhow!("cannot start {program}: not found, or not executable"))
}

/// The sockets socket activation passed to the CLI (a systemd `.socket`
/// unit's), with the address each is bound to, that no pool has taken yet.
#[derive(Debug, Default)]
pub(crate) struct Activated(Vec<(OwnedFd, ListenAddress)>);

impl Activated {
    /// The passed sockets, if some pool `listens` (without `--listen`
    /// they stay the library's, passed on as they are), unless `handover`
    /// has the sockets (an upgrade's new primary has them from the old one,
    /// by name).
    pub(crate) fn take(listens: bool, handover: Option<&Handover>) -> Self {
        match (listens, handover) {
            (true, None) => Self(isotropic_cluster::socket_activation::take_listen_fds()),
            _ => Self::default(),
        }
    }

    /// Closes the sockets no pool took, with a line each.
    pub(crate) fn close_unused(self, report: &Report) {
        for (_, bound) in self.0 {
            let text = format!(
                "the socket on {bound} passed by socket activation serves no --listen address: closed"
            );
            report.warn("listening", &text);
        }
    }
}

/// Binds every `--listen` address, or adopts it: from `handover`, or the
/// socket bound to it that socket activation passed (`activated`); the
/// sockets, their LISTEN_FDNAMES, and the socket files made.
fn bind(
    addresses: &[ListenAddress],
    report: &Report,
    mut handover: Option<&mut Handover>,
    activated: &mut Activated,
) -> anyhow::Result<(Vec<OwnedFd>, String, SocketFiles)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    // (Handed over: the old primary's files until this one takes over.)
    let mut files = SocketFiles::default();
    files.keep(handover.is_some());
    for (i, address) in addresses.iter().enumerate() {
        let name = format!("listen{i}");
        // (The name an upgrade hands it over as: the workers' own, in a pool's.)
        let handed_as = report
            .pool()
            .map_or_else(|| name.clone(), |pool| format!("{pool}/{name}"));
        let passed = (activated.0)
            .iter()
            .position(|(_, bound)| serves(address, bound))
            .map(|at| activated.0.swap_remove(at));
        // (A file the service manager made is its own: not removed at exit.)
        let files_ours = passed.is_none();
        let (fd, bound, from) = match (handover.as_deref_mut(), passed) {
            (Some(handover), _) => {
                let from = format!(
                    ", handed over by the old primary (pid {})",
                    handover.from_pid()
                );
                let (fd, bound) = adopt(handover, &handed_as, address)?;
                (fd, bound, from)
            }
            (None, Some((fd, bound))) => (fd, bound, ", passed by socket activation".into()),
            (None, None) => {
                if let ListenAddress::Unix(path) = address {
                    clear_stale(path);
                }
                let (fd, bound) = address
                    .bind()
                    .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
                (fd, bound, String::new())
            }
        };
        if let (ListenAddress::Unix(path), true) = (address, files_ours) {
            files.paths.push(path.clone());
        }
        let text = format!("listening on {bound}{from}");
        report.entry(Entry::info("listening", text).with([("address", bound.to_string().into())]));
        files.sockets.push((handed_as, fd.try_clone()?));
        fds.push(fd);
        names.push(name);
    }
    Ok((fds, names.join(":"), files))
}

/// The socket `handover` holds as `name`, if it serves `address`.
fn adopt(
    handover: &mut Handover,
    name: &str,
    address: &ListenAddress,
) -> Result<(OwnedFd, ListenAddress), CannotAdopt> {
    match handover.take(name) {
        Some((fd, bound)) if serves(address, &bound) => Ok((fd, bound)),
        Some((_, bound)) => Err(CannotAdopt(format!(
            "the old primary's {name} is {bound}, not --listen {address}"
        ))),
        None => Err(CannotAdopt(format!(
            "the old primary handed over no {name} (for --listen {address})"
        ))),
    }
}

/// Whether a socket bound to `bound` serves `--listen address` (port 0: the
/// one the old primary was given).
pub(crate) fn serves(address: &ListenAddress, bound: &ListenAddress) -> bool {
    match (address, bound) {
        (ListenAddress::Tcp(address), ListenAddress::Tcp(bound)) => {
            address.ip() == bound.ip() && (address.port() == 0 || address.port() == bound.port())
        }
        (address, bound) => address == bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_socket_serves_the_address_it_is_bound_to() {
        let parse = |text: &str| text.parse::<ListenAddress>().expect("an address");
        let bound = parse("127.0.0.1:8080");
        assert!(serves(&parse("127.0.0.1:8080"), &bound));
        assert!(serves(&parse("127.0.0.1:0"), &bound));
        assert!(!serves(&parse("127.0.0.1:8081"), &bound));
        assert!(!serves(&parse("[::1]:8080"), &bound));
        assert!(serves(
            &parse("unix:/run/a.sock"),
            &parse("unix:/run/a.sock")
        ));
        assert!(!serves(
            &parse("unix:/run/b.sock"),
            &parse("unix:/run/a.sock")
        ));
        assert!(!serves(&parse("unix:/run/a.sock"), &bound));
    }
}
