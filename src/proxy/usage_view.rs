//! `GET /api/usage` (endpoint group `usage`): a caller's spending today and, per quota rule,
//! what is used and left in the current minute and day and when each resets. An admin may ask
//! about another caller (`?subject=` or `?api_key=`) and for the biggest spenders (`?top=N`).

use super::errors::GatewayError;
use crate::auth::{Principal, Refusal};
use crate::config::QuotaPer;
use crate::endpoints::EndpointGroup;
use crate::quota::rules::Rule;
use crate::quota::window::{self, Windows};
use crate::quota::{Counts, Scope, Spend, StoreDown};
use crate::runtime::Runtime;
use crate::usage::cost;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most spenders `?top=` lists.
const MAX_TOP: usize = 100;

/// What the query asks for.
#[derive(Debug, PartialEq)]
pub struct Query {
    /// `None`: the caller itself.
    pub who: Option<Scope>,
    pub top: Option<usize>,
}

/// Reads `?subject=`, `?api_key=` and `?top=`.
pub fn parse_query(q: Option<&str>) -> Result<Query, GatewayError> {
    let mut query = Query {
        who: None,
        top: None,
    };
    let bad = |m: &str| GatewayError::InvalidQuery(m.to_string());
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad("a query value is not valid UTF-8"))?;
        match k {
            "subject" if !v.is_empty() => query.who = Some(Scope::Subject(Arc::from(v))),
            "api_key" if !v.is_empty() => query.who = Some(Scope::ApiKey(Arc::from(v))),
            "top" => {
                let n: usize = v.parse().map_err(|_| bad("`top` must be a whole number"))?;
                query.top = Some(n.clamp(1, MAX_TOP));
            }
            _ => return Err(bad("the query takes `subject`, `api_key` or `top`")),
        }
    }
    Ok(query)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The body of `GET /api/usage` for `caller` asking `query`.
pub async fn render(
    rt: &Runtime,
    caller: &Principal,
    query: &Query,
) -> Result<Value, GatewayError> {
    let admin = rt
        .auth
        .rbac
        .allows_endpoint(caller.access, &EndpointGroup::Admin);
    let own = Scope::of(caller);
    let asks_other = query.who.as_ref().is_some_and(|w| *w != own);
    if (asks_other || query.top.is_some()) && !admin {
        return Err(GatewayError::Auth(Refusal::EndpointForbidden));
    }
    let who = query.who.clone().unwrap_or(own);
    let w = Windows::at(window::now_ms());
    let store = &rt.quotas.store;
    let down = |_: StoreDown| GatewayError::QuotaUnavailable;
    let spend = store.spend(&who, w).await.map_err(down)?;
    let mut rules = Vec::new();
    for r in &rt.quotas.rules.rules {
        let scope = match r.per {
            QuotaPer::Shared => Scope::Shared,
            QuotaPer::Caller => who.clone(),
        };
        let counts = store.counts(&r.id, &scope, w).await.map_err(down)?;
        let applies = if asks_other {
            // Another caller's roles are not known here: its rules by identity, and any rule
            // that counted something for it.
            r.matches_identity(&who) || counts != Counts::default()
        } else {
            r.matches_caller(caller)
        };
        if applies {
            rules.push(rule_view(r, &counts, &w));
        }
    }
    let mut body = json!({
        "object": "usage",
        "caller": scope_view(&who),
        "store": store.kind(),
        "today": spend_view(&spend),
        "rules": rules,
        "day_resets_in": window::openai_duration(w.day_left_ms()),
    });
    if let Some(n) = query.top {
        let top = store.top(n, w).await.map_err(down)?;
        body["top"] = top
            .iter()
            .map(|(s, sp)| {
                let mut v = scope_view(s);
                v["today"] = spend_view(sp);
                v
            })
            .collect();
    }
    Ok(body)
}

fn scope_view(s: &Scope) -> Value {
    json!({ "kind": s.kind(), "id": s.name() })
}

fn spend_view(s: &Spend) -> Value {
    json!({ "requests": s.requests, "tokens": s.tokens, "cost_usd": cost::usd(s.micro_usd) })
}

fn rule_view(r: &Rule, c: &Counts, w: &Windows) -> Value {
    let l = &r.limits;
    let left = |limit: Option<u64>, used: u64| limit.map(|l| l.saturating_sub(used));
    json!({
        "id": &*r.id,
        "per": match r.per { QuotaPer::Caller => "caller", QuotaPer::Shared => "shared" },
        "minute": {
            "requests": c.requests,
            "tokens": c.tokens_minute,
            "limit_requests": l.requests_per_minute,
            "limit_tokens": l.tokens_per_minute,
            "remaining_requests": left(l.requests_per_minute, c.requests),
            "remaining_tokens": left(l.tokens_per_minute, c.tokens_minute),
            "resets_in": window::openai_duration(w.minute_left_ms()),
        },
        "day": {
            "tokens": c.tokens_day,
            "cost_usd": cost::usd(c.micro_usd_day),
            "limit_tokens": l.tokens_per_day,
            "limit_cost_usd": l.micro_usd_per_day.map(cost::usd),
            "remaining_tokens": left(l.tokens_per_day, c.tokens_day),
            "remaining_cost_usd": left(l.micro_usd_per_day, c.micro_usd_day).map(cost::usd),
            "resets_in": window::openai_duration(w.day_left_ms()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_a_caller_or_ask_for_the_top() {
        assert_eq!(
            parse_query(None).unwrap(),
            Query {
                who: None,
                top: None
            }
        );
        let q = parse_query(Some("subject=alice%40corp&top=5")).unwrap();
        assert_eq!(q.who, Some(Scope::Subject(Arc::from("alice@corp"))));
        assert_eq!(q.top, Some(5));
        assert_eq!(parse_query(Some("top=100000")).unwrap().top, Some(MAX_TOP));
        assert_eq!(
            parse_query(Some("api_key=billing")).unwrap().who,
            Some(Scope::ApiKey(Arc::from("billing")))
        );
        assert!(parse_query(Some("top=many")).is_err());
        assert!(parse_query(Some("user=x")).is_err());
        assert!(parse_query(Some("subject=%zz")).is_err());
    }
}
