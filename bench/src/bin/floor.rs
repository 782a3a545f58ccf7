//! The floor: the least the kernel allows for each job, in plain Rust (std, and
//! tokio for one variant of ping-pong), no library. A socket pair per child,
//! passed as the child's stdin; raw length-prefixed frames, written in 64 KiB
//! batches where a job allows it. `floor METRIC COUNT`.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::{LARGE_BYTES as LARGE, Result, SMALL_BYTES as SMALL, args, per, rate, report, rss_mib};

const BATCH: usize = 64 * 1024;

fn main() -> Result {
    let (metric, count) = args();
    if std::env::var_os("FLOOR_CHILD").is_some() {
        return child(&metric, count);
    }
    let value = match metric.as_str() {
        "spawn" => spawn(count)?,
        "pingpong" => pingpong(count)?,
        "pingpong-tokio" => pingpong_tokio(count)?,
        "down" => down(count, SMALL, 1)?,
        "large" => down(count, LARGE, 1)? * LARGE as f64 / 1e6,
        "broadcast" => down(count, SMALL, 4)? * 4.0,
        "up" => up(count)?,
        "memcpy-16mib" => memcpy(count, 16 << 20)?,
        "restart" => restart(count)?,
        "shutdown" => shutdown(count)?,
        "rss-primary" | "rss-worker" => rss(&metric)?,
        other => return Err(format!("unknown metric {other}").into()),
    };
    report(value);
    Ok(())
}

// ===== child =====

fn child(metric: &str, count: u64) -> Result {
    let mut channel = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    channel.write_all(b"r")?;
    match metric {
        "pingpong" | "pingpong-tokio" => {
            let mut buf = [0u8; 8];
            while channel.read_exact(&mut buf).is_ok() {
                channel.write_all(&buf)?;
            }
        }
        "down" | "large" | "broadcast" => {
            let mut reader = BufReader::with_capacity(BATCH, channel.try_clone()?);
            let mut header = [0u8; 4];
            let mut body = Vec::new();
            for _ in 0..count {
                reader.read_exact(&mut header)?;
                body.resize(u32::from_be_bytes(header) as usize, 0);
                reader.read_exact(&mut body)?;
            }
            channel.write_all(b"d")?;
            wait_for_exit(&mut channel);
        }
        "up" => {
            let mut go = [0u8; 1];
            channel.read_exact(&mut go)?;
            write_frames(&mut channel, count, SMALL)?;
            wait_for_exit(&mut channel);
        }
        _ => wait_for_exit(&mut channel),
    }
    Ok(())
}

/// Blocks until the parent writes a byte or closes the channel.
fn wait_for_exit(channel: &mut UnixStream) {
    let _ = channel.read(&mut [0u8; 1]);
}

/// Writes `count` frames of `size` bytes, batched.
fn write_frames(channel: &mut UnixStream, count: u64, size: usize) -> Result {
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.resize(4 + size, b'x');
    let mut batch = Vec::with_capacity(BATCH + frame.len());
    for _ in 0..count {
        batch.extend_from_slice(&frame);
        if batch.len() >= BATCH {
            channel.write_all(&batch)?;
            batch.clear();
        }
    }
    channel.write_all(&batch)?;
    Ok(())
}

// ===== parent =====

struct Worker {
    child: Child,
    channel: UnixStream,
}

impl Worker {
    /// Starts this program as a child with `metric`, and waits for its ready byte.
    fn start(metric: &str, count: u64) -> Result<Self> {
        let worker = Self::spawn(metric, count)?;
        worker.ready()
    }

    fn spawn(metric: &str, count: u64) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new("/proc/self/exe")
            .args([metric, &count.to_string()])
            .env("FLOOR_CHILD", "1")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()?;
        Ok(Self {
            child,
            channel: ours,
        })
    }

    fn ready(mut self) -> Result<Self> {
        let mut byte = [0u8; 1];
        self.channel.read_exact(&mut byte)?;
        Ok(self)
    }

    fn stop(mut self) -> Result {
        self.channel.write_all(b"x")?;
        self.child.wait()?;
        Ok(())
    }
}

fn spawn(n: u64) -> Result<f64> {
    let started = Instant::now();
    let spawned: Vec<Worker> = (0..n)
        .map(|_| Worker::spawn("idle", 0))
        .collect::<Result<_>>()?;
    let workers: Vec<Worker> = spawned
        .into_iter()
        .map(Worker::ready)
        .collect::<Result<_>>()?;
    let elapsed = started.elapsed();
    workers.into_iter().try_for_each(Worker::stop)?;
    Ok(per(elapsed, n, Duration::from_millis(1)))
}

