//! The Pingora peer of a backend: address, TLS and server name from the endpoint, the
//! provider's CA list, timeouts. Traffic and health checks build it the same way.

use super::pool::BackendState;
use super::timeouts::Timeouts;
use super::tls::CaList;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

pub fn http_peer(b: &BackendState, ca: Option<&CaList>, t: &Timeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(b.addr, b.endpoint.tls, b.endpoint.sni.clone());
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect * 2);
    // Pingora 0.9 has one read timeout for the first byte and for each later gap; the
    // gateway's own per-attempt timers (`proxy::timers`) enforce each limit precisely.
    peer.options.read_timeout = Some(t.first_byte.max(t.between_chunks));
    peer.options.write_timeout = Some(t.between_chunks);
    peer.options.alpn = ALPN::H1;
    peer.options.ca = ca.cloned();
    peer
}
