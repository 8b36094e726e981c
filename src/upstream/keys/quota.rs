//! What a provider says about its own limits for one key (`x-ratelimit-*` on its responses,
//! OpenAI's and Anthropic's spellings) and what the gateway sent through the key today, so that
//! an operator sees a key running dry before it answers 429.

use http::HeaderMap;
use serde::Serialize;

/// The last limits a provider reported for a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProviderLimits {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// As the provider wrote it (`6m0s`, or an RFC 3339 time for Anthropic).
    pub reset_requests: Option<String>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<String>,
}

impl ProviderLimits {
    /// The limits in `h`, if the response reports any.
    pub fn from_headers(h: &HeaderMap) -> Option<ProviderLimits> {
        let num = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| h.get(*n)?.to_str().ok()?.trim().parse::<u64>().ok())
        };
        let text = |names: [&str; 2]| {
            names.iter().find_map(|n| {
                let v = h.get(*n)?.to_str().ok()?;
                Some(v.chars().take(40).collect::<String>())
            })
        };
        let l = ProviderLimits {
            limit_requests: num([
                "x-ratelimit-limit-requests",
                "anthropic-ratelimit-requests-limit",
            ]),
            remaining_requests: num([
                "x-ratelimit-remaining-requests",
                "anthropic-ratelimit-requests-remaining",
            ]),
            reset_requests: text([
                "x-ratelimit-reset-requests",
                "anthropic-ratelimit-requests-reset",
            ]),
            limit_tokens: num([
                "x-ratelimit-limit-tokens",
                "anthropic-ratelimit-tokens-limit",
            ]),
            remaining_tokens: num([
                "x-ratelimit-remaining-tokens",
                "anthropic-ratelimit-tokens-remaining",
            ]),
            reset_tokens: text([
                "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-tokens-reset",
            ]),
        };
        (l != ProviderLimits::default()).then_some(l)
    }
}

/// Requests, tokens and cost sent through a key on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyDay {
    #[serde(skip)]
    pub day: u64,
    pub requests: u64,
    pub tokens: u64,
    #[serde(skip)]
    pub micro_usd: u64,
}

impl KeyDay {
    /// The counts as of `day` (a new day starts from zero).
    pub fn on(mut self, day: u64) -> KeyDay {
        if self.day != day {
            self = KeyDay {
                day,
                ..KeyDay::default()
            };
        }
        self
    }
}

/// Why a key was taken out of rotation, for `ultra_key_cooldowns_total{reason}`.
pub const COOLDOWN_REASONS: [&str; 2] = ["rate_limited", "unauthorized"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_and_anthropic_headers_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(ProviderLimits::from_headers(&h), None);
        h.insert("x-ratelimit-remaining-requests", "42".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            "900".parse().unwrap(),
        );
        let l = ProviderLimits::from_headers(&h).unwrap();
        assert_eq!(l.remaining_requests, Some(42));
        assert_eq!(l.reset_tokens.as_deref(), Some("6m0s"));
        assert_eq!(l.remaining_tokens, Some(900));
        assert_eq!(l.limit_requests, None);
    }
}
