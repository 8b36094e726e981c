//! `Runtime`: the compiled, immutable view of one configuration (registry, providers with their
//! pools and keys, the proxied paths). The proxy holds it in an `ArcSwap`; a request takes one
//! snapshot at its start and uses it to the end.

use crate::auth::client_addr::TrustedProxies;
use crate::auth::rbac::Access;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, ConfigErrors, Mode, ProviderKind};
use crate::endpoints::{self, EndpointGroup};
use crate::registry::ModelIdx;
use crate::registry::{ProviderIdx, Registry, Rendered};
use crate::upstream::breaker::BreakerPolicy;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::health::ProviderProbe;
use crate::upstream::keys::{KeyRing, KeySource};
use crate::upstream::pool::{Pool, PoolSettings};
use crate::upstream::provider::{Provider, RequestAuth, DEFAULT_ANTHROPIC_VERSION};
use crate::upstream::timeouts::Timeouts;
use crate::upstream::tls;
use http::{HeaderName, HeaderValue};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// The compiled configuration.
#[derive(Debug)]
pub struct Runtime {
    pub mode: Mode,
    pub max_body_bytes: u64,
    pub body_read_timeout: Duration,
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
    /// Model lists per role set: the caller sees only what it may use.
    views: RwLock<HashMap<Access, View>>,
}

#[derive(Debug)]
struct View {
    models_list: Rendered,
    /// `/api/available-models` and the servability it was rendered with.
    available: Option<(Vec<bool>, Rendered)>,
}

impl Runtime {
    /// Compiles a validated configuration: reads key and CA files, builds pools (not yet
    /// resolved: see `Pool::refresh`). Returns the runtime and warnings for the operator.
    pub fn compile(config: &Config) -> Result<(Runtime, Vec<String>), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut warnings = config.warnings.clone();
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut index: HashMap<&str, ProviderIdx> = HashMap::new();

        for (i, (name, spec)) in config.providers.iter().enumerate() {
            let idx = ProviderIdx(i);
            index.insert(name.as_str(), idx);
            let path = format!("providers.{name}");
            let name: Arc<str> = Arc::from(name.as_str());

            let endpoints: Vec<Arc<Endpoint>> = spec
                .endpoints
                .iter()
                .filter_map(|e| Endpoint::parse(e).ok().map(Arc::new))
                .collect();

            let sources = spec
                .keys
                .iter()
                .map(|ks| {
                    let source = match (&ks.value, &ks.file) {
                        (Some(v), _) => KeySource::Value(v.clone()),
                        (None, Some(f)) => KeySource::File(config.resolve_path(f)),
                        (None, None) => KeySource::Value(String::new()),
                    };
                    (ks.id.clone(), source)
                })
                .collect();
            let (ring, problems) = KeyRing::new(spec.kind, spec.key_affinity, sources);
            for (id, problem) in problems {
                let k = spec.keys.iter().position(|ks| ks.id == id).unwrap_or(0);
                if spec.keys[k].file.is_some() {
                    errors.push(ConfigError::new(
                        &config.file,
                        format!("{path}.keys[{k}].file"),
                        format!("cannot read key file: {problem}"),
                    ));
                } else {
                    warnings.push(format!(
                        "{path}.keys[{k}] (id `{id}`) is empty or not a valid header value; it is not used"
                    ));
                }
            }
            let keys = Arc::new(ring);
            if !keys.is_empty() && !keys.has_usable(&[], tokio::time::Instant::now()) {
                warnings.push(format!(
                    "{path} has no usable key; its models fall to their next target or answer 503"
                ));
            }

            let ca = match &spec.ca_file {
                Some(f) => match tls::load_ca_list(&config.resolve_path(f)) {
                    Ok(ca) => Some(ca),
                    Err(msg) => {
                        errors.push(ConfigError::new(
                            &config.file,
                            format!("{path}.ca_file"),
                            msg,
                        ));
                        None
                    }
                },
                None => None,
            };

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
            let auth = Arc::new(RequestAuth {
                kind: spec.kind,
                anthropic_version,
                extra_headers,
            });

            let breaker = BreakerPolicy::try_new(
                spec.breaker.consecutive_failures,
                Duration::from_secs(spec.breaker.open_seconds),
                Duration::from_secs(spec.breaker.max_open_seconds),
            );
            let pool = match (spec.kind, breaker) {
                (ProviderKind::Mock, _) => None,
                (_, Err(msg)) => {
                    errors.push(ConfigError::new(
                        &config.file,
                        format!("{path}.breaker"),
                        msg,
                    ));
                    None
                }
                (_, Ok(breaker)) => {
                    let refresh = spec
                        .dns_refresh_seconds
                        .map(Duration::from_secs)
                        .unwrap_or(DEFAULT_DNS_REFRESH);
                    let hc = &spec.health_check;
                    let health = hc.enabled.then(|| {
                        let probe = ProviderProbe::new(hc, auth.clone(), keys.clone(), ca.clone());
                        (
                            Box::new(probe)
                                as Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>,
                            Duration::from_secs(hc.interval_seconds),
                        )
                    });
                    Some(Arc::new(Pool::new(PoolSettings {
                        provider: name.clone(),
                        endpoints: endpoints.clone(),
                        strategy: spec.strategy,
                        refresh,
                        breaker,
                        health,
                    })))
                }
            };
            providers.push(Provider {
                idx,
                name,
                kind: spec.kind,
                keys,
                auth,
                retry: spec.retry.clone(),
                ca,
                pool,
                mock: (spec.kind == ProviderKind::Mock)
                    .then(|| spec.mock.clone().unwrap_or_default()),
            });
        }

        let provider_specs: Vec<_> = config.providers.values().collect();
        let registry = Registry::build(config, &index, |pid, model_t| {
            Timeouts::resolve(&provider_specs[pid.0].timeouts, model_t)
        });

        let extra_paths = config
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
            .collect();

        // X-Test-Mode (development) is answered by a mock: the configured one, else a built-in.
        let test_mock = (config.mode == Mode::Development).then(|| {
            providers
                .iter()
                .find(|p| p.kind == ProviderKind::Mock)
                .map(|p| p.idx)
                .unwrap_or_else(|| {
                    let idx = ProviderIdx(providers.len());
                    providers.push(Provider::builtin_mock(idx));
                    idx
                })
        });

        let auth = match Authenticator::compile(config, &registry) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.0.extend(e.0);
                None
            }
        };
        if let Some(a) = &config.auth {
            if a.jwt.is_none() && a.api_keys.is_empty() && !a.test_tokens {
                warnings.push("`auth` has no jwt, no api_keys and test_tokens is off: every request except /health and /ready will be refused".into());
            }
        }
        if config.auth.is_none() {
            warnings.push(
                "no `auth` section: every caller is served as `anonymous` with access to everything (development only; production refuses this)"
                    .into(),
            );
        }
        let trusted_proxies =
            TrustedProxies::parse(&config.server.trusted_proxies).unwrap_or_default();
        let Some(auth) = auth else {
            return Err(errors);
        };
        let runtime = Runtime {
            mode: config.mode,
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: Duration::from_secs(config.server.body_read_timeout_seconds),
            models_max_age_seconds: config.server.models_max_age_seconds,
            registry,
            providers,
            auth,
            trusted_proxies,
            test_mock,
            metrics_on_main: config.metrics.enabled && config.metrics.listen.is_none(),
            extra_paths,
            views: RwLock::new(HashMap::new()),
        };
        errors.into_result((runtime, warnings))
    }

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
