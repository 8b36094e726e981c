//! Loading: read, parse, interpolate, then deserialize section by section (provider by provider,
//! model by model) so that one run reports every problem, each with its file and field path.

use super::auth::*;
use super::error::{join_path, ConfigError, ConfigErrors};
use super::interpolate::interpolate_tree;
use super::observability::*;
use super::quotas::QuotasSection;
use super::schema::*;
use super::{env_file, validate, Config, LoadedModel};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const TOP_LEVEL_KEYS: &str = "`mode`, `env_files`, `server`, `logging`, `auth`, `audit`, `metrics`, `reload`, `usage`, `quotas`, `analyze`, `providers`, `models_file`, `models`, `default_model`";

/// Loads and validates the configuration at `path`. `env` looks up environment variables
/// (tests pass a map; the binary passes the process environment).
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    load_with(path, env, &|p| std::fs::read_to_string(p))
}

/// Reads a file the configuration refers to (the main file, env files, the models file).
pub type Reader<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// Like [`load`], reading every file through `read` (the embedded default configuration
/// reads from the binary).
pub fn load_with(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    read: Reader<'_>,
) -> Result<Config, ConfigErrors> {
    let text = read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path,
            "",
            format!("cannot read file: {e}"),
        )])
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_inner(&text, path, &base_dir, env, read)
}

/// Like [`load`], from text already read. `file` is used in messages; `base_dir` resolves
/// relative paths (env files, the models file).
pub fn load_str(
    text: &str,
    file: &Path,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    load_inner(text, file, base_dir, env, &|p| std::fs::read_to_string(p))
}

fn load_inner(
    text: &str,
    file: &Path,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    read: Reader<'_>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let Some(mut top) = parse_mapping(text, file, &mut errors) else {
        return Err(ConfigErrors(errors));
    };
    let mut sources = vec![file.to_path_buf()];
    // env_files are read before interpolation and are not interpolated themselves.
    let env_files: Vec<PathBuf> = top
        .remove("env_files")
        .and_then(|v| de(v, file, "env_files", &mut errors))
        .unwrap_or_default();
    let mut file_vars = HashMap::new();
    for (i, f) in env_files.iter().enumerate() {
        let p = resolve(base_dir, f);
        let field = format!("env_files[{i}]");
        if let Some(vars) = read_env_file(&p, file, &field, read, &mut errors, &mut warnings) {
            file_vars.extend(vars);
        }
        sources.push(p);
    }
    let lookup = |name: &str| env(name).or_else(|| file_vars.get(name).cloned());

    let mut top_value = Value::Mapping(top);
    interpolate_tree(&mut top_value, "", file, &lookup, &mut errors);
    let Value::Mapping(top) = top_value else {
        // Interpolation replaces strings in place: the mapping stays a mapping.
        errors.push(ConfigError::new(file, "", "expected a mapping of sections"));
        return Err(ConfigErrors(errors));
    };
    let mut s = Sections::default();
    for (key, value) in top {
        match key.as_str() {
            Some(key) => s.read(key, value, file, &mut errors),
            None => errors.push(ConfigError::new(file, "", "top-level keys must be strings")),
        }
    }
    if let Some(mf) = s.models_file.take() {
        let path = resolve(base_dir, &mf);
        s.read_models_file(&path, file, read, &lookup, &mut errors);
        sources.push(path);
    }
    let config = Config {
        file: file.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        sources,
        mode: s.mode,
        server: s.server,
        logging: s.logging,
        auth: s.auth,
        audit: s.audit,
        metrics: s.metrics,
        reload: s.reload,
        usage: s.usage,
        quotas: s.quotas,
        analyze: s.analyze,
        providers: s.providers,
        models: s.models,
        default_model: s.default_model,
        warnings,
    };
    validate::validate(&config, &mut errors);
    ConfigErrors(errors).into_result(config)
}

/// A path from the configuration, relative to its directory.
fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// One env file's variables. A missing file is a warning (it is optional); an unreadable or
/// malformed one an error at `field`.
fn read_env_file(
    p: &Path,
    file: &Path,
    field: &str,
    read: Reader<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<HashMap<String, String>> {
    match read(p) {
        Ok(t) => env_file::parse(&t)
            .map_err(|msg| errors.push(ConfigError::new(file, field, msg)))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(format!("env file {} not found; skipped", p.display()));
            None
        }
        Err(e) => {
            let msg = format!("cannot read {}: {e}", p.display());
            errors.push(ConfigError::new(file, field, msg));
            None
        }
    }
}

/// The top-level sections as they are read, each with its default until the file sets it.
#[derive(Default)]
struct Sections {
    mode: Mode,
    server: ServerSection,
    logging: LoggingSection,
    auth: Option<AuthSection>,
    audit: AuditSection,
    metrics: MetricsSection,
    reload: ReloadSection,
    usage: UsageSection,
    quotas: QuotasSection,
    analyze: super::analyze::AnalyzeSection,
    providers: BTreeMap<String, ProviderSpec>,
    models: Vec<LoadedModel>,
    default_model: Option<String>,
    models_file: Option<PathBuf>,
}

