//! Self-managed webhook certificates are issued into a Secret and rotated
//! before they expire, and the running server takes the new one. An operator
//! of its own, with certificates that live two minutes and are renewed when
//! less than 100 s are left, so a rotation is due 20 s after issue.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use somastack_tests::{free_port, http_get, setup, spawn_operator, unique_suffix, wait_for};

async fn expiry_metric(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("somastack_webhook_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn the_serving_certificate_is_rotated_before_expiry_and_reloaded() {
    let (client, ns) = setup("certs").await;
    let port = free_port();
    let secret_name = format!("webhook-tls-{}", unique_suffix());
    let metrics = format!("127.0.0.1:{port}");
    let webhook = format!("127.0.0.1:{}", free_port());
    let mut operator = spawn_operator(&[
        "--namespace",
        &ns.name,
        "--metrics-addr",
        &metrics,
        "--webhook-addr",
        &webhook,
        "--webhook-secret",
        &secret_name,
        "--webhook-configuration",
        "not-installed",
        "--webhook-cert-validity",
        "120s",
        "--webhook-cert-renew-before",
        "100s",
        // Drills belong to the suite's operator.
        "--drill-selector",
        "somastack.io/drill-shard=none",
        "--project-selector",
        "somastack.io/project-shard=none",
    ]);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let cert_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };
    let first = wait_for("the certificate Secret", Duration::from_secs(30), || async {
        let s = secrets.get_opt(&secret_name).await.ok()??;
        let data = s.data.clone().unwrap_or_default();
        (["ca.crt", "ca.key", "tls.crt", "tls.key"]
            .iter()
            .all(|k| data.contains_key(*k)))
        .then_some(s)
    })
    .await;
    assert_eq!(first.type_.as_deref(), Some("kubernetes.io/tls"));
    let first_expiry = wait_for(
        "the served certificate's expiry metric",
        Duration::from_secs(30),
        || async { expiry_metric(port).await.filter(|e| *e > 0.0) },
    )
    .await;

    // Renewal is due 20 s after issue: a new serving certificate from the
    // same CA, and the server presents it (the metric follows what is served).
    let rotated = wait_for("a rotated certificate", Duration::from_secs(60), || async {
        let s = secrets.get_opt(&secret_name).await.ok()??;
        (cert_of(&s) != cert_of(&first)).then_some(s)
    })
    .await;
    let ca = |s: &Secret| s.data.as_ref().and_then(|d| d.get("ca.crt")).map(|b| b.0.clone());
    assert_eq!(ca(&rotated), ca(&first), "a serving renewal keeps the CA");
    let reloaded = wait_for(
        "the new certificate to be served",
        Duration::from_secs(30),
        || async { expiry_metric(port).await.filter(|e| *e > first_expiry) },
    )
    .await;
    assert!(reloaded > first_expiry);

    let _ = operator.start_kill();
    let _ = operator.wait().await;
    ns.delete().await;
}
