//! Trust roots for a provider with its own `ca_file`. Pingora's per-peer CA list *replaces* the
//! roots (pingora-core 0.9.1 `connectors/tls/rustls`), so the list holds the system roots plus
//! the provider's bundle, as an operator adding a private CA expects.

use pingora::utils::tls::WrappedX509;
use std::path::Path;
use std::sync::Arc;

/// Pingora's per-peer CA type (`PeerOptions::ca`).
pub type CaList = Arc<[WrappedX509]>;

/// System roots plus the PEM certificates in `ca_file`. The error names the file, not content.
pub fn load_ca_list(ca_file: &Path) -> Result<CaList, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut extra = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der =
            item.map_err(|e| format!("{} is not a valid PEM file: {e}", ca_file.display()))?;
        extra.push(der.to_vec());
    }
    if extra.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca_file.display()));
    }
    let system = pingora::tls::load_native_certs().unwrap_or_default();
    let all = system
        .into_iter()
        .map(|c| c.to_vec())
        .chain(extra)
        // WrappedX509::new panics on DER it cannot parse; skip such system certificates.
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect::<Vec<_>>();
    Ok(Arc::from(all))
}
