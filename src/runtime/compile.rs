//! `Runtime::compile`: a validated configuration becomes a runtime. This is where files other
//! than the configuration are read (key files, CA bundles, PEM and JWKS files) and where pools
//! are built (not resolved: see `Pool::refresh`). Every problem is gathered with its field path.

use super::Runtime;
use crate::auth::client_addr::TrustedProxies;
use crate::auth::Authenticator;
use crate::config::QuotaStoreKind;
use crate::config::{Config, ConfigError, ConfigErrors, Mode, ProviderKind, ProviderSpec};
use crate::endpoints::EndpointGroup;
use crate::quota::redis::RedisStore;
use crate::quota::rules::Rules;
use crate::quota::{Quotas, Store};
use crate::registry::{ProviderIdx, Registry};
use crate::state::State;
use crate::upstream::breaker::BreakerPolicy;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::health::ProviderProbe;
use crate::upstream::keys::{KeyRing, KeySource};
use crate::upstream::pool::{Pool, PoolSettings};
use crate::upstream::provider::{Provider, RequestAuth, DEFAULT_ANTHROPIC_VERSION};
use crate::upstream::timeouts::Timeouts;
use crate::upstream::tls::{self, CaList};
use http::{HeaderName, HeaderValue};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// What compiling one provider found that the operator should know, and what it carries over.
struct Findings<'a> {
    config: &'a Config,
    state: &'a Arc<State>,
    errors: &'a mut ConfigErrors,
    warnings: &'a mut Vec<String>,
}

impl Runtime {
    /// Compiles a validated configuration: reads key and CA files, builds pools (not yet
    /// resolved: see `Pool::refresh`), and takes over from `state` what earlier configurations
    /// learnt (breakers, health verdicts, key states, JWKS key sets), by stable id. Returns the
    /// runtime and warnings for the operator.
    pub fn compile(
        config: &Config,
        state: &Arc<State>,
    ) -> Result<(Runtime, Vec<String>), ConfigErrors> {
        // Every section named: a new one does not compile until this function decides on it.
        let Config {
            file: _,
            base_dir: _,
            sources: _,
            mode,
            server,
            logging: _,
            auth: auth_section,
            audit: _,
            metrics,
            reload: _,
            usage,
            quotas: quotas_section,
            analyze: analyze_section,
            providers: provider_specs,
            models: _,
            default_model: _,
            warnings: config_warnings,
        } = config;
        let mut errors = ConfigErrors::default();
        let mut warnings = config_warnings.clone();
        let mut found = Findings {
            config,
            state,
            errors: &mut errors,
            warnings: &mut warnings,
        };
        let mut providers = Vec::with_capacity(provider_specs.len() + 1);
        let mut index: HashMap<&str, ProviderIdx> = HashMap::new();
        for (i, (name, spec)) in provider_specs.iter().enumerate() {
            index.insert(name.as_str(), ProviderIdx(i));
            providers.push(compile_provider(ProviderIdx(i), name, spec, &mut found));
        }
        let specs: Vec<&ProviderSpec> = provider_specs.values().collect();
        let registry = Registry::build(config, &index, |p, model_t| {
            Timeouts::resolve(&specs[p.0].timeouts, model_t)
        });
        let test_mock = (*mode == Mode::Development).then(|| test_mode_mock(&mut providers));
        auth_warnings(auth_section.as_ref(), found.warnings);
        let auth =
            Authenticator::compile(config, &registry, state).map_err(|e| errors.0.extend(e.0));
        let Ok(auth) = auth else {
            return Err(errors);
        };
        let quotas = compile_quotas(quotas_section, &auth, &registry, state)
            .map_err(|msg| {
                errors
                    .0
                    .push(ConfigError::new(&config.file, "quotas.redis.url", msg))
            })
            .ok();
        let Some(quotas) = quotas else {
            return Err(errors);
        };
        let analyze = super::AnalyzeSettings {
            default_models: analyze_section
                .default_models
                .iter()
                .filter_map(|m| registry.lookup(m))
                .collect(),
            max_models: analyze_section.max_models,
            timeout: Duration::from_millis(analyze_section.timeout_ms),
            synthesis_model: analyze_section
                .synthesis
                .model
                .as_deref()
                .and_then(|m| registry.lookup(m)),
            synthesis_prompt: analyze_section.synthesis.prompt.clone(),
        };
        let runtime = Runtime {
            mode: *mode,
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: Duration::from_secs(server.body_read_timeout_seconds),
            connections: crate::connections::Limits {
                max_connections: server.max_connections,
                header_read_timeout: Duration::from_secs(server.header_read_timeout_seconds),
                keepalive_timeout: Duration::from_secs(server.keepalive_timeout_seconds),
            },
            models_max_age_seconds: server.models_max_age_seconds,
            registry,
            providers,
            auth,
            trusted_proxies: TrustedProxies::parse(&server.trusted_proxies).unwrap_or_default(),
            test_mock,
            metrics_on_main: metrics.enabled && metrics.listen.is_none(),
            generation: 1,
            force_stream_usage: usage.force_stream_usage,
            analyze,
            quotas,
            extra_paths: extra_paths(config),
            views: RwLock::new(HashMap::new()),
        };
        errors.into_result((runtime, warnings))
    }
}

