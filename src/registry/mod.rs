//! The model registry: canonical ids, aliases, ordered provider targets and metadata, compiled
//! once per configuration. Lookups are one hash probe; the JSON bodies the gateway serves about
//! models are rendered here (see `render`).

mod render;
mod suggest;

pub use render::{etag_matches, Rendered};

use crate::config::{Config, PricingSpec};
use crate::upstream::timeouts::Timeouts;
use std::collections::HashMap;
use std::sync::Arc;

/// Position of a provider in `Runtime::providers`: valid within one compiled configuration only
/// (a provider's stable id across reloads is its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProviderIdx(pub usize);

/// Index of a model in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelIdx(pub usize);

/// Where a model is served: a provider and the model name that provider expects.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: ProviderIdx,
    pub provider_name: Arc<str>,
    pub upstream_model: Arc<str>,
    /// The provider's timeouts with this model's overrides applied.
    pub timeouts: Timeouts,
}

/// One model of the registry.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: Arc<str>,
    pub aliases: Vec<String>,
    pub owned_by: String,
    /// Shared with each request's retry plan (no per-request copy).
    pub targets: Arc<[Target]>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub pricing: Option<PricingSpec>,
    /// Output tokens a quota reservation counts when a request names no maximum.
    pub default_output_tokens: u64,
    pub capabilities: Vec<String>,
    pub description: Option<String>,
    pub created: u64,
}

/// `default_output_tokens` when a model does not set it (nor a smaller `max_output_tokens`).
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// The compiled registry.
#[derive(Debug)]
pub struct Registry {
    models: Vec<Model>,
    by_name: HashMap<Box<str>, ModelIdx>,
    default_model: Option<ModelIdx>,
    model_objects: Vec<Rendered>,
}

impl Registry {
    /// Builds the registry. `provider_index` maps provider names (validated to exist) to ids;
    /// `timeouts` resolves a target's timeouts from its provider and the model's overrides.
    pub fn build(
        config: &Config,
        provider_index: &HashMap<&str, ProviderIdx>,
        timeouts: impl Fn(ProviderIdx, Option<&crate::config::TimeoutsSpec>) -> Timeouts,
    ) -> Registry {
        let mut models = Vec::with_capacity(config.models.len());
        let mut by_name = HashMap::new();
        for (i, m) in config.models.iter().enumerate() {
            let s = &m.spec;
            let targets: Arc<[Target]> = s
                .targets
                .iter()
                .filter_map(|t| {
                    let pid = *provider_index.get(t.provider.as_str())?;
                    Some(Target {
                        provider: pid,
                        provider_name: Arc::from(t.provider.as_str()),
                        upstream_model: Arc::from(t.model.as_deref().unwrap_or(&s.id)),
                        timeouts: timeouts(pid, s.timeouts.as_ref()),
                    })
                })
                .collect();
            let owned_by = s
                .owned_by
                .clone()
                .or_else(|| s.targets.first().map(|t| t.provider.clone()))
                .unwrap_or_default();
            by_name.insert(Box::from(s.id.as_str()), ModelIdx(i));
            for a in &s.aliases {
                by_name.insert(Box::from(a.as_str()), ModelIdx(i));
            }
            models.push(Model {
                id: Arc::from(s.id.as_str()),
                aliases: s.aliases.clone(),
                owned_by,
                targets,
                context_window: s.context_window,
                max_output_tokens: s.max_output_tokens,
                pricing: s.pricing.clone(),
                default_output_tokens: s.default_output_tokens.unwrap_or_else(|| {
                    s.max_output_tokens
                        .map_or(DEFAULT_OUTPUT_TOKENS, |m| m.min(DEFAULT_OUTPUT_TOKENS))
                }),
                capabilities: s.capabilities.clone(),
                description: s.description.clone(),
                created: s.created.unwrap_or(0),
            });
        }
        let default_model = config
            .default_model
            .as_deref()
            .and_then(|d| by_name.get(d).copied());
        let model_objects = models.iter().map(render::model_object).collect();
        Registry {
            models,
            by_name,
            default_model,
            model_objects,
        }
    }

    /// Resolves an id or alias.
    pub fn lookup(&self, name: &str) -> Option<ModelIdx> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, idx: ModelIdx) -> &Model {
        &self.models[idx.0]
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The model serving unknown names, when the operator set `default_model`.
    pub fn default_model(&self) -> Option<ModelIdx> {
        self.default_model
    }

    /// `GET /v1/models`: the models `visible` admits.
    pub fn render_models_list(&self, visible: &dyn Fn(ModelIdx) -> bool) -> Rendered {
        render::models_list(
            self.models
                .iter()
                .enumerate()
                .filter(|(i, _)| visible(ModelIdx(*i)))
                .map(|(_, m)| m),
        )
    }

    /// `GET /v1/models/{id}`.
    pub fn model_object(&self, idx: ModelIdx) -> &Rendered {
        &self.model_objects[idx.0]
    }

    /// `GET /api/available-models`, given which models can be served now and which the
    /// caller may see.
    pub fn render_available(
        &self,
        servable: &[bool],
        visible: &dyn Fn(ModelIdx) -> bool,
    ) -> Rendered {
        render::available_models(self, servable, visible)
    }

    /// Up to three ids close to `name` among those `visible` admits, best first.
    pub fn suggestions(&self, name: &str, visible: &dyn Fn(ModelIdx) -> bool) -> Vec<&str> {
        suggest::closest(
            name,
            self.by_name
                .iter()
                .filter(|(_, idx)| visible(**idx))
                .map(|(n, idx)| (n.as_ref(), self.models[idx.0].id.as_ref())),
            3,
        )
    }
}
