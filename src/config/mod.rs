//! Configuration: the YAML schema (`schema`), `${VAR}` interpolation (`interpolate`,
//! `env_file`), loading with every error collected at once (`load`), and semantic validation
//! (`validate`). Nothing here opens sockets or reads key files: that is `Runtime::compile`'s job.

pub mod analyze;
mod auth;
pub mod env_file;
pub mod error;
pub mod interpolate;
mod load;
mod observability;
pub mod quotas;
pub mod schema;
mod validate;
mod validate_auth;

pub use analyze::{AnalyzeSection, SynthesisSpec};
pub use auth::*;
pub use error::{ConfigError, ConfigErrors};
pub use load::{load, load_str, load_with, Reader};
pub use observability::*;
pub use quotas::{
    OnStoreError, QuotaMatch, QuotaPer, QuotaRule, QuotaStoreKind, QuotasSection, RedisSpec,
};
pub use schema::*;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A configuration that parsed and passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main configuration file.
    pub file: PathBuf,
    /// Directory relative paths in the configuration are resolved against: the main file's.
    pub base_dir: PathBuf,
    /// Every file this configuration was read from: the main file, its env files (whether or
    /// not they exist) and its models file. A reload watches them.
    pub sources: Vec<PathBuf>,
    pub mode: Mode,
    pub server: ServerSection,
    pub logging: LoggingSection,
    /// `None` when the file has no `auth` section.
    pub auth: Option<AuthSection>,
    pub audit: AuditSection,
    pub metrics: MetricsSection,
    pub reload: ReloadSection,
    pub usage: UsageSection,
    pub quotas: QuotasSection,
    pub analyze: AnalyzeSection,
    pub providers: BTreeMap<String, ProviderSpec>,
    pub models: Vec<LoadedModel>,
    pub default_model: Option<String>,
    /// Things worth an operator's attention that do not stop the gateway (e.g. a missing
    /// optional env file).
    pub warnings: Vec<String>,
}

/// A model entry and where it was written, for error messages.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub file: PathBuf,
    /// Field path of the entry in its file, e.g. `models[3]`.
    pub path: String,
}

impl Config {
    /// Resolves a path from the configuration against the main file's directory.
    pub fn resolve_path(&self, p: &std::path::Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}
