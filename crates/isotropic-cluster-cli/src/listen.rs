//! `--listen`: the primary binds every address once, and each worker starts
//! through the hidden `__exec-with-sockets` command, which places the
//! sockets at fd 3… (systemd's socket activation) and becomes the command.

use std::ffi::OsString;

use isotropic_cluster::ListenAddress;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryBuilder};

use crate::args::{EXEC_WITH_SOCKETS, Plan};
use crate::exit::ExitCode;
use crate::report::Report;

/// A builder whose workers start through the shim with the bound sockets.
pub(crate) fn through_shim(plan: &Plan, report: &Report) -> anyhow::Result<PrimaryBuilder> {
    // Find the command now, so that a missing one is an error here, as
    // without --listen.
    let program = executable(&plan.program)?;
    let (fds, names) = bind(&plan.listen, report)?;
    Ok(ClusterPrimary::builder()
        .program(std::env::current_exe()?)
        .arg(EXEC_WITH_SOCKETS)
        .arg(names)
        .arg("--")
        .arg(program)
        .args(&plan.args)
        .pass_fds(fds))
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

/// Binds every `--listen` address; the sockets and their LISTEN_FDNAMES.
fn bind(
    addresses: &[String],
    report: &Report,
) -> anyhow::Result<(Vec<std::os::fd::OwnedFd>, String)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    for (i, text) in addresses.iter().enumerate() {
        let address: ListenAddress = text.parse()?;
        let (fd, bound) = address
            .bind()
            .map_err(|e| anyhow::anyhow!("cannot listen on {text}: {e}"))?;
        report.line("listening", None, &format!("listening on {bound}"));
        fds.push(fd);
        names.push(format!("listen{i}"));
    }
    Ok((fds, names.join(":")))
}
