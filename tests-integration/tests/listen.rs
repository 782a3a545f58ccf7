//! Shared listening sockets: many workers serve one port (issue: shared
//! listening sockets).
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::time::Duration;

use isotropic_cluster::primary::*;
use isotropic_cluster::{EventStream, ListenAddress, ListenErrorKind};
use serde_json::Value;
use tests_integration::{
    DEADLINE, Mode, PrimaryMode, exit_of, launch, message_of, primary, ready, shut_down, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn serving(address: &str, per_worker: &str, delay_ms: &str) -> PrimaryBuilder {
    primary(Mode::Serve)
        .args([address, per_worker, delay_ms])
        .shutdown_grace(Duration::from_secs(10))
}

/// Waits for `n` workerListening events; returns them.
async fn listening(events: &mut EventStream<PrimaryEvent>, n: usize) -> Vec<WorkerListening> {
    let mut listening = Vec::new();
    while listening.len() < n {
        let pick = |e| match e {
            PrimaryEvent::WorkerListening(l) => Some(l),
            _ => None,
        };
        listening.push(wait_for(events, pick).await);
    }
    listening
}

/// Starts `builder`'s primary with `n` workers and waits until all listen;
/// returns the primary, its events (from before the fork) and the listens.
async fn serve(
    builder: PrimaryBuilder,
    n: usize,
) -> (
    ClusterPrimary,
    EventStream<PrimaryEvent>,
    Vec<WorkerListening>,
) {
    let primary = builder.start().await.expect("start");
    let mut events = primary.events();
    primary.fork(n).await.expect("fork");
    let listening = listening(&mut events, n).await;
    (primary, events, listening)
}

/// One HTTP request over a fresh connection; the response body.
async fn get(address: &ListenAddress) -> std::io::Result<String> {
    let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut response = Vec::new();
    match address {
        ListenAddress::Tcp(address) => {
            let mut stream = tokio::net::TcpStream::connect(address).await?;
            stream.write_all(request).await?;
            stream.read_to_end(&mut response).await?;
        }
        ListenAddress::Unix(path) => {
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            stream.write_all(request).await?;
            stream.read_to_end(&mut response).await?;
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("bad response: {response:?}"))),
    }
}

async fn get_in_time(address: &ListenAddress) -> String {
    tokio::time::timeout(DEADLINE, get(address))
        .await
        .expect("the request timed out")
        .expect("the request failed")
}

#[tokio::test]
async fn several_workers_serve_one_port_and_each_answers() {
    // Each worker serves one connection, then stops accepting: three requests
    // in a row must reach three different workers through the one socket.
    let (primary, _events, listening) = serve(serving("127.0.0.1:0", "1", "0"), 3).await;
    let address = listening[0].address.clone();
    assert!(
        listening.iter().all(|l| l.address == address),
        "one shared port: {listening:?}"
    );
    assert!(matches!(&address, ListenAddress::Tcp(a) if a.port() != 0));
    let mut answered = BTreeSet::new();
    for _ in 0..3 {
        answered.insert(get_in_time(&address).await);
    }
    let expected: BTreeSet<String> = listening
        .iter()
        .map(|l| format!("worker {}", l.worker.id()))
        .collect();
    assert_eq!(answered, expected);
    shut_down(&primary).await;
}

