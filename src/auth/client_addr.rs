//! The client's address for the audit and access logs: the TCP peer, or, when the peer is a trusted proxy,
//! the right-most address in `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::IpAddr;

/// `server.trusted_proxies`: IPs and CIDRs.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`. The error names the entry's problem.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, (usize, String)> {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                parse_cidr(e).ok_or((
                    i,
                    "expected an IP address or CIDR such as 10.0.0.0/8".into(),
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, len)| in_net(ip, *net, *len))
    }

    /// The client address given the TCP peer and the `X-Forwarded-For` header.
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.contains(peer) {
            return Some(peer);
        }
        let Some(xff) = forwarded_for else {
            return Some(peer);
        };
        // From the right: each trusted hop vouches for the one before it. The first hop that is
        // not trusted is the client; a hop that cannot be read ends the chain (what lies left
        // of it was written by whoever sent it), and the last trusted hop is all that is known.
        let mut known = peer;
        for hop in xff.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return Some(known);
            };
            if !self.contains(ip) {
                return Some(ip);
            }
            known = ip;
        }
        Some(known)
    }
}

/// One `X-Forwarded-For` entry: an IP, or an IP with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(h: &str) -> Option<IpAddr> {
    h.parse::<IpAddr>()
        .ok()
        .or_else(|| h.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (
            ip.trim().parse::<IpAddr>().ok()?,
            Some(len.trim().parse::<u8>().ok()?),
        ),
        None => (s.trim().parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into()]).unwrap();
        assert_eq!(
            t.client(Some(ip("203.0.113.9")), Some("1.2.3.4")),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            t.client(Some(ip("10.1.2.3")), Some("1.2.3.4")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            t.client(Some(ip("10.1.2.3")), Some("6.6.6.6, 1.2.3.4, 10.9.9.9")),
            Some(ip("1.2.3.4")),
            "a client cannot spoof by prepending"
        );
        assert_eq!(
            t.client(Some(ip("192.168.1.7")), None),
            Some(ip("192.168.1.7"))
        );
        assert_eq!(
            t.client(Some(ip("192.168.1.8")), Some("1.2.3.4")),
            Some(ip("192.168.1.8"))
        );
        // A hop the gateway cannot read ends the chain: nothing left of it is believed.
        for xff in [
            "6.6.6.6, unknown",
            "6.6.6.6, , 10.9.9.9",
            "6.6.6.6, garbage:1",
        ] {
            assert_ne!(
                t.client(Some(ip("10.1.2.3")), Some(xff)),
                Some(ip("6.6.6.6")),
                "{xff}"
            );
        }
        assert_eq!(
            t.client(Some(ip("10.1.2.3")), Some("6.6.6.6, 1.2.3.4:5555")),
            Some(ip("1.2.3.4")),
            "a hop with a port is read"
        );
        assert_eq!(
            t.client(Some(ip("10.1.2.3")), Some("6.6.6.6, [2001:db8::1]:443")),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            t.client(Some(ip("10.1.2.3")), Some("10.5.5.5, 10.9.9.9")),
            Some(ip("10.5.5.5")),
            "all trusted: the farthest known"
        );
    }

    #[test]
    fn parse_errors() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
        assert!(TrustedProxies::parse(&["::1".into(), "fd00::/8".into()]).is_ok());
    }
}
