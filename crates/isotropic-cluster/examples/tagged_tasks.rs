//! The original README's "Specialized Task Distribution", fixed (it did not
//! parse, and its completion handler lost the queue type): three queues, each
//! with its own round-robin rotation over the same six workers.
//!
//! ```text
//! cargo run --example tagged_tasks
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryContext, WorkerMessage, WorkerReady};
use isotropic_cluster::worker::{ClusterWorker, PrimaryMessage};
use serde::{Deserialize, Serialize};

const QUEUES: [&str; 3] = ["compute", "io", "lightweight"];

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Message {
    ProcessTask { queue: String, id: String },
    TaskComplete { queue: String, id: String },
}

type Queues = Arc<Mutex<HashMap<&'static str, VecDeque<String>>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), isotropic_cluster::Error> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let queues: Queues = Arc::new(Mutex::new(
        QUEUES
            .iter()
            .map(|&q| (q, (1..=3).map(|n| format!("{}{n}", &q[..1])).collect()))
            .collect(),
    ));
    let total = QUEUES.len() * 3;
    let on_ready = queues.clone();
    let mut started = false;
    let mut done = 0;
    let primary = ClusterPrimary::builder()
        .after::<WorkerReady>(move |event| {
            // Start every queue once the first worker is in the pool.
            if !std::mem::replace(&mut started, true) {
                for queue in QUEUES {
                    process_queue(event.context(), &on_ready, queue);
                }
            }
        })
        .on::<WorkerMessage>(move |event| {
            if let Ok(Message::TaskComplete { queue, id }) = event.message.decode() {
                println!(
                    "[{queue}] task {id} completed by worker {}",
                    event.worker.id()
                );
                done += 1;
                if done == total {
                    event.context().shut_down();
                } else if let Some(queue) = QUEUES.into_iter().find(|q| *q == queue) {
                    process_queue(event.context(), &queues, queue);
                }
            }
        })
        .start()
        .await?;
    primary.fork(6).await?;
    primary.shut_down_complete().await?;
    println!("All {total} tasks done.");
    Ok(())
}

/// Sends the next task of `queue` to the worker least recently used for it.
fn process_queue(primary: &mut PrimaryContext, queues: &Queues, queue: &'static str) {
    let Ok(mut queues) = queues.lock() else {
        return;
    };
    let Some(tasks) = queues.get_mut(queue) else {
        return;
    };
    let (Some(id), Some(worker)) = (tasks.pop_front(), primary.round_robin(queue)) else {
        return;
    };
    let message = Message::ProcessTask {
        queue: queue.into(),
        id: id.clone(),
    };
    match primary.try_send(&worker, &message) {
        Ok(()) => println!("[{queue}] task {id} sent to worker {}", worker.id()),
        Err(error) => {
            eprintln!("[{queue}] failed to send task {id}: {error}");
            tasks.push_front(id);
        }
    }
}

async fn worker() -> Result<(), isotropic_cluster::Error> {
    let worker = ClusterWorker::builder()
        .on::<PrimaryMessage>(|event| {
            if let Ok(Message::ProcessTask { queue, id }) = event.message.decode() {
                let _ = event
                    .context()
                    .try_send(&Message::TaskComplete { queue, id });
            }
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}
