//! A program file held open, so that the release it belongs to can still
//! be started after a deploy replaced the file on disk.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags};

/// Which file a path named: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

/// A program file, open (`O_PATH`: it is neither read nor written).
#[derive(Debug)]
pub(crate) struct HeldFile {
    fd: OwnedFd,
    id: FileId,
}

impl HeldFile {
    /// Opens the file `path` names now (following symbolic links).
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let stat = rustix::fs::fstat(&fd)?;
        let id = FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        };
        Ok(Self { fd, id })
    }

    /// Whether `path` still names this file.
    pub(crate) fn is_at(&self, path: &Path) -> bool {
        rustix::fs::stat(path).is_ok_and(|stat| {
            FileId {
                dev: stat.st_dev,
                ino: stat.st_ino,
            } == self.id
        })
    }

    /// A path by which any process of this user reaches the held file for
    /// as long as this process holds it (a worker executes it after its
    /// fork, or its interpreter reads it, with no descriptor to inherit):
    /// under this process's number as `/proc` knows it (`/proc` may be
    /// another PID namespace's).
    pub(crate) fn proc_path(&self) -> PathBuf {
        static SELF: OnceLock<PathBuf> = OnceLock::new();
        let own = SELF.get_or_init(|| {
            let seen = std::fs::read_link("/proc/self").ok();
            let pid = seen.unwrap_or_else(|| std::process::id().to_string().into());
            Path::new("/proc").join(pid)
        });
        own.join("fd").join(self.fd.as_raw_fd().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_file_is_reached_after_its_path_names_another() {
        let dir = std::env::temp_dir().join(format!("held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("program");
        std::fs::write(&path, "old").expect("the old file");
        let held = HeldFile::open(&path).expect("open");
        assert!(held.is_at(&path));
        let new = dir.join("program.new");
        std::fs::write(&new, "new").expect("the new file");
        std::fs::rename(&new, &path).expect("the deploy");
        assert!(!held.is_at(&path), "the path names the new file");
        assert_eq!(
            std::fs::read_to_string(held.proc_path()).ok().as_deref(),
            Some("old")
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
