//! Any response body, as an event stream and as JSON, cut in two anywhere: the usage found is
//! the same as when it comes whole, and nothing panics.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ultra_gateway::usage::{Dialect, UsageMeter};

fn read(chunks: &[&[u8]], sse: bool, dialect: Dialect) -> Option<(u64, u64)> {
    let mut meter = UsageMeter::new(dialect, sse, false);
    for (i, c) in chunks.iter().enumerate() {
        let mut b = Bytes::copy_from_slice(c);
        meter.chunk(&mut b, i + 1 == chunks.len());
    }
    meter.reported().map(|t| (t.input, t.output))
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let at = cut as usize % (body.len() + 1);
    for sse in [true, false] {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let whole = read(&[body], sse, dialect);
            let split = read(&[&body[..at], &body[at..]], sse, dialect);
            assert_eq!(whole, split, "sse {sse}, cut at {at}");
        }
    }
});
