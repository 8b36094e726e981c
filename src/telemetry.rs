//! Operational logging (`tracing`): human-readable text in development, JSON lines in
//! production, to stderr. The access log is separate (`proxy::access_log`).

use crate::config::{LogFormat, LoggingSection, Mode};
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| CappedStderr)
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(PingoraLines);
    let result = if json {
        registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init()
    } else {
        registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}

/// stderr, with no line over `clip::LINE_MAX_BYTES`: a message can quote what a client or a
/// provider sent. `tracing`'s formatter hands each line over in one `write`.
struct CappedStderr;

impl std::io::Write for CappedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&crate::clip::cap_text_line(line))?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Keeps two kinds of Pingora's own lines out of the log:
/// - a client that closed or broke its connection in the middle of a request header (Pingora
///   logs an ERROR for each: a client could write them at will); the gateway counts these in
///   `ultra_connections_closed_total{reason="header_error"}`;
/// - any line quoting a raw buffer (`buf: ...`): the bytes may hold a provider key an upstream
///   echoed, or a client's credentials. The gateway logs its own line for such failures (see
///   `proxy::error_text`).
struct PingoraLines;

impl<S: Subscriber> Layer<S> for PingoraLines {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        // Pingora logs through the `log` crate; its lines arrive with the bridge's own target.
        let target = event.metadata().target();
        if target != "log" && !target.starts_with("pingora") {
            return true;
        }
        let mut message = Message(false);
        event.record(&mut message);
        !message.0
    }
}

/// Visits an event's message: `true` when it is one to keep out (see [`PingoraLines`]).
struct Message(bool);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.0 = quotes_raw_bytes(&text) || is_client_header_failure(&text);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = quotes_raw_bytes(value) || is_client_header_failure(value);
        }
    }
}

fn quotes_raw_bytes(message: &str) -> bool {
    message.contains("buf:")
}

/// Pingora's line when reading a request header failed for another reason than a malformed
/// header (which it answers with a 400, logged at debug).
fn is_client_header_failure(message: &str) -> bool {
    message.starts_with("Fail to proxy: Downstream") && message.contains("downstream session type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_lines_kept_out() {
        assert!(is_client_header_failure(
            "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 20, downstream session type: HTTP/1.1"
        ));
        assert!(!is_client_header_failure(
            "Fail to proxy: Upstream ConnectTimedout, status: 502, tries: 1"
        ));
        assert!(quotes_raw_bytes(
            "Fail to proxy: Upstream InvalidHTTPHeader context: buf: HTTP/1.1 200 OK"
        ));
        assert!(!quotes_raw_bytes("Accept() failed Too many open files"));
    }
}
