//! Label selectors that shard drills and projects between operators
//! (`run --drill-selector`): parsed once at startup, matched in memory
//! against the objects of the one shared watch. Pure.

use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A Kubernetes label selector in its string form (`a=b,c!=d,e,!f,g in (h,i),j notin (k)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let requirements = split_top_level(text)
            .into_iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| {
                requirement(r.trim()).ok_or_else(|| format!("label selector {text:?}: cannot parse {r:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_string(),
            requirements,
        })
    }
}

impl LabelSelector {
    /// Whether `labels` meet every requirement (an empty selector matches all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Whether an operator with `shard` (none: every object) acts on an object
/// with `labels`.
pub fn admits(shard: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    shard.is_none_or(|s| s.matches(labels))
}

/// `text` split at the commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 317
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn is_value(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn set(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    values.iter().all(|v| is_value(v)).then_some(values)
}

fn requirement(r: &str) -> Option<Requirement> {
    if let Some(k) = r.strip_prefix('!') {
        return is_key(k.trim()).then(|| Requirement::DoesNotExist(k.trim().to_string()));
    }
    for (op, make) in [
        ("!=", Requirement::NotEquals as fn(String, String) -> Requirement),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = r.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            return (is_key(k) && is_value(v)).then(|| make(k.to_string(), v.to_string()));
        }
    }
    let mut words = r.splitn(2, char::is_whitespace);
    let key = words.next()?.trim();
    match words.next().map(str::trim_start) {
        None => is_key(key).then(|| Requirement::Exists(key.to_string())),
        Some(rest) if rest.starts_with("notin") => {
            set(&rest["notin".len()..]).map(|vs| Requirement::NotIn(key.to_string(), vs))
        }
        Some(rest) if rest.starts_with("in") => {
            set(&rest["in".len()..]).map(|vs| Requirement::In(key.to_string(), vs))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_operator_of_the_string_form_matches_as_kubernetes_does() {
        let shard_a = labels(&[("somastack.io/drill-shard", "a"), ("tier", "gold")]);
        let none = labels(&[]);
        assert!(sel("somastack.io/drill-shard=a").matches(&shard_a));
        assert!(!sel("somastack.io/drill-shard=none").matches(&shard_a));
        assert!(sel("somastack.io/drill-shard==a").matches(&shard_a));
        assert!(sel("somastack.io/drill-shard!=b").matches(&none));
        assert!(sel("tier in (gold, silver)").matches(&shard_a));
        assert!(!sel("tier notin (gold)").matches(&shard_a));
        assert!(sel("tier notin (gold)").matches(&none));
        assert!(sel("tier").matches(&shard_a) && !sel("tier").matches(&none));
        assert!(sel("!tier").matches(&none) && !sel("!tier").matches(&shard_a));
        assert!(sel("somastack.io/drill-shard=a, tier in (gold)").matches(&shard_a));
        assert!(sel("").matches(&none));
    }

    #[test]
    fn garbage_is_refused_with_the_part_that_does_not_parse() {
        for bad in ["a=b=c", "tier in gold", "=x", "a b c", "k=va lue"] {
            let err = bad.parse::<LabelSelector>().err().unwrap_or_default();
            assert!(err.contains("cannot parse"), "{bad}: {err}");
        }
    }
}
