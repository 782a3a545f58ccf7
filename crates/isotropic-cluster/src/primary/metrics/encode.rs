//! The pools' metrics as `prometheus_client` families: one collector that
//! reads them at each scrape (`docs/metrics.md` lists the series).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
    prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::latency::Snapshot;
use super::{ExitReason, PHASES, PoolMetrics, Summary, lock};

/// `pools` in Prometheus' text format.
pub(super) fn render(pools: &[Arc<PoolMetrics>]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(pools.to_vec())));
    let mut text = String::new();
    // (Writing to a String does not fail, nor does the collector.)
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// The collector of some pools' metrics.
#[derive(Debug)]
pub(super) struct Collect(pub(super) Vec<Arc<PoolMetrics>>);

/// One live worker, as read at a scrape.
struct WorkerSample {
    slot: u32,
    id: u64,
    generation: u64,
    sent: u64,
    received: u64,
    in_flight: usize,
    /// CPU seconds and memory bytes, once sampled.
    usage: Option<(f64, u64)>,
}

/// One pool, as read at a scrape.
struct PoolSample<'a> {
    pool: &'a str,
    summary: Summary,
    workers: Vec<WorkerSample>,
    restarts: u64,
    exits: [u64; 4],
    rollouts: [u64; 3],
    /// Frames sent and received, by every worker it had.
    sent: u64,
    received: u64,
    requests: Snapshot,
}

impl<'a> PoolSample<'a> {
    fn of(pool: &'a PoolMetrics) -> Self {
        let workers: Vec<WorkerSample> = lock(&pool.workers)
            .values()
            .map(|series| {
                let worker = &series.worker;
                let traffic = worker.outbox().traffic();
                WorkerSample {
                    slot: worker.slot(),
                    id: worker.id().get(),
                    generation: worker.generation(),
                    sent: traffic.sent_total().0,
                    received: traffic.received_total().0,
                    in_flight: worker.in_flight(),
                    usage: (series.usage).map(|usage| (usage.cpu.as_secs_f64(), usage.memory)),
                }
            })
            .collect();
        let departed = |way: usize| pool.departed[way].load(Ordering::Relaxed);
        Self {
            pool: &pool.pool,
            summary: *lock(&pool.summary),
            sent: departed(0) + workers.iter().map(|w| w.sent).sum::<u64>(),
            received: departed(1) + workers.iter().map(|w| w.received).sum::<u64>(),
            workers,
            restarts: pool.restarts.load(Ordering::Relaxed),
            exits: std::array::from_fn(|i| pool.exits[i].load(Ordering::Relaxed)),
            rollouts: std::array::from_fn(|i| pool.rollouts[i].load(Ordering::Relaxed)),
            requests: pool.requests.snapshot(),
        }
    }
}

/// A worker's labels: its pool, slot, id and generation.
struct WorkerLabels<'a> {
    pool: &'a str,
    worker: &'a WorkerSample,
}

impl EncodeLabelSet for WorkerLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let WorkerSample {
            slot,
            id,
            generation,
            ..
        } = self.worker;
        ("pool", self.pool).encode(encoder.encode_label())?;
        ("slot", *slot).encode(encoder.encode_label())?;
        ("worker_id", *id).encode(encoder.encode_label())?;
        ("generation", *generation).encode(encoder.encode_label())
    }
}

/// Encodes one family: its name, help and type, then each sample.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, metric_type): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn as_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

