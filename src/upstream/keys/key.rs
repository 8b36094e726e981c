//! One provider key as it goes on the wire: the header its provider kind expects, its value
//! marked sensitive, and the bare secret (to scrub it from error bodies), none of which `Debug`
//! prints.

use crate::config::ProviderKind;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// One provider key, ready to put on the wire. The value is marked sensitive so that `Debug`
/// never prints it.
#[derive(Debug, Clone)]
pub struct ProviderKey {
    pub id: Arc<str>,
    header: HeaderName,
    value: HeaderValue,
    /// The bare secret, to scrub it from what providers send back.
    secret: SecretText,
    /// A searcher for the secret, built once: every relayed response's headers are searched.
    finder: SecretFinder,
}

/// The secret's searcher; its `Debug` prints nothing (the searcher's own would print the
/// needle).
#[derive(Clone)]
struct SecretFinder(Arc<memchr::memmem::Finder<'static>>);

impl std::fmt::Debug for SecretFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<finder>")
    }
}

/// A secret string whose `Debug` prints nothing.
#[derive(Clone)]
pub struct SecretText(Arc<str>);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl ProviderKey {
    /// The key for this provider kind. `None` when the value cannot be a header value (empty,
    /// or with control characters).
    pub fn new(kind: ProviderKind, id: &str, secret: &str) -> Option<ProviderKey> {
        let secret = secret.trim();
        if secret.is_empty() {
            return None;
        }
        let (header, raw) = match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                (http::header::AUTHORIZATION, format!("Bearer {secret}"))
            }
            ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), secret.to_string()),
            ProviderKind::Azure => (HeaderName::from_static("api-key"), secret.to_string()),
            ProviderKind::Mock => return None,
        };
        let mut value = HeaderValue::from_str(&raw).ok()?;
        value.set_sensitive(true);
        Some(ProviderKey {
            id: Arc::from(id),
            header,
            value,
            secret: SecretText(Arc::from(secret)),
            finder: SecretFinder(Arc::new(
                memchr::memmem::Finder::new(secret.as_bytes()).into_owned(),
            )),
        })
    }

    /// Whether `text` holds the secret.
    pub fn found_in(&self, text: &[u8]) -> bool {
        text.len() >= self.secret.0.len() && self.finder.0.find(text).is_some()
    }

    pub fn secret(&self) -> &str {
        &self.secret.0
    }

    /// Puts the key on a request, in the header its provider kind expects.
    pub fn apply(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        req.insert_header(self.header.clone(), self.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_authenticates_its_way() {
        let k = ProviderKey::new(ProviderKind::Openai, "a", "sk-1").unwrap();
        assert_eq!(k.header, http::header::AUTHORIZATION);
        assert_eq!(k.value, "Bearer sk-1");
        let k = ProviderKey::new(ProviderKind::Anthropic, "a", "sk-ant").unwrap();
        assert_eq!(k.header, "x-api-key");
        let k = ProviderKey::new(ProviderKind::Azure, "a", "az").unwrap();
        assert_eq!(k.header, "api-key");
        assert!(ProviderKey::new(ProviderKind::Openai, "a", "  ").is_none());
        assert!(ProviderKey::new(ProviderKind::Openai, "a", "bad\nkey").is_none());
    }

    #[test]
    fn key_debug_hides_the_secret() {
        let k = ProviderKey::new(ProviderKind::Openai, "a", "sk-verysecret").unwrap();
        assert!(!format!("{k:?}").contains("verysecret"));
    }
}
