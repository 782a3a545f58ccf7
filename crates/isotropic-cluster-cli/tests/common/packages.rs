//! Packages the recipe tests install from the registries (PyPI, npm) into
//! the target directory: once for all the tests (under a lock), again when
//! the list changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Skips the test (says why) when its packages cannot be had.
#[allow(unused_macros)] // (each test file uses its own share)
macro_rules! installed_or_skip {
    ($packages:expr) => {
        match $packages {
            Ok(installed) => installed,
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use installed_or_skip;

/// What a failed install says when the registry could not be reached (pip,
/// npm): then the test is skipped, with the reason.
const UNREACHABLE: &[&str] = &[
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "Read timed out",
    "ProxyError",
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
];

/// The Python packages the tests use: the recipes' servers (gunicorn 25.1
/// has the control socket that `--no-control-socket` turns off), and a YAML
/// reader for the Kubernetes manifests. One list, one environment.
pub(crate) const PYTHON: &[&str] = &["gunicorn>=25.1", "uvicorn", "pyyaml"];

/// A virtual environment with `packages` (pip requirements); its `bin`
/// directory. `Err`: the registry is unreachable (why).
pub(crate) fn python(packages: &[&str]) -> Result<PathBuf, String> {
    let dir = install("venv", packages, |dir| {
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(dir);
        let mut pip = Command::new(dir.join("bin/python"));
        pip.args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
            .args(["--retries", "1", "--timeout", "20"])
            .args(packages);
        vec![venv, pip]
    })?;
    Ok(dir.join("bin"))
}

/// A directory with `packages` (npm specs) installed; its `node_modules`,
/// for `NODE_PATH`. `Err`: the registry is unreachable (why).
pub(crate) fn node(packages: &[&str]) -> Result<PathBuf, String> {
    let dir = install("node", packages, |dir| {
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .args(["--fetch-retries", "1", "--prefix"])
            .arg(dir)
            .args(packages);
        vec![npm]
    })?;
    Ok(dir.join("node_modules"))
}

/// Runs the commands of `steps` for the directory `name` unless `packages`
/// are installed there already.
fn install(
    name: &str,
    packages: &[&str],
    steps: impl FnOnce(&Path) -> Vec<Command>,
) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("recipes");
    std::fs::create_dir_all(&root).expect("the packages' directory");
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).expect("a lock file");
    // Released when `lock` is closed, at return (or if this test dies).
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("the lock");
    let dir = root.join(name);
    let marker = root.join(format!("{name}.installed"));
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|installed| installed == wanted) {
        return Ok(dir);
    }
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&dir);
    for mut command in steps(&dir) {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        if output.status.success() {
            continue;
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(word) = UNREACHABLE.iter().find(|word| text.contains(**word)) {
            return Err(format!(
                "the registry is unreachable ({word}) for {command:?}"
            ));
        }
        panic!("{command:?} failed ({}): {text}", output.status);
    }
    std::fs::write(&marker, wanted).expect("the marker");
    Ok(dir)
}
