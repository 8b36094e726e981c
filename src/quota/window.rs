//! Fixed windows on the wall clock (a minute is `unix_ms / 60_000`, a day the UTC day), so that
//! every gateway sharing a store agrees on them, and reset times written as OpenAI writes them.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Today's UTC day number.
pub fn today() -> u64 {
    now_ms() / DAY_MS
}

/// The windows a moment falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub now_ms: u64,
    pub minute: u64,
    pub day: u64,
}

impl Windows {
    pub fn at(now_ms: u64) -> Windows {
        Windows {
            now_ms,
            minute: now_ms / MINUTE_MS,
            day: now_ms / DAY_MS,
        }
    }

    /// Milliseconds until the current minute ends.
    pub fn minute_left_ms(&self) -> u64 {
        (self.minute + 1) * MINUTE_MS - self.now_ms
    }

    /// Milliseconds until the current UTC day ends.
    pub fn day_left_ms(&self) -> u64 {
        (self.day + 1) * DAY_MS - self.now_ms
    }
}

/// Whole seconds to wait for `ms` to pass (at least 1): `Retry-After`.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// A duration as OpenAI's `x-ratelimit-reset-*` headers write it (Go's format): `12ms`,
/// `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(openai_duration(12), "12ms");
        assert_eq!(openai_duration(0), "0ms");
        assert_eq!(openai_duration(1000), "1s");
        assert_eq!(openai_duration(1500), "1.5s");
        assert_eq!(openai_duration(59_923), "59.923s");
        assert_eq!(openai_duration(360_000), "6m0s");
        assert_eq!(openai_duration(3_723_250), "1h2m3.25s");
        assert_eq!(openai_duration(DAY_MS), "24h0m0s");
    }

    #[test]
    fn windows_end_on_the_minute_and_the_utc_day() {
        let w = Windows::at(DAY_MS * 3 + 59_500);
        assert_eq!(w.minute_left_ms(), 500);
        assert_eq!(w.day_left_ms(), DAY_MS - 59_500);
        assert_eq!(Windows::at(DAY_MS * 3 + 60_000).minute, w.minute + 1);
        assert_eq!(retry_after_secs(500), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
