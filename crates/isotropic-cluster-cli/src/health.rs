//! `--health-check CMD`: a reload's new worker is healthy once `sh -c CMD`,
//! told which worker it checks, exits with code 0.

use std::process::Stdio;
use std::sync::Arc;

use isotropic_cluster::primary::WorkerHandle;

/// Runs `command` for `worker`: `Ok` when it exits with code 0, else what it
/// said last (its last line on stderr, or else stdout) and how it ended.
pub(crate) async fn check(command: Arc<str>, worker: WorkerHandle) -> Result<(), String> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&*command)
        .env("ISOTROPIC_CLUSTER_PID", worker.pid().to_string())
        .env("ISOTROPIC_CLUSTER_SLOT", worker.slot().to_string())
        .env("ISOTROPIC_CLUSTER_WORKER_ID", worker.id().to_string())
        .env(
            "ISOTROPIC_CLUSTER_GENERATION",
            worker.generation().to_string(),
        )
        .stdin(Stdio::null())
        // (Killed if the check takes too long: the future is dropped.)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    let last = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        text.lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(str::to_owned)
    };
    let said = last(&output.stderr).or_else(|| last(&output.stdout));
    Err(match said {
        Some(said) => format!("{} ({said})", output.status),
        None => output.status.to_string(),
    })
}
