//! Gauges and counters read off the gateway's state when `/metrics` is scraped, rather than
//! kept up to date on the request path: backend health and breakers, provider keys (state,
//! the provider's reported headroom, cooldowns), requests in flight.

use super::Metrics;
use crate::runtime::Runtime;
use crate::upstream::breaker::BreakerView;
use crate::upstream::keys::quota::COOLDOWN_REASONS;

const KEY_STATES: [&str; 4] = ["active", "cooling", "disabled", "missing"];
const TRANSITIONS: [&str; 3] = ["open", "half_open", "closed"];

/// Sets the state metrics from `rt` (and `in_flight` requests).
pub fn refresh(m: &Metrics, rt: &Runtime, in_flight: usize) {
    let now = tokio::time::Instant::now();
    m.inflight.set(in_flight as i64);
    m.backend_healthy.reset();
    m.breaker_state.reset();
    m.key_state.reset();
    m.ratelimit_remaining.reset();
    let mut seen = m.counted.lock();
    for p in &rt.providers {
        let name = &*p.name;
        let mut transitions = [0u64; 3];
        for (b, healthy) in p.pool.iter().flat_map(|pool| pool.backends()) {
            let addr = b.addr.to_string();
            let labels = [name, addr.as_str()];
            let up = healthy && b.checked();
            m.backend_healthy.with_label_values(&labels).set(up as i64);
            let state = match b.breaker.view(now) {
                BreakerView::Closed { .. } => 0,
                BreakerView::HalfOpen { .. } => 1,
                BreakerView::Open { .. } => 2,
            };
            m.breaker_state.with_label_values(&labels).set(state);
            for (t, n) in transitions.iter_mut().zip(b.breaker.transitions()) {
                *t += n;
            }
        }
        if p.pool.is_some() {
            for (to, n) in TRANSITIONS.iter().zip(transitions) {
                let add = seen.advance(["transitions", name, "", to], n);
                m.breaker_transitions
                    .with_label_values(&[name, to])
                    .inc_by(add);
            }
        }
        for k in p.keys.view(now) {
            for s in KEY_STATES {
                m.key_state
                    .with_label_values(&[name, &k.id, s])
                    .set((k.state == s) as i64);
            }
            if let Some(l) = &k.provider_limits {
                for (kind, v) in [
                    ("requests", l.remaining_requests),
                    ("tokens", l.remaining_tokens),
                ] {
                    if let Some(v) = v {
                        m.ratelimit_remaining
                            .with_label_values(&[name, &k.id, kind])
                            .set(v as i64);
                    }
                }
            }
            for (reason, n) in COOLDOWN_REASONS.iter().zip(k.cooldowns) {
                let add = seen.advance(["cooldowns", name, &k.id, reason], n);
                m.key_cooldowns
                    .with_label_values(&[name, &k.id, reason])
                    .inc_by(add);
            }
        }
    }
}

/// The last totals a scrape saw, per counter and label set. The totals come from live state
/// (breakers, key slots) that a reload may replace with fresh ones counting from zero; the
/// exported counters only ever add what is new, so they never go down (Prometheus would read a
/// decrease as a counter reset).
#[derive(Debug, Default)]
pub struct Counted {
    last: std::collections::HashMap<[String; 4], u64>,
}

impl Counted {
    /// What to add for a total of `now` under `key`: the increase since the last scrape, or the
    /// whole of `now` when the source started again from zero.
    pub fn advance(&mut self, key: [&str; 4], now: u64) -> u64 {
        let key = key.map(str::to_string);
        let last = self.last.insert(key, now).unwrap_or(0);
        if now >= last {
            now - last
        } else {
            now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_add_what_is_new() {
        let mut c = Counted::default();
        assert_eq!(c.advance(["t", "p", "", "open"], 3), 3);
        assert_eq!(c.advance(["t", "p", "", "open"], 5), 2);
        assert_eq!(c.advance(["t", "p", "", "open"], 5), 0);
        // A reload replaced the source: it counts from zero again.
        assert_eq!(c.advance(["t", "p", "", "open"], 1), 1);
        assert_eq!(c.advance(["t", "p", "", "open"], 4), 3);
        assert_eq!(c.advance(["t", "q", "", "open"], 2), 2, "label sets apart");
    }
}
