//! Workers in cgroups of their own (cgroup v2), where this process may make
//! them: `<our cgroup>/isotropic-cluster-<pid>-<start time>[-<n>]/worker-<id>-<n>`.
//! Killing a worker's cgroup (`cgroup.kill`) ends every process it started,
//! even one that left its process group (`setsid`). Where cgroups cannot be
//! made (no cgroup v2 hierarchy, not writable, no delegation), workers run
//! without, and only their process group is ended.
//!
//! Only cgroups this process made are ever killed or removed: a name that
//! exists already (another PID namespace's process with our pid, a dead
//! primary's leftover) is never adopted; the next one is tried.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};

/// The cgroup of this process's workers: one per process, shared by every
/// primary, made on first use, removed at a clean exit (see [`base`]).
#[derive(Debug)]
pub(super) struct Base {
    path: PathBuf,
    /// The directory of the base cgroup.
    dir: OwnedFd,
    /// The directory of our own cgroup, which holds it.
    parent: OwnedFd,
    /// The base's name in `parent`.
    name: CString,
}

/// How many names the base cgroup tries before it gives up.
const NAMES: u32 = 64;

/// The base cgroup, made on first use.
static BASE: OnceLock<Option<Base>> = OnceLock::new();

/// The base cgroup, if this process may put its workers in cgroups. It is
/// removed when this process exits (`exit`, a return from `main`) with its
/// workers gone, else by the orphan guard: as PID 1 of a PID namespace, the
/// guard dies with this process.
pub(super) fn base() -> Option<&'static Base> {
    BASE.get_or_init(|| match Base::make() {
        Ok(base) => {
            tracing::debug!(path = %base.path.display(), "workers run in cgroups of their own");
            // SAFETY: registers a plain function, which touches only the
            // base's fds (open for the process's lifetime).
            if unsafe { libc::atexit(remove_at_exit) } != 0 {
                tracing::debug!("the base cgroup is left to the orphan guard to remove");
            }
            Some(base)
        }
        Err(error) => {
            tracing::debug!(%error, "no cgroups for workers: only their process groups are ended");
            None
        }
    })
    .as_ref()
}

impl Base {
    fn make() -> io::Result<Self> {
        let unavailable = || io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy");
        let ours = own_cgroup(
            &std::fs::read_to_string("/proc/self/mountinfo")?,
            &std::fs::read_to_string("/proc/self/cgroup")?,
        )
        .ok_or_else(unavailable)?;
        let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent = rustix::fs::open(&ours, directory, Mode::empty())?;
        // Moving a process between two cgroups takes write access to the
        // `cgroup.procs` of the cgroup holding both: ours.
        rustix::fs::openat(
            &parent,
            c"cgroup.procs",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let name = Self::make_unique(&parent)?;
        let dir = rustix::fs::openat(&parent, name.as_c_str(), directory, Mode::empty())?;
        // `cgroup.kill` came with Linux 5.14: without it, cgroups are no use.
        let kill = OFlags::WRONLY | OFlags::CLOEXEC;
        if let Err(error) = rustix::fs::openat(&dir, c"cgroup.kill", kill, Mode::empty()) {
            let _ = rustix::fs::unlinkat(&parent, name.as_c_str(), AtFlags::REMOVEDIR);
            return Err(error.into());
        }
        // Memory accounting per worker (`memory.current`), where our cgroup
        // hands the controller down; without it, a worker's memory is read
        // from `/proc` instead.
        if let Ok(control) =
            rustix::fs::openat(&dir, c"cgroup.subtree_control", kill, Mode::empty())
        {
            let _ = rustix::io::write(&control, b"+memory");
        }
        let path = ours.join(name.to_string_lossy().as_ref());
        Ok(Self {
            path,
            dir,
            parent,
            name,
        })
    }

    /// Makes a directory in `parent` under a name nobody has taken; returns
    /// its name. Pids repeat across PID namespaces, and a start time may too:
    /// the name that exists already is someone else's.
    fn make_unique(parent: &OwnedFd) -> io::Result<CString> {
        let stem = format!(
            "isotropic-cluster-{}-{}",
            std::process::id(),
            super::procfs::start_time(0).unwrap_or(0)
        );
        for n in 0..NAMES {
            let name = if n == 0 {
                CString::new(stem.as_str())?
            } else {
                CString::new(format!("{stem}-{n}"))?
            };
            match rustix::fs::mkdirat(parent, name.as_c_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => return Ok(name),
                Err(rustix::io::Errno::EXIST) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every name of a base cgroup is taken",
        ))
    }

    /// The base as the orphan guard (or the exit) sees it.
    fn view(&self) -> GuardCgroup<'_> {
        GuardCgroup::new(self.dir.as_fd(), self.parent.as_fd(), &self.name)
    }

