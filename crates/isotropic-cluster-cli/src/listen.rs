//! `--listen`: the primary binds every address once, and each worker starts
//! through the hidden `__exec-with-sockets` command, which places the
//! sockets at fd 3… (systemd's socket activation) and becomes the command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryBuilder};

use crate::args::{EXEC_WITH_SOCKETS, Plan};
use crate::exit::ExitCode;
use crate::report::Report;

/// The Unix socket files the CLI bound: removed when dropped (at exit), so
/// that the next start finds the path free.
#[derive(Debug, Default)]
pub(crate) struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A builder whose workers start through the shim with the bound sockets,
/// and the socket files to remove at exit.
pub(crate) fn through_shim(
    plan: &Plan,
    report: &Report,
) -> anyhow::Result<(PrimaryBuilder, SocketFiles)> {
    // Find the command now, so that a missing one is an error here, as
    // without --listen.
    let program = executable(&plan.program)?;
    let (fds, names, files) = bind(&plan.listen, report)?;
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

/// Binds every `--listen` address: the sockets, their LISTEN_FDNAMES, and
/// the socket files made.
fn bind(
    addresses: &[String],
    report: &Report,
) -> anyhow::Result<(Vec<std::os::fd::OwnedFd>, String, SocketFiles)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    let mut files = SocketFiles::default();
    for (i, text) in addresses.iter().enumerate() {
        let address: ListenAddress = text.parse()?;
        if let ListenAddress::Unix(path) = &address {
            clear_stale(path);
        }
        let (fd, bound) = address
            .bind()
            .map_err(|e| anyhow::anyhow!("cannot listen on {text}: {e}"))?;
        if let ListenAddress::Unix(path) = &address {
            files.0.push(path.clone());
        }
        report.line("listening", None, &format!("listening on {bound}"));
        fds.push(fd);
        names.push(format!("listen{i}"));
    }
    Ok((fds, names.join(":"), files))
}
