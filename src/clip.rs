//! Bounds on text a client controls, wherever the gateway writes it: log fields (`Clipped`,
//! `ClippedList`), whole log lines (`cap_line`) and error messages (`clip`). A client that
//! sends a 1 MB model name or a 64 KiB path gets one short line per request, not a flooded disk.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::borrow::Cow;

/// Longest client-controlled field kept in a log line, in bytes (before JSON escaping).
pub const FIELD_MAX_BYTES: usize = 256;

/// Most items of a client-controlled list (a token's roles) kept in a log line.
pub const LIST_MAX_ITEMS: usize = 16;

/// Longest log line written, in bytes. A line over it (which clipped fields make unlikely) is
/// replaced by a short JSON line that says so and keeps its start.
pub const LINE_MAX_BYTES: usize = 8 * 1024;

/// How much of an over-long line the replacement keeps.
const LINE_HEAD_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes (at a character boundary) followed by a marker telling how
/// many bytes were cut: `abc…[+1234 bytes]`. Unchanged, and not copied, when it fits.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let head = &text[..floor_char_boundary(text, max)];
    Cow::Owned(format!("{head}…[+{} bytes]", text.len() - head.len()))
}

/// The largest index `<= i` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    (0..=i.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// A log field serialized clipped to `FIELD_MAX_BYTES`.
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(pub &'a str);

impl Serialize for Clipped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&clip(self.0, FIELD_MAX_BYTES))
    }
}

impl std::fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&clip(self.0, FIELD_MAX_BYTES))
    }
}

/// A list serialized with at most `LIST_MAX_ITEMS` items, each clipped; a last item
/// `…[+N more]` says how many were left out.
#[derive(Debug, Clone, Copy)]
pub struct ClippedList<'a>(pub &'a [String]);

impl Serialize for ClippedList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let more = self.0.len().saturating_sub(LIST_MAX_ITEMS);
        let mut seq =
            s.serialize_seq(Some(self.0.len().min(LIST_MAX_ITEMS) + (more > 0) as usize))?;
        for item in self.0.iter().take(LIST_MAX_ITEMS) {
            seq.serialize_element(&Clipped(item))?;
        }
        if more > 0 {
            seq.serialize_element(&format!("…[+{more} more]"))?;
        }
        seq.end()
    }
}

/// For `#[serde(serialize_with = "crate::clip::field")]` on a `&str` log field.
pub fn field<S: Serializer>(text: &&str, s: S) -> Result<S::Ok, S::Error> {
    Clipped(text).serialize(s)
}

/// For `#[serde(serialize_with = "crate::clip::opt_field")]` on an `Option<&str>` log field.
pub fn opt_field<S: Serializer>(text: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(t) => Clipped(t).serialize(s),
        None => s.serialize_none(),
    }
}

/// For `#[serde(serialize_with = "crate::clip::list")]` on a `&[String]` log field.
pub fn list<S: Serializer>(items: &&[String], s: S) -> Result<S::Ok, S::Error> {
    ClippedList(items).serialize(s)
}

/// `line` (one JSON log line, newline included) when it is at most `LINE_MAX_BYTES`; otherwise
/// a replacement JSON line: `{"log_line_cut":true,"bytes":N,"head":"<its first KiB>"}`, so that
/// a log stays one valid JSON object per line.
pub fn cap_line(line: Vec<u8>) -> Vec<u8> {
    if line.len() <= LINE_MAX_BYTES {
        return line;
    }
    let text = String::from_utf8_lossy(&line[..LINE_HEAD_BYTES.min(line.len())]);
    let head = &text[..floor_char_boundary(&text, LINE_HEAD_BYTES)];
    let mut out = serde_json::to_vec(&serde_json::json!({
        "log_line_cut": true,
        "bytes": line.len(),
        "head": head.trim_end_matches('\u{fffd}'),
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// An operational log line over `LINE_MAX_BYTES`: a text line is cut at a character boundary
/// with a marker, a JSON line replaced as `cap_line` does; shorter lines are written as they
/// are. For `tracing`'s writer.
pub fn cap_text_line(line: &[u8]) -> Cow<'_, [u8]> {
    if line.len() <= LINE_MAX_BYTES {
        return Cow::Borrowed(line);
    }
    if line.first() == Some(&b'{') {
        return Cow::Owned(cap_line(line.to_vec()));
    }
    let text = String::from_utf8_lossy(&line[..LINE_MAX_BYTES]);
    let head = &text[..floor_char_boundary(&text, LINE_MAX_BYTES - 64)];
    Cow::Owned(format!("{head}…[log line cut: {} bytes]\n", line.len()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_borrowed_and_long_text_is_marked() {
        assert!(matches!(clip("gpt-4o", 256), Cow::Borrowed("gpt-4o")));
        let long = "m".repeat(1_000_000);
        let c = clip(&long, 256);
        assert_eq!(c, format!("{}…[+999744 bytes]", "m".repeat(256)));
    }

    #[test]
    fn clipping_never_splits_a_character() {
        let text = "é".repeat(200); // 400 bytes
        let c = clip(&text, 255);
        assert!(c.starts_with(&"é".repeat(127)));
        assert!(c.ends_with("…[+146 bytes]"), "{c}");
    }

    #[test]
    fn lists_keep_sixteen_clipped_items() {
        let roles: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        let v = serde_json::to_value(ClippedList(&roles)).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 17);
        assert_eq!(a[16], "…[+24 more]");
        let v = serde_json::to_value(ClippedList(&roles[..2])).unwrap();
        assert_eq!(v, serde_json::json!(["r0", "r1"]));
    }

    #[test]
    fn an_over_long_line_becomes_a_short_valid_json_line() {
        let line = format!("{{\"path\":\"{}\"}}\n", "é".repeat(10_000)).into_bytes();
        let n = line.len();
        let out = cap_line(line);
        assert!(out.len() < 2 * 1024 && out.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["log_line_cut"], true);
        assert_eq!(v["bytes"], n);
        assert!(v["head"].as_str().unwrap().starts_with("{\"path\":\"éé"));
        let short = b"{\"a\":1}\n".to_vec();
        assert_eq!(cap_line(short.clone()), short);
    }

    #[test]
    fn an_over_long_text_line_is_cut_with_a_marker() {
        let line = format!("WARN {}\n", "x".repeat(20_000));
        let out = cap_text_line(line.as_bytes());
        assert!(out.len() <= LINE_MAX_BYTES);
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .ends_with("…[log line cut: 20006 bytes]\n"));
        assert_eq!(&*cap_text_line(b"short\n"), b"short\n");
    }
}
