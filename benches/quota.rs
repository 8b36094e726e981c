//! Per-request cost of quotas and usage metering: a memory-store check-and-reserve (one caller
//! rule plus one shared rule) with 10 to 100,000 callers, and the usage meter on one SSE chunk
//! (plain, and hiding the usage chunk the client did not ask for). Run with
//! `cargo bench --bench quota`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::Arc;
use ultra_gateway::quota::memory::MemoryStore;
use ultra_gateway::quota::rules::Limits;
use ultra_gateway::quota::window::{now_ms, Windows};
use ultra_gateway::quota::{Ask, Part, Scope, Taken};
use ultra_gateway::usage::{Dialect, UsageMeter};

fn parts(caller: &Arc<str>) -> [Part; 2] {
    let ask = Ask {
        tokens: 1200,
        tokens_needed: 200,
        micro_usd: 0,
        micro_usd_needed: 0,
    };
    let roomy = Limits {
        requests_per_minute: Some(u64::MAX / 4),
        tokens_per_minute: Some(u64::MAX / 4),
        tokens_per_day: None,
        micro_usd_per_day: None,
    };
    [
        Part {
            rule: Arc::from("users"),
            scope: Scope::Subject(caller.clone()),
            limits: roomy,
            ask,
            taken: Taken::default(),
        },
        Part {
            rule: Arc::from("everyone"),
            scope: Scope::Shared,
            limits: roomy,
            ask,
            taken: Taken::default(),
        },
    ]
}

fn reserve(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota_reserve_and_settle");
    for callers in [10usize, 1_000, 100_000] {
        let store = MemoryStore::default();
        let names: Vec<Arc<str>> = (0..callers)
            .map(|i| Arc::from(format!("user-{i}")))
            .collect();
        let w = Windows::at(now_ms());
        for n in &names {
            let mut p = parts(n);
            store.reserve(&mut p, w);
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(callers), &callers, |b, _| {
            b.iter(|| {
                i = (i + 7919) % names.len();
                let mut p = parts(&names[i]);
                black_box(store.reserve(&mut p, w));
                store.settle(&p, w, Some((300, 0)));
            })
        });
    }
    g.finish();
}

fn sse_chunk(c: &mut Criterion) {
    let chunk = bytes::Bytes::from_static(
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there, a token\"}}],\"usage\":null}\n\n",
    );
    for (name, hide) in [("usage_sse_chunk", false), ("usage_sse_chunk_hiding", true)] {
        c.bench_function(name, |b| {
            let mut meter = UsageMeter::new(Dialect::OpenAi, true, hide);
            b.iter(|| {
                let mut c = chunk.clone();
                meter.chunk(&mut c, false);
                black_box(c.len())
            })
        });
    }
}

criterion_group!(benches, reserve, sse_chunk);
criterion_main!(benches);
