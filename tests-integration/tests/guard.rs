//! The orphan guard: it never signals a process that is not ours (issue 12,
//! item 1).
#![cfg(target_os = "linux")]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use tests_integration::{DEADLINE, Running, fixture_primary};

/// Runs `command` to its end (killed after [`DEADLINE`]); returns its status
/// and stdout.
fn run(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = Running(command.stdout(Stdio::piped()).spawn().expect("spawn"));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{command:?} did not end in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (status, reader.join().expect("reader"))
}

/// Whether this machine lets us make user and PID namespaces.
fn namespaces() -> bool {
    let probe = Command::new("unshare")
        .args(["-Urpf", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        eprintln!("skipped: no user and PID namespaces here (unshare -Urpf)");
        return false;
    }
    true
}

#[test]
fn the_guard_spares_a_stranger_given_the_pid_of_a_failed_spawn() {
    if !namespaces() {
        return;
    }
    let fixture = fixture_primary().with_file_name("fixture-orphans");
    let (status, stdout) = run(Command::new("unshare")
        .args(["--kill-child", "-Urpf", "--mount-proc"])
        .arg(fixture)
        .arg("stranger"));
    assert!(status.success(), "{status}: {stdout}");
    assert_eq!(stdout.trim(), "stranger alive");
}
