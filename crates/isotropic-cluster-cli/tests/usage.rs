//! The command line as people type it: the command without `--`, short
//! flags, addresses as gunicorn takes them, our own messages for bad
//! values, and exit codes that tell a usage error (2) from a start failure
//! (7), as `--help` lists them.
#![cfg(target_os = "linux")]

use std::io::Read as _;

mod common;
use common::*;

/// The CLI with `args` run to its end: its exit code and stderr.
async fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::time::timeout(DEADLINE, command(args).output())
        .await
        .expect("the CLI exits in time")
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[tokio::test]
async fn usage_errors_exit_with_2_and_start_failures_with_7() {
    for (args, says) in [
        (&["run", "--workers", "-1", "true"][..], "-1 is negative"),
        (&["run", "--grace", "soon", "true"], "not a duration: soon"),
        (&["run", "--no-such-flag", "true"], "unexpected argument"),
        (&["run", "-w", "2"], "no command to run"),
        (
            &["run", "--ready", "message", "true"],
            "--ready message needs",
        ),
        (
            &["run", "-b", "localhost:http", "true"],
            "not a port number",
        ),
    ] {
        let (code, stderr) = run_to_end(args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("try '--help'"), "{stderr}");
        assert!(!stderr.contains("'-- -1'"), "no `-- -1` advice: {stderr}");
    }
    let (code, stderr) = run_to_end(&["run", "-w", "1", "/nonexistent/program"]).await;
    assert_eq!(code, Some(7), "{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.starts_with("[primary] cannot start "));
    assert!(
        said.is_some_and(|l| l.contains("/nonexistent/program")),
        "{stderr}"
    );
    // (An address in use: the primary cannot start.)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port().to_string();
    let address = format!("localhost:{port}");
    let (code, stderr) = run_to_end(&["run", "-b", &address, "true"]).await;
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot start the primary: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn help_lists_the_exit_codes() {
    let output = tokio::time::timeout(DEADLINE, command(&["run", "--help"]).output())
        .await
        .expect("in time")
        .expect("run the CLI");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    let codes = help.split_once("Exit codes:").expect("a table").1;
    for code in ["0", "1", "2", "3", "4", "5", "6", "7", "127"] {
        assert!(
            codes
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "{code}: {codes}"
        );
    }
    assert!(codes.contains("2    usage error"), "{codes}");
    assert!(codes.contains("7    cannot start"), "{codes}");
}

#[tokio::test]
async fn bind_takes_a_host_name_and_the_command_its_own_flags() {
    // `-b localhost:0`, `-w 1`, and a command whose own flags follow it
    // without `--`: `python3 -u -c SERVER`.
    const SERVER: &str = "import socket\n\
        s = socket.socket(fileno=3)\n\
        print('up', flush=True)\n\
        while True:\n\
        \x20   c, _ = s.accept()\n\
        \x20   c.sendall(b'hello')\n\
        \x20   c.close()\n";
    let (mut child, mut stderr) = cli(&[
        "run",
        "-b",
        "localhost:0",
        "-w",
        "1",
        "python3",
        "-u",
        "-c",
        SERVER,
    ]);
    let address = listening_address(&until(&mut stderr, "listening on").await);
    assert!(address.ip().is_loopback(), "{address}");
    up(&mut child, 1).await;
    let said = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("a timeout");
        let mut said = String::new();
        stream.read_to_string(&mut said).expect("read");
        said
    })
    .await
    .expect("the client");
    assert_eq!(said, "hello");
    terminate(&child);
    until(&mut stderr, "all workers exited").await;
    // (Python dies of the SIGTERM: not an exit the run counts as a failure.)
    assert_eq!(exit_code(&mut child).await, Some(0));
}
