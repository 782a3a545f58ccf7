//! Scenarios of the orphan guard that need processes of their own.
//!
//! - `fixture-orphans missing-program`: a primary whose program does not
//!   exist. It prints `ready`, then obeys lines on its stdin: `fork` (prints
//!   `failed` or `forked`), `exit` (shuts down and exits 0).
//! - `fixture-orphans stranger`: run as PID 1 of a new PID namespace
//!   (`unshare -Urpf --mount-proc`). Runs a `missing-program` primary, has it
//!   fail a spawn, gives that child's pid to a new process group leader (a
//!   stranger to the primary: `sleep`) through `ns_last_pid`, has the primary
//!   shut down and exit, waits for its orphan guard to exit, and prints
//!   `stranger alive` or `stranger killed`.
//! - `fixture-orphans escape`: a worker (no channel) that starts a grandchild
//!   escaping its process group and session (`setsid -f`, a double fork):
//!   `escaped`, which listens on a loopback port, prints `escaped PID PORT`
//!   and sleeps. The worker then sleeps.
//! - `fixture-orphans escape-primary`: a primary with one `escape` worker; it
//!   prints `WORKER_PID escaped PID PORT` once the grandchild listens, then
//!   waits to be killed.
//! - `fixture-orphans guarded-primary N`: a primary with N `fixture-worker
//!   hung` workers (they ignore SIGTERM and never read their channel; each
//!   has a child that ignores SIGTERM too); prints `workers PID…` once all
//!   are ready, then waits to be killed. Its log (from INFO) goes to stderr.
//! - `fixture-orphans clean-primary N`: a primary with N `fixture-worker
//!   echo` workers; once all are ready, it shuts down and prints `clean`. It
//!   fails should a worker exit before.
//! - `fixture-orphans pid2 SCENARIO…`: run as PID 1 of a new PID namespace
//!   (where `fixture-orphans SCENARIO…` would be PID 1, which takes every
//!   process of the namespace with it when it dies). Runs `fixture-orphans
//!   SCENARIO…` (as PID 2), reaps every process that ends up its child, and
//!   exits as it did once none is left.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isotropic_cluster::primary::{ClusterPrimary, PrimaryEvent, WorkerChannel, WorkerStdio};
use tests_integration::Mode;

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
/// How long any step may take.
const DEADLINE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("missing-program") => missing_program(),
        Some("stranger") => stranger(),
        Some("escape") => escape(),
        Some("escaped") => escaped(),
        Some("escape-primary") => escape_primary(),
        Some("guarded-primary") => guarded_primary(),
        Some("clean-primary") => clean_primary(),
        Some("pid2") => as_pid_2(),
        other => Err(format!("unknown scenario {other:?}").into()),
    }
}

fn missing_program() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let primary = ClusterPrimary::builder()
            .program("/nonexistent/isotropic-cluster-test-program")
            .start()
            .await?;
        println!("ready");
        for line in std::io::stdin().lines() {
            match line?.as_str() {
                "fork" => match primary.fork(1).await {
                    Ok(_) => println!("forked"),
                    Err(_) => println!("failed"),
                },
                "exit" => break,
                other => return Err(format!("unknown command {other:?}").into()),
            }
        }
        primary.shut_down().await?;
        Ok(())
    })
}

/// The clock that `/proc/PID/stat` start times count, in their ticks (1/100 s).
fn ticks() -> i64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    now.tv_sec * 100 + now.tv_nsec / 10_000_000
}

