//! Checks of a PolicyBundle's own content (pure): what the CRD schema cannot
//! say. Admission refuses a bundle with any of these problems; a bundle that
//! got in anyway (admission switched off, or written before the check
//! existed) reports them in its `Ready` condition.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use kube_quantity::ParsedQuantity;
use somastack_crds::common::{MAX_CPU, MAX_MEMORY};
use somastack_crds::policy::PolicyBundleSpec;

use crate::domain::signing;

/// Everything wrong with a bundle, by kind of problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    /// The namespace selector cannot select anything as written.
    pub selector: Vec<String>,
    /// Trusted keys the operator cannot verify with.
    pub keys: Vec<String>,
    /// Ceilings that are not sane quantities.
    pub ceilings: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.selector.is_empty() && self.keys.is_empty() && self.ceilings.is_empty()
    }

    /// Every problem, as one list of sentences.
    pub fn all(&self) -> Vec<String> {
        self.selector
            .iter()
            .chain(&self.keys)
            .chain(&self.ceilings)
            .cloned()
            .collect()
    }
}

/// Checks `spec`.
pub fn check(spec: &PolicyBundleSpec) -> Problems {
    let mut p = Problems::default();
    if let Some(sel) = &spec.namespace_selector {
        p.selector = selector_problems(sel)
            .into_iter()
            .map(|e| format!("namespaceSelector {e}"))
            .collect();
    }
    if let Some(trust) = &spec.trust {
        for publisher in &trust.publishers {
            for key in &publisher.keys {
                if let Err(why) = signing::check_public_key(&key.public_key) {
                    p.keys.push(format!(
                        "trusted key {} of publisher {} {why}",
                        key.id, publisher.name
                    ));
                }
            }
        }
    }
    if let Some(limits) = &spec.limits {
        for (q, max, field) in [
            (&limits.max_cpu, MAX_CPU, "limits.maxCpu"),
            (&limits.max_memory, MAX_MEMORY, "limits.maxMemory"),
        ] {
            if let Some(q) = q
                && let Some(why) = quantity_problem(q, max)
            {
                p.ceilings.push(format!("{field} {why}"));
            }
        }
    }
    p
}

/// Why `q` is not a quantity between 0 and `max`, if it is not.
pub fn quantity_problem(q: &Quantity, max: &str) -> Option<String> {
    let Ok(parsed) = ParsedQuantity::try_from(q) else {
        return Some(format!("{:?} is not a quantity", q.0));
    };
    let zero = ParsedQuantity::try_from(&Quantity("0".into())).ok()?;
    let ceiling = ParsedQuantity::try_from(&Quantity(max.into())).ok()?;
    if parsed < zero {
        Some(format!("{:?} is negative", q.0))
    } else if parsed > ceiling {
        Some(format!("{:?} is more than {max}", q.0))
    } else {
        None
    }
}

/// Why a label selector cannot select as written: bad keys or values,
/// operators without the values they need (an `In` with no values matches
/// nothing), or with values they cannot take.
pub fn selector_problems(sel: &LabelSelector) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        if let Some(why) = label_key_problem(k) {
            out.push(format!("matchLabels key {k:?} {why}"));
        }
        if let Some(why) = label_value_problem(v) {
            out.push(format!("matchLabels {k}: value {v:?} {why}"));
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        if let Some(why) = label_key_problem(&e.key) {
            out.push(format!("matchExpressions key {:?} {why}", e.key));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push(format!(
                "matchExpressions {} {}: needs at least one value (with none it matches nothing)",
                e.key, e.operator
            )),
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(format!(
                "matchExpressions {} {}: takes no values",
                e.key, e.operator
            )),
            "Exists" | "DoesNotExist" => {}
            other => out.push(format!(
                "matchExpressions {}: unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)",
                e.key
            )),
        }
        for v in values {
            if let Some(why) = label_value_problem(v) {
                out.push(format!("matchExpressions {}: value {v:?} {why}", e.key));
            }
        }
    }
    if out.is_empty()
        && let Err(e) = Selector::try_from(sel.clone())
    {
        out.push(format!("cannot be used: {e}"));
    }
    out
}

/// A name part of a label key or a label value: alphanumerics, '-', '_' and
/// '.', starting and ending with an alphanumeric.
fn is_label_token(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !label.is_empty()
                && label.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return Some("has a prefix that is not a DNS subdomain");
    }
    if name.len() > 63 || !is_label_token(name) {
        return Some(
            "is not a label key (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional DNS prefix and '/')",
        );
    }
    None
}

fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    if value.len() > 63 || !is_label_token(value) {
        return Some(
            "is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use somastack_crds::policy::Limits;

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn selectors_that_cannot_match_are_named() {
        assert!(selector_problems(&expr("team", "In", &["a", "b"])).is_empty());
        assert!(selector_problems(&expr("somastack.io/tenant", "Exists", &[])).is_empty());
        let empty_in = selector_problems(&expr("team", "In", &[]));
        assert_eq!(
            empty_in,
            ["matchExpressions team In: needs at least one value (with none it matches nothing)"]
        );
        assert!(selector_problems(&expr("team", "Exists", &["x"]))[0].contains("takes no values"));
        assert!(selector_problems(&expr("team", "Near", &["x"]))[0].contains("unknown operator"));
        assert!(selector_problems(&expr("team", "In", &["a b"]))[0].contains("is not a label value"));
        let bad_label = LabelSelector {
            match_labels: Some([("team".to_string(), "no spaces".to_string())].into()),
            match_expressions: None,
        };
        assert!(selector_problems(&bad_label)[0].contains("matchLabels team: value \"no spaces\""));
        let bad_key = LabelSelector {
            match_labels: Some([("Bad_Prefix.io/x".to_string(), "v".to_string())].into()),
            match_expressions: None,
        };
        assert!(selector_problems(&bad_key)[0].contains("prefix that is not a DNS subdomain"));
    }

    #[test]
    fn ceilings_must_be_sane_quantities() {
        let spec = PolicyBundleSpec {
            limits: Some(Limits {
                max_replicas: None,
                max_cpu: Some(Quantity("-1".into())),
                max_memory: Some(Quantity("1e400".into())),
            }),
            ..Default::default()
        };
        let p = check(&spec);
        assert_eq!(
            p.ceilings,
            [
                "limits.maxCpu \"-1\" is negative",
                "limits.maxMemory \"1e400\" is not a quantity"
            ]
        );
        assert_eq!(
            quantity_problem(&Quantity("5000".into()), MAX_CPU).as_deref(),
            Some("\"5000\" is more than 4096")
        );
        assert_eq!(quantity_problem(&Quantity("2".into()), MAX_CPU), None);
        assert_eq!(quantity_problem(&Quantity("1Gi".into()), MAX_MEMORY), None);
        assert!(quantity_problem(&Quantity("lots".into()), MAX_CPU).is_some());
    }
}
