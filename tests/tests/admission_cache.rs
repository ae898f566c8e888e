//! Admission judged from the cache: a PolicyBundle applied together with an
//! Installation judges it, and once the cache shows every recorded bundle
//! write, Installations are judged from the cache without a list. A test
//! binary of its own (cargo runs test binaries one after another): a bundle
//! written by any other test, or the record another test tampers with,
//! sends the webhook to the API server for a while, and the count of reads
//! from the cache is the operator's, not this test's. Needs the operator
//! running (hack/test.sh).

use std::time::Duration;

use serde_json::json;
use somastack_tests::fixtures::{apply_together, bundle, installation, setup_published};

#[tokio::test]
async fn a_bundle_applied_with_an_installation_judges_it() {
    // The webhook reads PolicyBundles from its cache when the record of
    // bundle writes shows the cache complete, from the API server when not:
    // either way a bundle written just before an Installation judges it.
    let (_client, ns, package) = setup_published("together", "public").await;
    let refused = |out: &std::process::Output, bundle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused: {stderr}");
        assert!(
            stderr.contains("exceed the ceiling of 1") && stderr.contains(&format!("PolicyBundle {bundle}")),
            "the refusal names the bundle applied with it: {stderr}"
        );
    };
    let admitted = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "admitted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 0..4 {
        let name = format!("{package}-{i}");
        let ceiling = |max: i32| {
            bundle(
                &name,
                &ns.name,
                json!({ "enforcement": "Enforce", "limits": { "maxReplicas": max } }),
            )
        };
        let app = |replicas| {
            installation(
                &ns.name,
                &format!("app-{i}"),
                &package,
                "1.0.0",
                "us-east-1",
                replicas,
            )
        };
        // Created together: refused.
        refused(&apply_together(&[ns.owns(&ceiling(1)), &app(2)]), &name);
        // The bundle raised together: admitted.
        admitted(&apply_together(&[&ceiling(3), &app(2)]));
        // Lowered again, and the Installation changed with it: refused.
        refused(&apply_together(&[&ceiling(1), &app(3)]), &name);
        // Deleted, then the change again: admitted.
        admitted(&somastack_tests::kubectl(&["delete", "policybundle", &name]));
        admitted(&apply_together(&[&app(3)]));
    }
    // With no bundle written meanwhile, Installations are judged from the
    // cache (once it has the writes above).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let series = r#"somastack_webhook_bundle_reads_total{source="cache"}"#;
    let before = somastack_tests::metric(series).await;
    for i in 0..4 {
        let app = installation(&ns.name, &format!("app-{i}"), &package, "1.0.0", "us-east-1", 1);
        admitted(&apply_together(&[&app]));
    }
    let cached = somastack_tests::metric(series).await - before;
    assert!(
        cached >= 4.0,
        "4 Installation changes judged from the cache, counted {cached}"
    );
    ns.delete().await;
}
