//! The README's recipes, run as written (with `examples/recipes/`): gunicorn
//! adopting `--listen` through `LISTEN_FDS`, uvicorn with `--fd 3`, an
//! express server with `listen({fd: 3})`, `process.send('ready')` and a
//! disconnect handler, and a Python server with `PYTHONUNBUFFERED`. Each
//! serves HTTP on loopback through the shared socket from several workers,
//! then shuts down cleanly. gunicorn, uvicorn and express are installed from
//! their registries into the target directory (`common/packages.rs`); a
//! test is skipped, saying why, only when a registry is unreachable.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr};

mod common;
use common::http::{get, served_by_every_worker};
use common::packages::installed_or_skip;
use common::*;

const WORKERS: usize = 2;

/// A file of `examples/recipes/`.
fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/recipes")
        .join(name)
}

/// A recipe running.
struct Recipe {
    child: Child,
    stderr: tokio::io::Lines<BufReader<ChildStderr>>,
    /// The workers' output until all were ready.
    seen: Vec<String>,
    address: SocketAddr,
}

/// The CLI: `run --workers 2 --listen 127.0.0.1:0 FLAGS -- COMMAND`, with
/// `env`, started, until every worker is ready. Its stdout is read on
/// unless `keep_stdout`.
async fn start(
    flags: &[&str],
    command_line: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    keep_stdout: bool,
) -> Recipe {
    let workers = WORKERS.to_string();
    let mut args = vec!["run", "--workers", &workers, "--listen", "127.0.0.1:0"];
    args.extend(flags);
    args.push("--");
    args.extend(command_line);
    let mut command = command(&args);
    command.envs(env.iter().copied()).stdout(Stdio::piped());
    let (mut child, mut stderr) = spawn(command);
    if !keep_stdout {
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    }
    let mut seen = until(&mut stderr, "listening on").await;
    let address = listening_address(&seen);
    seen.extend(until_ready(&mut stderr, WORKERS).await);
    Recipe {
        child,
        stderr,
        seen,
        address,
    }
}

/// The executable `name` of the Python packages (`None`: skipped, the
/// registry being unreachable), and `examples/recipes/`.
fn python_server(name: &str) -> Option<(String, String)> {
    let bin = match common::packages::python(common::packages::PYTHON) {
        Ok(bin) => bin,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return None;
        }
    };
    let path = |path: PathBuf| path.to_str().expect("UTF-8").to_owned();
    Some((path(bin.join(name)), path(recipe(""))))
}

#[tokio::test]
async fn gunicorn_adopts_the_listen_socket_through_listen_fds() {
    let Some((gunicorn, dir)) = python_server("gunicorn") else {
        return;
    };
    let gunicorn = [&gunicorn, "--workers", "1", "--no-control-socket"];
    let app = ["--chdir", &dir, "wsgi_app:app"];
    let mut recipe = start(
        &["--ready", "notify"],
        &[&gunicorn[..], &app].concat(),
        &[],
        false,
    )
    .await;
    // Each gunicorn serves our socket, not one it bound itself.
    let ours = format!("Listening at: http://{} ", recipe.address);
    let listening = recipe.seen.iter().filter(|l| l.contains(&ours));
    assert_eq!(listening.count(), WORKERS, "{:?}", recipe.seen);
    served_by_every_worker(recipe.address, WORKERS).await;
    stop_cleanly(&mut recipe.child, &mut recipe.stderr, WORKERS).await;
}

#[tokio::test]
async fn uvicorn_serves_fd_3() {
    let Some((uvicorn, dir)) = python_server("uvicorn") else {
        return;
    };
    let uvicorn = [&uvicorn, "--fd", "3", "--lifespan", "off"];
    let app = ["--app-dir", &dir, "asgi_app:app"];
    let mut recipe = start(&[], &[&uvicorn[..], &app].concat(), &[], false).await;
    served_by_every_worker(recipe.address, WORKERS).await;
    // uvicorn shuts down gracefully on SIGTERM, then ends by the signal it
    // got (it raises it again): asked for, so a clean shutdown all the same.
    terminate(&recipe.child);
    let rest = until(&mut recipe.stderr, "all workers exited").await;
    let finished = rest
        .iter()
        .filter(|l| l.contains("Finished server process"));
    assert_eq!(finished.count(), WORKERS, "{rest:?}");
    assert_eq!(exit_code(&mut recipe.child).await, Some(0));
}

#[tokio::test]
async fn express_listens_on_fd_3_says_ready_and_closes_on_disconnect() {
    let modules = installed_or_skip!(common::packages::node(&["express@5"]));
    let server = recipe("express_server.js");
    let Recipe {
        mut child,
        mut stderr,
        address,
        ..
    } = start(
        &["--channel", "node", "--ready", "message"],
        &["node", server.to_str().expect("UTF-8")],
        &[("NODE_PATH", modules.as_os_str())],
        false,
    )
    .await;
    served_by_every_worker(address, WORKERS).await;
    // Disconnected, each closes its server and exits 0 by itself: no SIGTERM.
    terminate(&child);
    let rest = until(&mut stderr, "all workers exited").await;
    let clean = rest.iter().filter(|l| l.contains("exited with code 0"));
    assert_eq!(clean.count(), WORKERS, "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("SIGTERM)")), "{rest:?}");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn python_with_pythonunbuffered_prints_each_request_as_it_is_served() {
    let server = recipe("python_server.py");
    let Recipe {
        mut child,
        mut stderr,
        address,
        ..
    } = start(
        &[],
        &["python3", server.to_str().expect("UTF-8")],
        &[("PYTHONUNBUFFERED", "1".as_ref())],
        true,
    )
    .await;
    served_by_every_worker(address, WORKERS).await;
    // The line of a request is out while the server runs (a buffered
    // Python would hold it until its exit).
    get(address, "/unbuffered").await;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    until(&mut stdout, "] GET /unbuffered").await;
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    stop_cleanly(&mut child, &mut stderr, WORKERS).await;
}
