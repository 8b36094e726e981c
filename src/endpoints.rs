//! Which client paths exist: path normalisation, the proxied allow-list and the endpoint groups
//! that roles refer to. A path is normalised before it is matched *and* the normalised form is
//! what goes upstream, so what was checked is what is sent.

use std::fmt;

/// The endpoint groups of DESIGN.md that roles grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointGroup {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Moderations,
    Models,
    Analyze,
    Usage,
    Admin,
    /// A group named by `server.extra_paths`.
    Custom(Box<str>),
}

impl EndpointGroup {
    pub fn as_str(&self) -> &str {
        match self {
            EndpointGroup::Custom(s) => s,
            builtin => builtin.static_name().unwrap_or_default(),
        }
    }

    /// The name of a built-in group; `None` for a `server.extra_paths` group.
    pub fn static_name(&self) -> Option<&'static str> {
        Some(match self {
            EndpointGroup::Chat => "chat",
            EndpointGroup::Completions => "completions",
            EndpointGroup::Embeddings => "embeddings",
            EndpointGroup::Responses => "responses",
            EndpointGroup::Moderations => "moderations",
            EndpointGroup::Models => "models",
            EndpointGroup::Analyze => "analyze",
            EndpointGroup::Usage => "usage",
            EndpointGroup::Admin => "admin",
            EndpointGroup::Custom(_) => return None,
        })
    }
}

impl fmt::Display for EndpointGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The proxied `POST` paths every gateway serves.
pub const BUILTIN_PROXY_PATHS: &[(&str, EndpointGroup)] = &[
    ("/v1/chat/completions", EndpointGroup::Chat),
    ("/v1/completions", EndpointGroup::Completions),
    ("/v1/embeddings", EndpointGroup::Embeddings),
    ("/v1/responses", EndpointGroup::Responses),
    ("/v1/moderations", EndpointGroup::Moderations),
];

/// The group of a built-in proxied path.
pub fn builtin_group(path: &str) -> Option<&'static EndpointGroup> {
    BUILTIN_PROXY_PATHS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, g)| g)
}

/// Normalises a request path: percent-decodes it, drops empty and `.` segments, resolves `..`,
/// and removes a trailing slash. `None` for what no legitimate client sends: a `..` above the
/// root, a malformed escape, a backslash, a control character or invalid UTF-8.
pub fn normalize(raw: &str) -> Option<String> {
    let decoded = percent_decode(raw)?;
    if decoded.contains('\\') || decoded.chars().any(|c| c.is_control()) {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(
            normalize("/v1/chat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(normalize("/").unwrap(), "/");
    }

    #[test]
    fn dot_segments_slashes_and_escapes_are_resolved() {
        assert_eq!(
            normalize("/v1//chat/completions/").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(
            normalize("/v1/./chat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(
            normalize("/v1/chat/completions/../../files").unwrap(),
            "/v1/files"
        );
        assert_eq!(normalize("/v1/%2e%2e/v1/files").unwrap(), "/v1/files");
        assert_eq!(
            normalize("/v1/chat%2Fcompletions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(
            normalize("/v1/%63hat/completions").unwrap(),
            "/v1/chat/completions"
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(normalize("/../etc/passwd"), None);
        assert_eq!(normalize("/v1/%2e%2e/%2e%2e/x"), None);
        assert_eq!(normalize("/v1/%zz"), None);
        assert_eq!(normalize("/v1/%"), None);
        assert_eq!(normalize("/v1\\..\\files"), None);
        assert_eq!(normalize("/v1/%00"), None);
        assert_eq!(normalize("/v1/%ff"), None);
    }

    #[test]
    fn builtin_groups() {
        assert_eq!(
            builtin_group("/v1/chat/completions"),
            Some(&EndpointGroup::Chat)
        );
        assert_eq!(builtin_group("/v1/files"), None);
    }
}
