//! Configuration errors: each names the file and the field path, never a value (values may be
//! secrets that `${VAR}` interpolation already resolved).

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Dotted field path, e.g. `providers.openai.keys[1].value`; empty for the whole file.
    pub field: String,
    /// What is wrong and what was expected. Never contains a configured value.
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error from serde, with the value-bearing parts of its message removed and the name of
    /// an unknown field moved into the path, where an operator looks for it.
    pub fn from_serde(file: &Path, base: &str, path: &str, message: &str) -> Self {
        let mut field = join_path(base, if path == "." { "" } else { path });
        let message = match unknown_field_name(message) {
            Some(name) => {
                // serde_path_to_error already ends the path with the unknown key; serde alone
                // does not.
                if !(field == name || field.ends_with(&format!(".{name}"))) {
                    field = join_path(&field, name);
                }
                let expected = message
                    .split_once(", expected ")
                    .map(|(_, e)| format!(", expected {e}"))
                    .unwrap_or_default();
                format!("unknown field{expected}")
            }
            None => strip_values(message),
        };
        ConfigError {
            file: file.to_path_buf(),
            field,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// Every problem found while loading a configuration, in file order.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// `Ok(v)` when nothing was reported, the collected errors otherwise.
    pub fn into_result<T>(self, v: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Joins two dotted paths; a segment that starts with `[` attaches without a dot.
pub fn join_path(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => base.to_string(),
        _ if rest.starts_with('[') => format!("{base}{rest}"),
        _ => format!("{base}.{rest}"),
    }
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Removes quoted or back-ticked text before serde's ", expected ..." clause: serde quotes the
/// offending value there (`invalid type: string "sk-...", expected u64`).
fn strip_values(message: &str) -> String {
    let (head, tail) = match message.find(", expected") {
        Some(i) => message.split_at(i),
        None => (message, ""),
    };
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in head.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None => out.push(c),
        }
    }
    let cleaned = out.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{cleaned}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_values() {
        let e = ConfigError::from_serde(
            Path::new("a.yaml"),
            "providers.x",
            "keys[0].id",
            "invalid type: string \"sk-secret\", expected u64",
        );
        assert_eq!(e.field, "providers.x.keys[0].id");
        assert!(!e.message.contains("sk-secret"), "{}", e.message);
        assert_eq!(e.message, "invalid type: string, expected u64");
    }

    #[test]
    fn unknown_field_moves_into_the_path() {
        let e = ConfigError::from_serde(
            Path::new("a.yaml"),
            "providers.openai",
            ".",
            "unknown field `endpoint`, expected one of `kind`, `endpoints`",
        );
        assert_eq!(e.field, "providers.openai.endpoint");
        assert_eq!(
            e.message,
            "unknown field, expected one of `kind`, `endpoints`"
        );
    }

    #[test]
    fn unknown_variant_value_is_dropped() {
        let e = ConfigError::from_serde(
            Path::new("a.yaml"),
            "providers.openai",
            "kind",
            "unknown variant `opneai`, expected one of `openai`, `mock`",
        );
        assert_eq!(
            e.message,
            "unknown variant, expected one of `openai`, `mock`"
        );
    }

    #[test]
    fn join_path_attaches_indexes() {
        assert_eq!(join_path("models", "[2].id"), "models[2].id");
        assert_eq!(join_path("", "server"), "server");
        assert_eq!(join_path("a", ""), "a");
    }
}
