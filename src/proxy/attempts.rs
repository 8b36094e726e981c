//! One request's way through its model's targets: which provider, key and backend the next
//! attempt uses, and what is left of the retry budget.
//!
//! Rules (issue #4, DESIGN.md): a connect failure, a timeout before the first byte or a 5xx moves
//! the request to the pool's next backend, then to the next target, spending one attempt of
//! `retry.max_attempts` (of the model's first provider) within `retry.deadline_ms`. A key the
//! provider refuses (401, 403, 429) sends the request to another key of the same provider without
//! spending an attempt; when no key is left, the next target takes over (that spends one).
//! Backends behind an open breaker, unhealthy or already tried are never picked.

use super::errors::GatewayError;
use crate::registry::{ProviderIdx, Target};
use crate::runtime::Runtime;
use crate::upstream::breaker::{Admission, Ticket};
use crate::upstream::keys::KeyPick;
use crate::upstream::keys::ProviderKey;
use crate::upstream::pool::BackendState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `Retry-After` of a 503 when nothing says when a backend will be back.
const NO_BACKEND_RETRY_AFTER: u64 = 5;

/// The attempt in flight.
#[derive(Debug)]
pub struct Attempt {
    /// Index into `Plan::targets`.
    pub target: usize,
    pub provider: ProviderIdx,
    pub backend: Arc<BackendState>,
    /// The key index in the provider's ring and the key; `None` for a keyless provider.
    pub key: Option<(usize, Arc<ProviderKey>)>,
    pub ticket: Option<Ticket>,
    pub started: std::time::Instant,
}

#[derive(Debug)]
pub struct Plan {
    pub targets: Arc<[Target]>,
    target: usize,
    /// Attempts that spent the budget.
    spent: u32,
    /// Upstream requests made, for `x-ultra-attempts`.
    pub made: u32,
    max_attempts: u32,
    deadline: Instant,
    tried_backends: Vec<(ProviderIdx, SocketAddr)>,
    tried_keys: Vec<(ProviderIdx, usize)>,
    /// A key of the current target was refused since the last spent attempt.
    key_trouble: bool,
    /// When a rate-limited key comes back, the soonest across providers (`Some`: a provider was
    /// skipped because all its keys were cooling).
    keys_back_in: Option<Duration>,
    /// What the client gets if nothing else works.
    pub last_error: Option<GatewayError>,
    model_id: Arc<str>,
    /// The caller's subject (steers the consistent-hash strategy) and its hash (key affinity).
    subject: Arc<str>,
    caller: u64,
    pub current: Option<Attempt>,
}

impl Plan {
    /// A plan over `targets` for the caller `subject`, starting at the first target; the budget
    /// is the first provider's.
    pub fn new(
        rt: &Runtime,
        model_id: Arc<str>,
        targets: Arc<[Target]>,
        subject: Arc<str>,
        started: Instant,
    ) -> Plan {
        let retry = targets
            .first()
            .map(|t| rt.provider(t.provider).retry.clone())
            .unwrap_or_default();
        Plan {
            targets,
            target: 0,
            spent: 0,
            made: 0,
            max_attempts: retry.max_attempts.max(1),
            deadline: started + Duration::from_millis(retry.deadline_ms),
            tried_backends: Vec::new(),
            tried_keys: Vec::new(),
            key_trouble: false,
            keys_back_in: None,
            last_error: None,
            model_id,
            caller: caller_hash(&subject),
            subject,
            current: None,
        }
    }

    pub fn target(&self) -> Option<&Target> {
        self.current.as_ref().map(|a| &self.targets[a.target])
    }

    /// Whether the budget allows another counted attempt.
    pub fn budget_left(&self, now: Instant) -> bool {
        self.spent < self.max_attempts && now < self.deadline
    }

    /// The attempt in flight and its target, or the next one when the last has ended.
    pub fn current_or_next(
        &mut self,
        rt: &Runtime,
        now: Instant,
    ) -> Result<(&Attempt, &Target), GatewayError> {
        let attempt = match self.current.take() {
            Some(a) => a,
            None => self.pick(rt, now)?,
        };
        let attempt = self.current.insert(attempt);
        Ok((attempt, &self.targets[attempt.target]))
    }

