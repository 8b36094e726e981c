//! `${VAR}` and `${VAR:-default}` substitution in string values, applied after YAML parsing so
//! that a value containing a newline or a colon can never inject configuration keys.
//!
//! As in the shell, `${VAR:-default}` takes the default when VAR is unset or empty.
//! `$$` is a literal `$`. A `$` not followed by `{` or `$` is kept as is. Map keys are never
//! interpolated.

use super::error::{join_path, ConfigError};
use serde_yaml::Value;
use std::path::Path;

/// Substitutes every string value of `value` in place, reporting each unresolvable reference
/// with its field path. `lookup` returns a variable's value, or `None` when it is not set.
pub fn interpolate_tree(
    value: &mut Value,
    path: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match interpolate_str(s, lookup) {
                    Ok(v) => *s = v,
                    Err(msg) => errors.push(ConfigError::new(file, path, msg)),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), file, lookup, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                interpolate_tree(v, &join_path(path, &key), file, lookup, errors);
            }
        }
        Value::Tagged(t) => interpolate_tree(&mut t.value, path, file, lookup, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Substitutes one string. The error names the variable, never a value.
pub fn interpolate_str(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "unterminated `${` in value (write `$$` for a literal `$`)".to_string()
            })?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if !is_var_name(name) {
                // The text is not repeated: it may be a secret pasted between the braces.
                return Err(
                    "a `${...}` reference has an invalid variable name (letters, digits and `_`, not starting with a digit)"
                        .to_string(),
                );
            }
            // As in the shell, `:-` applies to an unset *or empty* variable.
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set and has no default (write `${{{name}:-default}}` to give one)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let lookup = env(&[("KEY", "sk-1"), ("EMPTY", "")]);
        assert_eq!(interpolate_str("${KEY}", &lookup).unwrap(), "sk-1");
        assert_eq!(interpolate_str("a-${KEY}-b", &lookup).unwrap(), "a-sk-1-b");
        assert_eq!(interpolate_str("${NOPE:-x}", &lookup).unwrap(), "x");
        assert_eq!(interpolate_str("${NOPE:-}", &lookup).unwrap(), "");
        assert_eq!(interpolate_str("${EMPTY:-d}", &lookup).unwrap(), "d");
        assert_eq!(interpolate_str("${EMPTY}", &lookup).unwrap(), "");
    }

    #[test]
    fn dollar_escapes_and_plain_dollars() {
        let lookup = env(&[]);
        assert_eq!(interpolate_str("$${X}", &lookup).unwrap(), "${X}");
        assert_eq!(interpolate_str("cost $5", &lookup).unwrap(), "cost $5");
        assert_eq!(interpolate_str("end$", &lookup).unwrap(), "end$");
    }

    #[test]
    fn missing_variable_is_named_in_the_error() {
        let err = interpolate_str("${OPENAI_API_KEY}", &env(&[])).unwrap_err();
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(interpolate_str("${", &env(&[])).is_err());
        assert!(interpolate_str("${1A}", &env(&[])).is_err());
        assert!(interpolate_str("${A B}", &env(&[])).is_err());
    }

    #[test]
    fn a_value_with_newlines_stays_one_value() {
        let mut v: Value = serde_yaml::from_str("a: ${X}\nb: 1\n").unwrap();
        let lookup = env(&[("X", "x\nb: 2")]);
        let mut errors = Vec::new();
        interpolate_tree(&mut v, "", Path::new("f"), &lookup, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(v["a"], Value::String("x\nb: 2".into()));
        assert_eq!(v["b"], Value::Number(1.into()));
    }

    #[test]
    fn tree_errors_carry_the_field_path() {
        let mut v: Value =
            serde_yaml::from_str("providers:\n  openai:\n    keys:\n      - value: ${K}\n")
                .unwrap();
        let mut errors = Vec::new();
        interpolate_tree(&mut v, "", Path::new("f"), &env(&[]), &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "providers.openai.keys[0].value");
    }
}
