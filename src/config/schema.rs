//! The configuration file's schema. Key names here are a public interface (see DESIGN.md's
//! configuration contract): add keys, never rename them. Every struct denies unknown fields so a
//! typo is an error rather than a silently ignored setting.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// `development` (the default) or `production`, which refuses unsafe settings (no `auth`, test
/// tokens, weak HMAC secrets, mock providers, empty keys, ...) and uses JSON logs by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Development,
    Production,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Development => "development",
            Mode::Production => "production",
        }
    }
}

/// `server:` the listener and request limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on, `IP:PORT`. Default `127.0.0.1:8080`. Port 0 picks a free port (the
    /// start-up log line says which). The CLI's `--listen` overrides it.
    pub listen: String,
    /// Worker threads of the proxy service. Default 2.
    pub threads: usize,
    /// Whether Pingora's worker threads share one work-stealing runtime or each run their own
    /// single-threaded runtime. Default true.
    pub work_stealing: bool,
    /// Largest accepted request body in bytes; larger ones get 413. Default 16 MiB.
    pub max_body_bytes: u64,
    /// Longest wait, in seconds, for the next piece of a request body; a client that stalls
    /// longer gets 408. Default 60.
    pub body_read_timeout_seconds: u64,
    /// Longest time, in seconds, a request header may take to arrive in full, from its first
    /// byte (on a new connection, from the accept); the connection is closed when it runs out.
    /// Default 10.
    pub header_read_timeout_seconds: u64,
    /// Longest idle time, in seconds, of a kept-alive connection between two requests; it is
    /// closed after that. Default 60.
    pub keepalive_timeout_seconds: u64,
    /// Most client connections open at once; beyond it new connections are closed at accept,
    /// and the open ones keep being served. Default 10000.
    pub max_connections: usize,
    /// Longest wait, in seconds, for in-flight requests after SIGTERM (the process exits as soon
    /// as none is left). Default 10.
    pub grace_period_seconds: u64,
    /// Seconds given to runtimes to stop after the grace period. Default 5.
    pub graceful_shutdown_timeout_seconds: u64,
    /// `max-age` of `Cache-Control` on `/v1/models` and `/api/available-models`. Default 60.
    pub models_max_age_seconds: u64,
    /// Extra `POST` paths proxied besides the built-in allow-list. Default none.
    pub extra_paths: Vec<ExtraPath>,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed for the client address in the
    /// audit log. Default none: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// A file where breaker and key states are saved on a graceful exit or an upgrade and read
    /// at start, so that a restart does not forget them. Default none.
    pub state_file: Option<PathBuf>,
    /// The Unix socket over which `run --upgrade` takes the listening sockets from the running
    /// process (SIGQUIT). Default `/tmp/ultra-gateway-upgrade.sock`.
    pub upgrade_sock: PathBuf,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            threads: 2,
            work_stealing: true,
            max_body_bytes: 16 * 1024 * 1024,
            body_read_timeout_seconds: 60,
            header_read_timeout_seconds: 10,
            keepalive_timeout_seconds: 60,
            max_connections: 10_000,
            grace_period_seconds: 10,
            graceful_shutdown_timeout_seconds: 5,
            models_max_age_seconds: 60,
            extra_paths: Vec::new(),
            trusted_proxies: Vec::new(),
            state_file: None,
            upgrade_sock: PathBuf::from("/tmp/ultra-gateway-upgrade.sock"),
        }
    }
}

/// One configured proxied path, e.g. `{ path: /v1/rerank, group: rerank }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPath {
    /// The client path, starting with `/v1/`.
    pub path: String,
    /// Endpoint group name that roles grant (`auth.roles.*.endpoints`). Default: the path's
    /// last segment.
    #[serde(default)]
    pub group: Option<String>,
}

/// `usage:` token accounting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSection {
    /// Ask OpenAI-kind providers for a stream's usage chunk (`stream_options.include_usage`)
    /// when the client did not, and take that chunk out before it reaches the client. Without
    /// it, such streams are counted by estimate. Default true.
    pub force_stream_usage: bool,
}

impl Default for UsageSection {
    fn default() -> Self {
        UsageSection {
            force_stream_usage: true,
        }
    }
}

