//! Quotas: budgets of requests, tokens and money per caller (or shared), checked after routing
//! and authorization and before any upstream call.
//!
//! A request reserves, over every rule that applies, one request and its token estimate (body
//! bytes / 4 + its `max_tokens` or the model's `default_output_tokens`) and that estimate's
//! cost, all or nothing; when it ends, `logging` replaces the reservation with what was really
//! spent (or gives it all back when nothing was). Windows are fixed on the wall clock (the
//! minute, the UTC day), so a reservation a dead gateway never settled lasts one window at most.
//!
//! Counters live in a store: this process's sharded memory (`memory`), or Redis (`redis`), where
//! one Lua script checks and reserves atomically, so that several gateways share one budget.

pub mod memory;
pub mod redis;
pub mod rules;
pub mod window;

use crate::auth::Principal;
use crate::config::{OnStoreError, PricingSpec};
use crate::registry::ModelIdx;
use crate::usage::{cost, Tokens};
use memory::MemoryStore;
use redis::RedisStore;
use rules::{Limits, Rules};
use std::sync::Arc;
use window::{Windows, DAY_MS, MINUTE_MS};

/// Whose budget a count belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A `per: shared` rule's one budget.
    Shared,
    /// A token's subject.
    Subject(Arc<str>),
    /// An API key, by id.
    ApiKey(Arc<str>),
}

impl Scope {
    pub fn of(p: &Principal) -> Scope {
        match &p.key_id {
            Some(k) => Scope::ApiKey(k.clone()),
            None => Scope::Subject(p.subject.clone()),
        }
    }

    /// `subject`, `api_key` or `shared`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Shared => "shared",
            Scope::Subject(_) => "subject",
            Scope::ApiKey(_) => "api_key",
        }
    }

    /// The subject or key id (empty for the shared scope).
    pub fn name(&self) -> &str {
        match self {
            Scope::Shared => "",
            Scope::Subject(s) | Scope::ApiKey(s) => s,
        }
    }
}

/// One kind of limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    CostPerDay,
}

impl LimitKind {
    /// A limit's value in words, e.g. `60 requests per minute`, `$20.00 per day`.
    pub fn describe(self, value: u64) -> String {
        match self {
            LimitKind::RequestsPerMinute => format!("{value} requests per minute"),
            LimitKind::TokensPerMinute => format!("{value} tokens per minute"),
            LimitKind::TokensPerDay => format!("{value} tokens per UTC day"),
            LimitKind::CostPerDay => format!("${:.2} per UTC day", cost::usd(value)),
        }
    }

    /// Milliseconds until the window this limit counts in ends.
    pub fn window_left_ms(self, w: &Windows) -> u64 {
        match self {
            LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => w.minute_left_ms(),
            LimitKind::TokensPerDay | LimitKind::CostPerDay => w.day_left_ms(),
        }
    }
}

/// A rule's counters in the current windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub tokens_minute: u64,
    pub tokens_day: u64,
    pub micro_usd_day: u64,
}

impl Counts {
    pub fn plus(&self, t: &Taken) -> Counts {
        Counts {
            requests: self.requests.saturating_add(1),
            tokens_minute: self.tokens_minute.saturating_add(t.tokens_minute),
            tokens_day: self.tokens_day.saturating_add(t.tokens_day),
            micro_usd_day: self.micro_usd_day.saturating_add(t.micro_usd),
        }
    }
}

/// What a request asks of each rule besides one request: `tokens` (its estimate) of which it
/// needs at least `tokens_needed` (its input, plus its own `max_tokens` when it set one);
/// likewise in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub tokens: u64,
    pub tokens_needed: u64,
    pub micro_usd: u64,
    pub micro_usd_needed: u64,
}

/// What a part reserved: the estimate, or less where a limit had less room left (but never
/// less than what the request needs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    pub tokens_minute: u64,
    pub tokens_day: u64,
    pub micro_usd: u64,
}

