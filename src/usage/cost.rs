//! Cost in integer micro-dollars from a model's `pricing` (dollars per million tokens): a price
//! per million tokens is a price in micro-dollars per token.

use super::Tokens;
use crate::config::PricingSpec;

/// What `tokens` cost at `pricing`; cached input at `cached_input_per_million` when set,
/// else at the input price.
pub fn micro_usd(tokens: &Tokens, pricing: &PricingSpec) -> u64 {
    let cached = tokens.cached_input.min(tokens.input);
    let fresh = tokens.input - cached;
    let cached_price = pricing
        .cached_input_per_million
        .unwrap_or(pricing.input_per_million);
    let micro = fresh as f64 * pricing.input_per_million
        + cached as f64 * cached_price
        + tokens.output as f64 * pricing.output_per_million;
    // Non-negative and finite by validation; rounded to the nearest micro-dollar.
    micro.round().clamp(0.0, u64::MAX as f64) as u64
}

/// Micro-dollars as dollars, for logs and metrics.
pub fn usd(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_per_million_tokens() {
        let p = PricingSpec {
            input_per_million: 0.15,
            output_per_million: 0.60,
            cached_input_per_million: Some(0.075),
        };
        let t = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 0,
        };
        assert_eq!(micro_usd(&t, &p), 750_000);
        let cached = Tokens {
            input: 1_000_000,
            output: 0,
            cached_input: 500_000,
        };
        assert_eq!(micro_usd(&cached, &p), 75_000 + 37_500);
        let no_cached_price = PricingSpec {
            cached_input_per_million: None,
            ..p
        };
        assert_eq!(micro_usd(&cached, &no_cached_price), 150_000);
        assert!((usd(750_000) - 0.75).abs() < 1e-12);
    }
}
