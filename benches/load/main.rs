//! `cargo bench --bench load`: the gateway under load next to the floor it is built on.
//!
//! Starts a fast in-process upstream (`upstream.rs`), a bare Pingora proxy (`bare.rs`: this
//! bench binary re-run with `--bare-pingora`, the same thread count), the release gateway with
//! a production-shaped configuration (JWT auth, roles, access and audit logs, metered usage,
//! metrics), and nginx as a plain reverse proxy when `nginx` is on the PATH (`targets.rs`).
//!
//! Four parts; in the closed-loop ones the targets are interleaved over rounds so that a noisy
//! moment hurts all alike (the open-loop ones run each target once, in turn):
//! 1. closed loop, plain: 32 connections, each sending its next request when the last is
//!    answered: req/s, latency, CPU per request (from /proc, children included), RSS;
//! 2. closed loop, streamed: the same with event streams of 20 events: streams/s, time to
//!    first byte, CPU per stream;
//! 3. open loop, plain: 2,000 req/s, each timed from when it was due, against each target and
//!    the upstream itself: the latency each target adds;
//! 4. open loop, streamed: 500 streams/s: the time to first byte each target adds.
//!
//! Also the time from spawning each target to its first 200. `ULTRA_LOAD_THREADS` (default 2)
//! and `ULTRA_LOAD_WORK_STEALING=false` set every target's threads and Pingora's runtime.
//!
//! Ratios are to bare Pingora. The tables are printed and written to `target/load-summary.json`.
//! About two minutes; `--quick` about 25 seconds. Needs `target/release/ultra-gateway`
//! (`cargo build --release`), or the builds `ULTRA_GATEWAY_BIN` lists (comma-separated paths:
//! an older commit's build and this one, side by side on the same load).
//!
//! `--profile plain|streamed [SECONDS]` runs only the gateway under load, for a profiler.

mod bare;
mod client;
mod report;
mod targets;
mod upstream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::{Load, Timings};
use report::Run;
use targets::Target;

const CONNS: usize = 32;
const OPEN_RATE: f64 = 2000.0;
const OPEN_STREAM_RATE: f64 = 500.0;
const OPEN_CONNS: usize = 64;