/// What `ask` takes given `counts` under `limits`, or the first limit without room for it.
pub fn take(counts: &Counts, limits: &Limits, ask: &Ask) -> Result<Taken, LimitKind> {
    let fit = |kind: LimitKind, used: u64, want: u64, need: u64| match limits.get(kind) {
        None => Ok(want),
        Some(l) => {
            let room = l.saturating_sub(used);
            if need > room {
                Err(kind)
            } else {
                Ok(want.min(room))
            }
        }
    };
    fit(LimitKind::RequestsPerMinute, counts.requests, 1, 1)?;
    Ok(Taken {
        tokens_minute: fit(
            LimitKind::TokensPerMinute,
            counts.tokens_minute,
            ask.tokens,
            ask.tokens_needed,
        )?,
        tokens_day: fit(
            LimitKind::TokensPerDay,
            counts.tokens_day,
            ask.tokens,
            ask.tokens_needed,
        )?,
        micro_usd: fit(
            LimitKind::CostPerDay,
            counts.micro_usd_day,
            ask.micro_usd,
            ask.micro_usd_needed,
        )?,
    })
}

/// One rule's share of a reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub rule: Arc<str>,
    pub scope: Scope,
    pub limits: Limits,
    pub ask: Ask,
    /// Filled in by the store when it reserves.
    pub taken: Taken,
}

/// What a store says about a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    /// Reserved (each part's `taken` filled in); each part's counts with it.
    Admitted(Vec<Counts>),
    /// Part `part` has no room under `kind`; nothing was reserved. `counts` are that part's.
    Over {
        part: usize,
        kind: LimitKind,
        counts: Counts,
    },
}

/// A caller's spending (served requests only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spend {
    pub requests: u64,
    pub tokens: u64,
    pub micro_usd: u64,
}

impl Spend {
    pub fn plus(&self, o: &Spend) -> Spend {
        Spend {
            requests: self.requests.saturating_add(o.requests),
            tokens: self.tokens.saturating_add(o.tokens),
            micro_usd: self.micro_usd.saturating_add(o.micro_usd),
        }
    }
}

/// What a request is expected to use, before it is sent.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    /// Body bytes / 4.
    pub input: u64,
    /// The request's own output bound, or the model's default.
    pub output: u64,
    /// `output` is the request's own `max_tokens` (so the request needs all of it).
    pub output_explicit: bool,
    pub pricing: Option<&'a PricingSpec>,
}

impl Demand<'_> {
    fn cost(&self, input: u64, output: u64) -> u64 {
        let t = Tokens {
            input,
            output,
            cached_input: 0,
        };
        self.pricing.map_or(0, |p| cost::micro_usd(&t, p))
    }

    /// What this demand asks of a rule, or the limit it can never fit: what a request needs
    /// is its input estimate and, when it set one, its own `max_tokens`; the rest of the
    /// estimate (the model's `default_output_tokens`) is reserved only as far as the limit has
    /// room, so that a limit smaller than the default estimate still lets a small request in.
    pub fn ask(&self, limits: &Limits) -> Result<Ask, (LimitKind, u64)> {
        let needed_output = if self.output_explicit { self.output } else { 0 };
        let ask = Ask {
            tokens: self.input.saturating_add(self.output),
            tokens_needed: self.input.saturating_add(needed_output),
            micro_usd: self.cost(self.input, self.output),
            micro_usd_needed: self.cost(self.input, needed_output),
        };
        for (kind, needed) in [
            (LimitKind::TokensPerMinute, ask.tokens_needed),
            (LimitKind::TokensPerDay, ask.tokens_needed),
            (LimitKind::CostPerDay, ask.micro_usd_needed),
        ] {
            if let Some(l) = limits.get(kind).filter(|l| needed > *l) {
                return Err((kind, l));
            }
        }
        Ok(ask)
    }
}

/// A store of counters.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDown;

impl Store {
    async fn reserve(&self, parts: &mut [Part], w: Windows) -> Result<Checked, StoreDown> {
        match self {
            Store::Memory(m) => Ok(m.reserve(parts, w)),
            Store::Redis(r) => r.reserve(parts, w).await,
        }
    }

