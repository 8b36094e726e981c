//! dotenv-style files (`.env.api_keys`) listed in `env_files`: `KEY=value` lines, optional
//! `export ` prefix, `#` comments, single- or double-quoted values. No variable expansion inside
//! the file: a value is taken literally.

use std::collections::HashMap;

/// Parses a dotenv file. Errors name the line, never its value.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut vars = HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=value", n + 1))?;
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("line {}: invalid variable name", n + 1));
        }
        let value = value.trim();
        let value = if let Some(q @ ('"' | '\'')) = value.chars().next() {
            let inner = quoted(&value[1..], q)
                .ok_or_else(|| format!("line {}: unterminated quoted value", n + 1))?;
            if q == '"' {
                unescape(inner)
            } else {
                inner.to_string()
            }
        } else {
            // An unquoted value ends at ` #`, as in most dotenv dialects.
            match value.find(" #") {
                Some(i) => value[..i].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

/// The text up to the closing quote `q` (a double-quoted value may escape it with `\`),
/// which may only be followed by blanks and a `#` comment.
fn quoted(after_open: &str, q: char) -> Option<&str> {
    let mut escaped = false;
    for (i, c) in after_open.char_indices() {
        match c {
            '\\' if q == '"' && !escaped => escaped = true,
            c if c == q && !escaped => {
                let rest = after_open[i + 1..].trim_start();
                return (rest.is_empty() || rest.starts_with('#')).then(|| &after_open[..i]);
            }
            _ => escaped = false,
        }
    }
    None
}

/// `\n`, `\"` and `\\` in one pass (so that `\\n` is a backslash and an `n`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other @ ('"' | '\\')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_common_forms() {
        let vars = parse(
            "# keys\nOPENAI_API_KEY=sk-1\nexport ANTHROPIC_API_KEY=\"sk-ant 2\"\nA='x#y'\nB=v # note\n\n",
        )
        .unwrap();
        assert_eq!(vars["OPENAI_API_KEY"], "sk-1");
        assert_eq!(vars["ANTHROPIC_API_KEY"], "sk-ant 2");
        assert_eq!(vars["A"], "x#y");
        assert_eq!(vars["B"], "v");
    }

    #[test]
    fn quoted_values_may_carry_a_comment_and_escapes() {
        let vars = parse("A=\"sk-1\" # prod\nB='x' # c\nC=\"a\\\\nb\\nc\\\"d\"\nD=\"\"\n").unwrap();
        assert_eq!(vars["A"], "sk-1");
        assert_eq!(vars["B"], "x");
        assert_eq!(vars["C"], "a\\nb\nc\"d");
        assert_eq!(vars["D"], "");
        assert!(parse("A=\"open\n").unwrap_err().contains("line 1"));
        assert!(
            parse("A=\"x\" trailing\n").is_err(),
            "text after the closing quote"
        );
    }

    #[test]
    fn rejects_lines_without_equals_and_bad_names() {
        assert!(parse("JUSTAKEY\n").unwrap_err().contains("line 1"));
        assert!(parse("1A=b\n").is_err());
        assert!(parse("A-B=c\n").is_err());
    }
}
