//! Policy evaluation (controllers/src/domain/policy.rs, bundle_checks.rs):
//! the bytes are a JSON case, PolicyBundles and a request, each part
//! defaulting to the examples (examples/10-policybundle.yaml,
//! 20-capsule.yaml); bytes that are not one are a planner URL judged
//! against the example bundle.
//!
//! Never a panic; the combination of bundles does not depend on their order
//! (as `Effective::combine` promises); another enforced bundle never lifts a
//! blocking rule (but for a required signature, which the first bundle that
//! lists the publisher's key can satisfy) and an Audit one never adds one; every violation and every
//! row of `explain` names bundles that exist; a bundle whose selector cannot
//! select governs no namespace; a planner URL allowed lies under an entry
//! of a bundle, and URLs are shown without credentials or query.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use somastack_controllers::domain::bundle_checks::{check, selector_problems};
use somastack_controllers::domain::policy::{
    Bundle, Effective, Request, Rule, evaluate, explain, governs, planner_url_allowed, url_under,
};
use somastack_controllers::text::{is_clean, redact_url};
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::policy::{Enforcement, PolicyBundleSpec};
use somastack_fuzz::{BUNDLE, CAPSULE};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    #[serde(default)]
    bundles: Option<Vec<Named>>,
    #[serde(default)]
    capsule: Option<CapsuleSpec>,
    #[serde(default)]
    approved: bool,
    #[serde(default)]
    region: String,
    #[serde(default)]
    replicas: i32,
    /// The namespace's labels.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    planner_url: String,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    spec: PolicyBundleSpec,
}

fuzz_target!(|data: &[u8]| {
    let Ok(case) = serde_json::from_slice::<Case>(data) else {
        let url = String::from_utf8_lossy(data);
        planner_url(
            &[Bundle {
                name: "acme-eu",
                spec: &BUNDLE.spec,
            }],
            &url,
        );
        return;
    };
    let named = case.bundles.unwrap_or_else(|| {
        vec![Named {
            name: "acme-eu".into(),
            spec: BUNDLE.spec.clone(),
        }]
    });
    let capsule = case.capsule.unwrap_or_else(|| CAPSULE.spec.clone());
    let bundles: Vec<Bundle<'_>> = named
        .iter()
        .map(|n| Bundle {
            name: &n.name,
            spec: &n.spec,
        })
        .collect();
    let names: BTreeSet<&str> = bundles.iter().map(|b| b.name).collect();
    let req = Request {
        capsule: &capsule,
        approved: case.approved,
        region: &case.region,
        replicas: case.replicas,
    };

    for b in &bundles {
        let problems = check(b.spec);
        for p in problems.all() {
            assert!(!p.is_empty());
        }
        let governed = governs(b.spec, &case.labels);
        if let Some(sel) = &b.spec.namespace_selector
            && !selector_problems(sel).is_empty()
        {
            assert!(
                !governed,
                "bundle {}: a selector that cannot select governs {:?}",
                b.name, case.labels
            );
        }
    }

    let eval = evaluate(&bundles, &req);
    for v in eval.blocking.iter().chain(&eval.warnings) {
        assert!(!v.bundles.is_empty(), "{v:?} names no bundle");
        assert!(
            v.bundles.iter().all(|b| names.contains(b.as_str())),
            "{v:?} names a bundle not given"
        );
    }
    for row in explain(&bundles) {
        assert!(row.bundles.iter().all(|b| names.contains(b.as_str())), "{row:?}");
    }

    // Bundle names are unique in a cluster; the properties below rest on it.
    if names.len() == bundles.len() {
        let reversed: Vec<Bundle<'_>> = bundles.iter().rev().copied().collect();
        assert_eq!(
            Effective::combine(bundles.iter().copied()),
            Effective::combine(reversed.iter().copied()),
            "the combination depends on the order of the bundles"
        );
        let rules = |e: &[somastack_controllers::domain::policy::Violation]| -> BTreeSet<_> {
            e.iter().map(|v| v.rule).collect()
        };
        let back = evaluate(&reversed, &req);
        assert_eq!(rules(&eval.blocking), rules(&back.blocking));
        assert_eq!(eval.kill_switch, back.kill_switch);

        if let Some((last, fewer)) = bundles.split_last() {
            let before = evaluate(fewer, &req);
            let mut lifted = rules(&before.blocking);
            // Trust comes from the bundles that list publishers: the first
            // one to list the capsule's key can satisfy a signature that
            // bundles without a list require ("no bundle trusts key ...").
            let lists = |b: &Bundle<'_>| b.spec.trust.as_ref().is_some_and(|t| !t.publishers.is_empty());
            if lists(last) && !fewer.iter().any(lists) {
                lifted.remove(&Rule::Signature);
            }
            match last.spec.enforcement {
                Enforcement::Enforce => assert!(
                    lifted.is_subset(&rules(&eval.blocking)),
                    "bundle {} lifted {:?}",
                    last.name,
                    lifted.difference(&rules(&eval.blocking)).collect::<Vec<_>>()
                ),
                Enforcement::Audit => assert_eq!(
                    rules(&before.blocking),
                    rules(&eval.blocking),
                    "Audit bundle {} changed what blocks",
                    last.name
                ),
            }
        }
    }

    planner_url(&bundles, &case.planner_url);
});

/// A planner URL judged against `bundles`, and as it is shown.
fn planner_url(bundles: &[Bundle<'_>], url: &str) {
    let shown = redact_url(url);
    assert!(is_clean(&shown), "{shown:?}");
    if let Ok(parsed) = url::Url::parse(url) {
        // Credentials and query never shown; the rest is the URL.
        let Ok(again) = url::Url::parse(&shown) else {
            panic!("{url:?} is shown as {shown:?}, not a URL")
        };
        assert!(again.password().is_none(), "{url:?} is shown as {shown:?}");
        let hidden = |v: Option<&str>| v.is_none_or(|v| v.is_empty() || v == "***");
        assert!(hidden(again.query()), "{url:?} is shown as {shown:?}");
        if !parsed.username().is_empty() || parsed.password().is_some() {
            assert_eq!(again.username(), "***", "{url:?} is shown as {shown:?}");
        }
        assert_eq!(
            parsed.host_str(),
            again.host_str(),
            "{url:?} is shown as {shown:?}"
        );
    }
    match planner_url_allowed(bundles, url) {
        Ok(warnings) => {
            let under = bundles.iter().any(|b| {
                b.spec
                    .projects
                    .iter()
                    .flat_map(|p| &p.allowed_planner_urls)
                    .any(|e| url_under(url, e))
            });
            assert!(under, "{url:?} allowed, yet under no entry");
            assert!(url_under(url, url), "{url:?} allowed, yet not under itself");
            assert!(warnings.iter().all(|w| is_clean(w)), "{warnings:?}");
        }
        Err(why) => assert!(!why.is_empty()),
    }
}
