//! A worker program for the end-to-end tests. The first argument picks a
//! behaviour; see `main`.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Duration;

use isotropic_cluster::worker::{
    ClusterWorker, InitializeComplete, PrimaryDisconnect, PrimaryMessage,
};
use isotropic_cluster::{HandleRequests, Subscribe};
use serde::Deserialize;
use serde_json::{Value, json};

/// Commands the tests send to an `echo` worker.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Command {
    /// Exit at once with this code.
    Exit { code: i32 },
    /// Destroy the worker (a voluntary exit).
    Destroy,
    /// Print a line on stdout and one on stderr.
    Print { text: String },
    /// Report what a child process of this worker inherits.
    Inspect,
    /// Start a child that outlives nothing (sleeps), and report its pid.
    SpawnChild,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read before `is_worker`, which removes the markers from the environment.
    let raw_fd = std::env::var("ISOTROPIC_CLUSTER_CHANNEL_FD")
        .ok()
        .and_then(|v| v.parse().ok());
    let is_worker = isotropic_cluster::is_worker();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let id = ClusterWorker::worker_id().map_or(0, |id| id.get());
    let mode = std::env::args().nth(1).unwrap_or_default();
    if !is_worker {
        return Err(format!("fixture-worker ({mode}) started outside a cluster").into());
    }
    match mode.as_str() {
        "echo" => echo(ClusterWorker::builder()).await,
        "before-ready" => {
            let builder = ClusterWorker::builder().initialize(|worker| async move {
                worker.send(&json!("ready")).await?;
                worker.send(&json!({"type": "early"})).await
            });
            echo(builder).await
        }
        "never-ready" => {
            echo(ClusterWorker::builder().before::<InitializeComplete>(|e| e.prevent())).await
        }
        "init-fail" => {
            let builder =
                ClusterWorker::builder().initialize(|_| async { Err::<(), _>("no database") });
            echo(builder).await
        }
        "exit-at-start" => std::process::exit(3),
        "stay" => echo(ClusterWorker::builder().before::<PrimaryDisconnect>(|e| e.prevent())).await,
        "hung" => hung(raw_channel(raw_fd)),
        "serve" => serve(id).await,
        "raw" => raw(
            raw_channel(raw_fd),
            &std::env::args().nth(2).unwrap_or_default(),
        ),
        "ask" => ask().await,
        // The first worker is well-behaved, the others send bad input.
        "bad-after-first" if id == 1 => echo(ClusterWorker::builder()).await,
        "bad-after-first" => raw(
            raw_channel(raw_fd),
            &std::env::args().nth(2).unwrap_or_default(),
        ),
        other => Err(format!("unknown mode {other:?}").into()),
    }
}

