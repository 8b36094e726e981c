//! Any body: `probe` answers without panicking; when it accepts one, its model is serde_json's
//! and a rewrite changes that and nothing else.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ultra_gateway::proxy::model_field::{probe, rewrite_model};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = probe(data) else { return };
    let mut whole: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(data).expect("probe accepted what serde_json refuses");
    assert_eq!(whole["model"].as_str(), Some(&*p.model));
    let out = rewrite_model(&bytes::Bytes::copy_from_slice(data), "fuzz-model")
        .expect("a probed body has a model to rewrite");
    let after: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out).expect("a rewrite stays JSON");
    whole.insert("model".into(), "fuzz-model".into());
    assert_eq!(whole, after);
});
