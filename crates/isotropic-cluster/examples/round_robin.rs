//! The original README's "Task Distribution with Round-Robin", fixed: tasks
//! go to the least recently used ready worker; each completion sends the next
//! task; the primary shuts down when every task is done.
//!
//! ```text
//! cargo run --example round_robin
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use isotropic_cluster::Subscribe;
use isotropic_cluster::primary::{ClusterPrimary, PrimaryContext, WorkerMessage, WorkerReady};
use isotropic_cluster::worker::{ClusterWorker, PrimaryMessage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Task {
    id: u32,
    data: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Message {
    ProcessTask { task: Task },
    TaskComplete { task_id: u32, result: String },
}

const TASKS: u32 = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), isotropic_cluster::Error> {
    if isotropic_cluster::is_worker() {
        return worker().await;
    }
    let queue: VecDeque<Task> = (1..=TASKS)
        .map(|id| Task {
            id,
            data: format!("payload {id}"),
        })
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let on_ready = queue.clone();
    let mut done = 0;
    let primary = ClusterPrimary::builder()
        // A worker is in the pool once `workerReady` has completed.
        .after::<WorkerReady>(move |event| send_next(event.context(), &on_ready))
        .on::<WorkerMessage>(move |event| {
            if let Ok(Message::TaskComplete { task_id, result }) = event.message.decode() {
                println!(
                    "Task {task_id} completed by worker {} with result: {result}",
                    event.worker.id()
                );
                done += 1;
                if done == TASKS {
                    event.context().shut_down();
                } else {
                    send_next(event.context(), &queue);
                }
            }
        })
        .start()
        .await?;
    primary.fork(4).await?;
    primary.shut_down_complete().await?;
    println!("All tasks done; every worker has exited.");
    Ok(())
}

/// Sends the next queued task to the least recently selected ready worker.
fn send_next(primary: &mut PrimaryContext, queue: &Mutex<VecDeque<Task>>) {
    let Ok(mut queue) = queue.lock() else { return };
    let Some(task) = queue.pop_front() else {
        return;
    };
    // The pool may be empty (every worker died): keep the task for later.
    let Some(worker) = primary.round_robin("") else {
        queue.push_front(task);
        return;
    };
    let id = task.id;
    match primary.try_send(&worker, &Message::ProcessTask { task: task.clone() }) {
        Ok(()) => println!("Task {id} sent to worker {}", worker.id()),
        Err(error) => {
            eprintln!("Failed to send task {id}: {error}");
            queue.push_front(task);
        }
    }
}

async fn worker() -> Result<(), isotropic_cluster::Error> {
    let worker = ClusterWorker::builder()
        .on::<PrimaryMessage>(|event| {
            if let Ok(Message::ProcessTask { task }) = event.message.decode() {
                let result = task.data.to_uppercase();
                let _ = event.context().try_send(&Message::TaskComplete {
                    task_id: task.id,
                    result,
                });
            }
        })
        .start()
        .await?;
    worker.closed().await;
    Ok(())
}
