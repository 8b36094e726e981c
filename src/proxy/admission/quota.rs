//! Step 4 of admission: the quota reservation, once the request is routed (its model known) and
//! authorized, before anything is sent upstream.

use super::route::Route;
use crate::auth::Principal;
use crate::config::OnStoreError;
use crate::proxy::errors::GatewayError;
use crate::quota::{Demand, Headroom, Reservation, Verdict};
use crate::registry::DEFAULT_OUTPUT_TOKENS;
use crate::runtime::Runtime;
use crate::usage::estimate_tokens;

/// What the check decided.
#[derive(Debug, Default)]
pub struct QuotaCheck {
    pub reservation: Option<Reservation>,
    /// The `x-ratelimit-*` values, when a rule applies (also on a refusal).
    pub headroom: Option<Headroom>,
    /// The request is refused (429 `quota_exceeded`, or 503 `quota_unavailable`).
    pub refused: Option<GatewayError>,
    /// The store did not answer (served or not, as `on_store_error` says).
    pub store_failed: bool,
}

/// The largest output estimate a request's `max_tokens` gives (2^40: far above any model).
const MAX_OUTPUT_ESTIMATE: u64 = 1 << 40;

/// What a request for `route` with a body of `body_len` bytes is expected to use.
pub fn demand<'a>(rt: &'a Runtime, route: &Route, body_len: u64) -> Demand<'a> {
    let model = route.model.map(|i| rt.registry.get(i));
    Demand {
        input: estimate_tokens(body_len),
        // The client's own number, bounded so that no count can overflow (a request asking for
        // more than any limit is refused as one that can never fit).
        output: route
            .max_tokens
            .map(|m| m.min(MAX_OUTPUT_ESTIMATE))
            .unwrap_or_else(|| model.map_or(DEFAULT_OUTPUT_TOKENS, |m| m.default_output_tokens)),
        output_explicit: route.max_tokens.is_some(),
        pricing: model.and_then(|m| m.pricing.as_ref()),
    }
}

/// Checks and reserves the quotas that apply to `caller` for `route`.
pub async fn check(rt: &Runtime, caller: &Principal, route: &Route, body_len: u64) -> QuotaCheck {
    if rt.quotas.rules.rules.is_empty() {
        return QuotaCheck::default();
    }
    let demand = demand(rt, route, body_len);
    let verdict = rt
        .quotas
        .reserve(caller, route.model, &route.model_id, &demand)
        .await;
    let room = |h: Headroom| (!h.is_empty()).then_some(h);
    match verdict {
        Verdict::Free => QuotaCheck::default(),
        Verdict::Reserved(r, h) => QuotaCheck {
            reservation: Some(r),
            headroom: room(h),
            ..QuotaCheck::default()
        },
        Verdict::Exceeded(e, h) => QuotaCheck {
            headroom: room(h),
            refused: Some(GatewayError::QuotaExceeded(e)),
            ..QuotaCheck::default()
        },
        Verdict::StoreDown(on_error) => QuotaCheck {
            refused: (on_error == OnStoreError::Deny).then_some(GatewayError::QuotaUnavailable),
            store_failed: true,
            ..QuotaCheck::default()
        },
    }
}