/// Echoes every message back as `{"echo": message}`, and obeys [`Command`]s.
async fn echo(
    builder: isotropic_cluster::worker::WorkerBuilder,
) -> Result<(), Box<dyn std::error::Error>> {
    #[derive(Deserialize)]
    struct Ping {
        n: u32,
    }
    let id = ClusterWorker::worker_id().map_or(0, |id| id.get());
    #[derive(Deserialize)]
    struct Square {
        n: u64,
    }
    #[derive(Deserialize)]
    struct Sleep {
        ms: u64,
    }
    let worker = builder
        .handle("square", |Square { n }| Ok::<_, String>(n * n))
        .handle("whoami", move |_: Value| Ok::<_, String>(id))
        .handle("fail", |_: Value| Err::<(), _>("no such thing"))
        .handle("panic", |_: Value| -> Result<(), String> {
            panic!("handler bug")
        })
        .handle("die", |_: Value| -> Result<(), String> {
            std::process::exit(1)
        })
        // Odd workers die on it, even ones answer: for dispatch's retries.
        .handle("flaky", move |Square { n }| {
            if id % 2 == 1 {
                std::process::exit(1)
            } else {
                Ok::<_, String>((id, n))
            }
        })
        .handle_async("sleep", move |Sleep { ms }| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(id)
        })
        .route::<Ping>("ping", |event, ping| {
            let _ = event.worker().send(&json!({"pong": ping.n}));
        })
        .on::<PrimaryMessage>(|event| {
            let message: Value = event.message.decode().unwrap_or_default();
            match event.message.decode::<Command>() {
                Ok(Command::Exit { code }) => std::process::exit(code),
                Ok(Command::Destroy) => event.worker().destroy(Duration::from_secs(5)),
                Ok(Command::Print { text }) => {
                    println!("{text}");
                    eprintln!("{text} (stderr)");
                    let _ = std::io::stdout().flush();
                }
                Ok(Command::Inspect) => {
                    let _ = event.worker().send(&json!({"inspect": inspect()}));
                }
                Ok(Command::SpawnChild) => {
                    let child = std::process::Command::new("sleep").arg("300").spawn();
                    let pid = child.map(|c| c.id()).unwrap_or_default();
                    let _ = event.worker().send(&json!({"child": pid}));
                }
                Err(_) => {
                    let _ = event.worker().send(&json!({"echo": message}));
                }
            }
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}

/// What a child of this worker sees: its environment's cluster variables and
/// its open fds that are sockets.
fn inspect() -> Value {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("env | grep ISOTROPIC_CLUSTER; for f in /proc/$$/fd/*; do readlink $f; done | grep socket")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    json!(output.lines().collect::<Vec<_>>())
}

/// The channel, taken by hand (for workers that do not use the library).
fn raw_channel(fd: Option<i32>) -> std::os::unix::net::UnixStream {
    let fd = fd.expect("a channel fd");
    // SAFETY: the primary passed this fd for this process's use; the library is
    // not used in this mode, so nothing else owns it.
    unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len() + 1)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    bytes.push(kind);
    bytes.extend_from_slice(payload);
    bytes
}

