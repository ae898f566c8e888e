//! `kubectl soma policy explain NAMESPACE`: the effective policy of a
//! namespace, and which PolicyBundle each rule comes from
//! ([`somastack_controllers::domain::policy::explain`]).

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;
use somastack_controllers::domain::policy::{Bundle, Provenance, explain, governs};
use somastack_crds::PolicyBundle;
use somastack_crds::policy::Enforcement;

use crate::cli::{ExplainArgs, Global, PolicyCommand};
use crate::cluster::with_cluster;
use crate::error::{Context, Result};

pub fn command(global: &Global, command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Explain(args) => explain_command(global, &args),
    }
}

/// A governing bundle and its mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Governing {
    pub name: String,
    pub enforcement: Enforcement,
}

/// What `explain` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub namespace: String,
    /// The bundles whose selector selects the namespace, by name.
    pub bundles: Vec<Governing>,
    pub rules: Vec<Provenance>,
}

/// The explanation for a namespace with `labels`, among `bundles`.
pub fn explanation(
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    bundles: &[PolicyBundle],
) -> Explanation {
    let mut governing: Vec<&PolicyBundle> = bundles.iter().filter(|b| governs(&b.spec, labels)).collect();
    governing.sort_by_key(|b| b.name_any());
    let names: Vec<String> = governing.iter().map(|b| b.name_any()).collect();
    let views: Vec<Bundle<'_>> = governing
        .iter()
        .zip(&names)
        .map(|(b, name)| Bundle { name, spec: &b.spec })
        .collect();
    Explanation {
        namespace: namespace.to_string(),
        bundles: governing
            .iter()
            .zip(&names)
            .map(|(b, name)| Governing {
                name: name.clone(),
                enforcement: b.spec.enforcement,
            })
            .collect(),
        rules: explain(&views),
    }
}

fn explain_command(global: &Global, args: &ExplainArgs) -> Result<()> {
    let found = with_cluster(global, async |cluster| {
        let ns = Api::<Namespace>::all(cluster.client.clone())
            .get(&args.namespace)
            .await
            .context(format!("namespace {}", args.namespace))?;
        let bundles = Api::<PolicyBundle>::all(cluster.client.clone())
            .list(&ListParams::default())
            .await
            .context("list policybundles")?;
        Ok(explanation(&args.namespace, ns.labels(), &bundles.items))
    })?;
    crate::output::print(global.output, &found, table)
}

pub fn table(e: &Explanation) -> String {
    if e.bundles.is_empty() {
        return format!(
            "No PolicyBundle governs namespace {}: nothing is restricted.\n",
            e.namespace
        );
    }
    let governing: Vec<String> = e
        .bundles
        .iter()
        .map(|b| format!("{} ({:?})", b.name, b.enforcement))
        .collect();
    let mut out = format!(
        "Namespace {} is governed by PolicyBundle {}.\n",
        e.namespace,
        governing.join(", ")
    );
    if e.rules.is_empty() {
        out.push_str("They restrict nothing.\n");
        return out;
    }
    out.push('\n');
    let cells: Vec<Vec<String>> = e
        .rules
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.value.clone(),
                format!("{:?}", r.mode),
                r.bundles.join(", "),
            ]
        })
        .collect();
    out.push_str(&crate::output::table(&["RULE", "VALUE", "MODE", "FROM"], &cells));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(name: &str, spec: serde_json::Value) -> PolicyBundle {
        serde_json::from_value(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
            "metadata": { "name": name }, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn only_the_bundles_selecting_the_namespace_count() {
        let bundles = [
            bundle(
                "eu",
                json!({ "namespaceSelector": { "matchLabels": { "geo": "eu" } },
                                 "limits": { "maxReplicas": 4 } }),
            ),
            bundle(
                "us",
                json!({ "namespaceSelector": { "matchLabels": { "geo": "us" } },
                                 "limits": { "maxReplicas": 1 } }),
            ),
            bundle(
                "all",
                json!({ "enforcement": "Audit", "capabilities": { "allowed": [] } }),
            ),
        ];
        let labels = [("geo".to_string(), "eu".to_string())].into();
        let e = explanation("t1", &labels, &bundles);
        assert_eq!(
            e.bundles.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["all", "eu"]
        );
        assert_eq!(
            table(&e),
            "Namespace t1 is governed by PolicyBundle all (Audit), eu (Enforce).\n\n\
             RULE           VALUE   MODE      FROM\n\
             maxReplicas    4       Enforce   eu\n\
             capabilities   none    Audit     all\n"
        );
        let none = explanation("t2", &Default::default(), &bundles[..2]);
        assert_eq!(
            table(&none),
            "No PolicyBundle governs namespace t2: nothing is restricted.\n"
        );
    }
}
