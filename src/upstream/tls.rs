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
    for (i, item) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let der =
            item.map_err(|e| format!("{} is not a valid PEM file: {e}", ca_file.display()))?;
        // The operator's own certificates must all be usable: one silently dropped would leave
        // the provider trusted only through the system roots.
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(format!(
                "{}: certificate {} cannot be parsed",
                ca_file.display(),
                i + 1
            ));
        }
        extra.push(der.to_vec());
    }
    if extra.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca_file.display()));
    }
    let system = pingora::tls::load_native_certs()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_vec())
        // WrappedX509::new panics on DER it cannot parse; skip such system certificates.
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok());
    let all = system
        .chain(extra)
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect::<Vec<_>>();
    Ok(Arc::from(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_certificate_in_ca_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        // Valid PEM framing and base64, but not a certificate.
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_ca_list(&path).unwrap_err();
        assert!(err.contains("certificate 1 cannot be parsed"), "{err}");
        std::fs::write(&path, "nothing here\n").unwrap();
        assert!(load_ca_list(&path)
            .unwrap_err()
            .contains("no PEM certificate"));
    }
}
