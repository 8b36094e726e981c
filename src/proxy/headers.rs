//! Header hygiene (DESIGN.md): what a client sent that must never reach a provider, what a
//! provider sent that must never reach a client, and the request id.

use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use rand::Rng;

/// Client request headers never forwarded: credentials for the gateway, the organisation's
/// provider account selectors, forwarding details of the internal network, and headers the
/// gateway sets itself.
const STRIPPED_REQUEST: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "openai-organization",
    "openai-project",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "accept-encoding",
    "content-length",
    "host",
    "x-test-mode",
];

/// Hop-by-hop headers (RFC 9110 7.6.1), removed in both directions.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Provider response headers never passed to clients: cookies, and the organisation's account
/// identifiers.
const STRIPPED_RESPONSE: &[&str] = &["set-cookie", "openai-organization", "openai-project"];

/// Provider headers carrying the provider's request id, kept as `x-upstream-request-id`.
const UPSTREAM_REQUEST_ID: &[&str] = &["x-request-id", "request-id", "apim-request-id"];

/// The client's `x-request-id` when it is a sane token (1-128 of `A-Za-z0-9._:-`), otherwise
/// a new random id. Two of them are kept neither: logs and the provider would each pick one, and
/// a correlation id that means two things correlates nothing.
pub fn request_id(req: &RequestHeader) -> String {
    let mut sent = req.headers.get_all("x-request-id").iter();
    if let (Some(v), None) = (sent.next().and_then(|v| v.to_str().ok()), sent.next()) {
        if (1..=128).contains(&v.len())
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            return v.to_string();
        }
    }
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// Removes from an upstream request everything the client must not pass on. One pass over the
/// few headers a request has, rather than a removal by name (a name parsed and hashed) for each
/// of the two dozen listed.
pub fn scrub_request(req: &mut RequestHeader) {
    let mut doomed = connection_nominated(&req.headers);
    doomed.extend(
        req.headers
            .keys()
            .filter(|n| STRIPPED_REQUEST.contains(&n.as_str()) || HOP_BY_HOP.contains(&n.as_str()))
            .cloned(),
    );
    for n in &doomed {
        req.remove_header(n);
    }
}

/// Removes from a provider response what the client must not see, and keeps the provider's
/// request id under `x-upstream-request-id` (the first of `UPSTREAM_REQUEST_ID` present).
pub fn scrub_response(resp: &mut ResponseHeader) {
    let mut doomed = connection_nominated(&resp.headers);
    let mut upstream_id = None::<usize>;
    for n in resp.headers.keys() {
        let name = n.as_str();
        if STRIPPED_RESPONSE.contains(&name)
            || (HOP_BY_HOP.contains(&name) && name != "transfer-encoding")
        {
            doomed.push(n.clone());
        } else if let Some(rank) = UPSTREAM_REQUEST_ID
            .iter()
            .position(|id| *id == name)
            .filter(|_| !doomed.contains(n))
        {
            upstream_id = Some(upstream_id.map_or(rank, |r| r.min(rank)));
        }
    }
    for n in &doomed {
        resp.remove_header(n);
    }
    if let Some(rank) = upstream_id {
        if let Some(v) = resp.remove_header(UPSTREAM_REQUEST_ID[rank]) {
            let _ = resp.insert_header("x-upstream-request-id", v);
        }
    }
}

/// Headers named in `Connection` are hop-by-hop too.
fn connection_nominated(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc-123_x.y:z").unwrap();
        assert_eq!(request_id(&req), "abc-123_x.y:z");
        req.insert_header("x-request-id", "bad id;drop").unwrap();
        let id = request_id(&req);
        assert_eq!(id.len(), 32);
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
        req.insert_header("x-request-id", "one").unwrap();
        req.append_header("x-request-id", "two").unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }

    #[test]
    fn credentials_and_hop_by_hop_are_removed() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        for h in [
            "authorization",
            "x-api-key",
            "cookie",
            "openai-organization",
            "x-secret",
            "user-agent",
        ] {
            req.insert_header(h, "v").unwrap();
        }
        req.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        scrub_request(&mut req);
        let left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["user-agent"]);
    }

    #[test]
    fn response_cookies_go_and_request_id_is_renamed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("set-cookie", "a=b").unwrap();
        resp.insert_header("openai-organization", "org-x").unwrap();
        resp.insert_header("x-request-id", "req_123").unwrap();
        scrub_response(&mut resp);
        assert!(resp.headers.get("set-cookie").is_none());
        assert!(resp.headers.get("openai-organization").is_none());
        assert!(resp.headers.get("x-request-id").is_none());
        assert_eq!(resp.headers["x-upstream-request-id"], "req_123");

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("apim-request-id", "apim").unwrap();
        resp.insert_header("request-id", "plain").unwrap();
        resp.insert_header("transfer-encoding", "chunked").unwrap();
        resp.insert_header("connection", "x-hop").unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        scrub_response(&mut resp);
        assert_eq!(resp.headers["x-upstream-request-id"], "plain");
        assert_eq!(resp.headers["apim-request-id"], "apim");
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        assert!(resp.headers.get("x-hop").is_none());
        assert!(resp.headers.get("connection").is_none());

        // An id the provider listed in `Connection` is hop-by-hop: gone, and the next one kept.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "x-request-id").unwrap();
        resp.insert_header("x-request-id", "hop").unwrap();
        resp.insert_header("request-id", "kept").unwrap();
        scrub_response(&mut resp);
        assert_eq!(resp.headers["x-upstream-request-id"], "kept");
        assert!(resp.headers.get("x-request-id").is_none());
        assert!(resp.headers.get("request-id").is_none());
    }
}
