//! The deployment files of `deploy/`, run or checked as `docs/deployment.md`
//! describes them: the systemd units verified (`systemd-analyze verify`,
//! where installed) and their service started as systemd would (the
//! `.socket` unit's socket at fd 3, a `NOTIFY_SOCKET`); the container
//! image's command run as PID 1 of a PID namespace; the Kubernetes
//! manifests' probes, ports and grace checked against their arguments.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};

mod common;
use common::http::served_by_every_worker;
use common::packages::installed_or_skip;
use common::service_manager::{Manager, field};
use common::*;

/// A file of the repository.
fn repository(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A unit file's `section` → key → values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The sections and keys of a systemd unit file (comments and blank lines
/// skipped); panics on a line that is neither.
fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_owned());
            unit.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line.split_once('=').expect("KEY=VALUE");
        let section = section.as_ref().expect("a key in a section");
        let keys = unit.get_mut(section).expect("the section");
        keys.entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

/// The one value of `key` in `section`.
fn value<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match unit.get(section).and_then(|keys| keys.get(key)) {
        Some(values) if values.len() == 1 => &values[0],
        other => panic!("[{section}] {key}: {other:?}"),
    }
}

/// The argument after `flag` in `args`.
fn after<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let at = args.iter().position(|a| *a == flag);
    at.and_then(|at| args.get(at + 1))
        .unwrap_or_else(|| panic!("{flag} in {args:?}"))
}

#[test]
fn the_systemd_units_verify_and_agree() {
    let service = parse_unit(&read("deploy/systemd/app.service"));
    let socket = parse_unit(&read("deploy/systemd/app.socket"));
    assert_eq!(value(&service, "Service", "Type"), "notify");
    assert!(["main", "all"].contains(&value(&service, "Service", "NotifyAccess")));
    assert_eq!(
        value(&service, "Service", "ExecReload"),
        "/bin/kill -HUP $MAINPID"
    );
    assert_eq!(value(&service, "Service", "KillMode"), "mixed");
    assert!(value(&service, "Unit", "Requires").contains("app.socket"));
    // The service serves the socket unit's address with --listen.
    let start = value(&service, "Service", "ExecStart");
    let args: Vec<&str> = start.split_whitespace().collect();
    assert_eq!(args[1], "run", "{start}");
    let listen = value(&socket, "Socket", "ListenStream");
    assert_eq!(after(&args, "--listen"), listen);
    assert_eq!(value(&socket, "Socket", "Accept"), "no");

    // systemd's own check, of copies whose ExecStart exists here.
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the units' keys were checked, not verified");
        return;
    };
    assert!(version.status.success());
    let dir = std::env::temp_dir().join(format!("isotropic-cli-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let cli = env!("CARGO_BIN_EXE_isotropic-cluster");
    let text = read("deploy/systemd/app.service").replace("/usr/local/bin/isotropic-cluster", cli);
    std::fs::write(dir.join("app.service"), text).expect("written");
    std::fs::copy(
        repository("deploy/systemd/app.socket"),
        dir.join("app.socket"),
    )
    .expect("copied");
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args([dir.join("app.service"), dir.join("app.socket")])
        .output()
        .expect("systemd-analyze verify");
    std::fs::remove_dir_all(&dir).expect("removed");
    let said = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success(), "{said}");
    // (An unknown key or a bad value is only a warning.)
    assert!(said.trim().is_empty(), "{said}");
}

/// Starts its arguments as systemd would with a `.socket` unit: a
/// listening socket on 127.0.0.1 at fd 3 (`LISTEN_*`), `{port}` in the
/// arguments replaced by its port.
const SOCKET_ACTIVATION: &str = r#"
import os, socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1024)
os.dup2(server.fileno(), 3)
os.set_inheritable(3, True)
port = str(server.getsockname()[1])
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="app.socket")
args = [a.replace("{port}", port) for a in sys.argv[1:]]
os.execv(args[0], args)
"#;