    /// The fds the orphan guard keeps: the base's directory, then ours.
    pub(super) fn fds(&self) -> [RawFd; 2] {
        [self.dir.as_raw_fd(), self.parent.as_raw_fd()]
    }

    /// The base's name in our cgroup (for the guard, which removes it).
    pub(super) fn name(&self) -> &CStr {
        &self.name
    }
}

/// Removes the base cgroup, and its workers' cgroups, if they are empty.
extern "C" fn remove_at_exit() {
    if let Some(Some(base)) = BASE.get() {
        base.view().remove();
    }
}

/// The directory of this process's cgroup: the cgroup v2 mount (from
/// `mountinfo`) that holds the path of the `0::` line of `cgroup`.
fn own_cgroup(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        let (root, point) = (fields.next()?, fields.next()?);
        let inside = path.strip_prefix(root.trim_end_matches('/'))?;
        if !(inside.is_empty() || inside.starts_with('/')) {
            return None;
        }
        Some(Path::new(point).join(inside.trim_start_matches('/')))
    })
}

/// The cgroup of one worker, made before it is spawned; it joins it between
/// fork and exec ([`prepare_child`](super::child::prepare_child)). Dropping it kills
/// whatever runs in it, and removes it once empty.
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    path: PathBuf,
    /// Its `cgroup.procs`, opened for the child until it is spawned.
    procs: Option<OwnedFd>,
}

