//! `isotropic-cluster run --config FILE`: one pool as with flags, several
//! pools in one primary, and the errors of a bad file.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A config file in the temporary directory, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "isotropic-cluster-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write the config");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A plain worker that says `up` and who it is, then exits 0 on SIGTERM.
const SAYS_UP: &str =
    r#"trap 'exit 0' TERM; echo "up in $ISOTROPIC_CLUSTER_POOL as $GREETING"; sleep 60 & wait"#;

/// `text` as a TOML string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string")
}

/// The pids of the `started in slot …, generation … (pid N)` lines.
fn started_pids(lines: &[String]) -> Vec<i32> {
    let pid = |line: &String| {
        let (_, tail) = line.split_once("(pid ")?;
        tail.trim_end_matches(')').parse().ok()
    };
    let started = lines
        .iter()
        .filter(|line| line.contains(" started in slot "));
    started.filter_map(pid).collect()
}

#[tokio::test]
async fn two_pools_run_reload_and_stop_together() {
    // (A JSON string is a TOML string.)
    let (server, says_up) = (toml_string(DRAINING_SERVER), toml_string(SAYS_UP));
    let text = format!(
        r#"
        min-uptime = "100ms"
        env = {{ GREETING = "hello" }}

        [pools.web]
        command = ["python3", "-c", {server}]
        workers = 2
        listen = ["127.0.0.1:0"]
        ready = "listening"

        [pools.jobs]
        command = ["sh", "-c", {says_up}]
        workers = 1
        env = {{ GREETING = "jobs" }}
        "#
    );
    let config = ConfigFile::new("two-pools", &text);
    let (mut child, mut stderr) = cli(&["run", "--config", config.path()]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Each pool's workers start, their output prefixed with the pool's name.
    let mut out = Vec::new();
    while out.len() < 3 {
        let line = tokio::time::timeout(DEADLINE, stdout.next_line()).await;
        out.push(line.expect("in time").expect("read").expect("a line"));
    }
    out.sort();
    assert_eq!(
        out,
        [
            "[jobs 0] up in jobs as jobs",
            "[web 0] serving",
            "[web 1] serving"
        ]
    );
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let mut seen = until(&mut stderr, "web: listening on").await;
    let address = listening_address(&seen);
    seen.extend(until_all(&mut stderr, &["web worker 2 ready", "jobs worker 1 ready"]).await);
    // The web pool serves on its port.
    let requests = Requests::start(address);
    // SIGHUP reloads both pools.
    send(&child, rustix::process::Signal::HUP);
    let reloaded = until_all(
        &mut stderr,
        &["web: 2 workers restarted", "jobs: 1 workers restarted"],
    )
    .await;
    // (`web worker 3`… of `… generation 2 (pid N)` lines.)
    let generation_2: Vec<String> = (reloaded.iter())
        .filter(|l| l.contains(", generation 2 (pid"))
        .filter_map(|l| l.strip_prefix("[primary] "))
        .filter_map(|l| l.split(" started").next())
        .map(str::to_owned)
        .collect();
    for pool in ["web worker", "jobs worker"] {
        let count = generation_2.iter().filter(|w| w.starts_with(pool));
        assert_eq!(
            count.count(),
            if pool == "web worker" { 2 } else { 1 },
            "{reloaded:?}"
        );
    }
    let answers = requests.stop().await;
    assert!(!answers.is_empty());
    seen.extend(reloaded);
    // SIGTERM stops both pools: each worker of generation 2 ends as asked.
    terminate(&child);
    let rest = until(&mut stderr, "all workers exited").await;
    for worker in &generation_2 {
        let ended = |l: &&String| {
            l.contains(&format!("{worker} exited with code 0"))
                || (l.contains(&format!("{worker} (pid"))
                    && l.contains("ended on the SIGTERM the primary sent"))
        };
        assert!(
            rest.iter().any(|l| ended(&l)),
            "{worker} did not end: {rest:?}"
        );
    }
    assert_eq!(exit_code(&mut child).await, Some(0));
    // Every worker ever started is gone (reaped: no zombie left either).
    let pids = started_pids(&seen);
    assert_eq!(pids.len(), 6, "{seen:?}");
    eventually("every worker reaped", || {
        pids.iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
    .await;
}

#[tokio::test]
async fn with_json_every_line_of_a_pool_names_it() {
    let says_up = toml_string(SAYS_UP);
    let text = format!(
        "json = true\nworkers = 1\n[pools.web]\ncommand = [\"sh\", \"-c\", {says_up}]\n\
         [pools.jobs]\ncommand = [\"sh\", \"-c\", {says_up}]\n"
    );
    let config = ConfigFile::new("json", &text);
    let (mut child, mut stdout) = spawn_json(command(&["run", "-c", config.path()]));
    let seen = until_all(
        &mut stdout,
        &[
            "\"up in web",
            "\"up in jobs",
            "web worker 1 ready",
            "jobs worker 1 ready",
        ],
    )
    .await;
    let json = |line: &String| serde_json::from_str::<serde_json::Value>(line).expect("JSON");
    for pool in ["web", "jobs"] {
        let output = seen.iter().map(json).find(|line| {
            line["event"] == "output"
                && line["line"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("up in"))
                && line["pool"] == pool
        });
        assert!(output.is_some(), "no output line of {pool}: {seen:?}");
        let ready = seen.iter().map(json).find(|line| {
            line["event"] == "workerReady" && line["pool"] == pool && line["worker"] == 1
        });
        assert!(ready.is_some(), "no workerReady of {pool}: {seen:?}");
    }
    stop_cleanly(&mut child, &mut stdout, 2).await;
}

#[tokio::test]
async fn a_file_without_pools_runs_as_its_flags_and_flags_override_it() {
    let config = ConfigFile::new(
        "one-pool",
        "workers = 3\ncommand = [\"sh\", \"-c\", \"echo one; exec sleep 60\"]\n",
    );
    // `--workers 2` on the command line wins over the file's 3.
    let (mut child, mut stderr) = cli(&["run", "-c", config.path(), "--workers", "2"]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = tokio::time::timeout(DEADLINE, stdout.next_line()).await;
        lines.push(line.expect("in time").expect("read").expect("a line"));
    }
    lines.sort();
    // As with flags: prefixed with the slot alone.
    assert_eq!(lines, ["[0] one", "[1] one"]);
    let seen = until(&mut stderr, "worker 2 ready").await;
    assert!(
        seen.iter().all(|l| l.starts_with("[primary] worker ")),
        "{seen:?}"
    );
    terminate(&child);
    let rest = until(&mut stderr, "all workers exited").await;
    assert!(!rest.iter().any(|l| l.contains("worker 3")), "{rest:?}");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn an_unknown_key_is_refused_with_its_line() {
    let config = ConfigFile::new(
        "unknown-key",
        "[pools.web]\ncommand = [\"true\"]\nwrkers = 2\n",
    );
    let (code, stderr) = run_to_end(&["run", "--config", config.path()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `wrkers`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains(config.path()), "{stderr}");
}

#[tokio::test]
async fn a_bad_value_is_refused_naming_its_key() {
    let config = ConfigFile::new(
        "bad-value",
        "command = [\"true\"]\nready-timeout = \"soon\"\n",
    );
    let (code, stderr) = run_to_end(&["run", "--config", config.path()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ready-timeout = \"soon\""), "{stderr}");
    assert!(stderr.contains("not a duration: soon"), "{stderr}");
    let (code, stderr) = run_to_end(&["run", "--config", "/nonexistent/cluster.toml"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read --config /nonexistent/cluster.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_pools_flag_with_several_pools_is_refused() {
    let config = ConfigFile::new(
        "per-pool-flag",
        "[pools.a]\ncommand = [\"true\"]\n[pools.b]\ncommand = [\"true\"]\n",
    );
    let (code, stderr) = run_to_end(&["run", "--config", config.path(), "--grace", "1s"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--grace applies to one pool, and {} has 2 (a, b): set it in the file, under [pools.NAME]",
            config.path()
        )),
        "{stderr}"
    );
}

/// A process that is not our child (a new primary started by an upgrade),
/// killed when dropped if still there.
struct NotOurChild(i32);

impl NotOurChild {
    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.0)).exists()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for NotOurChild {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(rustix::process::Signal::KILL);
        }
    }
}

#[tokio::test]
async fn sigusr2_hands_every_pools_sockets_to_the_new_primary() {
    let server = toml_string(DRAINING_SERVER);
    let pool = |name: &str| {
        format!(
            "[pools.{name}]\ncommand = [\"python3\", \"-c\", {server}]\nlisten = [\"127.0.0.1:0\"]\nready = \"listening\"\n"
        )
    };
    let text = format!("workers = 1\n{}{}", pool("web"), pool("api"));
    let config = ConfigFile::new("upgrade", &text);
    let (mut old, mut stderr) = cli(&["run", "--config", config.path()]);
    let seen = until_all(&mut stderr, &["api worker 1 ready", "web worker 1 ready"]).await;
    let address = |pool: &str| {
        let line = seen
            .iter()
            .filter(|l| l.contains(&format!("{pool}: listening on")));
        listening_address(&line.cloned().collect::<Vec<_>>())
    };
    let (web, api) = (address("web"), address("api"));
    send(&old, rustix::process::Signal::USR2);
    let started = until(&mut stderr, "started a new primary").await;
    let new = started
        .last()
        .and_then(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok())
        .map(NotOurChild)
        .expect("the new primary's pid");
    let handed = until_all(
        &mut stderr,
        &["hands over and shuts down", "its 2 workers are ready"],
    )
    .await;
    assert!(
        handed
            .iter()
            .any(|l| l.contains("web: listening on") && l.contains("handed over")),
        "{handed:?}"
    );
    assert_eq!(exit_code(&mut old).await, Some(0));
    // The new primary's workers serve both pools' ports.
    for address in [web, api] {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let answer = tokio::time::timeout(DEADLINE, async {
            let mut stream = tokio::net::TcpStream::connect(address).await?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            std::io::Result::Ok(answer)
        })
        .await
        .expect("an answer in time")
        .expect("a request");
        assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    }
    new.signal(rustix::process::Signal::TERM);
    eventually("the new primary exits", || !new.alive()).await;
}

#[tokio::test]
async fn a_pool_that_gives_up_stops_every_pool() {
    let says_up = toml_string(SAYS_UP);
    // `crash`'s worker exits 1 at once, again and again.
    let text = format!(
        "workers = 1\n[pools.web]\ncommand = [\"sh\", \"-c\", {says_up}]\n\
         [pools.crash]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\nmax-restarts = 2\n\
         restart-delay = \"10ms\"\n"
    );
    let config = ConfigFile::new("gives-up", &text);
    let (mut child, mut stderr) = cli(&["run", "--config", config.path()]);
    let seen = until_all(
        &mut stderr,
        &[
            "web worker 1 ready",
            "the pool crash gave up: stopping every pool",
        ],
    )
    .await;
    // Web's worker is asked to leave, and does: then the primary exits 3.
    let rest = until(&mut stderr, "all workers exited").await;
    let all = [seen, rest].concat();
    assert!(
        all.iter()
            .any(|l| l.contains("web worker 1 exited with code 0")),
        "{all:?}"
    );
    assert_eq!(exit_code(&mut child).await, Some(3), "{all:?}");
}

#[tokio::test]
async fn a_pool_without_workers_left_ends_alone_and_the_other_serves_on() {
    let server = toml_string(DRAINING_SERVER);
    // `once`'s worker exits 0 at once and is not replaced.
    let text = format!(
        "workers = 1\n[pools.web]\ncommand = [\"python3\", \"-c\", {server}]\n\
         listen = [\"127.0.0.1:0\"]\nready = \"listening\"\n\
         [pools.once]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nrestart = \"never\"\n"
    );
    let config = ConfigFile::new("ends-alone", &text);
    let (mut child, mut stderr) = cli(&["run", "--config", config.path()]);
    let seen = until(&mut stderr, "web: listening on").await;
    let address = listening_address(&seen);
    let seen = until_all(
        &mut stderr,
        &[
            "web worker 1 ready",
            "once: no worker left to replace: stopping",
            "once worker 1 exited with code 0",
        ],
    )
    .await;
    assert!(
        !seen.iter().any(|l| l.contains("shutting down")),
        "{seen:?}"
    );
    // Web serves on, then stops when asked, cleanly (`once` did not fail).
    let (code, body) = get(address, "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("served by"), "{body}");
    stop_cleanly(&mut child, &mut stderr, 1).await;
}

/// Starts `argv[3:]` as systemd would with two `.socket` units: listening
/// sockets on 127.0.0.1 at fd 3 and 4 (`LISTEN_*`), after writing the
/// file `argv[1]` to `argv[2]` with their ports for `{port0}`, `{port1}`.
const TWO_SOCKETS: &str = r#"
import os, socket, sys
sockets = [socket.socket() for _ in range(2)]
ports = []
for at, server in enumerate(sockets):
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    ports.append(str(server.getsockname()[1]))
    os.dup2(server.fileno(), 10 + at)
for at in range(2):
    os.dup2(10 + at, 3 + at)
    os.close(10 + at)
text = open(sys.argv[1]).read().replace("{port0}", ports[0]).replace("{port1}", ports[1])
open(sys.argv[2], "w").write(text)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="web.socket:api.socket")
os.execv(sys.argv[3], sys.argv[3:])
"#;

#[tokio::test]
async fn with_socket_activation_each_pool_serves_its_own_passed_socket() {
    let server = toml_string(DRAINING_SERVER);
    let pool = |name: &str, port: &str| {
        format!(
            "[pools.{name}]\ncommand = [\"python3\", \"-c\", {server}]\nworkers = 1\n\
             listen = [\"127.0.0.1:{{{port}}}\"]\nready = \"listening\"\n"
        )
    };
    let template = ConfigFile::new(
        "activated-template",
        &(pool("web", "port0") + &pool("api", "port1")),
    );
    let config = ConfigFile::new("activated", "");
    let mut command = tokio::process::Command::new("python3");
    command.env("XDG_RUNTIME_DIR", runtime_dir()).args([
        "-c",
        TWO_SOCKETS,
        template.path(),
        config.path(),
        env!("CARGO_BIN_EXE_isotropic-cluster"),
        "run",
        "--config",
        config.path(),
    ]);
    command.stdout(std::process::Stdio::null());
    let (mut child, mut stderr) = spawn(command);
    let seen = until_all(
        &mut stderr,
        &[
            "web worker 1 ready",
            "api worker 1 ready",
            "web: listening on",
            "api: listening on",
        ],
    )
    .await;
    for pool in ["web", "api"] {
        let listening = (seen.iter())
            .find(|l| l.contains(&format!("{pool}: listening on")))
            .expect("a listening line");
        assert!(
            listening.ends_with(", passed by socket activation"),
            "{listening}"
        );
        let address: std::net::SocketAddr = (listening.split_whitespace())
            .find_map(|word| word.trim_end_matches(',').parse().ok())
            .expect("an address");
        // Served by this pool's worker, on the socket passed for it.
        let pid = (seen.iter())
            .find(|l| l.contains(&format!("{pool} worker 1 started")))
            .and_then(|l| l.rsplit("(pid ").next())
            .map(|pid| pid.trim_end_matches(')').to_owned())
            .expect("the worker's pid");
        let (code, body) = get(address, "/").await;
        assert_eq!((code, body), (200, format!("served by {pid}")), "{pool}");
    }
    let text = std::fs::read_to_string(config.path()).expect("the config");
    assert!(!text.contains("{port"), "{text}");
    stop_cleanly(&mut child, &mut stderr, 2).await;
}
