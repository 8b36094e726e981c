//! The audit log: one JSON line per authentication/authorization decision, written off the
//! request path. It never holds a token, a key or a secret: callers appear by subject and key
//! id only.

use crate::config::AuditOverflow;
use crate::line_sink::{LineSink, QueueFull};
use serde::Serialize;

/// One decision. Text a caller controls is clipped (see `crate::clip`).
#[derive(Serialize)]
pub struct AuditEntry<'a> {
    pub ts: String,
    pub request_id: &'a str,
    /// `allow` or `deny`.
    pub outcome: &'static str,
    /// `ok` or the refusal's reason code (`expired`, `bad_signature`, `model_forbidden`, ...).
    pub reason: &'static str,
    #[serde(serialize_with = "crate::clip::opt_field")]
    pub subject: Option<&'a str>,
    #[serde(serialize_with = "crate::clip::opt_field")]
    pub key_id: Option<&'a str>,
    /// Roles the caller presented (a token's claim, an API key's configuration).
    #[serde(serialize_with = "crate::clip::list")]
    pub roles: &'a [String],
    /// `jwt`, `api_key`, `anonymous` or `none`.
    pub method: &'static str,
    #[serde(serialize_with = "crate::clip::field")]
    pub http_method: &'a str,
    #[serde(serialize_with = "crate::clip::field")]
    pub path: &'a str,
    #[serde(serialize_with = "crate::clip::opt_field")]
    pub model: Option<&'a str>,
    pub client: Option<std::net::IpAddr>,
}

/// The audit writer and its overflow policy.
#[derive(Clone)]
pub struct AuditLog {
    sink: LineSink,
    policy: AuditOverflow,
}

/// The line could not be queued and the policy is `reject`: the request must be refused.
#[derive(Debug, PartialEq, Eq)]
pub struct MustReject;

impl AuditLog {
    /// Waits until the lines queued so far are written (before the process exits).
    pub fn flush(&self, timeout: std::time::Duration) {
        self.sink.flush(timeout);
    }

    /// `sink` counts its dropped lines (see `LineSink::on_drop`).
    pub fn new(sink: LineSink, policy: AuditOverflow) -> AuditLog {
        AuditLog { sink, policy }
    }

    pub fn record(&self, entry: &AuditEntry<'_>) -> Result<(), MustReject> {
        match self.sink.try_write_json(entry) {
            Ok(()) => Ok(()),
            Err(QueueFull) => match self.policy {
                AuditOverflow::Drop => Ok(()),
                AuditOverflow::Reject => Err(MustReject),
            },
        }
    }
}