impl WorkerCgroup {
    /// A new cgroup for worker `id`, if workers run in cgroups.
    pub(super) fn make(id: u64) -> Option<Self> {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let base = base()?;
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("worker-{id}-{made}");
        let path = base.path.join(&name);
        if let Err(error) =
            rustix::fs::mkdirat(&base.dir, name.as_str(), Mode::from_raw_mode(0o755))
        {
            // Not ours, if it exists: left alone.
            tracing::debug!(%error, path = %path.display(), "no cgroup for a worker");
            return None;
        }
        let procs = format!("{name}/cgroup.procs");
        match rustix::fs::openat(
            &base.dir,
            procs.as_str(),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(procs) => Some(Self {
                path,
                procs: Some(procs),
            }),
            Err(error) => {
                tracing::debug!(%error, path = %path.display(), "no cgroup for a worker");
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    /// Its directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` the child writes to, to join it.
    pub(super) fn procs(&self) -> Option<BorrowedFd<'_>> {
        self.procs.as_ref().map(AsFd::as_fd)
    }

    /// SIGKILLs every process in the cgroup.
    pub(crate) fn kill(&self) {
        if let Err(error) = std::fs::write(self.path.join("cgroup.kill"), "1") {
            tracing::warn!(%error, path = %self.path.display(), "cannot kill a worker's cgroup");
        }
    }

    /// The worker is spawned: its cgroup, if it joined it (it has passed
    /// the point where it would). One it could not join (no delegation, an
    /// old kernel after a change of user) is empty: it is removed, and the
    /// worker's process group alone holds what it starts. Whether it joined
    /// is the cgroup's own answer (a cgroup with a process cannot be
    /// removed), not `/proc`'s, which may be another PID namespace's. Kept
    /// when in doubt: killing an empty cgroup harms nothing.
    pub(super) fn spawned(mut self) -> Option<Self> {
        self.procs = None;
        if std::fs::remove_dir(&self.path).is_err() {
            return Some(self);
        }
        tracing::debug!(path = %self.path.display(), "a worker could not join its cgroup");
        // Removed: nothing to kill, nothing to remove.
        self.path = PathBuf::new();
        None
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        // Removed already (see `spawned`).
        if self.path.as_os_str().is_empty() {
            return;
        }
        self.kill();
        remove_when_empty(self.path.clone());
    }
}

/// The memory the processes of the cgroup at `dir` use (`memory.current`,
/// in bytes): `None` where the memory controller is not enabled for it.
pub(crate) fn memory_current(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The processes in the cgroup at `dir` (`cgroup.procs`: pids in our PID
/// namespace).
pub(crate) fn cgroup_processes(dir: &Path) -> Option<Vec<u32>> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    Some(procs.lines().filter_map(|pid| pid.parse().ok()).collect())
}

/// How long a killed worker cgroup may take to empty before its removal is
/// left to the orphan guard (at this process's end).
const EMPTYING: Duration = Duration::from_secs(10);

/// Whether a removal failed because the cgroup still has processes.
fn busy(removed: &io::Result<()>) -> bool {
    matches!(removed, Err(error) if error.raw_os_error() == Some(libc::EBUSY))
}

/// Removes the (killed) cgroup at `path` once its processes have exited: at
/// once if they have, else from a task, retrying with a growing pause.
fn remove_when_empty(path: PathBuf) {
    if !busy(&std::fs::remove_dir(&path)) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut pause = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        while waited < EMPTYING {
            tokio::time::sleep(pause).await;
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(100));
            if !busy(&std::fs::remove_dir(&path)) {
                return;
            }
        }
        tracing::debug!(path = %path.display(), "a killed worker cgroup is still not empty");
    });
}

/// The base cgroup as the orphan guard sees it after the fork (its fds and
/// name, inherited), or this process at its exit. Allocation-free.
#[derive(Debug, Clone, Copy)]
pub(super) struct GuardCgroup<'a> {
    dir: BorrowedFd<'a>,
    parent: BorrowedFd<'a>,
    name: &'a CStr,
}

impl<'a> GuardCgroup<'a> {
    /// The base cgroup whose directory is `dir`, named `name` in `parent`.
    pub(super) fn new(dir: BorrowedFd<'a>, parent: BorrowedFd<'a>, name: &'a CStr) -> Self {
        Self { dir, parent, name }
    }