/// `reload:` live configuration changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSection {
    /// Reload when the configuration file, the models file or an env file changes on disk
    /// (an editor's write-then-rename and a Kubernetes ConfigMap update count). Default true.
    pub watch: bool,
    /// A change is applied once the files have been quiet this long, in milliseconds, so a
    /// file written in several steps is read once, finished. Default 500.
    pub debounce_ms: u64,
}

impl Default for ReloadSection {
    fn default() -> Self {
        ReloadSection {
            watch: true,
            debounce_ms: 500,
        }
    }
}

/// `logging:` operational log and access log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// `trace`, `debug`, `info` (default), `warn` or `error`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text`, `json`, or `auto` (default: text in development, JSON in production).
    pub format: LogFormat,
    /// Where the JSON access log goes: `stdout` (default), `stderr`, `off`, or a file path
    /// (appended).
    pub access_log: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            level: "info".into(),
            format: LogFormat::Auto,
            access_log: "stdout".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Text,
    Json,
}

/// How a provider authenticates and which API dialect it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Azure,
    OpenaiCompatible,
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenaiCompatible => "openai-compatible",
            ProviderKind::Mock => "mock",
        }
    }
}

/// `providers.<name>:` one upstream provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `openai`, `anthropic`, `azure`, `openai-compatible` or `mock`.
    pub kind: ProviderKind,
    /// Base URLs (`https://api.openai.com`) or `{ url, weight, sni }` objects. Required except
    /// for `mock`. A path in the URL replaces the client path's leading `/v1`.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Extra PEM CA bundle trusted for this provider, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The provider's API keys. None for a provider that needs no key (a self-hosted vLLM).
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Upstream timeouts; each model may override them.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// `anthropic-version` header sent to `anthropic` providers when the client sent none.
    /// Default `2023-06-01`.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// Static headers added to every upstream request (e.g. OpenRouter's `HTTP-Referer`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds between DNS re-resolutions of host-name endpoints. Default 30.
    #[serde(default)]
    pub dns_refresh_seconds: Option<u64>,
    /// Behaviour of a `mock` provider.
    #[serde(default)]
    pub mock: Option<MockSpec>,
    /// How a backend is picked among the provider's endpoints. Default `round_robin`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Active health checks of the provider's backends.
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// The passive circuit breaker of each backend.
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// Retries of a failed request, on this provider's other backends and the model's next targets.
    #[serde(default)]
    pub retry: RetrySpec,
    /// `none` (default): rotate keys round-robin; `caller`: keep each caller on one key.
    #[serde(default)]
    pub key_affinity: KeyAffinity,
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn, ignoring weights.
    #[default]
    RoundRobin,
    /// In turn, in proportion to the endpoints' weights.
    Weighted,
    /// At random, in proportion to the weights.
    Random,
    /// By a hash of the caller's subject, so a caller stays on one backend (warm KV caches of a
    /// self-hosted pool); the next backends on the ring take over when it is down.
    Consistent,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
            Strategy::Random => "random",
            Strategy::Consistent => "consistent",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAffinity {
    #[default]
    None,
    Caller,
}

/// `health_check:` active probes of every backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSpec {
    /// Probe backends at all. Default true.
    pub enabled: bool,
    /// `http` (default): a GET of `path` carrying a usable provider key; `tcp`: a connect.
    pub kind: HealthCheckKind,
    /// Path of the HTTP probe, under the endpoint's path rule. Default `/v1/models` (never a
    /// paid completion).
    pub path: String,
    /// Seconds between probes. Default 10.
    pub interval_seconds: u64,
    /// Probe timeout in milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// Consecutive successes that make a down backend healthy. Default 2.
    pub healthy_after: usize,
    /// Consecutive failures that take a backend down. Default 3.
    pub unhealthy_after: usize,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            enabled: true,
            kind: HealthCheckKind::Http,
            path: "/v1/models".into(),
            interval_seconds: 10,
            timeout_ms: 2000,
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// `breaker:` per-backend circuit breaker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Consecutive failures (connect, TLS, timeout, 5xx, broken stream) that open it. Default 5.
    pub consecutive_failures: u32,
    /// Seconds it stays open the first time; doubled on each re-open. Default 30.
    pub open_seconds: u64,
    /// Longest open period. Default 300.
    pub max_open_seconds: u64,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            consecutive_failures: 5,
            open_seconds: 30,
            max_open_seconds: 300,
        }
    }
}

