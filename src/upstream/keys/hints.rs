//! When a rate-limited key may come back, read from a provider's 429 headers: `retry-after-ms`,
//! `retry-after` (seconds or an HTTP date) and OpenAI's `x-ratelimit-reset-*` durations. Values
//! are capped: a provider's absurd hint must not rest a key for ever, nor panic.

use http::HeaderMap;
use std::time::Duration;

/// Longest cooldown taken from a provider's headers.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// When a rate-limited key may come back, from the provider's headers: `retry-after-ms`,
/// `retry-after` (seconds or an HTTP date), or the longest `x-ratelimit-reset-*` (OpenAI's
/// `6m0s`, `1.5s`, `20ms` durations).
pub fn cooldown_from(headers: &HeaderMap) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let found = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        seconds(ms / 1000.0)
    } else if let Some(v) = get("retry-after") {
        v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
            let when = u64::try_from(crate::time::parse_http_date(v)?).ok()?;
            Some(Duration::from_secs(
                when.saturating_sub(crate::time::unix_now()),
            ))
        })
    } else {
        [
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
            "x-ratelimit-reset",
        ]
        .iter()
        .filter_map(|n| get(n).and_then(parse_go_duration))
        .max()
    };
    // A zero (OpenAI has sent `x-ratelimit-reset-tokens: 0` with a 429) says nothing useful.
    found.filter(|d| !d.is_zero()).map(|d| d.min(MAX_COOLDOWN))
}

/// A provider-given number of seconds, capped; `None` for a negative, infinite or NaN one
/// (`Duration::from_secs_f64` would panic on `inf` or `1e30`).
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_COOLDOWN.as_secs_f64())))
}

/// `6m0s`, `1h2m3.5s`, `20ms`, or a bare number of seconds.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += value * mult;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_headers() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert_eq!(
            cooldown_from(&h(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            cooldown_from(&h(&[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "20ms")
            ])),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            cooldown_from(&h(&[("x-ratelimit-reset-tokens", "1.5s")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")])),
            None,
            "a date in the past says nothing"
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "99999999")])),
            Some(MAX_COOLDOWN)
        );
        assert_eq!(cooldown_from(&h(&[])), None);
        assert_eq!(cooldown_from(&h(&[("retry-after", "soon")])), None);
    }

    #[test]
    fn zero_and_absurd_hints() {
        let mut zero = HeaderMap::new();
        zero.insert("x-ratelimit-reset-tokens", "0".parse().unwrap());
        assert_eq!(cooldown_from(&zero), None, "a zero hint is no hint");
        for absurd in ["inf", "1e30", "NaN", "-5"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after-ms", absurd.parse().unwrap());
            assert!(
                cooldown_from(&h).is_none_or(|d| d <= MAX_COOLDOWN),
                "{absurd}: no panic, no endless cooldown"
            );
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-reset-tokens", absurd.parse().unwrap());
            assert!(cooldown_from(&h).is_none_or(|d| d <= MAX_COOLDOWN));
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-tokens",
            "99999999999999h".parse().unwrap(),
        );
        assert_eq!(cooldown_from(&h), Some(MAX_COOLDOWN));
    }
}
