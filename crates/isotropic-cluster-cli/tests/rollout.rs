//! Rollouts (SIGHUP) under HTTP load on a shared `--listen` port: the
//! requests that failed, the fewest ready workers and the most live ones,
//! from the CLI's `--json` lines. The workers are Python servers ready once
//! they serve (`--ready notify`), each saying the release it runs.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout};

mod common;
use common::load::{Load, release_server};
use common::pool::Pool;
use common::*;

const WORKERS: usize = 4;
/// Client threads of the load.
const CLIENTS: usize = 3;

/// The CLI running [`WORKERS`] servers of a release, all ready.
struct Deploy {
    child: Child,
    pool: Pool<BufReader<ChildStdout>>,
    address: std::net::SocketAddr,
    /// The file that says which release a server started now runs.
    release: PathBuf,
}

impl Deploy {
    /// Release 1, its workers ready.
    async fn start(test: &str) -> Self {
        let server = release_server();
        Self::launch(test, &[], &["python3", "-c", &server]).await
    }

    /// Release 1 of `program` (its file's release is the file's own
    /// business), run with `flags`, its workers ready.
    async fn launch(test: &str, flags: &[&str], program: &[&str]) -> Self {
        let release = std::env::temp_dir().join(format!(
            "isotropic-cli-rollout-{test}-{}",
            std::process::id()
        ));
        std::fs::write(&release, "1").expect("the release file");
        let workers = WORKERS.to_string();
        let mut args = vec![
            "run",
            "--json",
            "--workers",
            &workers,
            "--listen",
            "127.0.0.1:0",
            "--ready",
            "notify",
        ];
        args.extend(flags);
        args.push("--");
        args.extend(program);
        args.push(release.to_str().expect("a UTF-8 path"));
        let (child, stdout) = spawn_json(command(&args));
        let mut pool = Pool::new(stdout);
        let listening = pool.event("listening").await;
        let address = listening_address(std::slice::from_ref(&listening.message));
        pool.until("every worker ready", |pool| pool.ready().len() == WORKERS)
            .await;
        Self {
            child,
            pool,
            address,
            release,
        }
    }

    /// Puts release `release` in place and asks for a reload (SIGHUP).
    fn reload(&self, release: &str) {
        std::fs::write(&self.release, release).expect("the release file");
        send(&self.child, rustix::process::Signal::HUP);
    }

    /// The release worker `id` said it runs.
    fn release_of(&self, id: u64) -> Option<&str> {
        let lines = self.pool.lines().iter().rev();
        let status = lines.filter(|line| line.is("workerStatus", id));
        status
            .filter_map(|line| line.message.split_once(" status: release "))
            .map(|(_, release)| release)
            .next()
    }

    /// Waits until the workers left have exited and [`WORKERS`] serve.
    async fn settled(&mut self) {
        self.pool
            .until("the pool settled", |pool| {
                pool.live() == pool.ready() && pool.ready().len() == WORKERS
            })
            .await;
    }

    /// Stops the CLI cleanly.
    async fn stop(mut self) {
        stop_cleanly(&mut self.child, self.pool.stdout(), WORKERS).await;
    }
}

impl Drop for Deploy {
    /// (The CLI is killed if it runs still, and its workers with it.)
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.release);
    }
}

/// Release 1 serving under load, answered, and then a reload to release 2
/// asked for, with the fewest ready and the most live tracked from then on;
/// the workers of release 1.
async fn reload_under_load(test: &str) -> (Deploy, Load, BTreeSet<u64>) {
    let mut deploy = Deploy::start(test).await;
    let old = deploy.pool.ready().clone();
    let load = Load::start(deploy.address, CLIENTS);
    eventually("requests are answered", || load.ok() >= 20).await;
    deploy.pool.track_from_now();
    deploy.reload("2");
    (deploy, load, old)
}

/// Issue 15: a surge rollout keeps the pool whole, and no request fails.
#[tokio::test]
async fn a_rolling_restart_of_4_workers_under_load_fails_no_request_and_keeps_4_ready() {
    let (mut deploy, load, old) = reload_under_load("restart").await;
    deploy.pool.event("reloadComplete").await;
    deploy.settled().await;
    let tally = load.stop().await;
    tally.assert_none_failed();
    let pool = &deploy.pool;
    assert_eq!(pool.fewest_ready(), WORKERS, "{}", pool.transcript());
    assert_eq!(pool.most_staying(), WORKERS + 1, "a surge of one");
    assert!(pool.ready().is_disjoint(&old), "{}", pool.transcript());
    for &id in pool.ready() {
        assert_eq!(deploy.release_of(id), Some("2"), "worker {id}");
    }
    deploy.stop().await;
}

