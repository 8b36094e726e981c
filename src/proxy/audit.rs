//! The audit line of each admission decision: one per request that reached authentication,
//! `deny` with the refusal's reason or `allow`, written off the request path by `AuditLog`.

use super::ctx::RequestCtx;
use super::Gateway;
use crate::auth::audit::AuditEntry;
use crate::auth::{Principal, Refusal};
use crate::time::now_rfc3339;
use pingora::proxy::Session;

impl Gateway {
    /// Writes the request's audit line (once) for `caller` (`None`: refused before it was
    /// known). `false` when the line could not be queued and `audit.on_overflow` says to refuse
    /// the request.
    pub(super) fn audit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        caller: Option<&Principal>,
        refusal: Option<Refusal>,
    ) -> bool {
        if ctx.audited {
            return true;
        }
        ctx.audited = true;
        let (outcome, reason) = match refusal {
            None => ("allow", "ok"),
            Some(r) => ("deny", r.code()),
        };
        self.metrics
            .auth_decisions
            .with_label_values(&[outcome, reason])
            .inc();
        let entry = AuditEntry {
            ts: now_rfc3339(),
            request_id: &ctx.request_id,
            outcome,
            reason,
            subject: caller.map(|p| &*p.subject),
            key_id: caller.and_then(|p| p.key_id.as_deref()),
            roles: caller.map(|p| &p.roles[..]).unwrap_or(&[]),
            method: caller.map(|p| p.method).unwrap_or("none"),
            http_method: session.req_header().method.as_str(),
            path: &ctx.path,
            model: ctx.model_id.as_deref().or(ctx.requested_model.as_deref()),
            client: ctx.client,
        };
        self.audit.record(&entry).is_ok()
    }
}