fn stranger() -> Result<(), Box<dyn std::error::Error>> {
    let mut primary = Command::new(std::env::current_exe()?)
        .arg("missing-program")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_primary = primary.stdin.take().ok_or("stdin")?;
    let mut from_primary = BufReader::new(primary.stdout.take().ok_or("stdout")?).lines();
    let mut expect = |wanted: &str| match from_primary.next() {
        Some(Ok(line)) if line == wanted => Ok(()),
        other => Err(format!("expected {wanted:?}, got {other:?}")),
    };
    expect("ready")?;
    writeln!(to_primary, "fork")?;
    expect("failed")?;
    // The last pid given in this namespace: the child whose exec failed
    // (forked after the guard), reaped by now.
    let pid: i32 = std::fs::read_to_string(NS_LAST_PID)?.trim().parse()?;
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("pid {pid} is not the failed child").into());
    }
    // A later process: one clock tick later at least, so that its start time
    // differs (the guard tells processes with one pid apart by it).
    let failed = ticks();
    let started = Instant::now();
    while ticks() <= failed {
        if started.elapsed() > DEADLINE {
            return Err("the clock does not move".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(NS_LAST_PID, (pid - 1).to_string())?;
    let mut stranger = Command::new("sleep").arg("300").process_group(0).spawn()?;
    let stranger_pid = i32::try_from(stranger.id())?;
    if stranger_pid != pid {
        let _ = stranger.kill();
        return Err(format!("the stranger got pid {stranger_pid}, not {pid}").into());
    }
    writeln!(to_primary, "exit")?;
    if !primary.wait()?.success() {
        return Err("the primary failed".into());
    }
    // The guard is our child now (we are PID 1): wait for it to exit, after
    // it has ended what it held (or for the stranger, killed).
    let first = rustix::process::wait(rustix::process::WaitOptions::empty())?;
    let stranger_first =
        first.is_some_and(|(exited, _)| exited.as_raw_nonzero().get() == stranger_pid);
    if !stranger_first && stranger.try_wait()?.is_none() {
        println!("stranger alive");
        stranger.kill()?;
        stranger.wait()?;
    } else {
        println!("stranger killed");
    }
    Ok(())
}

fn escape() -> Result<(), Box<dyn std::error::Error>> {
    let status = Command::new("setsid")
        .arg("-f")
        .arg(std::env::current_exe()?)
        .arg("escaped")
        .status()?;
    if !status.success() {
        return Err("setsid -f failed".into());
    }
    std::thread::sleep(Duration::from_secs(300));
    Ok(())
}

fn escaped() -> Result<(), Box<dyn std::error::Error>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    println!("escaped {} {port}", std::process::id());
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(300));
    Ok(())
}

fn escape_primary() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let primary = ClusterPrimary::builder()
            .program(std::env::current_exe()?)
            .arg("escape")
            .channel(WorkerChannel::None)
            .stdio(WorkerStdio::Piped)
            .start()
            .await?;
        let mut events = primary.events();
        primary.fork(1).await?;
        while let Some(event) = events.next().await {
            if let PrimaryEvent::WorkerOutput(output) = event
                && output.line.starts_with("escaped ")
            {
                println!("{} {}", output.worker.pid(), output.line);
                std::io::stdout().flush()?;
            }
        }
        Err("the primary ended".into())
    })
}

fn guarded_primary() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    with_ready_workers(Mode::Hung, |primary, pids| async move {
        // Held: dropped, it would shut the workers down.
        let _primary = primary;
        let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
        println!("workers {}", pids.join(" "));
        std::io::stdout().flush()?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

fn clean_primary() -> Result<(), Box<dyn std::error::Error>> {
    with_ready_workers(Mode::Echo, |primary, _pids| async move {
        primary.shut_down().await?;
        println!("clean");
        Ok(())
    })
}

/// Starts COUNT (the second argument) fixture workers in `mode` on a
/// runtime of its own, waits until all are in the pool (an exit is an
/// error), then runs `then` with the primary and the workers' pids.
fn with_ready_workers<F, Fut>(mode: Mode, then: F) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnOnce(ClusterPrimary, Vec<u32>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let count: usize = std::env::args().nth(2).ok_or("no count")?.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let primary = ClusterPrimary::builder()
            .program(std::env::current_exe()?.with_file_name("fixture-worker"))
            .arg(mode.as_str())
            .start()
            .await?;
        let mut events = primary.events();
        primary.fork(count).await?;
        let mut pids = Vec::new();
        while pids.len() < count {
            match events.next().await {
                Some(PrimaryEvent::AddWorker(add)) => pids.push(add.worker.pid()),
                Some(PrimaryEvent::WorkerExit(exit)) => {
                    return Err(format!("a worker exited: {exit:?}").into());
                }
                Some(_) => {}
                None => return Err("the primary ended".into()),
            }
        }
        then(primary, pids).await
    })
}

fn as_pid_2() -> Result<(), Box<dyn std::error::Error>> {
    let child = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(2))
        .spawn()?;
    let child = i32::try_from(child.id())?;
    let mut code = 1;
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == child => {
                code = status.exit_status().unwrap_or(1);
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::CHILD) => break,
            Err(error) => return Err(error.into()),
        }
    }
    std::process::exit(code)
}
