//! The operator watches each resource type it reads exactly once, whatever
//! number of controllers and webhooks read it: counted by the API server.
//! A test binary of its own, so no other test starts or stops an operator
//! while it counts.

use std::collections::BTreeMap;
use std::time::Duration;

use somastack_tests::{free_port, http_get, kubectl, spawn_operator, success_stdout, wait_for};

/// Watches open at the API server right now, by resource, as its own
/// `apiserver_longrunning_requests` gauge counts them.
fn watches() -> BTreeMap<String, i64> {
    let out = success_stdout(
        "kubectl get --raw /metrics",
        kubectl(&["get", "--raw", "/metrics"]),
    );
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let Some(rest) = line.strip_prefix("apiserver_longrunning_requests{") else {
            continue;
        };
        if !rest.contains("verb=\"WATCH\"") {
            continue;
        }
        let resource = rest
            .split("resource=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts.entry(resource).or_insert(0) += value as i64;
    }
    counts
}

#[tokio::test]
async fn one_operator_opens_one_watch_per_resource_it_reads() {
    // What the operator reads: its five kinds, the namespaces policy selects
    // on, the Deployments of Installations and the Jobs of projects.
    let read = [
        "capsules",
        "policybundles",
        "installations",
        "drdrills",
        "kamachiqprojects",
        "namespaces",
        "deployments",
        "jobs",
    ];
    let before = watches();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A second operator beside the suite's, acting on no drill and no
    // project of anyone (its shards select nothing); every other controller
    // and its caches run as in production.
    let mut operator = spawn_operator(&[
        "--no-webhook",
        "--metrics-addr",
        &addr,
        "--drill-selector",
        "somastack.io/drill-shard=none",
        "--project-selector",
        "somastack.io/project-shard=none",
    ]);
    wait_for("the extra operator is ready", Duration::from_secs(60), || async {
        matches!(http_get(port, "/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    // Its controllers subscribe right after the caches are filled; the
    // counts of the suite's operator may blink while one of its watches
    // reconnects, so the reading is taken once it holds steady.
    let delta = || {
        let now = watches();
        read.iter()
            .map(|r| (*r, now.get(*r).unwrap_or(&0) - before.get(*r).unwrap_or(&0)))
            .collect::<BTreeMap<&str, i64>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut opened = delta();
    while !opened.values().all(|d| *d == 1) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        opened = delta();
    }
    assert!(
        opened.values().all(|d| *d == 1),
        "watches the extra operator opened, by resource: {opened:?}"
    );
    operator.kill().await.expect("the extra operator stops");
}