/// Issue 15: "a reload requested during a rollout restarts it, never
/// overlaps it": at most one worker over the pool at any time, and at the
/// end only workers started after the second reload's line (the CLI prints
/// it before it asks for the restart), running the newest release.
#[tokio::test]
async fn a_reload_during_a_rollout_restarts_it_for_the_newest_release_without_overlap() {
    let (mut deploy, load, old) = reload_under_load("again").await;
    deploy
        .pool
        .line("the first replacement ready", |line| {
            line.event == "workerReady" && line.worker.is_some_and(|id| !old.contains(&id))
        })
        .await;
    deploy.reload("3");
    // (The first reload's line is read: it came before its first start.)
    deploy.pool.event("reload").await;
    let before: BTreeSet<u64> = (deploy.pool.lines().iter())
        .filter(|line| line.event == "workerFork")
        .filter_map(|line| line.worker)
        .collect();
    deploy.pool.event("reloadComplete").await;
    deploy.settled().await;
    let tally = load.stop().await;
    // (Every criterion checked, so that a failure names all that fail.)
    let pool = &deploy.pool;
    let releases: Vec<_> = pool
        .ready()
        .iter()
        .map(|&id| deploy.release_of(id))
        .collect();
    let criteria = [
        ("no request failed", tally.failed == 0),
        (
            // (Those asked to leave drain meanwhile, as a Deployment's
            // terminating pods do, outside the surge.)
            "the rollouts never overlap: at most one worker over the pool",
            pool.most_staying() <= WORKERS + 1,
        ),
        (
            "never fewer ready than before",
            pool.fewest_ready() == WORKERS,
        ),
        (
            "every worker started after the second reload",
            pool.ready().is_disjoint(&before),
        ),
        (
            "every worker runs the newest release",
            releases.iter().all(|release| *release == Some("3")),
        ),
    ];
    let unmet: Vec<_> = criteria.iter().filter(|(_, met)| !met).collect();
    assert!(
        unmet.is_empty(),
        "unmet: {unmet:?}\nrequests: {tally:?}; most live: {}, most staying: {}, fewest ready: {}; \
         started before the second reload: {before:?}; ready: {:?}, running {releases:?}\n{}",
        pool.most_live(),
        pool.most_staying(),
        pool.fewest_ready(),
        pool.ready(),
        pool.transcript()
    );
    tally.assert_none_failed();
    deploy.stop().await;
}

/// A program file for each release: written beside, then renamed over
/// `path`, as a deploy does.
fn install(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("the new program");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&next, path).expect("the deploy");
}

