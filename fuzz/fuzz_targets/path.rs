//! Any path: normalisation never panics, is idempotent, and leaves no `..`, `.` or backslash.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ultra_gateway::endpoints::normalize;

fuzz_target!(|raw: &str| {
    if let Some(n) = normalize(raw) {
        assert_eq!(normalize(&n).as_deref(), Some(n.as_str()));
        assert!(n.starts_with('/') && !n.contains('\\') && !n.contains("//"));
        assert!(n.split('/').all(|s| s != ".." && s != "."));
    }
});
