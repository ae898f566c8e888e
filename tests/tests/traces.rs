//! `--otlp-endpoint`: the operator exports its spans over OTLP/HTTP. The
//! receiver here is a plain HTTP listener that keeps what it is sent (what a
//! collector's OTLP/HTTP receiver gets); the test checks the request is an
//! OTLP protobuf export of `reconcile` spans naming the object.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use somastack_tests::fixtures::bundle;
use somastack_tests::{TestNamespace, apply, client, spawn_operator, unique_suffix, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One HTTP request received: path, content type, body.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Accepts HTTP/1.1 POSTs on `listener`, answers 200 with an empty body,
/// and keeps every request.
async fn receive(listener: TcpListener, seen: Arc<Mutex<Vec<Received>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                let (mut length, mut content_type) = (0usize, String::new());
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => length = v.trim().parse().unwrap_or(0),
                            "content-type" => content_type = v.trim().to_string(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(Received {
                    path,
                    content_type,
                    body,
                });
                let ok =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if reader.get_mut().write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() {
    let client = client().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(receive(listener, seen.clone()));

    let endpoint = format!("http://127.0.0.1:{port}");
    let mut operator = spawn_operator(&[
        "--no-webhook",
        "--metrics-addr",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
        "--drill-selector",
        "somastack.io/drill-shard=none",
        "--project-selector",
        "somastack.io/project-shard=none",
    ]);

    // Something for it to reconcile, with a name to look for in the spans.
    let ns = TestNamespace::create(&client, "otlp").await;
    let name = format!("traced-{}", unique_suffix());
    let doc = bundle(&name, &ns.name, json!({ "enforcement": "Audit" }));
    apply(&client, ns.owns(&doc)).await.expect("bundle applied");

    let export = wait_for(
        "an OTLP export naming the bundle",
        Duration::from_secs(60),
        || {
            let seen = seen.clone();
            let name = name.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .find(|r| contains(&r.body, &name))
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(export.path, "/v1/traces");
    assert_eq!(export.content_type, "application/x-protobuf");
    assert!(contains(&export.body, "reconcile"), "the span name");
    assert!(contains(&export.body, "somastack-operator"), "the service name");
    assert!(contains(&export.body, "PolicyBundle"), "the kind attribute");

    let _ = operator.start_kill();
    let _ = operator.wait().await;
    ns.delete().await;
}
