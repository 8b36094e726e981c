//! Any error body cut anywhere is scrubbed exactly as when it comes whole, and no configured
//! key survives.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use ultra_gateway::config::ProviderKind;
use ultra_gateway::proxy::response_body::ErrorBody;
use ultra_gateway::upstream::keys::ProviderKey;

const KEY: &str = "AIzaFuzzKey42";

fn scrub(chunks: &[&[u8]]) -> Vec<u8> {
    let key = Arc::new(ProviderKey::new(ProviderKind::Openai, "k", KEY).unwrap());
    let mut body = ErrorBody::new(vec![key]);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend_from_slice(&body.pass(Some(Bytes::copy_from_slice(c)), i + 1 == chunks.len()));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let at = cut as usize % (body.len() + 1);
    let whole = scrub(&[body]);
    assert_eq!(whole, scrub(&[&body[..at], &body[at..]]));
    assert!(!whole.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
});