    /// Picks the next attempt: the current target's next usable key and backend, then the
    /// following targets.
    fn pick(&mut self, rt: &Runtime, now: Instant) -> Result<Attempt, GatewayError> {
        if !self.budget_left(now) {
            return Err(self.final_error());
        }
        for ti in self.target..self.targets.len() {
            if ti != self.target && self.key_trouble {
                // Leaving a provider whose keys all failed costs an attempt.
                self.key_trouble = false;
                self.spent += 1;
                if !self.budget_left(now) {
                    return Err(self.final_error());
                }
            }
            let t = &self.targets[ti];
            let provider = rt.provider(t.provider);
            let Some(pool) = &provider.pool else { continue };
            let tried_keys = self.tried_keys_of(t.provider);
            let key = match provider.keys.pick(Some(self.caller), &tried_keys, now) {
                KeyPick::Key(i, k) => Some((i, k)),
                KeyPick::NoneNeeded => None,
                KeyPick::Exhausted { back_in, refused } => {
                    // Cooling keys come back: 429 with when. Keys the provider refused do not:
                    // that is the gateway's configuration problem (502).
                    if let Some(b) = back_in {
                        self.keys_back_in = Some(self.keys_back_in.map_or(b, |s| s.min(b)));
                    }
                    if refused && self.last_error.is_none() {
                        self.last_error = Some(GatewayError::ProviderAuthFailed {
                            provider: provider.name.to_string(),
                        });
                    }
                    continue;
                }
            };
            let mut exclude = self.tried_backends_of(t.provider);
            // A breaker may close its half-open slot between selection and admission: try on.
            while let Some(b) = pool.select(self.subject.as_bytes(), &exclude, now) {
                let (admission, ticket) = b.breaker.admit(now);
                if admission == Admission::Refused {
                    exclude.push(b.addr);
                    continue;
                }
                self.target = ti;
                self.made += 1;
                return Ok(Attempt {
                    target: ti,
                    provider: t.provider,
                    backend: b,
                    key,
                    ticket,
                    started: std::time::Instant::now(),
                });
            }
        }
        Err(self.final_error())
    }

    /// The attempt failed because of its backend (connect error, timeout, 5xx): the backend is
    /// not tried again and the budget is spent.
    pub fn backend_failed(&mut self, error: GatewayError, now: Instant) {
        if let Some(a) = self.current.take() {
            if let Some(t) = a.ticket {
                t.failure(now);
            }
            self.tried_backends.push((a.provider, a.backend.addr));
        }
        self.spent += 1;
        self.key_trouble = false;
        self.last_error = Some(error);
    }

    /// The attempt failed because of its key: another key of the same provider is next, free.
    /// `error` is what the client gets if that was the end (`None` for a 429: running out of
    /// keys then answers 429 `provider_rate_limited`).
    pub fn key_failed(&mut self, error: Option<GatewayError>) {
        if let Some(a) = self.current.take() {
            if let Some(t) = a.ticket {
                t.success();
            }
            match a.key {
                Some((k, _)) => self.tried_keys.push((a.provider, k)),
                // A keyless provider refused us: nothing to rotate, its backends are not at fault.
                None => self.tried_backends.push((a.provider, a.backend.addr)),
            }
        }
        self.key_trouble = true;
        if error.is_some() {
            self.last_error = error;
        }
    }

    /// Whether another attempt could still be made after the current one fails because of its
    /// backend (used to let the last 5xx through to the client rather than replace it).
    pub fn could_continue(&self, rt: &Runtime, now: Instant) -> bool {
        if self.spent + 1 >= self.max_attempts || now >= self.deadline {
            return false;
        }
        let Some(cur) = &self.current else {
            return false;
        };
        self.targets[cur.target..].iter().enumerate().any(|(i, t)| {
            let provider = rt.provider(t.provider);
            let Some(pool) = &provider.pool else {
                return false;
            };
            let mut exclude = self.tried_backends_of(t.provider);
            if i == 0 {
                exclude.push(cur.backend.addr);
            }
            let tried_keys = self.tried_keys_of(t.provider);
            pool.available_except(&exclude, now) && provider.keys.has_usable(&tried_keys, now)
        })
    }

    /// Keys of `provider` this request already tried.
    fn tried_keys_of(&self, provider: ProviderIdx) -> Vec<usize> {
        self.tried_keys
            .iter()
            .filter(|(p, _)| *p == provider)
            .map(|(_, k)| *k)
            .collect()
    }

    /// Backends of `provider` this request already tried.
    fn tried_backends_of(&self, provider: ProviderIdx) -> Vec<SocketAddr> {
        self.tried_backends
            .iter()
            .filter(|(p, _)| *p == provider)
            .map(|(_, a)| *a)
            .collect()
    }

    fn final_error(&self) -> GatewayError {
        if let Some(e) = &self.last_error {
            return e.clone();
        }
        if let Some(d) = self.keys_back_in {
            return GatewayError::ProviderRateLimited {
                // Rounded up: a client that waits exactly this long finds a key back.
                retry_after: (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1),
            };
        }
        GatewayError::NoHealthyUpstream {
            model: self.model_id.to_string(),
            retry_after: NO_BACKEND_RETRY_AFTER,
        }
    }
}

/// A hash of the caller's subject, for key affinity.
fn caller_hash(subject: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    subject.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