impl Sections {
    /// Reads one top-level section; a section with errors keeps its default.
    fn read(&mut self, key: &str, value: Value, file: &Path, errors: &mut Vec<ConfigError>) {
        match key {
            "mode" => self.mode = de(value, file, "mode", errors).unwrap_or_default(),
            "server" => self.server = de(value, file, "server", errors).unwrap_or_default(),
            "logging" => self.logging = de(value, file, "logging", errors).unwrap_or_default(),
            "auth" => self.auth = de::<Option<AuthSection>>(value, file, "auth", errors).flatten(),
            "audit" => self.audit = de(value, file, "audit", errors).unwrap_or_default(),
            "metrics" => self.metrics = de(value, file, "metrics", errors).unwrap_or_default(),
            "reload" => self.reload = de(value, file, "reload", errors).unwrap_or_default(),
            "usage" => self.usage = de(value, file, "usage", errors).unwrap_or_default(),
            "quotas" => self.quotas = de(value, file, "quotas", errors).unwrap_or_default(),
            "analyze" => self.analyze = de(value, file, "analyze", errors).unwrap_or_default(),
            "providers" => self.providers = load_providers(value, file, errors),
            "models_file" => {
                self.models_file =
                    de::<Option<PathBuf>>(value, file, "models_file", errors).flatten()
            }
            "models" => self
                .models
                .extend(load_models(value, file, "models", errors)),
            "default_model" => {
                self.default_model =
                    de::<Option<String>>(value, file, "default_model", errors).flatten()
            }
            other => errors.push(ConfigError::new(
                file,
                other,
                format!("unknown field, expected one of {TOP_LEVEL_KEYS}"),
            )),
        }
    }

    /// The models file's models (and its `default_model`, which may be set in one place only).
    fn read_models_file(
        &mut self,
        path: &Path,
        file: &Path,
        read: Reader<'_>,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<ConfigError>,
    ) {
        let text = match read(path) {
            Ok(text) => text,
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                errors.push(ConfigError::new(file, "models_file", msg));
                return;
            }
        };
        let (m, d) = load_models_file(&text, path, lookup, errors);
        self.models.extend(m);
        if d.is_some() {
            if self.default_model.is_some() {
                errors.push(ConfigError::new(
                    path,
                    "default_model",
                    "also set in the main configuration; set it in one place",
                ));
            }
            self.default_model = d;
        }
    }
}

fn parse_mapping(text: &str, file: &Path, errors: &mut Vec<ConfigError>) -> Option<Mapping> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Some(m),
        Ok(Value::Null) => Some(Mapping::new()),
        Ok(_) => {
            errors.push(ConfigError::new(
                file,
                "",
                "expected a mapping at the top level",
            ));
            None
        }
        Err(e) => {
            errors.push(ConfigError::new(file, "", format!("invalid YAML: {e}")));
            None
        }
    }
}

fn de<T: DeserializeOwned>(
    value: Value,
    file: &Path,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.inner().to_string();
            errors.push(ConfigError::from_serde(
                file,
                path,
                &e.path().to_string(),
                &inner,
            ));
            None
        }
    }
}

fn load_providers(
    value: Value,
    file: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, ProviderSpec> {
    let mut out = BTreeMap::new();
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => return out,
        _ => {
            errors.push(ConfigError::new(
                file,
                "providers",
                "expected a map of provider name to provider",
            ));
            return out;
        }
    };
    for (name, spec) in map {
        let Some(name) = name.as_str().map(str::to_string) else {
            errors.push(ConfigError::new(
                file,
                "providers",
                "provider names must be strings",
            ));
            continue;
        };
        let path = join_path("providers", &name);
        if let Some(p) = de::<ProviderSpec>(spec, file, &path, errors) {
            out.insert(name, p);
        }
    }
    out
}

fn load_models(
    value: Value,
    file: &Path,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<LoadedModel> {
    let items = match value {
        Value::Sequence(s) => s,
        Value::Null => return Vec::new(),
        _ => {
            errors.push(ConfigError::new(file, path, "expected a list of models"));
            return Vec::new();
        }
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let p = format!("{path}[{i}]");
            de::<ModelSpec>(v, file, &p, errors).map(|spec| LoadedModel {
                spec,
                file: file.to_path_buf(),
                path: p,
            })
        })
        .collect()
}

fn load_models_file(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> (Vec<LoadedModel>, Option<String>) {
    let Some(top) = parse_mapping(text, file, errors) else {
        return (Vec::new(), None);
    };
    let mut value = Value::Mapping(top);
    interpolate_tree(&mut value, "", file, lookup, errors);
    let Some(top) = de::<ModelsFileTop>(value, file, "", errors) else {
        return (Vec::new(), None);
    };
    let models = load_models(Value::Sequence(top.models), file, "models", errors);
    (models, top.default_model)
}

#[cfg(test)]
mod tests;
