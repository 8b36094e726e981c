//! Roles: which models (glob patterns on canonical ids) and endpoint groups each allows.
//! Compiled once per configuration into bit masks, so an authorization check is one AND: each
//! model carries the set of roles that may use it, each endpoint group likewise.

use crate::config::RoleSpec;
use crate::endpoints::EndpointGroup;
use crate::registry::{ModelIdx, Registry};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// At most this many roles (one bit each).
pub const MAX_ROLES: usize = 64;

/// What a caller may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Everything: development mode without `auth`.
    All,
    /// The union of these roles (bit i = role i; never empty: see `of_roles`).
    Roles(u64),
    /// The caller authenticated, but none of its roles is configured: it reaches nothing, and
    /// is refused with `no_known_roles` (audited with its subject and roles).
    NoKnownRoles,
}

impl Access {
    /// The access of a role set.
    pub fn of_roles(set: u64) -> Access {
        if set == 0 {
            Access::NoKnownRoles
        } else {
            Access::Roles(set)
        }
    }
}

/// The endpoint group names a role may list (besides `*` and `server.extra_paths` groups).
pub const KNOWN_GROUPS: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "moderations",
    "models",
    "analyze",
    "usage",
    "admin",
];

#[derive(Debug)]
pub struct Rbac {
    names: Vec<Arc<str>>,
    by_name: HashMap<String, usize>,
    any_endpoint: u64,
    endpoints: HashMap<String, u64>,
    /// Per model index: the roles allowed to use it.
    models: Vec<u64>,
}

impl Rbac {
    /// Compiles roles (validated: at most `MAX_ROLES`) against the registry's models.
    pub fn compile(roles: &BTreeMap<String, RoleSpec>, registry: &Registry) -> Rbac {
        let mut names = Vec::new();
        let mut by_name = HashMap::new();
        let mut any_endpoint = 0u64;
        let mut endpoints: HashMap<String, u64> = HashMap::new();
        let mut models = vec![0u64; registry.models().len()];
        for (i, (name, spec)) in roles.iter().take(MAX_ROLES).enumerate() {
            let bit = 1u64 << i;
            names.push(Arc::from(name.as_str()));
            by_name.insert(name.clone(), i);
            for e in &spec.endpoints {
                if e == "*" {
                    any_endpoint |= bit;
                } else {
                    *endpoints.entry(e.clone()).or_default() |= bit;
                }
            }
            for (m, model) in registry.models().iter().enumerate() {
                if spec.models.iter().any(|p| glob_match(p, &model.id)) {
                    models[m] |= bit;
                }
            }
        }
        Rbac {
            names,
            by_name,
            any_endpoint,
            endpoints,
            models,
        }
    }

    /// The role set of these names; unknown names are ignored.
    pub fn role_set<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        names
            .into_iter()
            .filter_map(|n| self.by_name.get(n))
            .fold(0, |acc, i| acc | (1 << i))
    }

    /// Names of the roles in `set`.
    pub fn names(&self, set: u64) -> Vec<Arc<str>> {
        (0..self.names.len())
            .filter(|i| set & (1 << i) != 0)
            .map(|i| self.names[i].clone())
            .collect()
    }

    pub fn allows_endpoint(&self, access: Access, group: &EndpointGroup) -> bool {
        match access {
            Access::All => true,
            Access::Roles(set) => set & self.endpoint_roles(group) != 0,
            Access::NoKnownRoles => false,
        }
    }

    /// Whether one of the caller's roles allows this model *on* this endpoint: two roles cannot
    /// be combined into a grant neither gives (one for the endpoint, another for the model).
    pub fn allows(&self, access: Access, group: &EndpointGroup, model: ModelIdx) -> bool {
        match access {
            Access::All => true,
            Access::Roles(set) => set & self.endpoint_roles(group) & self.model_roles(model) != 0,
            Access::NoKnownRoles => false,
        }
    }

    fn endpoint_roles(&self, group: &EndpointGroup) -> u64 {
        self.any_endpoint | self.endpoints.get(group.as_str()).copied().unwrap_or(0)
    }

    fn model_roles(&self, model: ModelIdx) -> u64 {
        self.models.get(model.0).copied().unwrap_or(0)
    }

    /// Whether one of the caller's roles allows this model on some endpoint (model lists).
    pub fn allows_model(&self, access: Access, model: ModelIdx) -> bool {
        match access {
            Access::All => true,
            Access::Roles(set) => set & self.model_roles(model) != 0,
            Access::NoKnownRoles => false,
        }
    }
}

/// Glob match: `*` any run of characters (including none), `?` exactly one; everything else
/// literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("claude-*", "claude-3-5-sonnet"));
        assert!(!glob_match("claude-*", "gpt-4o"));
        assert!(glob_match("gpt-4o-mini", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(glob_match("gpt-?o", "gpt-4o"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-b-y"));
        assert!(glob_match("meta-llama/*", "meta-llama/Llama-3"));
    }
}
