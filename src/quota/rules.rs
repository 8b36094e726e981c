//! `quotas.rules` compiled against one configuration: who and which models each rule applies
//! to (role bits, subject and key sets, a per-model table), and what a request asks of it.

use super::{LimitKind, Scope};
use crate::auth::rbac::{glob_match, Access, Rbac};
use crate::auth::Principal;
use crate::config::{QuotaPer, QuotaRule, QuotasSection};
use crate::registry::{ModelIdx, Registry};
use std::collections::HashSet;
use std::sync::Arc;

/// A rule's limits; cost in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub micro_usd_per_day: Option<u64>,
}

impl Limits {
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::RequestsPerMinute => self.requests_per_minute,
            LimitKind::TokensPerMinute => self.tokens_per_minute,
            LimitKind::TokensPerDay => self.tokens_per_day,
            LimitKind::CostPerDay => self.micro_usd_per_day,
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    pub id: Arc<str>,
    everyone: bool,
    roles: u64,
    subjects: HashSet<Box<str>>,
    api_keys: HashSet<Box<str>>,
    /// By model index; `None`: every model.
    by_model: Option<Vec<bool>>,
    /// The globs, for model names the registry does not know (the development test mode).
    globs: Option<Vec<String>>,
    pub per: QuotaPer,
    pub limits: Limits,
}

impl Rule {
    fn compile(spec: &QuotaRule, rbac: &Rbac, registry: &Registry) -> Rule {
        let globs = spec.models.clone();
        let by_model = globs.as_ref().map(|g| {
            registry
                .models()
                .iter()
                .map(|m| g.iter().any(|p| glob_match(p, &m.id)))
                .collect()
        });
        Rule {
            id: Arc::from(spec.id.as_str()),
            everyone: spec.matches.is_empty(),
            roles: rbac.role_set(spec.matches.roles.iter().map(String::as_str)),
            subjects: spec
                .matches
                .subjects
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            api_keys: spec
                .matches
                .api_keys
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            by_model,
            globs,
            per: spec.per,
            limits: Limits {
                requests_per_minute: spec.requests_per_minute,
                tokens_per_minute: spec.tokens_per_minute,
                tokens_per_day: spec.tokens_per_day,
                micro_usd_per_day: spec
                    .cost_usd_per_day
                    .map(|d| (d * 1_000_000.0).round().max(1.0) as u64),
            },
        }
    }

    /// Whether the rule covers this caller.
    pub fn matches_caller(&self, p: &Principal) -> bool {
        if self.everyone {
            return true;
        }
        if let Access::Roles(bits) = p.access {
            if bits & self.roles != 0 {
                return true;
            }
        }
        if p.key_id
            .as_deref()
            .is_some_and(|k| self.api_keys.contains(k))
        {
            return true;
        }
        p.key_id.is_none() && self.subjects.contains(&*p.subject)
    }

    /// Whether the rule covers a caller known only by its scope (roles unknown).
    pub fn matches_identity(&self, s: &Scope) -> bool {
        self.everyone
            || match s {
                Scope::Subject(sub) => self.subjects.contains(&**sub),
                Scope::ApiKey(k) => self.api_keys.contains(&**k),
                Scope::Shared => false,
            }
    }

    /// Whether the rule covers this model (`idx` when the registry knows it).
    pub fn matches_model(&self, idx: Option<ModelIdx>, id: &str) -> bool {
        match (&self.by_model, idx) {
            (None, _) => true,
            (Some(table), Some(i)) => table.get(i.0).copied().unwrap_or(false),
            (Some(_), None) => self
                .globs
                .as_ref()
                .is_some_and(|g| g.iter().any(|p| glob_match(p, id))),
        }
    }

    /// Whose budget a request of `p` counts against.
    pub fn scope(&self, p: &Principal) -> Scope {
        match self.per {
            QuotaPer::Shared => Scope::Shared,
            QuotaPer::Caller => Scope::of(p),
        }
    }
}

/// The compiled rules of one configuration.
#[derive(Debug, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    pub fn compile(spec: &QuotasSection, rbac: &Rbac, registry: &Registry) -> Rules {
        Rules {
            rules: spec
                .rules
                .iter()
                .map(|r| Rule::compile(r, rbac, registry))
                .collect(),
        }
    }

    /// The rules that apply to a request.
    pub fn applicable<'a>(
        &'a self,
        p: &'a Principal,
        idx: Option<ModelIdx>,
        model_id: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.matches_caller(p) && r.matches_model(idx, model_id))
    }

    /// The rules that cover a caller, whatever the model (for `/api/usage`).
    pub fn of_caller<'a>(&'a self, p: &'a Principal) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matches_caller(p))
    }
}
