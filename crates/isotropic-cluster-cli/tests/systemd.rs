//! The primary as a systemd service: what a fake `NOTIFY_SOCKET` (a
//! datagram socket bound by the test, by path or abstract name) receives
//! from the CLI: `READY=1` once the pool is ready, `RELOADING=1` (with
//! `MONOTONIC_USEC=`) and `READY=1` around each reload, `STOPPING=1` at the
//! shutdown, `STATUS=` lines, and `WATCHDOG=1` when `WATCHDOG_USEC` is set.
#![cfg(target_os = "linux")]

use std::process::Stdio;

mod common;
use common::service_manager::{Manager, field, statuses};
use common::*;

/// A worker that prints `up` and exits 0 on SIGTERM; generation 3 of it
/// exits 1 at once (a release that fails).
const WORKER: &str = r#"
import os, signal, sys
if os.environ["ISOTROPIC_CLUSTER_GENERATION"] == "3":
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("up", flush=True)
signal.pause()
"#;

/// The CLI running 2 [`WORKER`]s (a new one proven after 1 s: the default
/// minimum uptime, longer than a failing Python's start) with `NOTIFY_SOCKET=notify` and `env`;
/// its stderr read on (and kept, for a failure's message).
fn start(notify: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = command(&["run", "--workers", "2", "--", "python3", "-c", WORKER]);
    command
        .env("NOTIFY_SOCKET", notify)
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    let (child, mut stderr) = spawn(command);
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    child
}

/// A reload (SIGHUP): `RELOADING=1` with the monotonic clock first, in the
/// first datagram; `READY=1` in the last; the datagrams.
async fn reload(cli: &tokio::process::Child, manager: &Manager) -> Vec<String> {
    send(cli, rustix::process::Signal::HUP);
    let seen = manager.until("READY=1").await;
    let first = &seen[0];
    assert_eq!(field(first, "RELOADING"), Some("1"), "{seen:?}");
    let usec = field(first, "MONOTONIC_USEC").expect("MONOTONIC_USEC with RELOADING=1");
    assert!(usec.parse::<u64>().is_ok_and(|usec| usec > 0), "{first}");
    assert!(
        !seen[1..].iter().any(|d| d.contains("RELOADING=1")),
        "{seen:?}"
    );
    seen
}

/// SIGTERM: `STOPPING=1` (no `READY=1` in between), then a clean exit.
async fn stop(cli: &mut tokio::process::Child, manager: &Manager) {
    terminate(cli);
    let stopping = manager.until("STOPPING=1").await;
    assert!(
        !stopping.iter().any(|d| d.contains("READY=1")),
        "{stopping:?}"
    );
    assert_eq!(exit_code(cli).await, Some(0));
}

#[tokio::test]
async fn the_service_manager_hears_ready_reloading_ready_and_stopping_in_order() {
    let (manager, address) = Manager::at_path("order");
    let mut cli = start(&address, &[]);
    let started = manager.until("READY=1").await;
    // Ready once both workers are, not before.
    let ready = started.last().expect("the READY=1 datagram");
    assert_eq!(
        field(ready, "STATUS"),
        Some("2 of 2 workers ready"),
        "{started:?}"
    );
    let before = &started[..started.len() - 1];
    assert!(
        !statuses(before).contains(&"2 of 2 workers ready"),
        "{started:?}"
    );

    // A rollout: its progress, then ready again.
    let rolled = reload(&cli, &manager).await;
    assert!(
        statuses(&rolled)
            .iter()
            .any(|s| s.starts_with("rolling out generation 2: ")),
        "{rolled:?}"
    );
    let end = rolled.last().expect("READY=1");
    assert_eq!(
        field(end, "STATUS"),
        Some("2 of 2 workers ready"),
        "{rolled:?}"
    );

    // A release that fails: rolled back, and ready again.
    let failed = reload(&cli, &manager).await;
    let end = failed.last().expect("READY=1");
    let status = field(end, "STATUS").expect("a status");
    assert!(
        status
            .starts_with("2 of 2 workers ready; rolled back: generation 2 serves again, 3 failed"),
        "{failed:?}"
    );

    stop(&mut cli, &manager).await;
}

#[tokio::test]
async fn an_abstract_socket_hears_ready_and_watchdog_pings_at_half_the_timeout() {
    let (manager, address) = Manager::abstract_name("watchdog");
    // A watchdog of 200 ms: a ping every 100 ms.
    let mut cli = start(&address, &[("WATCHDOG_USEC", "200000")]);
    manager.until("READY=1").await;
    manager.until("WATCHDOG=1").await;
    manager.until("WATCHDOG=1").await;
    terminate(&cli);
    manager.until("STOPPING=1").await;
    assert_eq!(exit_code(&mut cli).await, Some(0));
}

#[tokio::test]
async fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let (manager, address) = Manager::at_path("other-watchdog");
    // Meant for pid 1: a ping every 10 ms if it were ours.
    let mut cli = start(
        &address,
        &[("WATCHDOG_USEC", "20000"), ("WATCHDOG_PID", "1")],
    );
    let mut seen = manager.until("READY=1").await;
    // (A rollout lasts at least the minimum uptime of each new worker.)
    seen.extend(reload(&cli, &manager).await);
    terminate(&cli);
    seen.extend(manager.until("STOPPING=1").await);
    assert!(!seen.iter().any(|d| d.contains("WATCHDOG=1")), "{seen:?}");
    assert_eq!(exit_code(&mut cli).await, Some(0));
}

