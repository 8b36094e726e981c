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
    /// The limits in `h`, if the response reports any. One pass over the headers rather than
    /// twelve lookups by name (each hashing a name): most responses carry none of these.
    pub fn from_headers(h: &HeaderMap) -> Option<ProviderLimits> {
        let (mut openai, mut anthropic) = (ProviderLimits::default(), ProviderLimits::default());
        for (name, value) in h {
            let name = name.as_str();
            if let Some(field) = name.strip_prefix("x-ratelimit-") {
                openai.set(field, value, true);
            } else if let Some(field) = name.strip_prefix("anthropic-ratelimit-") {
                anthropic.set(field, value, false);
            }
        }
        // OpenAI's spelling wins where a response carries both.
        let l = ProviderLimits {
            limit_requests: openai.limit_requests.or(anthropic.limit_requests),
            remaining_requests: openai.remaining_requests.or(anthropic.remaining_requests),
            reset_requests: openai.reset_requests.or(anthropic.reset_requests),
            limit_tokens: openai.limit_tokens.or(anthropic.limit_tokens),
            remaining_tokens: openai.remaining_tokens.or(anthropic.remaining_tokens),
            reset_tokens: openai.reset_tokens.or(anthropic.reset_tokens),
        };
        (l != ProviderLimits::default()).then_some(l)
    }

    /// One `x-ratelimit-{what}-{unit}` (OpenAI, `what_first`) or
    /// `anthropic-ratelimit-{unit}-{what}` header, its prefix taken off.
    fn set(&mut self, field: &str, value: &http::HeaderValue, what_first: bool) {
        let Some((a, b)) = field.split_once('-') else {
            return;
        };
        let (what, unit) = if what_first { (a, b) } else { (b, a) };
        let Ok(v) = value.to_str() else { return };
        let num = || v.trim().parse::<u64>().ok();
        let text = || Some(v.chars().take(40).collect::<String>());
        // A repeated header: the first usable value stays, as a lookup by name would give it.
        match (what, unit) {
            ("limit", "requests") => self.limit_requests = self.limit_requests.or_else(num),
            ("remaining", "requests") => {
                self.remaining_requests = self.remaining_requests.or_else(num)
            }
            ("reset", "requests") => self.reset_requests = self.reset_requests.take().or_else(text),
            ("limit", "tokens") => self.limit_tokens = self.limit_tokens.or_else(num),
            ("remaining", "tokens") => self.remaining_tokens = self.remaining_tokens.or_else(num),
            ("reset", "tokens") => self.reset_tokens = self.reset_tokens.take().or_else(text),
            _ => {}
        }
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

    #[test]
    fn openai_spelling_wins_and_strangers_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert("anthropic-ratelimit-requests-limit", "10".parse().unwrap());
        h.insert("x-ratelimit-limit-requests", "20".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2026-12-03T10:00:00Z".parse().unwrap(),
        );
        h.insert("x-ratelimit-limit-tokens", "lots".parse().unwrap());
        h.insert("x-ratelimit-other", "1".parse().unwrap());
        h.insert("x-ratelimit-limit-bananas", "1".parse().unwrap());
        let l = ProviderLimits::from_headers(&h).unwrap();
        assert_eq!(l.limit_requests, Some(20));
        assert_eq!(l.reset_requests.as_deref(), Some("2026-12-03T10:00:00Z"));
        assert_eq!(l.limit_tokens, None, "not a number");
        let mut repeated = HeaderMap::new();
        repeated.append("x-ratelimit-remaining-tokens", "7".parse().unwrap());
        repeated.append("x-ratelimit-remaining-tokens", "oops".parse().unwrap());
        repeated.append("x-ratelimit-remaining-tokens", "9".parse().unwrap());
        let l = ProviderLimits::from_headers(&repeated).unwrap();
        assert_eq!(l.remaining_tokens, Some(7), "the first usable value");
        let mut only_strangers = HeaderMap::new();
        only_strangers.insert("x-ratelimit-limit-bananas", "1".parse().unwrap());
        assert_eq!(ProviderLimits::from_headers(&only_strangers), None);
    }
}