/// `retry:` how far a failed request goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Attempts in all (the first one included), across backends and targets. Default 3.
    pub max_attempts: u32,
    /// No new attempt starts later than this after the request was routed (its body read and
    /// its model resolved: a slow upload does not eat into it). Default 600000.
    pub deadline_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: 3,
            deadline_ms: 600_000,
        }
    }
}

/// An endpoint: a URL string, or an object with the URL and options.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    pub url: String,
    /// Relative weight for weighted balancing. Default 1.
    pub weight: usize,
    /// TLS server name to send and verify; default: the URL's host. For an `https://` endpoint
    /// given by IP, the default is the IP, checked against the certificate's IP addresses.
    pub sni: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointObject {
    url: String,
    #[serde(default = "default_weight")]
    weight: usize,
    #[serde(default)]
    sni: Option<String>,
}

fn default_weight() -> usize {
    1
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string or a map with `url`, `weight`, `sni`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec {
                    url: s.to_string(),
                    weight: 1,
                    sni: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let o = EndpointObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    url: o.url,
                    weight: o.weight,
                    sni: o.sni,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One provider key: its `value` (usually `${ENV}`) or a `file` holding it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Stable name used in logs; the key itself is never logged.
    pub id: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Upstream timeouts in milliseconds. Unset fields take the provider's, then the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// TCP + TLS connect. Default 5000.
    pub connect_ms: Option<u64>,
    /// Request sent to first response byte (time to first token). Default 300000.
    pub first_byte_ms: Option<u64>,
    /// Longest silence between two response chunks. Default 120000.
    pub between_chunks_ms: Option<u64>,
    /// Whole exchange. Default 900000.
    pub total_ms: Option<u64>,
}

/// Behaviour of the built-in mock provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockSpec {
    /// Delay before the response (or the first SSE chunk). Default 0.
    pub latency_ms: u64,
    /// Delay between SSE chunks. Default 0.
    pub chunk_interval_ms: u64,
    /// Fraction of requests answered with a 500, 0.0 to 1.0. Default 0.
    pub failure_rate: f64,
    /// Length of embedding vectors when the request gives no `dimensions`. Default 256.
    pub embedding_dimensions: usize,
}

impl Default for MockSpec {
    fn default() -> Self {
        MockSpec {
            latency_ms: 0,
            chunk_interval_ms: 0,
            failure_rate: 0.0,
            embedding_dimensions: 256,
        }
    }
}

/// One entry of `models:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The canonical id clients send as `model`.
    pub id: String,
    /// Other names accepted for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `owned_by` in `/v1/models`. Default: the first target's provider name.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Providers serving this model, in order of preference: a request goes to the first one
    /// that can take requests now (a resolved backend and, when it has keys, a usable key).
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Context window in tokens, for `/api/available-models`.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Largest completion in tokens, for `/api/available-models`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub pricing: Option<PricingSpec>,
    /// Output tokens a quota reservation counts for a request that names no `max_tokens` (or
    /// `max_completion_tokens`, `max_output_tokens`). Default 1024, or `max_output_tokens`
    /// when smaller.
    #[serde(default)]
    pub default_output_tokens: Option<u64>,
    /// Free-form capability tags (`chat`, `streaming`, `tools`, `vision`, `embeddings`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Human description for UIs.
    #[serde(default)]
    pub description: Option<String>,
    /// `created` in `/v1/models` (Unix seconds). Default 0, so that every replica renders the
    /// same body and ETag.
    #[serde(default)]
    pub created: Option<u64>,
    /// Overrides of the providers' timeouts for this model (reasoning models think long).
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
}

/// `{ provider: openai, model: gpt-4o-mini }`: where a model is served and under which name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub provider: String,
    /// The model name the provider expects. Default: the model's id.
    #[serde(default)]
    pub model: Option<String>,
}

/// Prices in currency units per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSpec {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Price of a million input tokens served from the provider's prompt cache. Default: the
    /// input price.
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

/// The models file (`models_file`): the registry and its optional default model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFileTop {
    #[serde(default)]
    pub models: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub default_model: Option<String>,
}