#[tokio::test]
async fn the_service_serves_the_socket_units_socket_and_tells_systemd() {
    let unit = parse_unit(&read("deploy/systemd/app.service"));
    let start = value(&unit, "Service", "ExecStart");
    let listen = parse_unit(&read("deploy/systemd/app.socket"));
    let listen = value(&listen, "Socket", "ListenStream");
    let server = repository("examples/recipes/python_server.py");
    // The unit's command, with this build, the recipe's server as the app
    // and the test's loopback port.
    let mut args = vec!["python3", "-c", SOCKET_ACTIVATION];
    for arg in start.split_whitespace() {
        args.push(match arg {
            "/usr/local/bin/isotropic-cluster" => env!("CARGO_BIN_EXE_isotropic-cluster"),
            "/srv/app/current/server" => server.to_str().expect("UTF-8"),
            arg if arg == listen => "127.0.0.1:{port}",
            arg => arg,
        });
    }
    // (2 workers: the machine's cores, here.)
    let at = args
        .iter()
        .position(|a| *a == "--workers")
        .expect("--workers");
    args[at + 1] = "2";
    let at = args.iter().position(|a| *a == "--").expect("--");
    args.insert(at + 1, "python3");
    let (manager, address) = Manager::at_path("unit");
    let mut command = tokio::process::Command::new(args[0]);
    command
        .args(&args[1..])
        .env("NOTIFY_SOCKET", &address)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::null());
    let (mut child, mut stderr) = spawn(command);
    let seen = until(&mut stderr, "listening on").await;
    let line = seen.last().expect("a line");
    assert!(line.ends_with(", passed by socket activation"), "{line}");
    let bound = line
        .split_whitespace()
        .find_map(|word| word.trim_end_matches(',').parse().ok())
        .expect("an address");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    manager.until("READY=1").await;
    served_by_every_worker(bound, 2).await;
    // systemctl reload: SIGHUP to the main pid, then READY=1 again.
    send(&child, rustix::process::Signal::HUP);
    let reload = manager.until("READY=1").await;
    assert_eq!(field(&reload[0], "RELOADING"), Some("1"), "{reload:?}");
    served_by_every_worker(bound, 2).await;
    terminate(&child);
    manager.until("STOPPING=1").await;
    assert_eq!(exit_code(&mut child).await, Some(0));
}

/// The strings of a JSON array instruction (`ENTRYPOINT [...]`) of a
/// Containerfile.
fn json_array(line: &str) -> Vec<String> {
    let (_, array) = line.split_once(' ').expect("an instruction");
    serde_json::from_str(array).expect("a JSON array of strings")
}

#[tokio::test]
async fn the_container_command_serves_as_pid_1() {
    let containerfile = read("deploy/Containerfile");
    let instruction = |name: &str| {
        containerfile
            .lines()
            .rfind(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let (key, value) = instruction("ENV ")[4..].split_once('=').expect("ENV K=V");
    let mut command = json_array(instruction("ENTRYPOINT "));
    command.extend(json_array(instruction("CMD ")));
    let server = repository("examples/recipes/python_server.py");
    let command: Vec<String> = command
        .into_iter()
        .map(|arg| match arg.as_str() {
            "isotropic-cluster" => env!("CARGO_BIN_EXE_isotropic-cluster").to_owned(),
            "/app/server.py" => server.to_str().expect("UTF-8").to_owned(),
            // (Tests listen on loopback.)
            "0.0.0.0:8080" => "127.0.0.1:0".to_owned(),
            _ => arg,
        })
        .collect();
    // One worker per CPU, as in the container.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut child = as_pid_1(&command, &[(key, value)]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let address = listening_address(&until(&mut stderr, "listening on").await);
    until_ready(&mut stderr, workers).await;
    served_by_every_worker(address, workers).await;
    // docker stop: SIGTERM to PID 1.
    let cli = rustix::process::Pid::from_raw(pid_1_of(&child).cast_signed()).expect("a pid");
    rustix::process::kill_process(cli, rustix::process::Signal::TERM).expect("SIGTERM");
    let rest = until(&mut stderr, "all workers exited").await;
    let clean = rest.iter().filter(|l| l.contains("exited with code 0"));
    assert_eq!(clean.count(), workers, "{rest:?}");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

/// Prints the documents of a YAML file as one JSON array.
const YAML_TO_JSON: &str = "import json, sys, yaml; \
    print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";

/// The documents of a YAML file of the repository (read by PyYAML).
fn yaml(bin: &Path, path: &str) -> Vec<serde_json::Value> {
    let output = std::process::Command::new(bin.join("python"))
        .args(["-c", YAML_TO_JSON])
        .arg(repository(path))
        .output()
        .expect("python");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[test]
fn the_kubernetes_manifests_probe_the_metrics_port_and_agree_with_the_arguments() {
    let bin = installed_or_skip!(common::packages::python(common::packages::PYTHON));
    let documents = yaml(&bin, "deploy/kubernetes/deployment.yaml");
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect();
    let port = |name: &str| {
        let ports = container["ports"].as_array().expect("ports");
        let port = ports.iter().find(|p| p["name"] == name).expect("a port");
        port["containerPort"].as_u64().expect("a number")
    };
    let port_of = |address: &str| -> u64 {
        let (_, port) = address.rsplit_once(':').expect("HOST:PORT");
        port.parse().expect("a port")
    };
    assert_eq!(port_of(after(&args, "--listen")), port("http"));
    assert_eq!(port_of(after(&args, "--metrics")), port("metrics"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe}");
    }
    // Kubernetes waits longer than the workers get to leave.
    let grace = after(&args, "--grace");
    let grace: u64 = grace.trim_end_matches('s').parse().expect("seconds");
    let waits = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace");
    assert!(waits > grace, "{waits} s for --grace {grace}s");
    let service = documents.iter().find(|d| d["kind"] == "Service");
    let selector = &service.expect("a Service")["spec"]["selector"];
    assert_eq!(
        *selector,
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    let hpa = yaml(&bin, "deploy/kubernetes/hpa.yaml");
    let target = &hpa[0]["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
}
