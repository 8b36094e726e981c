//! Per-request cost of quotas and usage metering: a memory-store check-and-reserve (one caller
//! rule plus one shared rule) with 10 to 100,000 callers; the same in a `redis-server` on
//! loopback, started by the bench (skipped with a message when `redis-server` is not on the
//! PATH); and the usage meter on one SSE chunk (plain, and hiding the usage chunk the client did
//! not ask for). Run with `cargo bench --bench quota`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::Arc;
use ultra_gateway::quota::memory::MemoryStore;
use ultra_gateway::quota::redis::RedisStore;
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

/// A `redis-server` on a free loopback port, killed when dropped.
struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let r = Redis(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn reserve_redis(c: &mut Criterion) {
    let Some(redis) = start_redis() else {
        eprintln!("redis-server not found: the Redis quota bench is skipped");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let store = Arc::new(RedisStore::new(&url, "bench:", 1000).unwrap());
    let names: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("user-{i}"))).collect();
    let mut i = 0;
    c.bench_function("quota_reserve_redis_loopback", |b| {
        b.iter(|| {
            i = (i + 7) % names.len();
            let mut p = parts(&names[i]);
            let w = Windows::at(now_ms());
            black_box(
                rt.block_on(store.reserve(&mut p, w))
                    .expect("redis answers"),
            )
        })
    });
    drop(redis);
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

criterion_group!(benches, reserve, reserve_redis, sse_chunk);
criterion_main!(benches);