/// Milliseconds per copy of `size` bytes between two buffers already
/// touched (a memcpy, no page faults). The source is opaque to the
/// compiler: copied from a buffer it knows to be all one byte, the copy
/// became a `memset` (half the memory traffic), which is not a copy.
fn memcpy(n: u64, size: usize) -> Result<f64> {
    let source = std::hint::black_box(vec![b'z'; size]);
    let mut target = vec![0u8; size];
    let started = Instant::now();
    for i in 0..n {
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut target)[i as usize % size] ^= 1;
    }
    let elapsed = started.elapsed();
    Ok(per(elapsed, n, Duration::from_millis(1)))
}

fn pingpong(n: u64) -> Result<f64> {
    let mut worker = Worker::start("pingpong", n)?;
    let mut buf = [0u8; 8];
    let started = Instant::now();
    for i in 0..n {
        worker.channel.write_all(&i.to_le_bytes())?;
        worker.channel.read_exact(&mut buf)?;
    }
    let elapsed = started.elapsed();
    drop(worker.channel);
    worker.child.wait()?;
    Ok(per(elapsed, n, Duration::from_micros(1)))
}

fn pingpong_tokio(n: u64) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let worker = Worker::start("pingpong-tokio", n)?;
    let mut child = worker.child;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let elapsed = runtime.block_on(async move {
        worker.channel.set_nonblocking(true)?;
        let mut channel = tokio::net::UnixStream::from_std(worker.channel)?;
        let mut buf = [0u8; 8];
        let started = Instant::now();
        for i in 0..n {
            channel.write_all(&i.to_le_bytes()).await?;
            channel.read_exact(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(started.elapsed())
    })?;
    child.wait()?;
    Ok(per(elapsed, n, Duration::from_micros(1)))
}

/// Frames of `size` bytes per second to each of `children` children, counted
/// when every child has read them all.
fn down(n: u64, size: usize, children: usize) -> Result<f64> {
    let metric = if size == LARGE { "large" } else { "down" };
    let mut workers: Vec<Worker> = (0..children)
        .map(|_| Worker::start(metric, n))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    if children == 1 {
        write_frames(&mut workers[0].channel, n, size)?;
    } else {
        // Interleave the batches so that every child works at once.
        let mut threads = Vec::new();
        for worker in &workers {
            let mut channel = worker.channel.try_clone()?;
            threads.push(std::thread::spawn(move || {
                write_frames(&mut channel, n, size).map_err(|e| e.to_string())
            }));
        }
        for thread in threads {
            thread.join().map_err(|_| "writer panicked")??;
        }
    }
    for worker in &mut workers {
        let mut done = [0u8; 1];
        worker.channel.read_exact(&mut done)?;
    }
    let elapsed = started.elapsed();
    workers.into_iter().try_for_each(Worker::stop)?;
    Ok(rate(elapsed, n))
}

fn up(n: u64) -> Result<f64> {
    let mut worker = Worker::start("up", n)?;
    let mut reader = BufReader::with_capacity(BATCH, worker.channel.try_clone()?);
    let mut header = [0u8; 4];
    let mut body = Vec::new();
    let started = Instant::now();
    worker.channel.write_all(b"g")?;
    for _ in 0..n {
        reader.read_exact(&mut header)?;
        body.resize(u32::from_be_bytes(header) as usize, 0);
        reader.read_exact(&mut body)?;
    }
    let elapsed = started.elapsed();
    worker.stop()?;
    Ok(rate(elapsed, n))
}

fn restart(n: u64) -> Result<f64> {
    let mut worker = Worker::start("idle", 0)?;
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        worker.child.kill()?;
        worker.child.wait()?;
        worker = Worker::start("idle", 0)?;
        total += started.elapsed();
    }
    worker.stop()?;
    Ok(per(total, n, Duration::from_millis(1)))
}

fn shutdown(n: u64) -> Result<f64> {
    let workers: Vec<Worker> = (0..n)
        .map(|_| Worker::start("idle", 0))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    workers.into_iter().try_for_each(Worker::stop)?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn rss(metric: &str) -> Result<f64> {
    let worker = Worker::start("idle", 0)?;
    let value = if metric == "rss-primary" {
        rss_mib(std::process::id())
    } else {
        rss_mib(worker.child.id())
    };
    worker.stop()?;
    Ok(value)
}