const GAUGE: MetricType = MetricType::Gauge;
const COUNTER: MetricType = MetricType::Counter;

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let pools: Vec<PoolSample<'_>> = self.0.iter().map(|pool| PoolSample::of(pool)).collect();
        let encoder = &mut encoder;
        // Pool-level series, labelled with the pool alone…
        let by_pool = |value: fn(&PoolSample<'_>) -> u64| {
            pools.iter().map(move |p| ([("pool", p.pool)], value(p)))
        };
        let gauges = |value| by_pool(value).map(|(labels, v)| (labels, ConstGauge::new(v)));
        let counters = |value| by_pool(value).map(|(labels, v)| (labels, ConstCounter::new(v)));
        family(
            encoder,
            (
                "isotropic_cluster_pool_size",
                "Workers the pool holds.",
                GAUGE,
            ),
            gauges(|p| as_u64(p.summary.size)),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_pool_ready_minimum",
                "The fewest ready workers for the pool to be ready (its size, less max_unavailable during a rollout).",
                GAUGE,
            ),
            gauges(|p| as_u64(p.summary.minimum)),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_workers_ready",
                "Workers in the pool of ready workers.",
                GAUGE,
            ),
            gauges(|p| as_u64(p.summary.ready)),
        )?;
        family(
            encoder,
            ("isotropic_cluster_workers", "Live workers by state.", GAUGE),
            pools.iter().flat_map(|p| {
                PHASES
                    .iter()
                    .zip(p.summary.phases)
                    .map(|((_, state), count)| {
                        (
                            [("pool", p.pool), ("state", *state)],
                            ConstGauge::new(as_u64(count)),
                        )
                    })
            }),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_restarts",
                "Workers started in a slot held before (replacements, recycles, rollouts).",
                COUNTER,
            ),
            counters(|p| p.restarts),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_exits",
                "Worker exits: voluntary (after a disconnect), by an exit code, by a signal.",
                COUNTER,
            ),
            pools.iter().flat_map(|p| {
                ExitReason::ALL.iter().zip(p.exits).map(|(reason, count)| {
                    (
                        [("pool", p.pool), ("reason", reason.label())],
                        ConstCounter::new(count),
                    )
                })
            }),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_messages_sent",
                "Frames written to the workers.",
                COUNTER,
            ),
            counters(|p| p.sent),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_messages_received",
                "Frames read from the workers.",
                COUNTER,
            ),
            counters(|p| p.received),
        )?;
        family(
            encoder,
            (
                "isotropic_cluster_requests_in_flight",
                "Requests to the workers waiting for a reply.",
                GAUGE,
            ),
            gauges(|p| p.workers.iter().map(|w| as_u64(w.in_flight)).sum()),
        )?;
        latency(encoder, &pools)?;
        for (at, (name, help)) in [
            ("isotropic_cluster_rollouts_started", "Rollouts started."),
            ("isotropic_cluster_rollouts_completed", "Rollouts complete."),
            (
                "isotropic_cluster_rollouts_failed",
                "Rollouts failed (and rolled back).",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let samples = pools
                .iter()
                .map(|p| ([("pool", p.pool)], ConstCounter::new(p.rollouts[at])));
            family(encoder, (name, help, COUNTER), samples)?;
        }
        workers(encoder, &pools)
    }
}

/// The request latency histogram of each pool.
fn latency(encoder: &mut DescriptorEncoder<'_>, pools: &[PoolSample<'_>]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "isotropic_cluster_request_duration_seconds",
        "Requests to the workers, from sending to the reply.",
        None,
        MetricType::Histogram,
    )?;
    for pool in pools {
        let Snapshot {
            sum,
            count,
            buckets,
        } = &pool.requests;
        family
            .encode_family(&[("pool", pool.pool)])?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                *sum, *count, buckets, None,
            )?;
    }
    Ok(())
}

/// Each live worker's series.
fn workers(encoder: &mut DescriptorEncoder<'_>, pools: &[PoolSample<'_>]) -> fmt::Result {
    let each = || {
        pools.iter().flat_map(|p| {
            p.workers.iter().map(|worker| {
                let labels = WorkerLabels {
                    pool: p.pool,
                    worker,
                };
                (labels, worker)
            })
        })
    };
    family(
        encoder,
        (
            "isotropic_cluster_worker_cpu_seconds",
            "CPU time of the worker and its descendants (once sampled).",
            COUNTER,
        ),
        each().filter_map(|(labels, w)| Some((labels, ConstCounter::new(w.usage?.0)))),
    )?;
    family(
        encoder,
        (
            "isotropic_cluster_worker_memory_bytes",
            "Memory of the worker: its process tree's resident memory, or its cgroup's (once sampled).",
            GAUGE,
        ),
        each().filter_map(|(labels, w)| Some((labels, ConstGauge::new(w.usage?.1)))),
    )?;
    family(
        encoder,
        (
            "isotropic_cluster_worker_messages_sent",
            "Frames written to the worker.",
            COUNTER,
        ),
        each().map(|(labels, w)| (labels, ConstCounter::new(w.sent))),
    )?;
    family(
        encoder,
        (
            "isotropic_cluster_worker_messages_received",
            "Frames read from the worker.",
            COUNTER,
        ),
        each().map(|(labels, w)| (labels, ConstCounter::new(w.received))),
    )?;
    family(
        encoder,
        (
            "isotropic_cluster_worker_requests_in_flight",
            "Requests to the worker waiting for a reply.",
            GAUGE,
        ),
        each().map(|(labels, w)| (labels, ConstGauge::new(as_u64(w.in_flight)))),
    )
}
