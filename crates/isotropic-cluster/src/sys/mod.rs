//! The one door to the operating system: every platform call and every `unsafe`
//! block of the crate lives here, each with a `// SAFETY:` comment.
//!
//! Linux is the supported platform (`close_range`, `/proc`).
#![allow(unsafe_code)]

mod cgroup;
mod child;
mod fds;
mod guard;
mod handover;
mod memfd;
mod notify;
mod process;
mod procfs;
mod program;
mod reap;
mod scm;
mod socket;
mod spawn;

pub(crate) use cgroup::{WorkerCgroup, cgroup_processes, memory_current};
pub(crate) use fds::{PASS_FDS, adopt_inherited_socket, place_listen_fds};
pub(crate) use guard::forget_group;
use guard::orphan_guard;
pub(crate) use handover::{copy_socket, place_in_child, set_env_if_single_threaded};
pub(crate) use memfd::{Segment, map_sealed, map_segment, new_segment, sealed_memfd};
pub(crate) use notify::{notify_socket, process_group, recv_credentials, send_to_abstract};
pub(crate) use process::{parent_pid, remove_env_if_single_threaded, send_signal};
pub(crate) use procfs::{holds_listening_socket, tree_usage};
pub(crate) use program::HeldFile;
pub(crate) use reap::{become_subreaper, own_children, reap_orphans};
pub(crate) use scm::{recv_with_fds, send_with_fds};
pub(crate) use socket::{
    Setup, as_user, channel_pair, local_tcp_address, local_unix_path, set_nonblocking,
    tcp_listener, unix_listener,
};
pub(crate) use spawn::spawn_worker;
