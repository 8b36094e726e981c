//! `ultra-gateway healthcheck`: one GET of `/health` over plain HTTP/1.1, for container
//! `HEALTHCHECK`s and probes where no shell tool (curl, wget) exists, as in a distroless image.
//! Std only: it runs in a fresh process every few seconds, so it starts no runtime.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/health";

/// Where an `http://host[:port][/path]` URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// URLs are supported (the gateway's listener speaks plain HTTP)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]:8080`, `127.0.0.1:8080`, `gateway:8080`.
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    if path.bytes().any(|c| c.is_ascii_control() || c == b' ') {
        return Err(format!(
            "{url}: the path holds a space or a control character"
        ));
    }
    Ok(Target {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path: path.to_string(),
    })
}

/// GETs `url` within `timeout` (connection, request and status line together) and returns the
/// response's status code.
pub fn check(url: &str, timeout: Duration) -> Result<u16, String> {
    let t = parse(url)?;
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", t.host))?
        .next()
        .ok_or_else(|| format!("{}: no address", t.host))?;
    let mut s = TcpStream::connect_timeout(&addr, left()).map_err(|e| format!("{addr}: {e}"))?;
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: ultra-gateway-healthcheck\r\nConnection: close\r\n\r\n",
        t.path, t.port
    );
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    // The status line is all that is needed: `HTTP/1.1 200 OK`.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let n = s.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse("http://127.0.0.1:9000/health").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/health")
        );
        let t = parse("http://gateway").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gateway", 80, "/")
        );
        let t = parse("http://[::1]:8080/ready").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert!(parse("https://x/health").is_err());
        assert!(parse("http://:80/").is_err());
        assert!(parse("http://x:port/").is_err());
        assert!(parse("http://x/a b").is_err());
    }

    #[test]
    fn a_closed_port_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = check(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(2),
        );
        assert!(e.is_err(), "{e:?}");
    }
}
