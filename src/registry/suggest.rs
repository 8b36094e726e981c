//! "Did you mean" for unknown model names: edit distance over ids and aliases, case-insensitive,
//! with containment counted as close (`gpt4o` → `gpt-4o`, `claude` → `claude-3-5-sonnet`).

/// Up to `n` canonical ids whose id or alias is close to `wanted`, best first, without repeats.
/// `names` yields `(name, canonical id)` pairs.
pub fn closest<'a>(
    wanted: &str,
    names: impl Iterator<Item = (&'a str, &'a str)>,
    n: usize,
) -> Vec<&'a str> {
    let wanted = wanted.to_ascii_lowercase();
    if wanted.is_empty() || wanted.len() > 256 {
        return Vec::new();
    }
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|(name, id)| {
            let lower = name.to_ascii_lowercase();
            let d = levenshtein(&wanted, &lower);
            let contained = lower.contains(&wanted) || wanted.contains(&lower);
            let limit = (lower.len().max(wanted.len()) / 3).max(2);
            (d <= limit || contained).then_some((if contained { d.min(limit) } else { d }, id))
        })
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    let mut out: Vec<&str> = Vec::with_capacity(n);
    for (_, id) in scored {
        if !out.contains(&id) {
            out.push(id);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[(&str, &str)] = &[
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-3-5-sonnet", "claude-3-5-sonnet"),
        ("text-embedding-3-small", "text-embedding-3-small"),
    ];

    #[test]
    fn close_names_come_first_and_aliases_map_to_ids() {
        let got = closest("gpt-4o-mni", NAMES.iter().copied(), 3);
        assert_eq!(got[0], "gpt-4o-mini");
        assert!(got.len() <= 3);
        assert_eq!(got.iter().filter(|g| **g == "gpt-4o-mini").count(), 1);
    }

    #[test]
    fn containment_counts() {
        assert_eq!(
            closest("claude", NAMES.iter().copied(), 3),
            vec!["claude-3-5-sonnet"]
        );
        assert_eq!(closest("GPT-4O", NAMES.iter().copied(), 1), vec!["gpt-4o"]);
    }

    #[test]
    fn unrelated_names_suggest_nothing() {
        assert!(closest("llama-3-70b", NAMES.iter().copied(), 3).is_empty());
    }

    #[test]
    fn distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}