/// The quota rules against this configuration's roles and models, and the store they count in
/// (carried in `state`, so that counters survive a reload).
fn compile_quotas(
    spec: &crate::config::QuotasSection,
    auth: &Authenticator,
    registry: &Registry,
    state: &Arc<State>,
) -> Result<Quotas, String> {
    let store = match spec.store {
        QuotaStoreKind::Memory => Store::Memory(state.quota_memory.clone()),
        QuotaStoreKind::Redis => {
            let r = &spec.redis;
            let key = (r.url.clone(), r.key_prefix.clone(), r.timeout_ms);
            let made = match state.quota_redis.get(&key) {
                Some(s) => s,
                None => {
                    let s = Arc::new(RedisStore::new(&r.url, &r.key_prefix, r.timeout_ms)?);
                    state.quota_redis.get_or_insert(&key, || s)
                }
            };
            Store::Redis(made)
        }
    };
    Ok(Quotas {
        rules: Rules::compile(spec, &auth.rbac, registry),
        store,
        on_store_error: spec.on_store_error,
    })
}

/// One provider: its key ring, CA list, request credentials and, unless it is a mock, its pool.
fn compile_provider(
    idx: ProviderIdx,
    name: &str,
    spec: &ProviderSpec,
    found: &mut Findings<'_>,
) -> Provider {
    let path = format!("providers.{name}");
    let name: Arc<str> = Arc::from(name);
    let keys = Arc::new(key_ring(&path, &name, spec, found));
    let ca = spec.ca_file.as_ref().and_then(|f| {
        tls::load_ca_list(&found.config.resolve_path(f))
            .map_err(|msg| {
                let field = format!("{path}.ca_file");
                found
                    .errors
                    .push(ConfigError::new(&found.config.file, field, msg));
            })
            .ok()
    });
    let auth = Arc::new(request_auth(spec));
    let pool = match spec.kind {
        ProviderKind::Mock => None,
        _ => pool(&path, &name, spec, &auth, &keys, ca.as_ref(), found),
    };
    Provider {
        idx,
        name,
        kind: spec.kind,
        keys,
        auth,
        retry: spec.retry.clone(),
        ca,
        pool,
        mock: (spec.kind == ProviderKind::Mock).then(|| spec.mock.clone().unwrap_or_default()),
    }
}

/// The provider's key ring. An unreadable key file is an error; an empty or unusable value a
/// warning (that key is skipped until it changes).
fn key_ring(path: &str, name: &str, spec: &ProviderSpec, found: &mut Findings<'_>) -> KeyRing {
    let sources = spec
        .keys
        .iter()
        .map(|ks| {
            let source = match (&ks.value, &ks.file) {
                (Some(v), _) => KeySource::Value(v.clone()),
                (None, Some(f)) => KeySource::File(found.config.resolve_path(f)),
                (None, None) => KeySource::Value(String::new()),
            };
            (ks.id.clone(), source)
        })
        .collect();
    let provider: Arc<str> = Arc::from(name);
    let previous = |id: &str| {
        found
            .state
            .key_slots
            .get(&(provider.clone(), Arc::from(id)))
    };
    let (ring, problems) = KeyRing::new(spec.kind, spec.key_affinity, sources, &previous);
    let now = tokio::time::Instant::now();
    for slot in ring.slots() {
        let key = (provider.clone(), slot.id().clone());
        found.state.key_slots.adopt(&key, |_| slot.clone());
        // What a previous process saved for this key (`server.state_file`), if its value is
        // the same.
        if let Some(seed) = found.state.take_key_seed(&key) {
            slot.restore(&seed, now);
        }
    }
    for (id, problem) in problems {
        let k = spec.keys.iter().position(|ks| ks.id == id).unwrap_or(0);
        if spec.keys[k].file.is_some() {
            found.errors.push(ConfigError::new(
                &found.config.file,
                format!("{path}.keys[{k}].file"),
                format!("cannot read key file: {problem}"),
            ));
        } else {
            found.warnings.push(format!(
                "{path}.keys[{k}] (id `{id}`) is empty or not a valid header value; it is not used"
            ));
        }
    }
    if !ring.is_empty() && !ring.has_usable(&[], tokio::time::Instant::now()) {
        found.warnings.push(format!(
            "{path} has no usable key; its models fall to their next target or answer 503"
        ));
    }
    ring
}

