//! `Runtime`: the compiled, immutable view of one configuration (registry, providers with their
//! pools and keys, the proxied paths). The proxy holds it in an `ArcSwap`; a request takes one
//! snapshot at its start and uses it to the end. `compile` builds it from a validated
//! configuration.

mod compile;
#[cfg(test)]
mod tests;
mod warm_up;

use crate::auth::client_addr::TrustedProxies;
use crate::auth::rbac::Access;
use crate::auth::Authenticator;
use crate::config::Mode;
use crate::endpoints::{self, EndpointGroup};
use crate::registry::ModelIdx;
use crate::registry::{ProviderIdx, Registry, Rendered};
use crate::upstream::pool::Pool;
use crate::upstream::provider::Provider;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The compiled configuration.
#[derive(Debug)]
pub struct Runtime {
    pub mode: Mode,
    pub max_body_bytes: u64,
    pub body_read_timeout: Duration,
    /// `server.max_connections`, `server.header_read_timeout_seconds`,
    /// `server.keepalive_timeout_seconds`.
    pub connections: crate::connections::Limits,
    pub models_max_age_seconds: u64,
    pub registry: Registry,
    pub providers: Vec<Provider>,
    extra_paths: HashMap<String, EndpointGroup>,
    pub auth: Authenticator,
    pub trusted_proxies: TrustedProxies,
    /// The mock that answers `X-Test-Mode: true` (development only).
    pub test_mock: Option<ProviderIdx>,
    /// `/metrics` is served on the main listener.
    pub metrics_on_main: bool,
    /// Which configuration this is: 1 at start, one more per applied reload.
    pub generation: u64,
    /// `usage.force_stream_usage`.
    pub force_stream_usage: bool,
    /// `quotas`: the rules and the store they count in.
    pub quotas: crate::quota::Quotas,
    /// `analyze`, resolved against the registry.
    pub analyze: AnalyzeSettings,
    /// Model lists per role set: the caller sees only what it may use.
    views: RwLock<HashMap<Access, View>>,
}

/// `POST /api/analyze`'s settings.
#[derive(Debug)]
pub struct AnalyzeSettings {
    pub default_models: Vec<ModelIdx>,
    pub max_models: usize,
    pub timeout: Duration,
    pub synthesis_model: Option<ModelIdx>,
    pub synthesis_prompt: String,
}

#[derive(Debug)]
struct View {
    models_list: Rendered,
    /// `/api/available-models` and the servability it was rendered with.
    available: Option<(Vec<bool>, Rendered)>,
}

impl Runtime {
    /// The endpoint group of a normalised `POST` path, if the gateway proxies it.
    pub fn proxied_group(&self, path: &str) -> Option<EndpointGroup> {
        endpoints::builtin_group(path)
            .cloned()
            .or_else(|| self.extra_paths.get(path).cloned())
    }

    pub fn provider(&self, id: ProviderIdx) -> &Provider {
        &self.providers[id.0]
    }

    /// Pools of every network provider.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.providers.iter().filter_map(|p| p.pool.as_ref())
    }

    /// Per model, whether one of its targets can take a request now.
    pub fn servable(&self) -> Vec<bool> {
        self.registry
            .models()
            .iter()
            .map(|m| {
                m.targets
                    .iter()
                    .any(|t| self.provider(t.provider).is_usable())
            })
            .collect()
    }

    /// Whether `access` may see and use model `idx`.
    pub fn model_visible(&self, access: Access, idx: ModelIdx) -> bool {
        self.auth.rbac.allows_model(access, idx)
    }

    /// `/v1/models` as `access` sees it, rendered once per role set.
    pub fn models_list(&self, access: Access) -> Rendered {
        if let Some(v) = self.views.read().get(&access) {
            return v.models_list.clone();
        }
        let rendered = self
            .registry
            .render_models_list(&|i| self.model_visible(access, i));
        self.views
            .write()
            .entry(access)
            .or_insert_with(|| View {
                models_list: rendered.clone(),
                available: None,
            })
            .models_list
            .clone()
    }

    /// `/api/available-models` as `access` sees it, re-rendered only when servability changed.
    pub fn available_models(&self, access: Access) -> Rendered {
        let servable = self.servable();
        if let Some(Some((s, r))) = self.views.read().get(&access).map(|v| &v.available) {
            if *s == servable {
                return r.clone();
            }
        }
        let rendered = self
            .registry
            .render_available(&servable, &|i| self.model_visible(access, i));
        let list = self.models_list(access);
        self.views
            .write()
            .entry(access)
            .or_insert_with(|| View {
                models_list: list,
                available: None,
            })
            .available = Some((servable, rendered.clone()));
        rendered
    }
}