/// How long each part runs.
struct Plan {
    rounds: usize,
    plain: Duration,
    streamed: Duration,
    open: Duration,
    warm_up: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-pingora") {
        let t = targets::tuning();
        bare::run(&args[i + 1], &args[i + 2], t.threads, t.work_stealing);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        profile(
            &args[i + 1],
            args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(10.0),
        );
        return;
    }
    let secs = Duration::from_secs_f64;
    let plan = if args.iter().any(|a| a == "--quick") {
        Plan {
            rounds: 1,
            plain: secs(2.5),
            streamed: secs(2.0),
            open: secs(1.5),
            warm_up: secs(0.3),
        }
    } else {
        Plan {
            rounds: 3,
            plain: secs(6.0),
            streamed: secs(4.0),
            open: secs(4.0),
            warm_up: secs(0.5),
        }
    };
    let started = Instant::now();
    let upstream = upstream::start();
    let mut targets = vec![Target::bare(upstream)];
    targets.extend(Target::gateways(upstream));
    match Target::nginx(upstream) {
        Some(t) => targets.push(t),
        None => eprintln!("nginx not on the PATH: its column is skipped"),
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    for t in &targets {
        if let Some(b) = &t.build {
            println!("{}: {b}", t.name);
        }
    }
    let tuning = targets::tuning();
    println!(
        "{} threads, work stealing {}; start to first 200: {}",
        tuning.threads,
        tuning.work_stealing,
        targets
            .iter()
            .map(|t| format!("{} {:.1} ms", t.name, t.startup.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let startup: serde_json::Map<String, serde_json::Value> = targets
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                serde_json::json!(t.startup.as_secs_f64() * 1000.0),
            )
        })
        .collect();

    let plain = closed_rounds(&targets, &plan, false);
    let plain = report::closed_loop(
        &format!("closed loop, {CONNS} connections"),
        &names,
        &plain,
        false,
    );
    let streamed = closed_rounds(&targets, &plan, true);
    let streamed = report::closed_loop(
        &format!(
            "closed loop, streamed ({} events each), {CONNS} connections",
            upstream::STREAM_EVENTS
        ),
        &names,
        &streamed,
        true,
    );

    let mut open_targets = vec![Target::direct(upstream)];
    open_targets.extend(targets);
    let open_names: Vec<String> = open_targets.iter().map(|t| t.name.clone()).collect();
    let open = open_runs(&open_targets, plan.open, OPEN_RATE, false);
    let open = report::open_loop(
        &format!("open loop, {OPEN_RATE} req/s over {OPEN_CONNS} connections"),
        &open_names,
        &open,
        false,
    );
    let open_streamed = open_runs(&open_targets, plan.open, OPEN_STREAM_RATE, true);
    let open_streamed = report::open_loop(
        &format!("open loop, streamed, {OPEN_STREAM_RATE} streams/s over {OPEN_CONNS} connections"),
        &open_names,
        &open_streamed,
        true,
    );

    // "Logs on" must have meant every line: a full queue drops lines rather than slow requests.
    let mut logs = serde_json::Map::new();
    for t in &open_targets {
        if let Some((access, audit)) = t.log_lines_dropped() {
            println!(
                "{}: log lines dropped: access {access}, audit {audit}",
                t.name
            );
            logs.insert(
                t.name.clone(),
                serde_json::json!({ "access": access, "audit": audit }),
            );
        }
    }
    let builds: serde_json::Map<String, serde_json::Value> = open_targets
        .iter()
        .filter_map(|t| Some((t.name.clone(), serde_json::json!(t.build.clone()?))))
        .collect();

    let summary = serde_json::json!({
        "builds": builds,
        "log_lines_dropped": logs,
        "connections": CONNS,
        "threads": tuning.threads,
        "work_stealing": tuning.work_stealing,
        "startup_ms": startup,
        "closed_loop": plain,
        "closed_loop_streamed": streamed,
        "open_loop": { "rate": OPEN_RATE, "connections": OPEN_CONNS, "rows": open },
        "open_loop_streamed": { "rate": OPEN_STREAM_RATE, "connections": OPEN_CONNS, "rows": open_streamed },
        "seconds": started.elapsed().as_secs_f64(),
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/load-summary.json");
    if let Err(e) = std::fs::write(&out, serde_json::to_vec_pretty(&summary).unwrap()) {
        eprintln!("cannot write {}: {e}", out.display());
    }
    println!(
        "\nsummary: {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    // Timings are never asserted (too noisy); answers are: a target that failed requests or
    // served none fails the bench, so CI notices a gateway that answers errors fast.
    let failed: Vec<String> = [
        &summary["closed_loop"],
        &summary["closed_loop_streamed"],
        &summary["open_loop"]["rows"],
        &summary["open_loop_streamed"]["rows"],
    ]
    .iter()
    .flat_map(|rows| rows.as_array().into_iter().flatten())
    .filter(|r| r["errors"].as_u64() != Some(0) || r["rps"].as_f64() == Some(0.0))
    .map(|r| format!("{}: {} errors", r["target"], r["errors"]))
    .collect();
    if !failed.is_empty() {
        eprintln!("requests failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// `--profile plain|streamed [SECONDS]`: only the gateway, under closed-loop load, its PID
/// printed first: for `perf record -g -p PID` or `strace -c -f -p PID` alongside.
fn profile(kind: &str, secs: f64) {
    let upstream = upstream::start();
    let gateway = Target::gateways(upstream).remove(0);
    println!("gateway pid {}", gateway.pid);
    let load = Load::new(gateway.auth.as_deref(), kind == "streamed");
    let t = client::closed_loop(gateway.addr, &load, CONNS, Duration::from_secs_f64(secs));
    println!("{} requests, {} errors", t.total.len(), t.errors);
}

/// `plan.rounds` closed-loop runs per target, the targets interleaved.
fn closed_rounds(targets: &[Target], plan: &Plan, streamed: bool) -> Vec<Vec<Run>> {
    let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.rounds {
        for (t, runs) in targets.iter().zip(results.iter_mut()) {
            let load = Load::new(t.auth.as_deref(), streamed);
            let length = if streamed { plan.streamed } else { plan.plain };
            // Warm up: the target's upstream pool filled, its caches and allocator warm.
            client::closed_loop(t.addr, &load, CONNS, plan.warm_up);
            let cpu0 = t.cpu();
            let began = Instant::now();
            let timings = client::closed_loop(t.addr, &load, CONNS, length);
            let run = Run {
                elapsed: began.elapsed(),
                cpu: t.cpu().saturating_sub(cpu0),
                rss_kib: t.rss_kib(),
                timings,
            };
            eprintln!(
                "round {} {:<9} {:<16} {:>9.0} req/s",
                round + 1,
                if streamed { "streamed" } else { "plain" },
                t.name,
                run.rps()
            );
            runs.push(run);
        }
    }
    results
}

fn open_runs(targets: &[Target], length: Duration, rate: f64, streamed: bool) -> Vec<Timings> {
    targets
        .iter()
        .map(|t| {
            client::open_loop(
                t.addr,
                &Load::new(t.auth.as_deref(), streamed),
                rate,
                OPEN_CONNS,
                length,
            )
        })
        .collect()
}
