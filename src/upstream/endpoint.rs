//! A provider endpoint URL, parsed once at load time into what a connection needs: scheme, host,
//! port, TLS server name, `Host` header and the path prefix of DESIGN.md's endpoint URL rule.

use crate::config::EndpointSpec;
use std::net::IpAddr;

/// Largest endpoint weight: Pingora's weighted selection holds one slot per unit of weight.
pub const MAX_WEIGHT: usize = 1000;

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as written (validated to carry no credentials or query).
    pub url: String,
    pub tls: bool,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal: no DNS needed.
    pub ip: Option<IpAddr>,
    /// TLS server name. For an IP literal without `sni`, the IP itself: rustls then checks the
    /// certificate's IP SAN. Never empty (validated).
    pub sni: String,
    /// `Host` header value: host, plus the port when it is not the scheme's default.
    pub host_header: String,
    /// Replaces the client path's leading `/v1` (`/openai/v1` for Groq); `None` keeps the path.
    pub path_prefix: Option<String>,
    pub weight: usize,
}

impl Endpoint {
    /// Whether two endpoints reach the same target the same way (weights aside): a backend's
    /// state carries over a reload only between such endpoints.
    pub fn same_target(a: &Endpoint, b: &Endpoint) -> bool {
        a.url == b.url
            && a.tls == b.tls
            && a.sni == b.sni
            && a.host_header == b.host_header
            && a.path_prefix == b.path_prefix
    }

    /// Parses an endpoint. The error says what is wrong without repeating the URL.
    pub fn parse(spec: &EndpointSpec) -> Result<Endpoint, String> {
        let url = spec.url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("must start with http:// or https://".into());
        };
        if rest.contains(['?', '#']) {
            return Err("must not have a query or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("must not embed credentials (use `keys`)".into());
        }
        if authority.is_empty() {
            return Err("has no host".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)?;
        if host.is_empty() {
            return Err("has no host".into());
        }
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_none() && !valid_host_name(&host) {
            return Err("has an invalid host name".into());
        }
        if !(1..=MAX_WEIGHT).contains(&spec.weight) {
            return Err(format!("weight must be between 1 and {MAX_WEIGHT}"));
        }
        if !tls && spec.sni.is_some() {
            return Err("`sni` only applies to https:// endpoints".into());
        }
        // An empty name (`${SNI:-}`) makes every handshake fail with rustls in Pingora 0.9.1.
        if let Some(s) = &spec.sni {
            if s.parse::<IpAddr>().is_err() && !valid_host_name(s) {
                return Err("`sni` must be a host name or an IP address".into());
            }
        }
        let path = path.trim_end_matches('/');
        if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
            return Err("has an invalid path".into());
        }
        let sni = spec.sni.clone().unwrap_or_else(|| host.clone());
        let host_header = match (port == default_port, ip) {
            (true, Some(IpAddr::V6(_))) => format!("[{host}]"),
            (true, _) => host.clone(),
            (false, Some(IpAddr::V6(_))) => format!("[{host}]:{port}"),
            (false, _) => format!("{host}:{port}"),
        };
        Ok(Endpoint {
            url: url.to_string(),
            tls,
            host,
            port,
            ip,
            sni,
            host_header,
            path_prefix: (!path.is_empty()).then(|| path.to_string()),
            weight: spec.weight,
        })
    }

    /// The upstream path for a normalised client path under `/v1/...`.
    pub fn upstream_path(&self, client_path: &str) -> String {
        match &self.path_prefix {
            None => client_path.to_string(),
            Some(prefix) => {
                let rest = client_path.strip_prefix("/v1").unwrap_or(client_path);
                format!("{prefix}{rest}")
            }
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed IPv6 bracket")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has an invalid IPv6 address".into());
        }
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => default_port,
            None => return Err("has garbage after the IPv6 address".into()),
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_ascii_lowercase(), parse_port(p)?)),
        None => Ok((authority.to_ascii_lowercase(), default_port)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("has an invalid port".into()),
        Ok(n) => Ok(n),
    }
}

fn valid_host_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Result<Endpoint, String> {
        Endpoint::parse(&EndpointSpec {
            url: url.into(),
            weight: 1,
            sni: None,
        })
    }

    #[test]
    fn parses_plain_https() {
        let e = ep("https://api.openai.com").unwrap();
        assert!(e.tls);
        assert_eq!((e.host.as_str(), e.port), ("api.openai.com", 443));
        assert_eq!(e.host_header, "api.openai.com");
        assert_eq!(e.sni, "api.openai.com");
        assert_eq!(e.path_prefix, None);
        assert_eq!(
            e.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );
    }

    #[test]
    fn a_path_replaces_the_leading_v1() {
        let e = ep("https://api.groq.com/openai/v1/").unwrap();
        assert_eq!(e.path_prefix.as_deref(), Some("/openai/v1"));
        assert_eq!(
            e.upstream_path("/v1/chat/completions"),
            "/openai/v1/chat/completions"
        );
    }

    #[test]
    fn ip_literals_and_ports() {
        let e = ep("http://127.0.0.1:8000").unwrap();
        assert_eq!(e.ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(e.host_header, "127.0.0.1:8000");
        let e = ep("https://[::1]:8443/v1").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.host_header, "[::1]:8443");
        assert_eq!(e.sni, "::1");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://x",
            "api.openai.com",
            "https://",
            "https://user:pw@host",
            "https://host?key=1",
            "https://host:0",
            "https://host:99999",
            "https://ho st",
            "https://host/a/../b",
        ] {
            assert!(ep(bad).is_err(), "{bad} should be rejected");
        }
        let err = ep("https://user:sk-secret@host").unwrap_err();
        assert!(!err.contains("sk-secret"));
        let with_sni = |sni: &str| {
            Endpoint::parse(&EndpointSpec {
                url: "https://10.0.0.1".into(),
                weight: 1,
                sni: Some(sni.into()),
            })
        };
        assert!(with_sni("").is_err(), "an empty sni fails every handshake");
        assert!(with_sni("bad name").is_err());
        assert_eq!(with_sni("api.example.com").unwrap().sni, "api.example.com");
    }
}
