//! The control socket (see `docs/control.md`): the running primary answers
//! `status`, `scale`, `reload`, `stop` and `logs` on a Unix socket only its
//! user can reach, in JSON lines.

mod client;
mod logs;
mod path;
mod protocol;
mod server;
mod table;

pub(crate) use client::{logs, reload, scale, status, stop};
pub(crate) use logs::LogTap;
pub(crate) use path::{default_path, prepare_default_dir};
pub(crate) use server::{Command, ControlSocket, Refusal, Served};

/// The name of `run`'s one pool.
pub(crate) const DEFAULT_POOL: &str = "default";
