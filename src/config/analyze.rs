//! The schema of `analyze:` (`POST /api/analyze`: one prompt to several models) and its
//! validation.

use super::error::ConfigError;
use super::Config;
use serde::Deserialize;
use std::collections::HashSet;

/// The prompt the synthesis call gets when `analyze.synthesis.prompt` is not set.
pub const DEFAULT_SYNTHESIS_PROMPT: &str = "Several models answered the same question. Compare their answers: where they agree, where they differ, which is most accurate and complete, and give the best combined answer.\n\nQuestion:\n{{prompt}}\n\nAnswers:\n{{answers}}";

/// `analyze:` the fan-out endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeSection {
    /// Models asked when a request names none (ids or aliases). Default none: such a request
    /// is refused.
    pub default_models: Vec<String>,
    /// Most models one request may name. Default 8.
    pub max_models: usize,
    /// Each leg's timeout in milliseconds, unless the request sets `timeout_ms`. Default 120000.
    pub timeout_ms: u64,
    pub synthesis: SynthesisSpec,
}

impl Default for AnalyzeSection {
    fn default() -> Self {
        AnalyzeSection {
            default_models: Vec::new(),
            max_models: 8,
            timeout_ms: 120_000,
            synthesis: SynthesisSpec::default(),
        }
    }
}

/// `analyze.synthesis:` the optional last call that compares the answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisSpec {
    /// The model that compares the answers when a request names no `synthesis_model`. Default
    /// none: no synthesis unless the request asks.
    pub model: Option<String>,
    /// Its prompt: `{{prompt}}` becomes the question, `{{answers}}` the successful answers.
    pub prompt: String,
}

impl Default for SynthesisSpec {
    fn default() -> Self {
        SynthesisSpec {
            model: None,
            prompt: DEFAULT_SYNTHESIS_PROMPT.into(),
        }
    }
}

/// `analyze:` checks: models that exist, sane bounds, a prompt that shows the answers.
pub fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let a = &c.analyze;
    let file = &c.file;
    let names: HashSet<&str> = c
        .models
        .iter()
        .flat_map(|m| {
            std::iter::once(m.spec.id.as_str()).chain(m.spec.aliases.iter().map(String::as_str))
        })
        .collect();
    for (i, m) in a.default_models.iter().enumerate() {
        if !names.contains(m.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("analyze.default_models[{i}]"),
                format!("no model named `{m}`"),
            ));
        }
    }
    if a.max_models == 0 || a.max_models > 64 {
        errors.push(ConfigError::new(
            file,
            "analyze.max_models",
            "must be between 1 and 64",
        ));
    }
    if a.default_models.len() > a.max_models.max(1) {
        errors.push(ConfigError::new(
            file,
            "analyze.default_models",
            "lists more models than analyze.max_models allows",
        ));
    }
    if a.timeout_ms == 0 {
        errors.push(ConfigError::new(
            file,
            "analyze.timeout_ms",
            "must be at least 1",
        ));
    }
    if let Some(m) = &a.synthesis.model {
        if !names.contains(m.as_str()) {
            errors.push(ConfigError::new(
                file,
                "analyze.synthesis.model",
                format!("no model named `{m}`"),
            ));
        }
    }
    if !a.synthesis.prompt.contains("{{answers}}") {
        errors.push(ConfigError::new(
            file,
            "analyze.synthesis.prompt",
            "must contain {{answers}} (and usually {{prompt}})",
        ));
    }
}
