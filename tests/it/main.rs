//! Integration tests: one binary (Pingora makes every test binary slow to link), a module per
//! capability, all against the real `ultra-gateway` binary on loopback.

mod common;

mod analyze;
mod audit;
mod auth;
mod authz;
mod bodies;
mod check_config;
mod connections;
mod deploy;
mod doc_links;
mod docs;
mod errors;
mod faults;
mod headers;
mod http_framing;
mod key_scrub;
mod local_endpoints;
mod log_caps;
mod metrics;
mod mock_provider;
mod observability;
mod packaging;
mod paths;
mod pingora_errors;
mod pools;
mod production;
mod quotas;
mod quotas_redis;
mod reload;
mod routing;
mod shutdown;
mod streaming;
mod tls_upstream;
mod upgrade;
mod usage;
