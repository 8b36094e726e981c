//! Turning runs into the printed tables and the JSON summary.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Timings;

/// One measured run against one target.
pub struct Run {
    pub timings: Timings,
    pub elapsed: Duration,
    pub cpu: Duration,
    pub rss_kib: u64,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.timings.total.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn cpu_per_request_ms(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.timings.total.len().max(1) as f64
    }
}

/// The `p` quantile of sorted latencies, in milliseconds.
pub fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// A closed-loop table (plain or streamed): each target's best round for throughput and
/// latency, the median round for CPU, the largest RSS; ratios to the first target (Pingora).
pub fn closed_loop(title: &str, names: &[String], results: &[Vec<Run>], streamed: bool) -> Value {
    let rows: Vec<Value> = names
        .iter()
        .zip(results)
        .map(|(name, runs)| {
            let best = runs
                .iter()
                .max_by(|a, b| a.rps().partial_cmp(&b.rps()).unwrap())
                .unwrap();
            let t = &best.timings;
            json!({
                "target": name,
                "rps": best.rps(),
                "p50_ms": pct_ms(&t.total, 0.5),
                "p99_ms": pct_ms(&t.total, 0.99),
                "p999_ms": pct_ms(&t.total, 0.999),
                "ttfb_p50_ms": streamed.then(|| pct_ms(&t.first_byte, 0.5)),
                "ttfb_p99_ms": streamed.then(|| pct_ms(&t.first_byte, 0.99)),
                "cpu_ms_per_request": median(runs.iter().map(Run::cpu_per_request_ms).collect()),
                "rss_kib": runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
                "errors": runs.iter().map(|r| r.timings.errors).sum::<usize>(),
            })
        })
        .collect();
    let (floor_rps, floor_cpu) = (
        rows[0]["rps"].as_f64().unwrap(),
        rows[0]["cpu_ms_per_request"].as_f64().unwrap(),
    );
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            r["rps_vs_pingora"] = json!(r["rps"].as_f64().unwrap() / floor_rps);
            r["cpu_vs_pingora"] = json!(r["cpu_ms_per_request"].as_f64().unwrap() / floor_cpu);
            r
        })
        .collect();
    println!("\n{title} (best round; CPU: median of rounds)");
    println!(
        "{:<16} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8} {:>7} {:>7} {:>7}",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "ttfb p50",
        "ttfb p99",
        "cpu ms/req",
        "RSS MiB",
        "errors",
        "req/s×",
        "cpu×"
    );
    for r in &rows {
        let opt = |k: &str| r[k].as_f64().map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "{:<16} {:>9.0} {:>8.3} {:>8.3} {:>9.3} {:>9} {:>9} {:>10.4} {:>8.1} {:>7} {:>7.2} {:>7.2}",
            r["target"].as_str().unwrap(),
            r["rps"].as_f64().unwrap(),
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["p999_ms"].as_f64().unwrap(),
            opt("ttfb_p50_ms"),
            opt("ttfb_p99_ms"),
            r["cpu_ms_per_request"].as_f64().unwrap(),
            r["rss_kib"].as_f64().unwrap() / 1024.0,
            r["errors"],
            r["rps_vs_pingora"].as_f64().unwrap(),
            r["cpu_vs_pingora"].as_f64().unwrap(),
        );
    }
    Value::Array(rows)
}

/// An open-loop table: latency (and, streamed, time to first byte) per target, and what each
/// adds to the upstream's own (the first run).
pub fn open_loop(title: &str, names: &[String], runs: &[Timings], streamed: bool) -> Value {
    let base = &runs[0];
    println!("\n{title}; added = minus the upstream's own");
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "target",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "added p50",
        "added p99",
        "ttfb p50",
        "ttfb p99",
        "added ttfb50",
        "added ttfb99",
        "errors"
    );
    let rows: Vec<Value> = names
        .iter()
        .zip(runs)
        .enumerate()
        .map(|(i, (name, t))| {
            let p = |q| pct_ms(&t.total, q);
            let f = |q| pct_ms(&t.first_byte, q);
            let added = |x: f64, b: f64| (i > 0).then_some(x - b);
            let row = json!({
                "target": name,
                "p50_ms": p(0.5), "p99_ms": p(0.99), "p999_ms": p(0.999),
                "added_p50_ms": added(p(0.5), pct_ms(&base.total, 0.5)),
                "added_p99_ms": added(p(0.99), pct_ms(&base.total, 0.99)),
                "ttfb_p50_ms": streamed.then(|| f(0.5)),
                "ttfb_p99_ms": streamed.then(|| f(0.99)),
                "added_ttfb_p50_ms": if streamed { added(f(0.5), pct_ms(&base.first_byte, 0.5)) } else { None },
                "added_ttfb_p99_ms": if streamed { added(f(0.99), pct_ms(&base.first_byte, 0.99)) } else { None },
                "errors": t.errors,
            });
            let opt = |k: &str| row[k].as_f64().map_or("-".to_string(), |v| format!("{v:.3}"));
            println!(
                "{:<16} {:>8} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7}",
                name,
                opt("p50_ms"),
                opt("p99_ms"),
                opt("p999_ms"),
                opt("added_p50_ms"),
                opt("added_p99_ms"),
                opt("ttfb_p50_ms"),
                opt("ttfb_p99_ms"),
                opt("added_ttfb_p50_ms"),
                opt("added_ttfb_p99_ms"),
                t.errors
            );
            row
        })
        .collect();
    Value::Array(rows)
}
