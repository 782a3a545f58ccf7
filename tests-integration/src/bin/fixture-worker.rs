//! A worker program for the end-to-end tests. The first argument picks a
//! behaviour: a [`Mode`].
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Duration;

use bytes::Bytes;
use isotropic_cluster::worker::{ClusterWorker, InitializeComplete, PrimaryBytes, PrimaryMessage};
use isotropic_cluster::{HandleRequests, Subscribe};
use serde::Deserialize;
use serde_json::{Value, json};
use tests_integration::wire::{self, Kind};
use tests_integration::{BadInput, FLOOD_MESSAGES, Mode};

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
    /// Panic in the message handler.
    Panic,
    /// Block the event loop (sleep in the handler) for `ms`.
    Block { ms: u64 },
    /// Keep a blocking-pool thread and a thread of its own busy (spinning)
    /// for `ms`, then send `{"busy": "done"}`; the event loop stays free.
    Busy { ms: u64 },
    /// Run `count` jobs of 50 ms in a task, each followed by a watchdog's
    /// progress (within `within_ms`), then send `{"jobs": count}`; then
    /// drop the watchdog, or, if `stall`, hold it and never progress again.
    Jobs {
        within_ms: u64,
        count: u32,
        stall: bool,
    },
    /// Allocate this many MiB, touch every page, keep it, and say
    /// `{"allocated": mib}`.
    Allocate { mib: usize },
    /// Keep a CPU busy for this long, then say `{"spun": ms}`.
    Spin { ms: u64 },
    /// Count this many requests served (`count_served`), and say whether
    /// the primary took the count: `{"counted": bool}`.
    Served { requests: u64 },
    /// Came with fds: sends them back, unused, with the bytes `fds back`,
    /// from the handler (its context's `try_send_bytes_with_fds`).
    FdsBack,
    /// Came with a pipe's write end and a file: writes `worker ID` into the
    /// pipe, reads the file, and sends back `{"file": text}` with the read
    /// end of a pipe of its own (holding `back from ID`) and the file.
    UseFds,
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
    let mut args = std::env::args().skip(1);
    let mode: Mode = args.next().unwrap_or_default().parse()?;
    if !is_worker {
        return Err(format!("fixture-worker ({mode}) started outside a cluster").into());
    }
    match mode {
        Mode::Echo => echo(ClusterWorker::builder()).await,
        Mode::BeforeReady => {
            let builder = ClusterWorker::builder().initialize(|worker| async move {
                worker.send(&json!("ready")).await?;
                worker.send(&json!({"type": "early"})).await
            });
            echo(builder).await
        }
        Mode::NeverReady => {
            echo(ClusterWorker::builder().before::<InitializeComplete>(|e| e.prevent())).await
        }
        Mode::InitFail => {
            let builder =
                ClusterWorker::builder().initialize(|_| async { Err::<(), _>("no database") });
            echo(builder).await
        }
        Mode::PanicInCleanup => {
            echo(ClusterWorker::builder().on_destroy(|| async { panic!("bug in the cleanup") }))
                .await
        }
        Mode::ExitAtStart => std::process::exit(3),
        Mode::Hung => hung(raw_channel(raw_fd)),
        Mode::OldVersion => old_version(raw_channel(raw_fd)),
        Mode::Serve => serve(id, args).await,
        Mode::ListenAll => listen_all(id, args).await,
        Mode::Ask => ask().await,
        Mode::AskBytes => ask_bytes().await,
        Mode::AskWithoutReading => {
            let count: u64 = args.next().unwrap_or_default().parse()?;
            let hold: u64 = args.next().unwrap_or_default().parse()?;
            ask_without_reading(raw_channel(raw_fd), count, Duration::from_millis(hold))
        }
        Mode::BadAfterFirst if id == 1 => echo(ClusterWorker::builder()).await,
        Mode::BadAfterFirst => {
            let case: BadInput = args.next().unwrap_or_default().parse()?;
            bad_input(raw_channel(raw_fd), case)
        }
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
        .handle_bytes("reverse", |body: Bytes| {
            Ok::<_, String>(body.iter().rev().copied().collect::<Vec<u8>>())
        })
        .handle_bytes("whoami", move |_| {
            Ok::<_, String>(id.to_be_bytes().to_vec())
        })
        .handle_bytes("fail", |_| Err::<Bytes, _>("no such bytes"))
        .handle_bytes("die", |_| -> Result<Bytes, String> {
            std::process::exit(1)
        })
        // Odd workers die on it, even ones answer their id: for dispatch's retries.
        .handle_bytes("flaky", move |_| {
            if id % 2 == 1 {
                std::process::exit(1)
            } else {
                Ok::<_, String>(id.to_be_bytes().to_vec())
            }
        })
        // The body is a number of milliseconds, in decimal.
        .handle_bytes_async("sleep", move |body: Bytes| async move {
            let ms = std::str::from_utf8(&body)
                .ok()
                .and_then(|ms| ms.parse().ok());
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
            Ok::<_, String>(id.to_be_bytes().to_vec())
        })
        .route::<Ping>("ping", |event, ping| {
            let _ = event.context().try_send(&json!({"pong": ping.n}));
        })
        .on::<PrimaryBytes>(|event| {
            let bytes = event.bytes.clone();
            let _ = event.context().try_send_bytes(bytes);
        })
        .on::<PrimaryMessage>(|event| {
            let message: Value = event.message.decode().unwrap_or_default();
            match event.message.decode::<Command>() {
                Ok(Command::Exit { code }) => std::process::exit(code),
                Ok(Command::Destroy) => event.context().destroy(Duration::from_secs(5)),
                Ok(Command::Print { text }) => {
                    println!("{text}");
                    eprintln!("{text} (stderr)");
                    let _ = std::io::stdout().flush();
                }
                Ok(Command::Inspect) => {
                    let _ = event.context().try_send(&json!({"inspect": inspect()}));
                }
                Ok(Command::Panic) => panic!("bug in the message handler"),
                Ok(Command::Block { ms }) => std::thread::sleep(Duration::from_millis(ms)),
                Ok(Command::Busy { ms }) => busy(event.context().handle(), ms),
                Ok(Command::Jobs {
                    within_ms,
                    count,
                    stall,
                }) => jobs(event.context().handle(), within_ms, count, stall),
                Ok(Command::Allocate { mib }) => {
                    // Written to, so resident; kept to the end.
                    std::mem::forget(vec![1_u8; mib << 20]);
                    let _ = event.context().try_send(&json!({"allocated": mib}));
                }
                Ok(Command::Served { requests }) => {
                    let worker = event.context().handle().expect("a running worker");
                    let counted = worker.count_served(requests).expect("sent");
                    let _ = event.context().try_send(&json!({ "counted": counted }));
                }
                Ok(Command::Spin { ms }) => {
                    let started = std::time::Instant::now();
                    while started.elapsed() < Duration::from_millis(ms) {
                        std::hint::spin_loop();
                    }
                    let _ = event.context().try_send(&json!({"spun": ms}));
                }
                Ok(Command::FdsBack) => {
                    let fds = event.take_fds();
                    let _ = event
                        .context()
                        .try_send_bytes_with_fds(&b"fds back"[..], fds);
                }
                Ok(Command::UseFds) => {
                    let fds = event.take_fds();
                    let worker = event.context().handle().expect("a running worker");
                    tokio::spawn(async move {
                        if let Err(error) = use_fds(&worker, fds).await {
                            let _ = worker.try_send(&json!({"useFds": error.to_string()}));
                        }
                    });
                }
                Ok(Command::SpawnChild) => {
                    let child = std::process::Command::new("sleep").arg("300").spawn();
                    let pid = child.map(|c| c.id()).unwrap_or_default();
                    let _ = event.context().try_send(&json!({"child": pid}));
                }
                Err(_) => {
                    let _ = event.context().try_send(&json!({"echo": message}));
                }
            }
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}

/// Uses the fds of a `UseFds` command: a pipe's write end and a file.
async fn use_fds(
    worker: &ClusterWorker,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<(), Box<dyn std::error::Error>> {
    let [pipe, file]: [std::os::fd::OwnedFd; 2] = fds
        .try_into()
        .map_err(|fds: Vec<_>| format!("{} fds", fds.len()))?;
    std::fs::File::from(pipe).write_all(format!("worker {}", worker.id()).as_bytes())?;
    let mut file = std::fs::File::from(file);
    let mut text = String::new();
    std::io::Seek::rewind(&mut file)?;
    std::io::Read::read_to_string(&mut file, &mut text)?;
    let (back, mut write) = std::io::pipe()?;
    write.write_all(format!("back from {}", worker.id()).as_bytes())?;
    drop(write);
    let fds = vec![back.into(), file.into()];
    worker.send_with_fds(&json!({ "file": text }), fds).await?;
    Ok(())
}

/// Spins two threads (one of tokio's blocking pool, one of its own) for
/// `ms`, then says `{"busy": "done"}`.
fn busy(worker: Option<ClusterWorker>, ms: u64) {
    let spin = move || {
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    };
    tokio::spawn(async move {
        let thread = std::thread::spawn(spin);
        let _ = tokio::task::spawn_blocking(spin).await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        if let Some(worker) = worker {
            let _ = worker.send(&json!({"busy": "done"})).await;
        }
    });
}

/// A job loop under an application watchdog (see [`Command::Jobs`]).
fn jobs(worker: Option<ClusterWorker>, within_ms: u64, count: u32, stall: bool) {
    let Some(worker) = worker else { return };
    let watchdog = worker.watchdog(Duration::from_millis(within_ms));
    tokio::spawn(async move {
        for _ in 0..count {
            tokio::time::sleep(Duration::from_millis(50)).await;
            watchdog.progress();
        }
        let _ = worker.send(&json!({"jobs": count})).await;
        if stall {
            // Stuck for good, the watchdog held.
            std::future::pending::<()>().await;
        }
        drop(watchdog);
    });
}

/// What a child of this worker sees: its environment's cluster markers (the
/// slot and the generation are the app's, left on purpose) and its open fds
/// that are sockets.
fn inspect() -> Value {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("env | grep ISOTROPIC_CLUSTER | grep -v -e '^ISOTROPIC_CLUSTER_SLOT=' -e '^ISOTROPIC_CLUSTER_GENERATION='; for f in /proc/$$/fd/*; do readlink $f; done | grep socket")
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

/// Sends `count` requests from a thread without reading, waits `hold`, then
/// reads the replies: how many, how many distinct ids, how many wrong.
fn ask_without_reading(
    mut channel: std::os::unix::net::UnixStream,
    count: u64,
    hold: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    wire::read(&mut channel)?;
    greet(&mut channel)?;
    let mut writer = channel.try_clone()?;
    let asking = std::thread::spawn(move || -> std::io::Result<()> {
        for n in 0..count {
            let body = format!(r#"{{"type":"double","n":{n}}}"#);
            let payload = [&n.to_be_bytes()[..], body.as_bytes()].concat();
            writer.write_all(&wire::frame(Kind::Request, &payload))?;
        }
        Ok(())
    });
    std::thread::sleep(hold);
    let (mut seen, mut wrong) = (std::collections::HashSet::new(), 0_u64);
    let mut replies = 0_u64;
    while replies < count {
        let (kind, payload) = wire::read(&mut channel)?;
        if kind != Kind::Reply as u8 {
            continue;
        }
        replies += 1;
        let id = u64::from_be_bytes(payload[..8].try_into()?);
        let answer: Value = serde_json::from_slice(&payload[9..]).unwrap_or_default();
        if payload[8] != 0 || answer != json!(id * 2) {
            wrong += 1;
        }
        seen.insert(id);
    }
    asking.join().map_err(|_| "the asking thread panicked")??;
    let report = json!({"replies": replies, "distinct": seen.len(), "wrong": wrong}).to_string();
    channel.write_all(&wire::frame(Kind::Message, report.as_bytes()))?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Says hello (protocol version 1: what a fixture speaking by hand knows) and
/// ready, by hand.
fn greet(channel: &mut std::os::unix::net::UnixStream) -> std::io::Result<()> {
    channel.write_all(&wire::hello(1))?;
    channel.write_all(&wire::frame(Kind::Ready, b""))
}

/// Hello (protocol version 3) and ready.
fn greet_v3(channel: &mut std::os::unix::net::UnixStream) -> std::io::Result<()> {
    channel.write_all(&wire::hello(3))?;
    channel.write_all(&wire::frame(Kind::Ready, b""))
}

/// Writes `bytes` with `fds` attached to the first byte.
fn send_with_fds(
    channel: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fds: &[impl std::os::fd::AsFd],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&borrowed));
    let sent = sendmsg(
        channel,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    let mut channel = channel;
    channel.write_all(&bytes[sent..])
}

/// Speaks protocol version 1 by hand: echoes messages, leaves on
/// disconnect (or at the end of the channel).
fn old_version(
    mut channel: std::os::unix::net::UnixStream,
) -> Result<(), Box<dyn std::error::Error>> {
    greet(&mut channel)?;
    loop {
        let Ok((kind, payload)) = wire::read(&mut channel) else {
            return Ok(());
        };
        if kind == Kind::Message as u8 {
            let message: Value = serde_json::from_slice(&payload)?;
            let echo = serde_json::to_vec(&json!({ "echo": message }))?;
            channel.write_all(&wire::frame(Kind::Message, &echo))?;
        } else if kind == Kind::Disconnect as u8 {
            channel.write_all(&wire::frame(Kind::Disconnect, b""))?;
            return Ok(());
        }
    }
}

/// Ignores SIGTERM, starts a child that ignores it too (the disposition is
/// inherited), says hello and ready, ignores the disconnect request, and
/// never exits by itself.
fn hung(mut channel: std::os::unix::net::UnixStream) -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: setting a signal's disposition to "ignore" installs no handler code.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    std::process::Command::new("sleep").arg("300").spawn()?;
    greet(&mut channel)?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Says hello and ready (unless the case is about the handshake), then sends
/// the bad input, then waits for the primary to close the channel.
fn bad_input(
    mut channel: std::os::unix::net::UnixStream,
    case: BadInput,
) -> Result<(), Box<dyn std::error::Error>> {
    // Read the primary's hello first, as a peer should: unread data would make
    // our exit a connection reset rather than the input under test.
    wire::read(&mut channel)?;
    let bad: Vec<u8> = match case {
        BadInput::NoHello => wire::frame(Kind::Message, b"{}"),
        BadInput::WrongVersion => wire::hello(99),
        BadInput::HugeLength => {
            greet(&mut channel)?;
            wire::head(u32::MAX, Kind::Message as u8).to_vec()
        }
        BadInput::HugeBytes => {
            greet(&mut channel)?;
            wire::head(u32::MAX, Kind::Bytes as u8).to_vec()
        }
        BadInput::Garbage => {
            greet(&mut channel)?;
            [
                &wire::head(5, wire::UNKNOWN_KIND)[..],
                b"garbage that is not a frame",
            ]
            .concat()
        }
        BadInput::InvalidJson => {
            greet(&mut channel)?;
            wire::frame(Kind::Message, b"{\"type\": ")
        }
        BadInput::InvalidMessagePack => {
            let hello = br#"{"protocol":2,"codec":"msgpack"}"#;
            channel.write_all(&wire::frame(Kind::Hello, hello))?;
            channel.write_all(&wire::frame(Kind::Ready, b""))?;
            wire::frame(Kind::Message, b"\x92\x01")
        }
        BadInput::InvalidUtf8 => {
            greet(&mut channel)?;
            wire::frame(Kind::Message, b"\"\xff\xfe\"")
        }
        BadInput::DeepJson => {
            greet(&mut channel)?;
            let deep = "[".repeat(100_000) + &"]".repeat(100_000);
            wire::frame(Kind::Message, deep.as_bytes())
        }
        BadInput::Flood => {
            greet(&mut channel)?;
            // Batches of 256 messages of 1 KiB, written as fast as the socket
            // takes them.
            let message = wire::frame(
                Kind::Message,
                format!("\"{}\"", "x".repeat(1018)).as_bytes(),
            );
            let batch = message.repeat(256);
            for _ in 0..FLOOD_MESSAGES / 256 {
                channel.write_all(&batch)?;
            }
            Vec::new()
        }
        BadInput::Random => {
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
        BadInput::TooManyFds => {
            greet_v3(&mut channel)?;
            let fds: Vec<_> = (0..=isotropic_cluster::MAX_FDS)
                .map(|_| std::fs::File::open("/dev/null"))
                .collect::<Result<_, _>>()?;
            let count = u8::try_from(fds.len())?;
            let bad = [
                wire::frame(Kind::Fds, &[count]),
                wire::frame(Kind::Message, b"1"),
            ];
            send_with_fds(&channel, &bad.concat(), &fds)?;
            Vec::new()
        }
        BadInput::UnsealedMemfd | BadInput::ShortMemfd => {
            greet_v3(&mut channel)?;
            let memfd = rustix::fs::memfd_create(
                "payload",
                rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
            )?;
            std::fs::File::from(memfd.try_clone()?).write_all(&[7; 4096])?;
            if case == BadInput::ShortMemfd {
                use rustix::fs::SealFlags;
                let all = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
                rustix::fs::fcntl_add_seals(&memfd, all)?;
            }
            // 4096 bytes are there; the short case announces one more.
            let announced: u64 = if case == BadInput::ShortMemfd {
                4097
            } else {
                4096
            };
            let frame = wire::frame(Kind::Sealed, &announced.to_be_bytes());
            send_with_fds(&channel, &frame, &[memfd])?;
            Vec::new()
        }
        BadInput::BytesRequestWithoutBody => {
            greet_v3(&mut channel)?;
            let head = [&1_u64.to_be_bytes()[..], b"reverse"].concat();
            [
                wire::frame(Kind::BytesRequest, &head),
                wire::frame(Kind::Message, b"1"),
            ]
            .concat()
        }
        BadInput::BadBytesReply => {
            greet_v3(&mut channel)?;
            wire::frame(Kind::BytesReply, &[&1_u64.to_be_bytes()[..], &[2]].concat())
        }
        BadInput::BytesRequestFromVersion1 => {
            greet(&mut channel)?;
            let head = [&1_u64.to_be_bytes()[..], b"reverse"].concat();
            [
                wire::frame(Kind::BytesRequest, &head),
                wire::frame(Kind::Bytes, b"abc"),
            ]
            .concat()
        }
        BadInput::ForgedRelease => {
            greet_v3(&mut channel)?;
            wire::frame(Kind::Release, &7_u64.to_be_bytes())
        }
        BadInput::ForgedReturned => {
            greet_v3(&mut channel)?;
            let body = [7_u64, 0, 1].map(u64::to_be_bytes).concat();
            wire::frame(Kind::Returned, &body)
        }
        BadInput::WorkerSegment => {
            greet_v3(&mut channel)?;
            use rustix::fs::{MemfdFlags, SealFlags};
            let memfd = rustix::fs::memfd_create(
                "segment",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )?;
            rustix::fs::ftruncate(&memfd, 4096)?;
            let all = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
            rustix::fs::fcntl_add_seals(&memfd, all)?;
            let body = [&0_u32.to_be_bytes()[..], &4096_u64.to_be_bytes()].concat();
            send_with_fds(&channel, &wire::frame(Kind::Segment, &body), &[memfd])?;
            Vec::new()
        }
        BadInput::Truncated => {
            greet(&mut channel)?;
            let mut cut = wire::frame(Kind::Message, br#"{"type":"cut short"}"#);
            cut.truncate(9);
            channel.write_all(&cut)?;
            // Close the channel in the middle of the frame and exit.
            return Ok(());
        }
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
async fn serve(
    id: u64,
    mut args: impl Iterator<Item = String>,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// `listen-all COUNT ADDRESS…` (see [`Mode::ListenAll`]).
async fn listen_all(
    id: u64,
    mut args: impl Iterator<Item = String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let worker = ClusterWorker::builder().start().await?;
    let (mut held, mut listens) = (Vec::new(), Vec::new());
    for template in args {
        for n in 0..count {
            let address = template
                .replace("{id}", &id.to_string())
                .replace("{n}", &n.to_string());
            match worker.listen(address.as_str()).await {
                Ok(listener) => {
                    held.push(listener);
                    listens.push("ok".to_owned());
                }
                Err(error) => listens.push(format!("{:?}", error.kind)),
            }
        }
    }
    worker.send(&json!({ "listens": listens })).await?;
    worker.closed().await;
    drop(held);
    Ok(())
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Asks the primary `{"type": "add", "a": 2, "b": 3}` and sends back
/// `{"sum": reply}`.
/// See [`Mode::AskBytes`].
async fn ask_bytes() -> Result<(), Box<dyn std::error::Error>> {
    let worker = ClusterWorker::builder().start().await?;
    let reversed = |body: &[u8]| body.iter().rev().copied().collect::<Vec<u8>>();
    let small = b"\x00\xffabc".to_vec();
    let small_ok = worker.request_bytes("reverse", small.clone()).await? == reversed(&small);
    let large: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 251) as u8).collect();
    let large_ok = worker.request_bytes("reverse", large.clone()).await? == reversed(&large);
    let unknown = match worker.request_bytes("nobody", Bytes::new()).await {
        Err(isotropic_cluster::RequestError::Remote { message, .. }) => message,
        other => format!("not a remote error: {other:?}"),
    };
    let report = json!({"small": small_ok, "large": large_ok, "unknown": unknown});
    worker.send(&report).await?;
    worker.closed().await;
    Ok(())
}

async fn ask() -> Result<(), Box<dyn std::error::Error>> {
    let worker = ClusterWorker::builder().start().await?;
    let sum: u64 = worker
        .request(&json!({"type": "add", "a": 2, "b": 3}))
        .await?;
    worker.send(&json!({"sum": sum})).await?;
    worker.closed().await;
    Ok(())
}
