//! A bounded HTTP load on a loopback server, and a server to put under it.
//!
//! A few client threads (so that the load goes on whatever the test's
//! runtime does), each sending GET requests back to back, each on a fresh
//! connection without keep-alive, each with a generous timeout; until the
//! test stops them, or at most [`MOST_REQUESTS`] each for [`MOST_TIME`].
//! The answers that are not a 200 are counted as failed, the first few with
//! their reason.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::DEADLINE;

/// How long one request may take: to connect, to send, to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most requests one client sends.
const MOST_REQUESTS: u64 = 500_000;
/// The longest a load runs, stopped or not.
const MOST_TIME: Duration = Duration::from_secs(120);
/// How many failures keep their reason.
const REASONS: usize = 5;

/// GET requests to `address` from a few threads, until [`Load::stop`].
#[derive(Debug)]
pub(crate) struct Load {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<()>>,
}

/// What the clients count, and the order to stop.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    /// The longest a request took, in microseconds.
    slowest: AtomicU64,
    /// A client reached a bound before it was stopped.
    ran_out: AtomicBool,
    reasons: Mutex<Vec<String>>,
}

/// What a load counted, once stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Requests answered with a 200.
    pub(crate) ok: u64,
    /// Requests refused, reset, timed out or answered otherwise.
    pub(crate) failed: u64,
    /// The first few failures' reasons.
    pub(crate) reasons: Vec<String>,
    /// The longest a request took, answered or not (a stall shows here).
    pub(crate) slowest: Duration,
    /// Some client stopped at its bound (count or time), before the test
    /// stopped it: the load did not cover all it was meant to.
    pub(crate) ran_out: bool,
}

impl Load {
    /// Starts `clients` threads sending requests to `address`.
    pub(crate) fn start(address: SocketAddr, clients: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let clients = (0..clients)
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || shared.run(address))
            })
            .collect();
        Self { shared, clients }
    }

    /// Requests answered with a 200 so far.
    pub(crate) fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients (each after its request in hand) and counts.
    pub(crate) async fn stop(mut self) -> Tally {
        self.shared.stop.store(true, Ordering::Relaxed);
        let clients = std::mem::take(&mut self.clients);
        let join = tokio::task::spawn_blocking(move || {
            for client in clients {
                client.join().expect("a client thread ends without panic");
            }
        });
        tokio::time::timeout(DEADLINE, join)
            .await
            .expect("the clients end in time")
            .expect("join the clients");
        let shared = &self.shared;
        Tally {
            ok: shared.ok.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            reasons: shared.reasons.lock().expect("not poisoned").clone(),
            ran_out: shared.ran_out.load(Ordering::Relaxed),
            slowest: Duration::from_micros(shared.slowest.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Load {
    /// A test that panics stops its clients too (they end on their own).
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Shared {
    /// One client: requests back to back until stopped or at a bound.
    fn run(&self, address: SocketAddr) {
        let end = Instant::now() + MOST_TIME;
        for _ in 0..MOST_REQUESTS {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if Instant::now() >= end {
                break;
            }
            let start = Instant::now();
            let outcome = get(address);
            let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.slowest.fetch_max(took, Ordering::Relaxed);
            match outcome {
                Ok(()) => self.ok.fetch_add(1, Ordering::Relaxed),
                Err(reason) => {
                    let mut reasons = self.reasons.lock().expect("not poisoned");
                    if reasons.len() < REASONS {
                        reasons.push(reason);
                    }
                    self.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        self.ran_out.store(true, Ordering::Relaxed);
    }
}

impl Tally {
    /// Asserts that requests went through, none failed, and the load ran
    /// until it was stopped.
    pub(crate) fn assert_none_failed(&self) {
        assert!(
            self.failed == 0 && self.ok > 0 && !self.ran_out,
            "requests: {self:?}"
        );
    }
}

/// One request on a fresh connection; the reason it failed.
fn get(address: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&address, REQUEST_TIMEOUT)
        .map_err(|error| format!("connect: {error}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|error| format!("set a timeout: {error}"))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
        .map_err(|error| format!("send: {error}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|error| format!("read the answer: {error}"))?;
    if answer.starts_with(b"HTTP/1.0 200 ") || answer.starts_with(b"HTTP/1.1 200 ") {
        Ok(())
    } else if answer.is_empty() {
        Err("closed without an answer".to_owned())
    } else {
        let start = &answer[..answer.len().min(60)];
        Err(format!("answer: {:?}", String::from_utf8_lossy(start)))
    }
}

/// [`DRAINING_SERVER`](super::DRAINING_SERVER), ready once it serves
/// (`--ready notify`: it sends `READY=1` just before it accepts), and
/// released: it reads its release from the file named by its first
/// argument, and says it with its readiness (`STATUS=release R`, printed by
/// the CLI as `status: release R`). Run it as `python3 -c SERVER FILE`.
pub(crate) fn release_server() -> String {
    const READY: &str = r#"
import sys
release = open(sys.argv[1]).read().strip()
notify_socket = os.environ["NOTIFY_SOCKET"]
if notify_socket.startswith("@"):
    notify_socket = "\0" + notify_socket[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.sendto(("READY=1\nSTATUS=release " + release).encode(), notify_socket)
print("serving", flush=True)
"#;
    let serving = "\nprint(\"serving\", flush=True)\n";
    assert!(super::DRAINING_SERVER.contains(serving));
    super::DRAINING_SERVER.replace(serving, READY)
}
