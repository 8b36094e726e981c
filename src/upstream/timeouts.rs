//! Upstream timeouts, resolved once per (model, provider) target at load time.

use crate::config::TimeoutsSpec;
use std::time::Duration;

/// Resolved timeouts of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and, separately, the TLS handshake.
    pub connect: Duration,
    /// Request sent to first response byte.
    pub first_byte: Duration,
    /// Longest gap between response chunks.
    pub between_chunks: Duration,
    /// Whole exchange.
    pub total: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_millis(5_000),
        first_byte: Duration::from_millis(300_000),
        between_chunks: Duration::from_millis(120_000),
        total: Duration::from_millis(900_000),
    };

    /// The defaults, overridden by the provider's settings, overridden by the model's.
    pub fn resolve(provider: &TimeoutsSpec, model: Option<&TimeoutsSpec>) -> Timeouts {
        let pick = |m: Option<u64>, p: Option<u64>, d: Duration| {
            m.or(p).map(Duration::from_millis).unwrap_or(d)
        };
        let m = model.cloned().unwrap_or_default();
        let d = Timeouts::DEFAULT;
        Timeouts {
            connect: pick(m.connect_ms, provider.connect_ms, d.connect),
            first_byte: pick(m.first_byte_ms, provider.first_byte_ms, d.first_byte),
            between_chunks: pick(
                m.between_chunks_ms,
                provider.between_chunks_ms,
                d.between_chunks,
            ),
            total: pick(m.total_ms, provider.total_ms, d.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_overrides_provider_overrides_default() {
        let p = TimeoutsSpec {
            connect_ms: Some(100),
            first_byte_ms: Some(200),
            ..Default::default()
        };
        let m = TimeoutsSpec {
            first_byte_ms: Some(900),
            ..Default::default()
        };
        let t = Timeouts::resolve(&p, Some(&m));
        assert_eq!(t.connect, Duration::from_millis(100));
        assert_eq!(t.first_byte, Duration::from_millis(900));
        assert_eq!(t.between_chunks, Timeouts::DEFAULT.between_chunks);
        assert_eq!(
            Timeouts::resolve(&TimeoutsSpec::default(), None),
            Timeouts::DEFAULT
        );
    }
}
