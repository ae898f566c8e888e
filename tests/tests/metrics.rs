//! The running operator's /metrics, /healthz and /readyz, scraped over HTTP
//! like Prometheus and the kubelet do, and parsed: every metric the
//! operations guide lists is there with its label set. Needs the operator
//! that hack/test.sh starts (`SOMASTACK_METRICS_URL`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use somastack_tests::fixtures::{bundle, capsule, installation, put};
use somastack_tests::{create_dry_run, http_get, metrics_port, setup, unique_suffix, wait_for};

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus/OpenMetrics text format strictly: every line is a
/// comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or `name{k="v",...} value`.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        samples.push(Sample { name, labels, value });
    }
    (types, samples)
}

fn label_keys(s: &Sample) -> Vec<&str> {
    s.labels.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let port = metrics_port();
    assert_eq!(
        http_get(port, "/healthz").await.map(|r| r.0),
        Some(200),
        "/healthz on 127.0.0.1:{port} (is the operator of hack/test.sh running?)"
    );
    assert_eq!(http_get(port, "/readyz").await.map(|r| r.0), Some(200));

    // Make the capsule webhook deny something, without storing anything:
    // submitting an already approved Capsule is self-approval.
    // Objects of three kinds, so their reconciles are counted even when this
    // test runs alone on a fresh cluster.
    let (client, ns) = setup("metrics").await;
    let own = format!("metrics-obj-{}", unique_suffix());
    let docs = [
        bundle(&own, &ns.name, json!({})),
        capsule(&own, &own, "1.0.0", "internal"),
        installation(&ns.name, "app", &own, "1.0.0", "eu-west-1", 1),
    ];
    for doc in &docs {
        put(&client, ns.owns(doc)).await;
    }
    let name = format!("metrics-{}", unique_suffix());
    let mut doc = capsule(&name, &name, "1.0.0", "internal");
    doc["metadata"]["annotations"] = json!({ "review.somastack.io/decision": "approve" });
    assert!(
        create_dry_run(&client, &doc).await.is_err(),
        "self-approval is denied"
    );

    let (types, samples) = wait_for(
        "the denial and three kinds' reconciles to be counted",
        Duration::from_secs(10),
        || async {
            let (code, body) = http_get(port, "/metrics").await?;
            assert_eq!(code, 200);
            let (types, samples) = parse(&body);
            let reconciled = |kind: &str| {
                samples.iter().any(|s| {
                    s.name == "somastack_reconcile_total"
                        && s.labels.get("kind").map(String::as_str) == Some(kind)
                })
            };
            let kinds_seen = ["Capsule", "Installation", "PolicyBundle"]
                .iter()
                .all(|k| reconciled(k));
            (kinds_seen
                && samples.iter().any(|s| {
                    s.name == "somastack_webhook_requests_total"
                        && s.labels.get("webhook").map(String::as_str) == Some("capsules.somastack.io")
                        && s.labels.get("decision").map(String::as_str) == Some("denied")
                        && s.value >= 1.0
                }))
            .then_some((types, samples))
        },
    )
    .await;

    let of = |name: &str| samples.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let expect_type = |family: &str, kind: &str| {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
    };

    expect_type("somastack_reconcile", "counter");
    let reconciles = of("somastack_reconcile_total");
    let kinds: BTreeSet<&str> = reconciles
        .iter()
        .map(|s| {
            assert_eq!(label_keys(s), ["kind"], "{s:?}");
            s.labels["kind"].as_str()
        })
        .collect();
    for kind in ["Capsule", "Installation", "PolicyBundle"] {
        assert!(kinds.contains(kind), "reconciles of {kind}: {kinds:?}");
    }

    expect_type("somastack_reconcile_errors", "counter");
    for s in of("somastack_reconcile_errors_total") {
        assert_eq!(label_keys(s), ["category", "kind"], "{s:?}");
    }

    expect_type("somastack_reconcile_duration_seconds", "histogram");
    let buckets = of("somastack_reconcile_duration_seconds_bucket");
    assert!(!buckets.is_empty());
    for s in &buckets {
        assert_eq!(label_keys(s), ["kind", "le"], "{s:?}");
    }
    assert!(buckets.iter().any(|s| s.labels["le"] == "+Inf"));
    for s in of("somastack_reconcile_duration_seconds_count") {
        assert_eq!(label_keys(s), ["kind"], "{s:?}");
    }

    expect_type("somastack_objects", "gauge");
    let objects = of("somastack_objects");
    for s in &objects {
        assert_eq!(label_keys(s), ["kind", "phase"], "{s:?}");
    }
    assert!(
        objects
            .iter()
            .any(|s| s.labels["kind"] == "Capsule" && s.value >= 1.0)
    );

    expect_type("somastack_webhook_requests", "counter");
    for s in of("somastack_webhook_requests_total") {
        assert_eq!(label_keys(s), ["decision", "webhook"], "{s:?}");
        assert!(
            ["allowed", "warned", "denied", "error"].contains(&s.labels["decision"].as_str()),
            "{s:?}"
        );
    }

    expect_type("somastack_leader", "gauge");
    let leader = of("somastack_leader");
    assert_eq!(leader.len(), 1);
    assert_eq!(leader[0].value, 1.0, "the test operator runs the controllers");

    expect_type("somastack_webhook_certificate_expiry_timestamp_seconds", "gauge");
    let expiry = of("somastack_webhook_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    assert!(
        expiry.len() == 1 && expiry[0].value > now,
        "certificate expiry in the future: {expiry:?}"
    );

    ns.delete().await;
}
