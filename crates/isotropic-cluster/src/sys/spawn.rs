//! Starting a worker: in its cgroup, registered with the orphan guard, from
//! a thread that lives as long as this process.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};

use super::cgroup::WorkerCgroup;
use super::child::{die_with_parent, prepare_child};

/// What the spawner thread runs.
type Job = Box<dyn FnOnce() + Send>;

/// Starts worker `id` as `command`, its channel `fd` (if any) and `passed`
/// the only fds it inherits (see [`prepare_child`]); returns it, and its
/// cgroup if it runs in one (to be dropped once it is reaped: that kills
/// what is left in it).
///
/// It is forked from a thread that lives as long as this process, so that
/// it can ask for SIGKILL when its parent dies (`PR_SET_PDEATHSIG` fires when
/// the parent *thread* ends): the second line of defence, should the orphan
/// guard die with this process. Its group is registered with the guard
/// once started. When the start fails, its child may have registered its
/// group before its `exec` failed: the guard is told to drop what is no
/// longer a live worker's.
///
/// # Errors
///
/// When the orphan guard cannot be started, and the error of
/// [`tokio::process::Command::spawn`].
pub(crate) fn spawn_worker(
    mut command: tokio::process::Command,
    fd: Option<RawFd>,
    passed: Vec<RawFd>,
    id: u64,
) -> io::Result<(tokio::process::Child, Option<WorkerCgroup>)> {
    let guard = super::orphan_guard()?;
    let cgroup = prepare_child(&mut command, fd, passed, guard, id);
    // Held until the child is recorded: an orphan reaper never takes it.
    let mut ours = super::own_children();
    let spawned = match spawner() {
        Some(jobs) => {
            die_with_parent(&mut command);
            let runtime = tokio::runtime::Handle::current();
            let (reply, spawned) = mpsc::sync_channel(1);
            let job = Box::new(move || {
                // The child is the caller's runtime's to reap.
                let _runtime = runtime.enter();
                let _ = reply.send(command.spawn());
            });
            let sent = jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(job);
            sent.ok()
                .and_then(|()| spawned.recv().ok())
                .unwrap_or_else(|| Err(io::Error::other("the spawner thread failed")))
        }
        None => command.spawn(),
    };
    let child = match spawned {
        Ok(child) => child,
        Err(error) => {
            super::guard::sweep_guard();
            return Err(error);
        }
    };
    let pid = child.id().unwrap_or_default();
    ours.insert(pid);
    drop(ours);
    super::guard::register_worker(pid);
    Ok((child, cgroup.and_then(WorkerCgroup::spawned)))
}

/// The spawner thread's queue, the thread started on first use; none if it
/// cannot be started (workers are then forked from the caller's thread,
/// without the parent-death signal).
fn spawner() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (jobs, next) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("cluster-spawner".into())
                .spawn(move || {
                    // Never ends: a panic in a job must not end the thread
                    // (that would SIGKILL every worker it started).
                    while let Ok(job) = next.recv() {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            match started {
                Ok(_) => Some(Mutex::new(jobs)),
                Err(error) => {
                    tracing::warn!(%error, "no spawner thread: workers do not get SIGKILL from the kernel when the primary dies");
                    None
                }
            }
        })
        .as_ref()
}
