//! Where the control socket is: `--control PATH`, or by default
//! `$XDG_RUNTIME_DIR/isotropic-cluster/control.sock` (without a runtime
//! directory, `/tmp/isotropic-cluster-UID/control.sock`), in a directory
//! only we can enter.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::sys;

/// The socket's file name in its directory.
const FILE: &str = "control.sock";

/// The default control socket of this user.
pub(crate) fn default_path() -> PathBuf {
    default_dir(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        sys::own_uid(),
    )
    .join(FILE)
}

/// The directory of the default socket, from `$XDG_RUNTIME_DIR` (used only
/// if absolute) and our uid.
fn default_dir(runtime_dir: Option<PathBuf>, uid: u32) -> PathBuf {
    match runtime_dir.filter(|dir| dir.is_absolute()) {
        Some(dir) => dir.join("isotropic-cluster"),
        None => PathBuf::from(format!("/tmp/isotropic-cluster-{uid}")),
    }
}

/// Makes the directory of the default socket `path` if missing (mode 0700),
/// and checks that it is ours and closed to others: in `/tmp`, another
/// user could have made it first, to read our socket or put theirs there.
///
/// # Errors
///
/// It cannot be made, or is not a private directory of ours (a symbolic
/// link, another owner, open to the group or others).
pub(crate) fn prepare_default_dir(path: &Path) -> anyhow::Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => anyhow::bail!("cannot make {}: {error}", dir.display()),
    }
    let metadata = std::fs::symlink_metadata(dir)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", dir.display()))?;
    private_to(&metadata, sys::own_uid()).map_err(|why| {
        anyhow::anyhow!("{} {why}: remove it, or pass --control PATH", dir.display())
    })
}

/// Whether `metadata` is of a directory that only `uid` can use; why not.
fn private_to(metadata: &std::fs::Metadata, uid: u32) -> Result<(), String> {
    if !metadata.file_type().is_dir() {
        return Err("is not a directory".to_owned());
    }
    if metadata.uid() != uid {
        return Err(format!(
            "belongs to uid {}, not to us ({uid})",
            metadata.uid()
        ));
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("is open to other users (mode {mode:o})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_under_the_runtime_directory_or_a_directory_of_ours_in_tmp() {
        let under = default_dir(Some(PathBuf::from("/run/user/1000")), 1000);
        assert_eq!(under, Path::new("/run/user/1000/isotropic-cluster"));
        let fallback = Path::new("/tmp/isotropic-cluster-1000");
        assert_eq!(default_dir(None, 1000), fallback);
        assert_eq!(default_dir(Some(PathBuf::from("relative")), 1000), fallback);
    }

    #[test]
    fn only_a_private_directory_of_ours_will_do() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("isotropic-cluster-path-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("mkdir");
        let uid = sys::own_uid();
        let metadata = std::fs::symlink_metadata(&dir).expect("stat");
        assert_eq!(private_to(&metadata, uid), Ok(()));
        let error = private_to(&metadata, uid + 1).expect_err("not ours");
        assert_eq!(
            error,
            format!("belongs to uid {uid}, not to us ({})", uid + 1)
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let metadata = std::fs::symlink_metadata(&dir).expect("stat");
        assert_eq!(
            private_to(&metadata, uid),
            Err("is open to other users (mode 750)".to_owned())
        );
        std::fs::remove_dir(&dir).expect("rmdir");
        let link = std::fs::symlink_metadata("/proc/self/exe").expect("a link");
        assert_eq!(
            private_to(&link, link.uid()),
            Err("is not a directory".to_owned())
        );
    }
}
