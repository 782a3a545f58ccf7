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