    /// Settles off the request path: Redis calls run in a task of their own.
    fn settle(&self, parts: Vec<Part>, w: Windows, spent: Option<(u64, u64)>, scope: Scope) {
        match self {
            Store::Memory(m) => {
                m.settle(&parts, w, spent);
                if let Some((tokens, micro_usd)) = spent {
                    let s = Spend {
                        requests: 1,
                        tokens,
                        micro_usd,
                    };
                    m.record_spend(&scope, w, s);
                }
            }
            Store::Redis(r) => r.settle_in_background(parts, w, spent, scope),
        }
    }

    /// A rule's counts for a scope now.
    pub async fn counts(
        &self,
        rule: &Arc<str>,
        scope: &Scope,
        w: Windows,
    ) -> Result<Counts, StoreDown> {
        match self {
            Store::Memory(m) => Ok(m.counts(rule, scope, w)),
            Store::Redis(r) => r.counts(rule, scope, w).await,
        }
    }

    /// A caller's spending today.
    pub async fn spend(&self, scope: &Scope, w: Windows) -> Result<Spend, StoreDown> {
        match self {
            Store::Memory(m) => Ok(m.spend(scope, w)),
            Store::Redis(r) => r.spend(scope, w).await,
        }
    }

    /// The biggest spenders today.
    pub async fn top(&self, n: usize, w: Windows) -> Result<Vec<(Scope, Spend)>, StoreDown> {
        match self {
            Store::Memory(m) => Ok(m.top(n, w)),
            Store::Redis(r) => r.top(n, w).await,
        }
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// One `x-ratelimit-*` family (requests or tokens): the tightest rule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub limit: u64,
    pub remaining: u64,
    /// When the window ends, Unix milliseconds.
    pub reset_at_ms: u64,
}

/// The rate-limit headers of a response to which rules apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<Head>,
    pub tokens: Option<Head>,
}

