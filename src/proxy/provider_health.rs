//! `GET /api/providers/health` (endpoint group `admin`): per provider and backend, health,
//! breaker state, next probe, recent latency and last error; per key, its id (never its value),
//! state, requests and last status.

use crate::runtime::Runtime;
use crate::time::rfc3339;
use crate::upstream::breaker::BreakerView;
use serde_json::{json, Value};

pub fn render(rt: &Runtime) -> Value {
    let now = tokio::time::Instant::now();
    let providers: Vec<Value> = rt
        .providers
        .iter()
        .map(|p| {
            let backends: Vec<Value> = p
                .pool
                .iter()
                .flat_map(|pool| pool.backends())
                .map(|(b, healthy)| {
                    let breaker = match b.breaker.view(now) {
                        BreakerView::Closed { consecutive_failures } => {
                            json!({ "state": "closed", "consecutive_failures": consecutive_failures })
                        }
                        BreakerView::Open { remaining } => {
                            json!({ "state": "open", "half_open_in_seconds": remaining.as_secs_f64() })
                        }
                        BreakerView::HalfOpen { probing } => json!({ "state": "half_open", "probing": probing }),
                    };
                    let last_error = b
                        .last_error()
                        .map(|(what, at)| json!({ "message": what, "at": rfc3339(at) }));
                    json!({
                        "address": b.addr.to_string(),
                        "endpoint": b.endpoint.url,
                        "healthy": healthy && b.checked(),
                        "checked": b.checked(),
                        "breaker": breaker,
                        "latency_ms": b.latency().map(|d| d.as_secs_f64() * 1000.0),
                        "last_error": last_error,
                    })
                })
                .collect();
            let next_probe = p
                .pool
                .as_ref()
                .and_then(|pool| pool.next_check())
                .map(|t| t.saturating_duration_since(now).as_secs_f64());
            json!({
                "name": &*p.name,
                "kind": p.kind.as_str(),
                "usable": p.is_usable(),
                "strategy": p.pool.as_ref().map(|pool| pool.strategy().as_str()),
                "next_probe_in_seconds": next_probe,
                "backends": backends,
                "keys": p.keys.view(now),
            })
        })
        .collect();
    json!({ "config_generation": rt.generation, "providers": providers })
}
