//! Every example runs to its end by itself, with its closing line, and leaves
//! no process behind (a smoke test; the behaviours are tested elsewhere).
#![cfg(target_os = "linux")]

use tests_integration::{DEADLINE, example};

async fn run(name: &str, last_line: &str) {
    let path = example(name);
    assert!(
        path.exists(),
        "{} is not built (run the tests with cargo test or nextest)",
        path.display()
    );
    let mut command = tokio::process::Command::new(&path);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("example {name} did not end in time"))
        .expect("run example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().last(),
        Some(last_line),
        "{name} printed:\n{stdout}"
    );
}

#[tokio::test]
async fn basic() {
    run("basic", "All 4 workers answered and exited.").await;
}

#[tokio::test]
async fn round_robin() {
    run("round_robin", "All tasks done; every worker has exited.").await;
}

#[tokio::test]
async fn tagged_tasks() {
    run("tagged_tasks", "All 9 tasks done.").await;
}

#[tokio::test]
async fn typed_routing() {
    run("typed_routing", "Every worker was helped.").await;
}

#[tokio::test]
async fn custom_init() {
    run("custom_init", "Three workers were ready; all have exited.").await;
}

#[tokio::test]
async fn health() {
    run("health", "Done.").await;
}

#[tokio::test]
async fn http_server_serves_then_shuts_down_gracefully_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let path = example("http_server");
    assert!(path.exists(), "{} is not built", path.display());
    let mut child = tokio::process::Command::new(&path)
        .args(["2", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start http_server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(rest) = line.split_once("listening on http://") {
                return rest.1.trim_end_matches('/').to_owned();
            }
        }
        panic!("http_server ended before listening");
    })
    .await
    .expect("http_server listens in time");
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    assert!(response.contains("Hello from worker "), "{response}");

    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success());
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        rest.push(line);
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("All workers have exited"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn task_pool() {
    run("task_pool", "All jobs handled.").await;
}
