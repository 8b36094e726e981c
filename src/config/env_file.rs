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
        let value = if let Some(inner) = quoted(value, '"') {
            inner.replace("\\n", "\n").replace("\\\"", "\"")
        } else if let Some(inner) = quoted(value, '\'') {
            inner.to_string()
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

fn quoted(value: &str, q: char) -> Option<&str> {
    if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
        Some(&value[1..value.len() - 1])
    } else {
        None
    }
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
    fn rejects_lines_without_equals_and_bad_names() {
        assert!(parse("JUSTAKEY\n").unwrap_err().contains("line 1"));
        assert!(parse("1A=b\n").is_err());
        assert!(parse("A-B=c\n").is_err());
    }
}
