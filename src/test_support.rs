//! Test helpers for decisions that need a compiled configuration: a compiled `Runtime` from inline YAML (its pools
//! resolved from IP literals, so no network), and callers with given roles.

use crate::auth::rbac::Access;
use crate::auth::Principal;
use crate::runtime::Runtime;
use std::path::Path;
use std::sync::Arc;

/// Compiles `yaml`; pools are not resolved (they have no backend yet).
pub fn runtime(yaml: &str) -> Runtime {
    let config = crate::config::load_str(yaml, Path::new("t.yaml"), Path::new("."), &|_| None)
        .expect("test configuration loads");
    Runtime::compile(&config, &Default::default())
        .expect("test configuration compiles")
        .0
}

/// Compiles `yaml` and resolves its pools (endpoints must be IP literals).
pub async fn resolved_runtime(yaml: &str) -> Runtime {
    let rt = runtime(yaml);
    crate::upstream::manager::refresh_all(&rt).await;
    rt
}

/// A JWT caller `alice` with these role names.
pub fn caller(rt: &Runtime, roles: &[&str]) -> Principal {
    Principal {
        subject: Arc::from("alice"),
        key_id: None,
        access: Access::of_roles(rt.auth.rbac.role_set(roles.iter().copied())),
        roles: Arc::from(roles.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
        method: "jwt",
    }
}