#[tokio::test]
async fn ipv6_loopback_and_a_unix_socket_path() {
    let (primary, _events, listening) = serve(serving("[::1]:0", "100", "0"), 2).await;
    let address = listening[0].address.clone();
    assert!(matches!(&address, ListenAddress::Tcp(a) if a.is_ipv6()));
    assert!(get_in_time(&address).await.starts_with("worker "));
    shut_down(&primary).await;

    let dir = std::env::temp_dir().join(format!("isotropic-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("http.sock");
    let unix = format!("unix:{}", path.display());
    let (primary, _events, listening) = serve(serving(&unix, "100", "0"), 2).await;
    let address = listening[0].address.clone();
    assert_eq!(address, ListenAddress::Unix(path.clone()));
    assert!(get_in_time(&address).await.starts_with("worker "));
    primary.destroy().await.expect("destroy");
    assert!(
        !path.exists(),
        "the primary removes the socket file it made"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_address_in_use_is_a_typed_error_for_the_worker_and_an_event() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let (primary, mut events, [worker]) = launch::<1>(serving(&address, "1", "0")).await;
    let error = wait_for(&mut events, |e| match e {
        PrimaryEvent::WorkerListenError(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(
        (error.worker.id(), error.error.kind),
        (worker.id(), ListenErrorKind::AddrInUse)
    );
    assert_eq!(error.error.address, address);
    let (_, reported) = wait_for(&mut events, message_of).await;
    assert_eq!(reported["listen_error"], "AddrInUse");
    assert_eq!(reported["address"], Value::from(address));
    shut_down(&primary).await;
}

#[tokio::test]
async fn no_request_fails_while_workers_are_stopped_and_replaced() {
    let (primary, mut events, serving_now) = serve(serving("127.0.0.1:0", "1000000", "0"), 3).await;
    let address = serving_now[0].address.clone();
    let mut replacements = primary.events();
    // A client keeps requesting (bounded in count and time) while the
    // workers are stopped one after another (SIGTERM: they finish what they
    // have accepted) and replaced.
    let client = tokio::spawn(async move {
        let (mut ok, started) = (0, std::time::Instant::now());
        while ok < 3000 && started.elapsed() < Duration::from_secs(3) {
            get(&address)
                .await
                .map_err(|e| format!("request {ok} failed: {e}"))?;
            ok += 1;
        }
        Ok::<_, String>(ok)
    });
    for worker in serving_now.iter().map(|l| &l.worker) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(worker.pid() as i32).expect("pid"),
            rustix::process::Signal::TERM,
        )
        .expect("SIGTERM");
        // Wait for this worker's replacement to serve before the next one.
        listening(&mut replacements, 1).await;
    }
    let served = client
        .await
        .expect("client")
        .expect("every request succeeded");
    assert!(served > 0);
    ready(&mut events, 3).await;
    assert_eq!(primary.workers().len(), 3, "the pool is refilled");
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_graceful_shutdown_finishes_the_requests_in_flight() {
    // Each answer takes 300 ms; the shutdown starts once all four requests
    // are accepted, and every one of them still gets its answer.
    let (primary, mut events, listening) = serve(serving("127.0.0.1:0", "100", "300"), 2).await;
    let address = listening[0].address.clone();
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move { get(&address).await })
        })
        .collect();
    for _ in 0..4 {
        wait_for(&mut events, |e| {
            message_of(e).filter(|(_, m)| m.get("accepted").is_some())
        })
        .await;
    }
    let shutting = primary.clone();
    let shutdown = tokio::spawn(async move { shutting.shut_down().await });
    for request in requests {
        let body = request
            .await
            .expect("join")
            .expect("an in-flight request completes");
        assert!(body.starts_with("worker "));
    }
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("in time")
        .expect("join")
        .expect("shutdown");
}

#[test]
fn a_socket_passed_by_socket_activation_is_used_instead_of_binding() {
    use std::io::{BufRead, BufReader, Read, Write};
    // The test holds the port: binding it again would fail, so an answer
    // proves that the primary adopted the socket it was given.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let passed = std::os::fd::OwnedFd::from(listener.try_clone().expect("dup"));
    // fd 3, and LISTEN_PID naming the primary itself (exec keeps the pid).
    let script = r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" "$1" "$2" 2"#;
    let mut child = tests_integration::Running(
        std::process::Command::new("sh")
            .args(["-c", script])
            .arg(tests_integration::fixture_primary())
            .arg(PrimaryMode::Serve.as_str())
            .arg(&address)
            .stdin(std::process::Stdio::from(passed))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the primary"),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), format!("listening {address}"));
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.contains("worker "), "{response}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(child.wait().expect("wait").success());
    drop(listener);
}

#[tokio::test]
async fn reuseport_gives_each_worker_a_socket_of_its_own_on_one_port() {
    let builder =
        serving("127.0.0.1:0", "1", "0").distribution(isotropic_cluster::Distribution::ReusePort);
    let (primary, _events, listening) = serve(builder, 3).await;
    let address = listening[0].address.clone();
    assert!(
        listening.iter().all(|l| l.address == address),
        "one port: {listening:?}"
    );
    // Each worker closes its own socket after one connection, so three
    // requests in a row reach three different workers.
    let mut answered = BTreeSet::new();
    for _ in 0..3 {
        answered.insert(get_in_time(&address).await);
    }
    assert_eq!(answered.len(), 3, "{answered:?}");
    shut_down(&primary).await;
}

#[tokio::test]
async fn round_robin_passes_connections_to_each_worker_in_turn() {
    let builder = serving("127.0.0.1:0", "1000", "0")
        .distribution(isotropic_cluster::Distribution::RoundRobin);
    let (primary, _events, listening) = serve(builder, 3).await;
    let address = listening[0].address.clone();
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..9 {
        *answers.entry(get_in_time(&address).await).or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers.values().all(|n| *n == 3),
        "each in turn: {answers:?}"
    );
    shut_down(&primary).await;
}

/// Stops a process with SIGSTOP; resumes it (SIGCONT) when dropped, also
/// when the test fails.
struct Stopped(rustix::process::Pid);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

/// Receives answers until there are `n`, or until `deadline`.
async fn collect(
    answers: &mut Vec<Result<String, String>>,
    received: &mut tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while answers.len() < n {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(answer)) => answers.push(answer),
            _ => return,
        }
    }
}

#[tokio::test]
async fn round_robin_gives_a_stopped_worker_at_most_four_connections_and_loses_none() {
    const CLIENTS: usize = 200;
    // The most connections a worker holds without accepting them.
    const HELD: usize = 4;
    let builder = serving("127.0.0.1:0", "1000", "0")
        .distribution(isotropic_cluster::Distribution::RoundRobin);
    let (primary, _events, listening) = serve(builder, 2).await;
    let address = listening[0].address.clone();
    let healthy = format!("worker {}", listening[0].worker.id());
    let stopped = Stopped::new(listening[1].worker.pid());
    // 200 clients, 32 connected at a time.
    let (answer, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    for _ in 0..CLIENTS {
        let (answer, address, slots) = (answer.clone(), address.clone(), slots.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let _ = answer.send(get(&address).await.map_err(|e| e.to_string()));
        });
    }
    let (mut answers, started) = (Vec::new(), std::time::Instant::now());
    collect(&mut answers, &mut answers_rx, CLIENTS - HELD).await;
    let while_stopped = (answers.len(), started.elapsed());
    assert!(
        answers.len() >= CLIENTS - HELD,
        "{} of {CLIENTS} connections answered while a worker was stopped",
        answers.len()
    );
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok(healthy.as_str())),
        "{answers:?}"
    );
    // Resumed, the stopped worker answers what it holds: none is lost.
    let resumed = std::time::Instant::now();
    drop(stopped);
    collect(&mut answers, &mut answers_rx, CLIENTS).await;
    assert_eq!(answers.len(), CLIENTS);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    eprintln!(
        "{} of {CLIENTS} answered in {:?} while a worker was stopped; the rest {:?} after SIGCONT",
        while_stopped.0,
        while_stopped.1,
        resumed.elapsed()
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_rolling_restart_serves_on_the_same_port_without_a_gap() {
    // Each worker leaves once its replacement is ready (holding the socket):
    // the socket always has a live holder, and is never closed.
    let builder = serving("127.0.0.1:0", "1000000", "0").readiness(Readiness::Listening);
    let (primary, mut events, listening) = serve(builder, 2).await;
    ready(&mut events, 2).await;
    let address = listening[0].address.clone();
    let restarting = primary.clone();
    let restart = tokio::spawn(async move { restarting.restart_workers().await });
    let mut served = 0;
    while !restart.is_finished() && served < 100_000 {
        get_in_time(&address).await;
        served += 1;
    }
    let restarted = restart.await.expect("join").expect("restart");
    assert_eq!(restarted, 2);
    assert!(get_in_time(&address).await.starts_with("worker "));
    eprintln!("{served} requests served during the rolling restart");
    shut_down(&primary).await;
}

#[tokio::test]
async fn a_lone_workers_socket_outlives_it_until_its_replacement_takes_it() {
    // (issue 12 item 6 releases sockets no live worker holds; a lone
    // worker's crash must not close its port meanwhile.)
    let (primary, mut events, listening) = serve(serving("127.0.0.1:0", "1000", "0"), 1).await;
    let address = listening[0].address.clone();
    let worker = listening[0].worker.clone();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(worker.pid() as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("SIGKILL");
    wait_for(&mut events, |e| {
        exit_of(e).filter(|x| x.worker.id() == worker.id())
    })
    .await;
    // No worker holds the port now: the connection waits in its backlog for
    // the replacement instead of being refused.
    let answer = get_in_time(&address).await;
    assert_ne!(answer, format!("worker {}", worker.id()));
    shut_down(&primary).await;
}
