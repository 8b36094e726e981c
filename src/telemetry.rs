//! Operational logging (`tracing`): human-readable text in development, JSON lines in
//! production, to stderr. The access log is separate (`proxy::access_log`).

use crate::config::{LogFormat, LoggingSection, Mode};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Target of the start-up line, logged whatever `logging.level` says: operators and scripts
/// read the bound address from it.
pub const STARTUP_TARGET: &str = "ultra_gateway::startup";

/// Installs the global subscriber. `RUST_LOG` overrides `logging.level`. Pingora's own
/// messages are kept at `warn` unless `RUST_LOG` asks for more: at `info` it narrates every
/// start-up step.
pub fn init(logging: &LoggingSection, mode: Mode) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},{STARTUP_TARGET}=info,pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=warn",
            logging.level
        ))
    });
    let json = match logging.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => mode == Mode::Production,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}
