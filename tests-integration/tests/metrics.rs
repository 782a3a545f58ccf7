//! The metrics with real processes: a series per live worker, counters that
//! move with a kill and its replacement, the request latency histogram,
//! several pools in one exposition, and an application's own registry.
#![cfg(target_os = "linux")]

use isotropic_cluster::primary::{ClusterPrimary, Metrics};
use serde_json::json;
use tests_integration::{Mode, exit_of, launch, primary, ready, shut_down, wait_for};

/// The value of `series` (its name and labels as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

fn worker_series(name: &str, pool: &str, slot: u32, id: u64) -> String {
    format!("{name}{{pool=\"{pool}\",slot=\"{slot}\",worker_id=\"{id}\",generation=\"1\"}}")
}

async fn square(primary: &ClusterPrimary, n: u64) {
    let square = json!({"type": "square", "n": n});
    let reply = primary.dispatch::<u64, _>("", &square).await;
    assert_eq!(reply.expect("a reply"), n * n);
}

#[tokio::test]
async fn a_kill_moves_the_counters_and_takes_the_dead_workers_series_away() {
    let (primary, mut events, [first, _]) = launch::<2>(primary(Mode::Echo)).await;
    for n in 0..10 {
        square(&primary, n).await;
    }
    let text = primary.metrics().render();
    for (slot, id) in [(0, 1), (1, 2)] {
        let sent = worker_series(
            "isotropic_cluster_worker_messages_sent_total",
            "default",
            slot,
            id,
        );
        // (Its hello, and five requests.)
        assert!(
            sample(&text, &sent).is_some_and(|n| n >= 6.0),
            "{sent} in {text}"
        );
    }
    let count = "isotropic_cluster_request_duration_seconds_count{pool=\"default\"}";
    assert_eq!(sample(&text, count), Some(10.0), "{text}");
    let pool = |name: &str| format!("{name}{{pool=\"default\"}}");
    let sent_before = sample(&text, &pool("isotropic_cluster_messages_sent_total")).expect("sent");

    let pid = rustix::process::Pid::from_raw(i32::try_from(first.pid()).expect("pid"));
    rustix::process::kill_process(pid.expect("a pid"), rustix::process::Signal::KILL)
        .expect("kill worker 1");
    let exit = wait_for(&mut events, exit_of).await;
    assert_eq!(exit.worker.id().get(), 1);
    let replacement = ready(&mut events, 1).await.remove(0);
    let text = primary.metrics().render();
    let exits = "isotropic_cluster_exits_total{pool=\"default\",reason=\"signal\"}";
    assert_eq!(sample(&text, exits), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &pool("isotropic_cluster_restarts_total")),
        Some(1.0)
    );
    assert!(!text.contains("worker_id=\"1\""), "{text}");
    let series = worker_series(
        "isotropic_cluster_worker_messages_sent_total",
        "default",
        0,
        replacement.id().get(),
    );
    assert!(sample(&text, &series).is_some(), "{text}");
    // The pool's count keeps what the dead worker was sent.
    let sent_after = sample(&text, &pool("isotropic_cluster_messages_sent_total"));
    assert!(
        sent_after.is_some_and(|after| after >= sent_before),
        "{text}"
    );
    shut_down(&primary).await;
}

#[tokio::test]
async fn several_pools_render_as_one_exposition_and_register_into_a_registry() {
    let (web, _web_events, _) = launch::<2>(primary(Mode::Echo).pool_name("web")).await;
    let (jobs, _jobs_events, _) = launch::<1>(primary(Mode::Echo).pool_name("jobs")).await;
    let metrics: Metrics = web.metrics().merge(jobs.metrics()).merge(web.metrics());
    let text = metrics.render();
    let help = "# HELP isotropic_cluster_workers_ready ";
    assert_eq!(text.matches(help).count(), 1, "one family: {text}");
    let ready = |pool: &str| format!("isotropic_cluster_workers_ready{{pool=\"{pool}\"}}");
    assert_eq!(sample(&text, &ready("web")), Some(2.0), "{text}");
    assert_eq!(sample(&text, &ready("jobs")), Some(1.0), "{text}");
    let statuses = metrics.pools();
    let names: Vec<&str> = statuses.iter().map(|pool| pool.pool.as_str()).collect();
    assert_eq!(names, ["web", "jobs"]);
    assert!(statuses.iter().all(|pool| pool.alive && pool.is_ready()));

    // An application's own registry, encoded by prometheus_client itself.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut encoded = String::new();
    prometheus_client::encoding::text::encode(&mut encoded, &registry).expect("encodes");
    let series = worker_series("isotropic_cluster_worker_messages_sent_total", "jobs", 0, 1);
    assert!(sample(&encoded, &series).is_some(), "{encoded}");
    assert!(encoded.ends_with("# EOF\n"), "{encoded}");

    shut_down(&web).await;
    shut_down(&jobs).await;
    // Shut down: not ready; destroyed: not alive.
    let web_status = web.metrics().pools().remove(0);
    assert!(
        web_status.shutting_down && !web_status.is_ready(),
        "{web_status}"
    );
    web.destroy().await.expect("destroyed");
    let web_status = web.metrics().pools().remove(0);
    assert!(!web_status.alive, "{web_status:?}");
    assert_eq!(web_status.to_string(), "pool web: stopped");
}
