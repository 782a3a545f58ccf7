//! Micro-benchmarks of the core's hot paths, so that a regression shows
//! without the whole harness: `cargo bench -p isotropic-cluster --features internals`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isotropic_cluster::internals::{Dispatch, decode, encode};
use serde::Serialize;

#[derive(Serialize)]
struct Small {
    seq: u64,
    data: &'static str,
}

const SMALL: Small = Small {
    seq: 42,
    data: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
};

fn frames(count: usize, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..count {
        bytes.extend_from_slice(
            &u32::try_from(payload.len() + 1)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        bytes.push(4);
        bytes.extend_from_slice(payload);
    }
    bytes
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode small message", |b| {
        b.iter(|| encode(black_box(&SMALL)))
    });
    let large = "y".repeat(64 * 1024);
    group.bench_function("encode 64 KiB string", |b| {
        b.iter(|| encode(black_box(&large)))
    });
    let small = serde_json::to_vec(&SMALL).unwrap_or_default();
    let hundred = frames(100, &small);
    group.throughput(Throughput::Elements(100));
    group.bench_function("decode 100 small frames", |b| {
        b.iter(|| decode(black_box(&hundred)))
    });
    let big = frames(1, &serde_json::to_vec(&large).unwrap_or_default());
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("decode 64 KiB frame", |b| {
        b.iter(|| decode(black_box(&big)))
    });
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(1));
    for handlers in [0, 1, 4] {
        let mut host = Dispatch::new(handlers);
        group.bench_function(format!("publish, {handlers} handlers"), |b| {
            b.iter(|| black_box(host.publish()))
        });
    }
    group.finish();
}

criterion_group!(benches, codec, dispatch);
criterion_main!(benches);
