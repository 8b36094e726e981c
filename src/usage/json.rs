//! The top-level `usage` object of a JSON body, found as the body streams past: a byte scanner
//! that follows strings and nesting depth across chunks, remembers the key being read at depth 1
//! and copies out only the value of `usage` (bounded), which is then deserialized alone.

use super::UsageObject;

/// A usage object larger than this is not one.
const MAX_USAGE_BYTES: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct TopLevelUsage {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The key being read (at depth 1), up to a few bytes.
    key: Vec<u8>,
    key_too_long: bool,
    /// The last complete key at depth 1 was `usage` and its value has not started yet.
    usage_next: bool,
    /// Bytes of the `usage` value while it is copied (it started at depth 1 with `{`).
    capture: Option<Vec<u8>>,
    found: Option<Vec<u8>>,
    /// The body is not JSON the scanner can follow (or nothing is left to find).
    done: bool,
}

impl TopLevelUsage {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let mut i = 0;
        while i < chunk.len() {
            // Inside a string that is neither a depth-1 key nor being copied, only `"` and `\`
            // matter: jump to the next (memchr). An answer's text is mostly such strings.
            if self.in_string
                && !self.escaped
                && self.capture.is_none()
                && !(self.depth == 1 && self.expect_key)
            {
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    Some(n) => i += n,
                    None => return,
                }
            }
            self.byte(chunk[i]);
            if self.done {
                return;
            }
            i += 1;
        }
    }

    fn byte(&mut self, c: u8) {
        if let Some(buf) = &mut self.capture {
            if buf.len() >= MAX_USAGE_BYTES {
                self.capture = None;
                self.done = true;
                return;
            }
            buf.push(c);
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == b'\\' {
                self.escaped = true;
            } else if c == b'"' {
                self.in_string = false;
                if self.depth == 1 && self.expect_key {
                    self.expect_key = false;
                    self.usage_next = !self.key_too_long && self.key == b"usage";
                }
            } else if self.depth == 1 && self.expect_key {
                if self.key.len() < 8 {
                    self.key.push(c);
                } else {
                    self.key_too_long = true;
                }
            }
            return;
        }
        match c {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.key.clear();
                    self.key_too_long = false;
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && c == b'[' {
                    self.done = true;
                    return;
                }
                if self.depth == 1 && self.usage_next && c == b'{' {
                    self.capture = Some(vec![b'{']);
                }
                self.usage_next = false;
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 {
                    if let Some(buf) = self.capture.take() {
                        self.found = Some(buf);
                    }
                }
                if self.depth == 0 {
                    self.done = true;
                }
            }
            b',' if self.depth == 1 => {
                self.expect_key = true;
                self.usage_next = false;
            }
            b':' | b' ' | b'\n' | b'\r' | b'\t' => {}
            // A scalar value (`"usage": null`): not an object to read.
            _ if self.depth == 1 => self.usage_next = false,
            _ => {}
        }
    }

    /// The usage object, if the body had one at the top level.
    pub fn usage(&self) -> Option<UsageObject> {
        serde_json::from_slice(self.found.as_deref()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&str]) -> Option<UsageObject> {
        let mut s = TopLevelUsage::default();
        for p in parts {
            s.feed(p.as_bytes());
        }
        s.usage()
    }

    #[test]
    fn follows_strings_with_escaped_quotes_and_braces() {
        let body = r#"{"x":"a \"usage\":{ } \\","usage":{"prompt_tokens":3}}"#;
        assert_eq!(scan(&[body]).unwrap().prompt_tokens, Some(3));
    }

    #[test]
    fn one_byte_at_a_time() {
        let body = r#"{"a":[1,{"usage":{"prompt_tokens":9}}],"usage" : {"prompt_tokens":2,"x":{"y":[1]}}}"#;
        let parts: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(scan(&refs).unwrap().prompt_tokens, Some(2));
    }

    #[test]
    fn long_strings_are_skipped_over_wherever_the_chunks_split() {
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{} \"usage\":{{\\"}}}}],"usage":{{"completion_tokens":4}}}}"#,
            "words ".repeat(500)
        );
        for split in [1, 10, 100, 1000, 3000, body.len() - 5] {
            let (a, b) = body.split_at(split);
            assert_eq!(
                scan(&[a, b]).unwrap().completion_tokens,
                Some(4),
                "split at {split}"
            );
        }
    }

    #[test]
    fn escapes_split_anywhere() {
        let body = r#"{"a":"x\\\"usage\":{\"\\","usage":{"prompt_tokens":5}}"#;
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                scan(&[a, b]).unwrap().prompt_tokens,
                Some(5),
                "split at {split}"
            );
        }
    }

    #[test]
    fn null_usage_and_arrays_are_no_usage() {
        assert!(scan(&[r#"{"usage":null,"b":{"c":1}}"#]).is_none());
        assert!(scan(&[r#"[{"usage":{"prompt_tokens":1}}]"#]).is_none());
    }

    #[test]
    fn an_oversized_usage_is_dropped() {
        let big = format!(r#"{{"usage":{{"x":"{}"}}}}"#, "y".repeat(MAX_USAGE_BYTES));
        assert!(scan(&[&big]).is_none());
    }
}