impl Headroom {
    fn add(&mut self, limits: &Limits, counts: &Counts, w: &Windows) {
        let tighter = |slot: &mut Option<Head>, h: Head| {
            if slot.is_none_or(|s| h.remaining < s.remaining) {
                *slot = Some(h);
            }
        };
        if let Some(l) = limits.requests_per_minute {
            tighter(
                &mut self.requests,
                Head {
                    limit: l,
                    remaining: l.saturating_sub(counts.requests),
                    reset_at_ms: (w.minute + 1) * MINUTE_MS,
                },
            );
        }
        let tokens = match (limits.tokens_per_minute, limits.tokens_per_day) {
            (Some(l), _) => Some((l, counts.tokens_minute, (w.minute + 1) * MINUTE_MS)),
            (None, Some(l)) => Some((l, counts.tokens_day, (w.day + 1) * DAY_MS)),
            (None, None) => None,
        };
        if let Some((limit, used, reset_at_ms)) = tokens {
            tighter(
                &mut self.tokens,
                Head {
                    limit,
                    remaining: limit.saturating_sub(used),
                    reset_at_ms,
                },
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// A request's reservation, settled when it ends.
#[derive(Debug)]
pub struct Reservation {
    parts: Vec<Part>,
    windows: Windows,
    store: Store,
    scope: Scope,
    /// What the request was expected to use (the charge of a stream that never said).
    pub estimate: Tokens,
}

/// Why a request does not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub rule: Arc<str>,
    pub kind: LimitKind,
    pub limit: u64,
    /// `None`: the request alone exceeds the limit and can never be served under it.
    pub retry_after_secs: Option<u64>,
    /// The request's estimate, for the message of one that can never fit.
    pub estimate: u64,
}

/// The outcome of a quota check.
#[derive(Debug)]
pub enum Verdict {
    /// No rule applies: nothing to reserve.
    Free,
    Reserved(Reservation, Headroom),
    Exceeded(Exceeded, Headroom),
    /// The store did not answer; `on_store_error` says whether to serve.
    StoreDown(OnStoreError),
}

/// The quotas of one configuration.
#[derive(Debug)]
pub struct Quotas {
    pub rules: Rules,
    pub store: Store,
    pub on_store_error: OnStoreError,
}

impl Quotas {
    /// Checks and reserves a request of `p` for model `model_id`.
    pub async fn reserve(
        &self,
        p: &Principal,
        model: Option<ModelIdx>,
        model_id: &str,
        demand: &Demand<'_>,
    ) -> Verdict {
        let mut parts = Vec::new();
        let mut headroom = Headroom::default();
        let w = Windows::at(window::now_ms());
        for rule in self.rules.applicable(p, model, model_id) {
            match demand.ask(&rule.limits) {
                Ok(ask) => parts.push(Part {
                    rule: rule.id.clone(),
                    scope: rule.scope(p),
                    limits: rule.limits,
                    ask,
                    taken: Taken::default(),
                }),
                Err((kind, limit)) => {
                    let needed = if demand.output_explicit {
                        demand.output
                    } else {
                        0
                    };
                    let estimate = if kind == LimitKind::CostPerDay {
                        demand.cost(demand.input, needed)
                    } else {
                        demand.input.saturating_add(needed)
                    };
                    let e = Exceeded {
                        rule: rule.id.clone(),
                        kind,
                        limit,
                        retry_after_secs: None,
                        estimate,
                    };
                    return Verdict::Exceeded(e, headroom);
                }
            }
        }
        if parts.is_empty() {
            return Verdict::Free;
        }
        match self.store.reserve(&mut parts, w).await {
            Ok(Checked::Admitted(after)) => {
                for (p, c) in parts.iter().zip(&after) {
                    headroom.add(&p.limits, c, &w);
                }
                let r = Reservation {
                    parts,
                    windows: w,
                    store: self.store.clone(),
                    scope: Scope::of(p),
                    estimate: Tokens {
                        input: demand.input,
                        output: demand.output,
                        cached_input: 0,
                    },
                };
                Verdict::Reserved(r, headroom)
            }
            Ok(Checked::Over { part, kind, counts }) => {
                let over = &parts[part];
                headroom.add(&over.limits, &counts, &w);
                let e = Exceeded {
                    rule: over.rule.clone(),
                    kind,
                    limit: over.limits.get(kind).unwrap_or(0),
                    retry_after_secs: Some(window::retry_after_secs(kind.window_left_ms(&w))),
                    estimate: 0,
                };
                Verdict::Exceeded(e, headroom)
            }
            Err(StoreDown) => Verdict::StoreDown(self.on_store_error),
        }
    }

    /// A request (or analyze leg) is over: its reservation replaced by what it `spent` (tokens,
    /// micro-dollars; `None`: nothing, and the reservation is given back), or, when it reserved
    /// nothing, its spending recorded for `/api/usage`.
    pub fn close(
        &self,
        reservation: Option<Reservation>,
        caller: Option<&Principal>,
        spent: Option<(u64, u64)>,
    ) {
        match (reservation, spent, caller) {
            (Some(r), spent, _) => r.settle(spent),
            (None, Some((tokens, micro)), Some(p)) => self.record_unreserved(p, tokens, micro),
            (None, _, _) => {}
        }
    }

    /// Records a served request of `p` that reserved nothing (no rule applied, or the store
    /// was down), for `/api/usage`.
    fn record_unreserved(&self, p: &Principal, tokens: u64, micro_usd: u64) {
        let w = Windows::at(window::now_ms());
        self.store
            .settle(Vec::new(), w, Some((tokens, micro_usd)), Scope::of(p));
    }
}

impl Reservation {
    /// Replaces the reservation with what was spent; `None` gives it all back.
    pub fn settle(self, spent: Option<(u64, u64)>) {
        self.store
            .settle(self.parts, self.windows, spent, self.scope);
    }
}

#[cfg(test)]
mod tests;