    /// SIGKILLs every process in the base cgroup and below.
    pub(super) fn kill(self) {
        if let Ok(kill) = rustix::fs::openat(
            self.dir,
            c"cgroup.kill",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&kill, b"1");
        }
    }

    /// Whether any process is left in the base cgroup or below.
    pub(super) fn populated(self) -> bool {
        let Ok(events) = rustix::fs::openat(
            self.dir,
            c"cgroup.events",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let mut text = [0_u8; 256];
        let read = rustix::io::read(&events, &mut text[..]).unwrap_or(0);
        text[..read].windows(11).any(|w| w == b"populated 1")
    }

    /// Removes the workers' cgroups (empty by now), then the base: if the
    /// name is still the base's (once removed, another process may make a
    /// cgroup of that name).
    pub(super) fn remove(self) {
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        // Each pass removes what it read; entries may move as it does.
        for _ in 0..64 {
            let Ok(listing) = rustix::fs::openat(
                self.dir,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                break;
            };
            let mut entries = rustix::fs::RawDir::new(&listing, &mut buffer);
            let mut removed = false;
            while let Some(Ok(entry)) = entries.next() {
                let name = entry.file_name();
                if entry.file_type() == rustix::fs::FileType::Directory
                    && name != c"."
                    && name != c".."
                {
                    removed |= rustix::fs::unlinkat(self.dir, name, AtFlags::REMOVEDIR).is_ok();
                }
            }
            if !removed {
                break;
            }
        }
        let named = rustix::fs::statat(self.parent, self.name, AtFlags::SYMLINK_NOFOLLOW);
        let same = match (rustix::fs::fstat(self.dir), named) {
            (Ok(ours), Ok(named)) => (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino),
            _ => false,
        };
        if same {
            let _ = rustix::fs::unlinkat(self.parent, self.name, AtFlags::REMOVEDIR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn our_cgroup_is_found_under_the_cgroup2_mount() {
        let found = |mountinfo: &str, cgroup: &str| own_cgroup(mountinfo, cgroup);
        assert_eq!(
            found(MOUNTINFO, "4:memory:/x\n0::/\n"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            found(MOUNTINFO, "0::/user.slice/app.service\n"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/app.service"
            ))
        );
        // A mount of a part of the hierarchy (a container's).
        let part = "50 1 0:40 /machine/box /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            found(part, "0::/machine/box/app\n"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(found(part, "0::/machine/boxes\n"), None);
        assert_eq!(found(part, "0::/elsewhere\n"), None);
        // Cgroup v1 only, or no v2 line.
        assert_eq!(
            found(&MOUNTINFO.replace("cgroup2", "tmpfs"), "0::/\n"),
            None
        );
        assert_eq!(found(MOUNTINFO, "4:memory:/x\n"), None);
    }

    #[test]
    fn a_name_taken_is_never_adopted_the_next_one_is_made() {
        let dir = std::env::temp_dir().join(format!("cgroup-names-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("a directory");
        let parent = rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .expect("open");
        let first = Base::make_unique(&parent).expect("a name");
        let first = first.to_str().expect("UTF-8").to_owned();
        // Taken now (as by a process with our pid in another PID namespace).
        std::fs::write(dir.join(&first).join("theirs"), "").expect("write");
        let second = Base::make_unique(&parent).expect("another name");
        assert_eq!(second.to_str(), Ok(format!("{first}-1").as_str()));
        assert!(
            dir.join(&first).join("theirs").exists(),
            "theirs, untouched"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn memory_current_is_read_where_the_controller_is_enabled() {
        let dir = std::env::temp_dir().join(format!("cgroup-memory-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("a directory");
        assert_eq!(memory_current(&dir), None, "no memory controller");
        std::fs::write(dir.join("memory.current"), "7340032\n").expect("write");
        assert_eq!(memory_current(&dir), Some(7_340_032));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// Waits until `done` holds (deadline: 30 s).
    fn wait_until(mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(30), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_worker_cgroup_is_kept_only_if_joined_and_kills_what_runs_in_it_when_dropped() {
        let Some(base) = base() else {
            eprintln!("skipped: no writable cgroup v2 hierarchy here");
            return;
        };
        // A process that did not join: the cgroup is removed, it lives on.
        let mut outside = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let cgroup = WorkerCgroup::make(1).expect("a cgroup");
        let path = cgroup.path.clone();
        assert!(cgroup.spawned().is_none());
        assert!(!path.exists(), "removed");
        assert!(outside.try_wait().expect("try_wait").is_none(), "killed");
        outside.kill().expect("kill");
        outside.wait().expect("reap");
        // One that joined: kept; dropped, what runs in it is killed.
        let cgroup = WorkerCgroup::make(2).expect("a cgroup");
        let procs = cgroup.path.join("cgroup.procs");
        let mut inside = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo 0 > {}; exec sleep 30", procs.display()))
            .spawn()
            .expect("sh");
        let pid = inside.id();
        wait_until(|| std::fs::read_to_string(&procs).is_ok_and(|p| p.contains(&pid.to_string())));
        let cgroup = cgroup.spawned().expect("joined");
        let path = cgroup.path.clone();
        assert_eq!(cgroup_processes(&path), Some(vec![pid]));
        drop(cgroup);
        let status = inside.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // No orphan guard here to remove what is left at exit.
        wait_until(|| !busy(&std::fs::remove_dir(&path)));
        let _ = std::fs::remove_dir(&base.path);
    }
}
