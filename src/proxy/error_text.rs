//! Pingora errors as the operational log may show them. Pingora puts the raw bytes it failed to
//! parse in an error's context (`buf: HTTP/1.1 200 OK\r\n...`): bytes an upstream sent, which
//! may echo the provider key the gateway injected, or a client's header. [`Safe`] shows the
//! error's source and type, and its context and causes only when they cannot be such bytes.

use pingora::Error;
use std::fmt;

/// Longest context or cause text shown.
const MAX_TEXT: usize = 160;
/// How deep a chain of causes is followed.
const MAX_DEPTH: usize = 4;

/// `Display` of a Pingora error without raw protocol bytes.
pub struct Safe<'a>(pub &'a Error);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_error(self.0, f, 0)
    }
}

fn write_error(e: &Error, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
    write!(f, "{} {}", e.esource.as_str(), e.etype.as_str())?;
    if let Some(c) = &e.context {
        f.write_str(" context: ")?;
        write_text(c.as_str(), f)?;
    }
    if let Some(cause) = &e.cause {
        f.write_str(" cause: ")?;
        if depth >= MAX_DEPTH {
            return f.write_str("...");
        }
        match cause.downcast_ref::<Box<Error>>() {
            Some(inner) => write_error(inner, f, depth + 1)?,
            None => write_text(&cause.to_string(), f)?,
        }
    }
    Ok(())
}

/// A context or cause as is when it is short printable text that quotes no buffer; otherwise a
/// placeholder.
fn write_text(text: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let plain = text.len() <= MAX_TEXT
        && !text.contains("buf")
        && text.bytes().all(|b| (0x20..0x7f).contains(&b));
    if plain {
        f.write_str(text)
    } else {
        write!(f, "[{} bytes not shown]", text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::ErrorType;

    #[test]
    fn a_parse_error_shows_its_type_not_the_bytes() {
        let e = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: HTTP/1.1 200 OK\\r\\nX-Key: sk-secret",
            Error::new_str("invalid header name"),
        );
        let shown = Safe(&e).to_string();
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("InvalidHTTPHeader"), "{shown}");
        assert!(shown.contains("bytes not shown"), "{shown}");
        assert!(shown.contains("invalid header name"), "{shown}");
    }

    #[test]
    fn the_gateways_own_contexts_are_shown() {
        let e = Error::explain(ErrorType::ConnectNoRoute, "no target left to try");
        assert_eq!(
            Safe(&e).to_string(),
            " ConnectNoRoute context: no target left to try"
        );
    }

    #[test]
    fn plain_causes_are_shown_long_or_binary_text_is_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let e = Error::because(ErrorType::ReadError, "reading the body", io);
        let shown = Safe(&e).to_string();
        assert!(
            shown.ends_with("context: reading the body cause: connection reset"),
            "{shown}"
        );
        let e = Error::explain(ErrorType::ReadError, "x".repeat(MAX_TEXT + 1));
        assert!(Safe(&e).to_string().contains("bytes not shown"));
        let e = Error::explain(ErrorType::ReadError, "a\u{1}b");
        assert!(Safe(&e).to_string().contains("bytes not shown"));
    }
}
