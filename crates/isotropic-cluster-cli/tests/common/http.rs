//! HTTP on loopback, for the servers of `examples/recipes/`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::DEADLINE;

/// `GET path` on `address`: the body of a 200 answer.
pub(crate) async fn get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connected");
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("an answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.") && head[8..].starts_with(" 200"),
        "{response}"
    );
    body.to_owned()
}

/// Requests, 4 at a time (at most 10 000, within the deadline: a worker
/// may take a while to start serving), until each of the `workers` slots
/// answered (`slot N pid P`, as `examples/recipes/` answer); every answer a
/// 200.
pub(crate) async fn served_by_every_worker(address: SocketAddr, workers: usize) {
    let mut slots = BTreeSet::new();
    let all = async {
        for _ in 0..2500 {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..4 {
                batch.spawn(get(address, "/"));
            }
            for body in batch.join_all().await {
                let slot = body.split_whitespace().nth(1).expect("slot N pid P");
                slots.insert(slot.to_owned());
            }
            if slots.len() == workers {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, all)
        .await
        .expect("answers in time");
    assert_eq!(slots.len(), workers, "the slots that answered: {slots:?}");
}
