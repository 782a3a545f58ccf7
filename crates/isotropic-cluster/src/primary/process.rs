//! Starting real worker processes: the command line, the channel, the watch.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::WorkerHandle;
use super::config::{Config, WorkerChannel, WorkerStdio};
use super::input::Input;
use super::notify::NOTIFY_SOCKET;

/// How often a notify worker is to send `WATCHDOG=1`, as systemd names it.
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
use super::spawner::{Spawn, Spawned, Start};
use super::watch::Watch;
use crate::channel;
use crate::error::Error;
use crate::protocol::{AnyCodec, FrameCodec, NodeCodec, Wire};
use crate::shared::Sharing;
use crate::{role, sys};

/// Starts each worker as a process of `config`'s command.
#[derive(Debug)]
pub(crate) struct ProcessSpawner {
    config: Arc<Config>,
}

impl ProcessSpawner {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self { config }
    }

    /// The command of worker `start`, its end of the channel being `theirs`.
    fn command(&self, start: Start<'_>, theirs: &OwnedFd) -> tokio::process::Command {
        let config = &self.config;
        let program = start.release.exec_path();
        let mut command = match &config.launcher {
            Some((launcher, args)) => {
                let mut command = tokio::process::Command::new(launcher);
                command.args(args).arg(&*program);
                command
            }
            None => {
                let mut command = tokio::process::Command::new(&*program);
                // (Named as usual when run from the held file.)
                command.as_std_mut().arg0(start.release.program());
                command
            }
        };
        match &config.args {
            Some(args) => {
                command.args(args);
            }
            None => {
                let mut own = std::env::args_os();
                if let Some(arg0) = own.next()
                    && config.launcher.is_none()
                {
                    command.as_std_mut().arg0(arg0);
                }
                command.args(own);
            }
        }
        if config.env_clear {
            command.env_clear();
        }
        // The primary's own supervisor's socket and watchdog are not the
        // workers' to use.
        for inherited in [NOTIFY_SOCKET, WATCHDOG_USEC, "WATCHDOG_PID"] {
            if !config.envs.iter().any(|(key, _)| key == inherited) {
                command.env_remove(inherited);
            }
        }
        for (key, value) in &config.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(address) = &config.notify_socket {
            command.env(NOTIFY_SOCKET, address);
            // As systemd tells a service how often to send `WATCHDOG=1`.
            if let Some(period) = config.watchdog {
                command.env(WATCHDOG_USEC, period.as_micros().to_string());
            }
        }
        if let Some(dir) = &config.current_dir {
            command.current_dir(dir);
        }
        if let Some(gid) = config.gid {
            command.gid(gid);
        }
        if let Some(uid) = config.uid {
            command.uid(uid);
        }
        let stdio = |mode: WorkerStdio| match mode {
            WorkerStdio::Inherit => Stdio::inherit(),
            WorkerStdio::Null => Stdio::null(),
            WorkerStdio::Piped => Stdio::piped(),
        };
        command
            .stdin(Stdio::null())
            .stdout(stdio(config.stdout))
            .stderr(stdio(config.stderr))
            .kill_on_drop(true);
        match config.channel {
            WorkerChannel::Frames => command
                .env(role::WORKER_ID, start.id.to_string())
                .env(role::CHANNEL_FD, theirs.as_raw_fd().to_string())
                .env(role::PRIMARY_PID, std::process::id().to_string()),
            WorkerChannel::Node => command
                .env("NODE_CHANNEL_FD", theirs.as_raw_fd().to_string())
                .env("NODE_CHANNEL_SERIALIZATION_MODE", "json"),
            WorkerChannel::None => &mut command,
        };
        command
    }
}

impl Spawn for ProcessSpawner {
    fn spawn(&self, start: Start<'_>, inputs: mpsc::Sender<Input>) -> Result<Spawned, Error> {
        let config = &self.config;
        let (id, slot) = (start.id, start.slot);
        let spawn_error = |source: std::io::Error| Error::Spawn {
            program: start.release.program().to_owned(),
            source: source.into(),
        };
        let (ours, theirs) = sys::channel_pair().map_err(spawn_error)?;
        let mut command = self.command(start, &theirs);
        command
            .env(role::SLOT, slot.to_string())
            .env("NODE_APP_INSTANCE", slot.to_string())
            .env(role::GENERATION, start.release.generation().to_string());
        if let Wire::Frames(codec) = config.wire() {
            command.env(role::CODEC, codec.name());
        }
        let with_channel = config.channel != WorkerChannel::None;
        let inherited = with_channel.then(|| theirs.as_raw_fd());
        let passed: Vec<i32> = config.pass_fds.iter().map(AsRawFd::as_raw_fd).collect();
        if !passed.is_empty() {
            let list: Vec<String> = passed.iter().map(ToString::to_string).collect();
            command.env(sys::PASS_FDS, list.join(","));
        }
        let (child, cgroup) =
            sys::spawn_worker(command, inherited, passed, id.get()).map_err(spawn_error)?;
        let pid = child.id().unwrap_or_default();

        let (read, outbox) = channel::open(ours, config.queue, Some(id)).map_err(spawn_error)?;
        if config.channel == WorkerChannel::Frames {
            // The primary's hello: the first frame, queued before anything else.
            outbox.hello(false, true, false, config.codec);
        }
        let worker = WorkerHandle::new(
            (id, slot, start.release.generation()),
            pid,
            outbox,
            config.sizes(),
            config.request_timeout,
            config.wire(),
            start.requests.clone(),
        );
        let codec = match config.wire() {
            Wire::Frames(codec) => {
                AnyCodec::Frames(FrameCodec::new(config.max_frame_size).with_codec(codec))
            }
            Wire::NodeJson => AnyCodec::Node(NodeCodec::new(config.max_frame_size)),
        };
        // Without a channel there is nothing to read (and no end of file to
        // wait for after an exit).
        let channel = if with_channel {
            let sharing = match codec {
                AnyCodec::Frames(_) => Sharing::Lender(worker.lender().clone()),
                AnyCodec::Node(_) => Sharing::None,
            };
            Ok((read, codec, sharing))
        } else {
            Err(theirs)
        };
        let traffic = worker.outbox().traffic().clone();
        let cgroup_dir = cgroup.as_ref().map(|cgroup| cgroup.path().to_owned());
        let signals = Watch::start(
            (id, slot, traffic),
            child,
            cgroup,
            channel,
            inputs,
            config.output.clone(),
        );
        Ok(Spawned {
            worker,
            signals,
            cgroup: cgroup_dir,
        })
    }
}
