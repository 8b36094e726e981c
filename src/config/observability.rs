//! The schema of the observability sections: `audit` (the audit log of authentication
//! decisions) and `metrics` (the Prometheus endpoint). The access log is under `logging`.

use serde::Deserialize;

/// `audit:` the audit log of authentication and authorization decisions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// `stdout` (default), `stderr`, or a file path (appended; reopened on SIGUSR1).
    pub path: String,
    /// When the queue to the writer is full: `drop` (default: the line is lost, counted in
    /// `ultra_audit_dropped_total` and logged) or `reject` (requests get 503 until there is room).
    pub on_overflow: AuditOverflow,
    /// Lines the queue holds. Default 16384.
    pub queue_lines: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: "stdout".into(),
            on_overflow: AuditOverflow::Drop,
            queue_lines: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOverflow {
    #[default]
    Drop,
    Reject,
}

/// `metrics:` the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve `/metrics`. Default true.
    pub enabled: bool,
    /// A separate `IP:PORT` for `/metrics`; `null` (default) serves it on the main listener.
    pub listen: Option<String>,
    /// `/metrics` needs no credentials (Prometheus scrapers carry none), so on the main listener
    /// it is public. Production refuses that unless this is explicitly true; or set `listen` to
    /// an internal address. Default false.
    pub public: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: None,
            public: false,
        }
    }
}
