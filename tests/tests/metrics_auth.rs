//! `--metrics-secure`: an operator serves /metrics over HTTPS only to callers
//! whose bearer token the API server accepts (TokenReview) and whose user
//! RBAC lets `get` the non-resource URL /metrics (SubjectAccessReview); the
//! probes stay plain HTTP on `--health-probe-addr`.
//!
//! The operators under test follow a Lease the test holds for an hour, so
//! they never run their controllers beside the suite's operator; their
//! caches, metrics and probes run all the same. The first serves a
//! certificate it made at start (no client can verify it); the second one
//! from `--metrics-cert-dir` (the first's webhook certificate, issued by the
//! operator's own CA), which a client trusting that CA verifies.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use somastack_tests::{
    apply, free_port, http_get, http_request, setup, spawn_operator, unique_suffix, wait_for,
};

/// Accepts the operator's self-signed certificate (made at its start, by a
/// CA nobody keeps: what Prometheus' `insecure_skip_verify` does), and still
/// checks that the server holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn https_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A token of the ServiceAccount `name` in `namespace` from the TokenRequest API.
async fn token(admin: &Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("no token for {name}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("the TokenRequest for {name} holds no token"))
}

/// `GET https://127.0.0.1:{port}{path}`, with `token` as bearer when given:
/// status code and body.
async fn get(client: &reqwest::Client, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.get(format!("https://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} over HTTPS: {e:?}"));
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn secure_metrics_need_a_token_allowed_to_get_metrics() {
    let (admin, ns) = setup("metrics-auth").await;
    let suffix = unique_suffix();

    // Someone else leads for an hour: the operator below only follows.
    let lease = "metrics-auth-held";
    apply(
        &admin,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease, "namespace": ns.name},
                "spec": {"holderIdentity": "another-operator", "leaseDurationSeconds": 3600,
                         "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}}),
    )
    .await
    .expect("lease");

    // Two callers: one a ClusterRole lets get /metrics, one without it.
    for name in ["scraper", "stranger"] {
        apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": ns.name}}),
        )
        .await
        .expect("service account");
    }
    let role = format!("somastack-test-metrics-reader-{suffix}");
    apply(
        &admin,
        ns.owns(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
        ),
    )
    .await
    .expect("cluster role");
    apply(
        &admin,
        ns.owns(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": ns.name}]}),
        ),
    )
    .await
    .expect("cluster role binding");
    let scraper = token(&admin, &ns.name, "scraper").await;
    let stranger = token(&admin, &ns.name, "stranger").await;

    let (metrics_port, probe_port) = (free_port(), free_port());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let probe_addr = format!("127.0.0.1:{probe_port}");
    let webhook_addr = format!("127.0.0.1:{}", free_port());
    let _operator = spawn_operator(&[
        "--metrics-secure",
        "--metrics-addr",
        &metrics_addr,
        "--health-probe-addr",
        &probe_addr,
        // Webhooks on (no configuration points at them): the operator issues
        // a CA and a certificate for 127.0.0.1 into the namespace's Secret,
        // which the second operator below serves /metrics with.
        "--webhook-addr",
        &webhook_addr,
        "--webhook-configuration",
        "metrics-auth-not-installed",
        "--webhook-san",
        "127.0.0.1",
        "--leader-elect",
        "--namespace",
        &ns.name,
        "--lease-name",
        lease,
        "--identity",
        "metrics-auth-test",
    ]);

    // The probes: plain HTTP, no token, on their own port.
    wait_for(
        "the operator's /readyz on the probe port",
        Duration::from_secs(60),
        || async { (http_get(probe_port, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(()) },
    )
    .await;
    assert_eq!(
        http_get(probe_port, "/healthz").await,
        Some((200, "ok\n".to_string()))
    );

    let https = https_client();
    let (code, body) = get(&https, metrics_port, "/metrics", None).await;
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = get(&https, metrics_port, "/metrics", Some("not-a-token")).await;
    assert_eq!(code, 401, "a token the API server does not know: {body}");
    let (code, body) = get(&https, metrics_port, "/metrics", Some(&stranger)).await;
    assert_eq!(code, 403, "a ServiceAccount without the role: {body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{}:stranger", ns.name)),
        "the refusal names the user: {body}"
    );

    // RBAC reaches the authorizer a moment after the binding is written.
    let body = wait_for(
        "the scraper to be allowed /metrics",
        Duration::from_secs(30),
        || async {
            let (code, body) = get(&https, metrics_port, "/metrics", Some(&scraper)).await;
            (code == 200).then_some(body)
        },
    )
    .await;
    assert!(
        body.lines().any(|l| l == "somastack_leader 0"),
        "the metrics of a follower: {body}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text: {body}");
    // The path is part of the question: the role grants /metrics only.
    let (code, body) = get(&https, metrics_port, "/debug/pprof/", Some(&scraper)).await;
    assert_eq!(code, 403, "another path: {body}");

    // Plain HTTP on the metrics port gets no HTTP answer at all.
    let plain = http_request(([127, 0, 0, 1], metrics_port).into(), "GET", "/metrics", None).await;
    assert!(
        plain.is_err(),
        "plain HTTP on the secure port answered: {plain:?}"
    );

    // Its certificate was made at start by a CA nobody keeps: a client that
    // verifies cannot trust it.
    let secret = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .get("somastack-operator-webhook-tls")
        .await
        .expect("the operator's certificate Secret");
    let data = secret.data.unwrap_or_default();
    let file = |key: &str| {
        data.get(key)
            .map(|b| b.0.clone())
            .unwrap_or_else(|| panic!("the Secret holds {key}"))
    };
    let verifying = verifying_client(&file("ca.crt"));
    let refused = verifying
        .get(format!("https://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a self-signed certificate verified: {refused:?}"
    );

    // With --metrics-cert-dir: that certificate, which verifies.
    let dir = std::env::temp_dir().join(format!("somastack-metrics-certs-{suffix}"));
    std::fs::create_dir_all(&dir).expect("cert dir");
    std::fs::write(dir.join("tls.crt"), file("tls.crt")).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), file("tls.key")).expect("tls.key");
    let (second_port, second_probe) = (free_port(), free_port());
    let _second = spawn_operator(&[
        "--metrics-secure",
        "--metrics-cert-dir",
        &dir.display().to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{second_port}"),
        "--health-probe-addr",
        &format!("127.0.0.1:{second_probe}"),
        "--no-webhook",
        "--leader-elect",
        "--namespace",
        &ns.name,
        "--lease-name",
        lease,
        "--identity",
        "metrics-auth-test-2",
    ]);
    wait_for(
        "the second operator's /readyz",
        Duration::from_secs(60),
        || async {
            (http_get(second_probe, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(())
        },
    )
    .await;
    let (code, body) = get(&verifying, second_port, "/metrics", Some(&scraper)).await;
    assert_eq!(code, 200, "verified TLS with the certificate given: {body}");
    assert!(body.lines().any(|l| l == "somastack_leader 0"), "{body}");
    let (code, _) = get(&verifying, second_port, "/metrics", None).await;
    assert_eq!(code, 401);
    let _ = std::fs::remove_dir_all(&dir);

    ns.delete().await;
}

/// A client that trusts only the CA certificate `ca_pem`.
fn verifying_client(ca_pem: &[u8]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}
