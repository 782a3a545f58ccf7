//! What the three benchmark programs share: the metrics, their parameters,
//! the message they send, and how they report.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A small message: about 64 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Small {
    /// Sequence number.
    pub seq: u64,
    /// Filler, so that the encoded message is about 64 bytes.
    pub data: String,
}

impl Small {
    /// The `seq`-th message.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            data: "x".repeat(36),
        }
    }
}

/// A typed message (`type` "tick", routed): about 64 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Typed {
    /// Always "tick".
    #[serde(rename = "type")]
    pub kind: String,
    /// Sequence number.
    pub seq: u64,
    /// Filler, so that the encoded message is about 64 bytes.
    pub data: String,
}

impl Typed {
    /// The `seq`-th message.
    pub fn new(seq: u64) -> Self {
        Self {
            kind: "tick".into(),
            seq,
            data: "x".repeat(24),
        }
    }
}

/// A request the workers echo (`type` "echo").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    /// Always "echo".
    #[serde(rename = "type")]
    pub kind: String,
    /// The number to echo.
    pub n: u64,
}

impl Echo {
    /// The request for `n`.
    pub fn new(n: u64) -> Self {
        Self {
            kind: "echo".into(),
            n,
        }
    }
}

/// The size of a small bytes message (and of the floor's small frames).
pub const SMALL_BYTES: usize = 64;
/// The size of a large bytes message (and of the floor's large frames).
pub const LARGE_BYTES: usize = 64 * 1024;

/// A 64 KiB payload, as a string of that many bytes.
pub fn large_payload() -> String {
    "y".repeat(64 * 1024)
}

/// What the benchmark programs return.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The `main` of a program that is both a primary and its workers: tells the
/// role (before any thread starts), then runs the matching side on a
/// single-threaded runtime with the metric and count of the command line.
pub fn run<W, P>(
    worker: impl FnOnce(String, u64) -> W,
    primary: impl FnOnce(String, u64) -> P,
) -> Result
where
    W: std::future::Future<Output = Result>,
    P: std::future::Future<Output = Result>,
{
    let is_worker = isotropic_cluster::is_worker();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (metric, count) = args();
    if is_worker {
        runtime.block_on(worker(metric, count))
    } else {
        runtime.block_on(primary(metric, count))
    }
}

/// The metric to run and its count, from the command line:
/// `PROGRAM METRIC COUNT`.
pub fn args() -> (String, u64) {
    let mut args = std::env::args().skip(1);
    let metric = args.next().unwrap_or_default();
    let count = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    (metric, count)
}

/// Prints the result line the driver reads.
pub fn report(value: f64) {
    println!("{}", serde_json::json!({ "value": value }));
}

/// Prints the result line with a note the driver keeps (and prints).
pub fn report_with(value: f64, note: &str) {
    println!("{}", serde_json::json!({ "value": value, "note": note }));
}

/// Per-unit time in the given unit, for `count` units that took `elapsed`.
pub fn per(elapsed: Duration, count: u64, unit: Duration) -> f64 {
    elapsed.as_secs_f64() / count as f64 / unit.as_secs_f64()
}

/// Units per second.
pub fn rate(elapsed: Duration, count: u64) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The resident memory of a process, in MiB (from `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs wrk against `url` (64 connections, 2 threads, for `seconds`) and
/// returns its requests per second.
///
/// # Errors
///
/// When wrk cannot run, fails, or prints no rate.
pub fn wrk(url: &str, seconds: u64) -> std::result::Result<f64, String> {
    let output = std::process::Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), url])
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("Socket errors") {
        return Err(format!("wrk failed or saw socket errors: {text}"));
    }
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .ok_or_else(|| format!("no rate in wrk's output: {text}"))
}