/// How the provider's requests carry its kind's credentials and its static headers.
fn request_auth(spec: &ProviderSpec) -> RequestAuth {
    let extra_headers = spec
        .headers
        .iter()
        .filter_map(|(n, v)| {
            let mut value = HeaderValue::from_str(v).ok()?;
            // Operators put tokens here (gateway or proxy credentials).
            value.set_sensitive(true);
            Some((HeaderName::from_bytes(n.as_bytes()).ok()?, value))
        })
        .collect();
    let anthropic_version = spec
        .anthropic_version
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
    RequestAuth {
        kind: spec.kind,
        anthropic_version,
        extra_headers,
    }
}

/// The provider's pool, with its health check probing as traffic would (same credentials, same
/// CA list). `None` when its breaker settings are invalid (an error is recorded).
fn pool(
    path: &str,
    name: &Arc<str>,
    spec: &ProviderSpec,
    auth: &Arc<RequestAuth>,
    keys: &Arc<KeyRing>,
    ca: Option<&CaList>,
    found: &mut Findings<'_>,
) -> Option<Arc<Pool>> {
    let breaker = BreakerPolicy::try_new(
        spec.breaker.consecutive_failures,
        Duration::from_secs(spec.breaker.open_seconds),
        Duration::from_secs(spec.breaker.max_open_seconds),
    )
    .map_err(|msg| {
        let field = format!("{path}.breaker");
        found
            .errors
            .push(ConfigError::new(&found.config.file, field, msg));
    })
    .ok()?;
    let hc = &spec.health_check;
    let health = hc.enabled.then(|| {
        let probe = ProviderProbe::new(hc, auth.clone(), keys.clone(), ca.cloned());
        let check: Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> = Box::new(probe);
        (check, Duration::from_secs(hc.interval_seconds))
    });
    let endpoints = spec
        .endpoints
        .iter()
        .filter_map(|e| Endpoint::parse(e).ok().map(Arc::new))
        .collect();
    Some(Arc::new(Pool::new(
        PoolSettings {
            provider: name.clone(),
            endpoints,
            strategy: spec.strategy,
            refresh: spec
                .dns_refresh_seconds
                .map_or(DEFAULT_DNS_REFRESH, Duration::from_secs),
            breaker,
            health,
        },
        found.state,
    )))
}

/// The mock that answers `X-Test-Mode: true` (development): the configured one, else a
/// built-in one added to `providers`.
fn test_mode_mock(providers: &mut Vec<Provider>) -> ProviderIdx {
    if let Some(p) = providers.iter().find(|p| p.kind == ProviderKind::Mock) {
        return p.idx;
    }
    let idx = ProviderIdx(providers.len());
    providers.push(Provider::builtin_mock(idx));
    idx
}

/// Proxied paths the operator added, by path, with their endpoint group (the path's last
/// segment when not named).
fn extra_paths(config: &Config) -> HashMap<String, EndpointGroup> {
    config
        .server
        .extra_paths
        .iter()
        .map(|x| {
            let group = x
                .group
                .clone()
                .unwrap_or_else(|| x.path.rsplit('/').next().unwrap_or_default().to_string());
            (
                x.path.clone(),
                EndpointGroup::Custom(group.into_boxed_str()),
            )
        })
        .collect()
}

/// Authentication settings that let a gateway start but refuse (or admit) everybody.
fn auth_warnings(auth: Option<&crate::config::AuthSection>, warnings: &mut Vec<String>) {
    match auth {
        Some(a) if a.jwt.is_none() && a.api_keys.is_empty() && !a.test_tokens => {
            warnings.push("`auth` has no jwt, no api_keys and test_tokens is off: every request except /health and /ready will be refused".into());
        }
        Some(_) => {}
        None => warnings.push(
            "no `auth` section: every caller is served as `anonymous` with access to everything (development only; production refuses this)"
                .into(),
        ),
    }
}
