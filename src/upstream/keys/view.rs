//! What `/api/providers/health` shows of a key ring: each key's id and state, never a value.

use super::ring::KeyRing;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

/// A key's state for the provider health endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub id: String,
    /// `active`, `cooling`, `disabled` or `missing` (empty or unreadable).
    pub state: &'static str,
    pub cooling_seconds: Option<f64>,
    pub disabled_reason: Option<&'static str>,
    pub requests: u64,
    pub last_status: Option<u16>,
    /// The provider's last reported limits for this key (`x-ratelimit-*`).
    pub provider_limits: Option<super::quota::ProviderLimits>,
    /// Requests, tokens and cost sent through it today (UTC).
    pub today: KeyToday,
    /// Times taken out of rotation, by reason.
    #[serde(skip)]
    pub cooldowns: [u64; 2],
}

/// A key's use today.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyToday {
    pub requests: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

impl KeyRing {
    pub fn view(&self, now: Instant) -> Vec<KeyView> {
        self.slots
            .iter()
            .map(|slot| {
                let st = slot.state.lock();
                let disabled = st
                    .disabled
                    .filter(|(d, _)| *d == slot.digest.load(Ordering::Acquire))
                    .map(|(_, r)| r);
                let cooling = st
                    .cooling_until
                    .filter(|u| *u > now)
                    .map(|u| (u - now).as_secs_f64());
                let state = if slot.key.load().is_none() {
                    "missing"
                } else if disabled.is_some() {
                    "disabled"
                } else if cooling.is_some() {
                    "cooling"
                } else {
                    "active"
                };
                let today = st.today.on(crate::quota::window::today());
                KeyView {
                    id: slot.id.to_string(),
                    state,
                    cooling_seconds: cooling,
                    disabled_reason: disabled,
                    requests: st.requests,
                    last_status: st.last_status,
                    provider_limits: st.limits.clone(),
                    today: KeyToday {
                        requests: today.requests,
                        tokens: today.tokens,
                        cost_usd: crate::usage::cost::usd(today.micro_usd),
                    },
                    cooldowns: st.cooldowns,
                }
            })
            .collect()
    }
}