/// Ignores SIGTERM, starts a child that ignores it too (the disposition is
/// inherited), says hello and ready, ignores the disconnect request, and
/// never exits by itself.
fn hung(mut channel: std::os::unix::net::UnixStream) -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: setting a signal's disposition to "ignore" installs no handler code.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    std::process::Command::new("sleep").arg("300").spawn()?;
    channel.write_all(&frame(1, br#"{"protocol":1}"#))?;
    channel.write_all(&frame(2, b""))?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// How many batches of 256 messages of 1 KiB a `flood` worker sends.
const FLOOD_BATCHES: usize = 1024;

/// Says hello and ready (unless the case is about the handshake), then sends
/// one kind of bad input, then waits for the primary to close the channel.
fn raw(
    mut channel: std::os::unix::net::UnixStream,
    case: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    // Read the primary's hello first, as a peer should: unread data would make
    // our exit a connection reset rather than the input under test.
    let mut length = [0u8; 4];
    std::io::Read::read_exact(&mut channel, &mut length)?;
    let mut hello = vec![0u8; u32::from_be_bytes(length) as usize];
    std::io::Read::read_exact(&mut channel, &mut hello)?;
    let hello = frame(1, br#"{"protocol":1}"#);
    let greet = |channel: &mut std::os::unix::net::UnixStream| -> std::io::Result<()> {
        channel.write_all(&hello)?;
        channel.write_all(&frame(2, b""))
    };
    let bad: Vec<u8> = match case {
        "no-hello" => frame(4, b"{}"),
        "wrong-version" => frame(1, br#"{"protocol":99}"#),
        "huge-length" => {
            greet(&mut channel)?;
            vec![0xff, 0xff, 0xff, 0xff, 4]
        }
        "garbage" => {
            greet(&mut channel)?;
            b"\x00\x00\x00\x05\xeegarbage that is not a frame".to_vec()
        }
        "invalid-json" => {
            greet(&mut channel)?;
            frame(4, b"{\"type\": ")
        }
        "invalid-utf8" => {
            greet(&mut channel)?;
            frame(4, b"\"\xff\xfe\"")
        }
        "deep-json" => {
            greet(&mut channel)?;
            frame(4, ("[".repeat(100_000) + &"]".repeat(100_000)).as_bytes())
        }
        "flood" => {
            greet(&mut channel)?;
            // FLOOD_BATCHES batches of 256 messages of 1 KiB, written as fast
            // as the socket takes them.
            let message = frame(4, format!("\"{}\"", "x".repeat(1018)).as_bytes());
            let batch = message.repeat(256);
            for _ in 0..FLOOD_BATCHES {
                channel.write_all(&batch)?;
            }
            Vec::new()
        }
        "random" => {
            greet(&mut channel)?;
            // 64 KiB of noise (xorshift, seeded from the clock; the seed goes
            // to stderr), then the channel closes.
            let mut state = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |t| t.as_nanos() as u64)
                | 1;
            eprintln!("random seed {state}");
            let noise: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            channel.write_all(&noise)?;
            return Ok(());
        }
        "truncated" => {
            greet(&mut channel)?;
            let mut cut = frame(4, br#"{"type":"cut short"}"#);
            cut.truncate(9);
            channel.write_all(&cut)?;
            // Close the channel in the middle of the frame and exit.
            return Ok(());
        }
        other => return Err(format!("unknown raw case {other:?}").into()),
    };
    channel.write_all(&bad)?;
    // Wait until the primary closes the channel (or kills us).
    let mut sink = [0u8; 4096];
    while std::io::Read::read(&mut channel, &mut sink)? > 0 {}
    Ok(())
}

/// `serve ADDRESS [COUNT [DELAY_MS]]`: listens on ADDRESS through the primary
/// and answers HTTP requests with `worker ID`, one connection at a time;
/// after COUNT connections it stops listening. DELAY_MS delays each answer
/// (for graceful-shutdown tests). A listen error is reported to the primary as
/// `{"listen_error": KIND}`.
async fn serve(id: u64) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut args = std::env::args().skip(2);
    let address = args.next().unwrap_or_default();
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    let delay = Duration::from_millis(args.next().and_then(|n| n.parse().ok()).unwrap_or(0));
    let worker = ClusterWorker::builder().start().await?;
    let mut listener = match worker.listen(address.as_str()).await {
        Ok(listener) => listener,
        Err(error) => {
            worker
                .send(
                    &json!({"listen_error": format!("{:?}", error.kind), "address": error.address}),
                )
                .await?;
            worker.closed().await;
            return Ok(());
        }
    };
    let answer = |mut stream: Box<dyn Stream>| async move {
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        tokio::time::sleep(delay).await;
        let body = format!("worker {id}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    // Accept until COUNT or until the worker is asked to close; then finish
    // the answers in flight.
    let mut answers = tokio::task::JoinSet::new();
    let closing = worker.closing();
    tokio::pin!(closing);
    for _ in 0..count {
        let stream: Box<dyn Stream> = tokio::select! {
            () = &mut closing => break,
            accepted = listener.accept() => match accepted? {
                isotropic_cluster::Connection::Tcp(stream) => Box::new(stream),
                isotropic_cluster::Connection::Unix(stream) => Box::new(stream),
                _ => return Err("unknown connection kind".into()),
            },
        };
        let _ = worker.send(&json!({"accepted": id})).await;
        answers.spawn(answer(stream));
    }
    drop(listener);
    while answers.join_next().await.is_some() {}
    worker.closed().await;
    Ok(())
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Asks the primary `{"type": "add", "a": 2, "b": 3}` and sends back
/// `{"sum": reply}`.
async fn ask() -> Result<(), Box<dyn std::error::Error>> {
    let worker = ClusterWorker::builder().start().await?;
    let sum: u64 = worker
        .request(&json!({"type": "add", "a": 2, "b": 3}))
        .await?;
    worker.send(&json!({"sum": sum})).await?;
    worker.closed().await;
    Ok(())
}