/// A worker that prints `up` and exits 0 on SIGTERM, whatever its
/// generation.
const STEADY: &str = r#"
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("up", flush=True)
signal.pause()
"#;

/// The CLI running two pools of [`STEADY`] workers, `web` × 2 (a new worker
/// proven after 100 ms) and `jobs` × 1 (after 3 s: its rollout ends well
/// after web's), with `NOTIFY_SOCKET=notify`; the config's directory.
fn start_two_pools(test: &str, notify: &str) -> (tokio::process::Child, Scratch) {
    let scratch = Scratch::new(test);
    let config = scratch.path("cluster.toml");
    let program = serde_json::to_string(STEADY).expect("a TOML string");
    let pool = |name: &str, workers: u32, min_uptime: &str| {
        format!(
            "[pools.{name}]\ncommand = [\"python3\", \"-c\", {program}]\n\
             workers = {workers}\nmin-uptime = \"{min_uptime}\"\n"
        )
    };
    let text = pool("web", 2, "100ms") + &pool("jobs", 1, "3s");
    std::fs::write(&config, text).expect("the config");
    let mut command = command(&["run", "--config", config.to_str().expect("UTF-8")]);
    command.env("NOTIFY_SOCKET", notify).stdout(Stdio::null());
    let (child, mut stderr) = spawn(command);
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    (child, scratch)
}

#[tokio::test]
async fn with_two_pools_ready_waits_for_both_and_a_reload_for_both_rollouts() {
    let (manager, address) = Manager::at_path("two-pools");
    let (mut cli, _scratch) = start_two_pools("config-two-pools", &address);
    // Ready once the workers of both pools are, not before.
    let started = manager.until("READY=1").await;
    let ready = started.last().expect("the READY=1 datagram");
    assert_eq!(
        field(ready, "STATUS"),
        Some("3 of 3 workers ready"),
        "{started:?}"
    );
    let before = &started[..started.len() - 1];
    assert!(!before.iter().any(|d| d.contains("READY=1")), "{started:?}");

    // A reload of both: ready again once jobs' rollout ended too (its new
    // worker proven after 3 s), not at the end of web's.
    let asked = std::time::Instant::now();
    let rolled = reload(&cli, &manager).await;
    let took = asked.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(3),
        "READY=1 after {took:?}: {rolled:?}"
    );
    assert_eq!(
        field(rolled.last().expect("READY=1"), "STATUS"),
        Some("3 of 3 workers ready"),
        "{rolled:?}"
    );

    stop(&mut cli, &manager).await;
}

#[tokio::test]
async fn a_reload_asked_during_a_reload_still_ends_with_ready() {
    let (manager, address) = Manager::at_path("reload-twice");
    let (mut cli, _scratch) = start_two_pools("config-reload-twice", &address);
    manager.until("READY=1").await;
    send(&cli, rustix::process::Signal::HUP);
    manager.until("RELOADING=1").await;
    // (Within jobs' rollout of at least 3 s: it restarts the rollouts.)
    send(&cli, rustix::process::Signal::HUP);
    let rolled = manager.until("READY=1").await;
    assert!(
        !rolled.iter().any(|d| d.contains("RELOADING=1")),
        "one reload as the service manager sees it: {rolled:?}"
    );
    stop(&mut cli, &manager).await;
}

#[tokio::test]
async fn a_pool_that_ended_alone_is_no_stopping_of_the_service() {
    let (manager, address) = Manager::at_path("pool-ended");
    let scratch = Scratch::new("config-pool-ended");
    let config = scratch.path("cluster.toml");
    let program = serde_json::to_string(STEADY).expect("a TOML string");
    // `once`'s worker exits 0 at once and is not replaced: its pool ends,
    // web serves on.
    let text = format!(
        "min-uptime = \"100ms\"\n\
         [pools.web]\ncommand = [\"python3\", \"-c\", {program}]\nworkers = 1\n\
         [pools.once]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nworkers = 1\nrestart = \"never\"\n"
    );
    std::fs::write(&config, text).expect("the config");
    let mut command = command(&["run", "--config", config.to_str().expect("UTF-8")]);
    command.env("NOTIFY_SOCKET", &address).stdout(Stdio::null());
    let (mut cli, mut stderr) = spawn(command);
    let mut seen = manager.until("READY=1").await;
    until_all(
        &mut stderr,
        &["web worker 1 ready", "once worker 1 exited with code 0"],
    )
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    // The service still reloads; it heard no STOPPING=1 before SIGTERM.
    seen.extend(reload(&cli, &manager).await);
    terminate(&cli);
    seen.extend(manager.until("STOPPING=1").await);
    let stopping = seen.iter().position(|d| d.contains("STOPPING=1"));
    assert_eq!(stopping, Some(seen.len() - 1), "{seen:?}");
    assert_eq!(exit_code(&mut cli).await, Some(0));
}