/// Issue 15: a rollout to `bad` (a program file that replaced the good one
/// on disk, run with `flags`) fails for `reason` and is rolled back while
/// the old generation serves under load: no request fails, the pool never
/// short; then a worker of the old generation that exits is replaced from
/// its own program file, held open since, though the bad one is on disk.
async fn rolled_back(test: &str, flags: &[&str], bad: &str, reason: &str) {
    let dir = std::env::temp_dir().join(format!("isotropic-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let program = dir.join("server");
    install(
        &program,
        &format!("#!/usr/bin/env python3\n{}", release_server()),
    );
    let path = program.to_str().expect("a UTF-8 path");
    let mut deploy = Deploy::launch(test, flags, &[path]).await;
    let old = deploy.pool.ready().clone();
    let load = Load::start(deploy.address, CLIENTS);
    eventually("requests are answered", || load.ok() >= 20).await;
    deploy.pool.track_from_now();
    install(&program, bad);
    send(&deploy.child, rustix::process::Signal::HUP);
    let failed = deploy.pool.event("rolloutFailed").await;
    assert!(failed.message.contains(reason), "{failed:?}");
    deploy.pool.event("rolledBack").await;
    deploy.settled().await;
    let tally = load.stop().await;
    tally.assert_none_failed();
    let pool = &deploy.pool;
    assert_eq!(pool.fewest_ready(), WORKERS, "{}", pool.transcript());
    assert_eq!(pool.ready(), &old, "the old generation serves on");
    // One of them leaves: its replacement runs release 1's program.
    let leaving = *old.first().expect("a worker");
    send_to(worker_pid(pool, leaving), rustix::process::Signal::TERM);
    deploy
        .pool
        .until("a replacement ready", |pool| {
            pool.ready().len() == WORKERS && !pool.ready().contains(&leaving)
        })
        .await;
    let new = *deploy
        .pool
        .ready()
        .difference(&old)
        .next()
        .expect("a new worker");
    let started = (deploy.pool.lines().iter())
        .find(|line| line.is("workerFork", new))
        .expect("its start");
    assert!(started.message.contains("generation 1 "), "{started:?}");
    assert_eq!(deploy.release_of(new), Some("1"));
    deploy.stop().await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// The pid in worker `id`'s `workerFork` line (`… (pid P)`).
fn worker_pid<R: tokio::io::AsyncBufRead + Unpin>(pool: &Pool<R>, id: u64) -> i32 {
    let line = (pool.lines().iter()).find(|line| line.is("workerFork", id));
    line.and_then(|line| line.message.rsplit(' ').next())
        .and_then(|pid| pid.trim_end_matches(')').parse().ok())
        .expect("a workerFork line with a pid")
}

/// Sends `signal` to process `pid` (a worker of ours, by its own pid).
fn send_to(pid: i32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("signal a worker");
}

#[tokio::test]
async fn a_rollout_to_a_program_that_crashes_at_start_is_rolled_back_as_the_old_one_serves() {
    let crashes = "#!/bin/sh\necho cannot start >&2\nexit 3\n";
    rolled_back("crash", &[], crashes, "exited with code 3").await;
}

#[tokio::test]
async fn a_rollout_to_a_program_never_ready_is_rolled_back_as_the_old_one_serves() {
    // (It serves, but never says it is ready.)
    let never_ready = format!("#!/usr/bin/env python3\n{DRAINING_SERVER}");
    let flags = ["--ready-timeout", "3s"];
    rolled_back(
        "never-ready",
        &flags,
        &never_ready,
        "was not ready within 3s",
    )
    .await;
}

#[tokio::test]
async fn the_pool_follows_the_json_lines() {
    let text = [
        r#"{"event":"listening","worker":null,"message":"listening on 127.0.0.1:1"}"#,
        r#"{"event":"workerFork","worker":1,"message":"started in slot 0 (pid 10)"}"#,
        r#"{"event":"workerFork","worker":2,"message":"started in slot 1 (pid 11)"}"#,
        r#"{"event":"workerReady","worker":1,"message":"ready"}"#,
        r#"{"event":"workerReady","worker":2,"message":"ready"}"#,
        r#"{"event":"workerFork","worker":3,"message":"started in slot 0 (pid 12)"}"#,
        r#"{"event":"workerReady","worker":3,"message":"ready"}"#,
        r#"{"event":"removeWorker","worker":1,"message":"left the pool"}"#,
        r#"{"event":"output","stream":"stdout","worker":3,"line":"a worker's own line"}"#,
        r#"{"event":"workerExit","worker":1,"message":"exited with code 0"}"#,
        r#"{"event":"reloadComplete","worker":null,"message":"1 workers restarted"}"#,
    ]
    .join("\n");
    let mut pool = Pool::new(BufReader::new(text.as_bytes()).lines());
    pool.until("two ready", |pool| pool.ready().len() == 2)
        .await;
    assert_eq!(pool.lines().len(), 5);
    pool.track_from_now();
    // (Holds already: nothing read.)
    pool.until("two ready", |pool| pool.ready().len() == 2)
        .await;
    assert_eq!(pool.lines().len(), 5);
    let done = pool.event("reloadComplete").await;
    assert_eq!(done.message, "1 workers restarted");
    assert_eq!((pool.fewest_ready(), pool.most_live()), (2, 3));
    assert_eq!(pool.most_staying(), 3, "1 left the pool before it exited");
    assert_eq!(pool.ready(), &BTreeSet::from([2, 3]));
    assert_eq!(pool.live(), &BTreeSet::from([2, 3]));
    let own = &pool.lines()[8];
    assert_eq!((own.event.as_str(), own.worker), ("output", Some(3)));
    assert_eq!(own.message, "a worker's own line");
}
