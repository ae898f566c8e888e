//! Every file in `examples/` applies to the real cluster and reads back as
//! written; `kubectl get somastack -A` then lists them. The examples are left
//! in the cluster on purpose: they are what a newcomer looks at afterwards.

use somastack_tests::{
    apply_as, client, client_as, example_identity, is_subset, kubectl, read_docs, repo_root,
};

#[tokio::test]
async fn examples_apply_and_read_back() {
    let client = client().await;
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "a namespace and one example per kind");

    let mut applied = Vec::new();
    for path in &files {
        // One field manager per file, as hack/run.sh does: each file is one actor.
        let manager = format!(
            "example-{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or_default()
        );
        // As the user the file names, as hack/run.sh does (a reviewer must
        // not be the capsule's submitter).
        let text = std::fs::read_to_string(path).expect("example");
        let actor = match example_identity(&text) {
            Some((user, groups)) => {
                let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                client_as(&user, &groups).await
            }
            None => client.clone(),
        };
        for doc in read_docs(path) {
            let stored = apply_as(&actor, &doc, &manager)
                .await
                .unwrap_or_else(|e| panic!("{}: apply refused: {e}", path.display()));
            let stored = serde_json::to_value(&stored).expect("json");
            if let Some(spec) = doc.get("spec") {
                assert!(
                    is_subset(spec, &stored["spec"]),
                    "{}: the server's spec differs from the file\nfile:   {spec}\nserver: {}",
                    path.display(),
                    stored["spec"]
                );
            }
            if doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("somastack.io/"))
            {
                applied.push((
                    doc["kind"].as_str().unwrap_or_default().to_lowercase(),
                    doc["metadata"]["name"].clone(),
                ));
            }
        }
    }

    // The story ends with the example Installation Ready, as `kubectl wait` sees it.
    let out = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "installation/summarizer",
        "-n",
        "tenant-acme",
        "--timeout=120s",
    ]);
    assert!(
        out.status.success(),
        "kubectl wait on the example Installation: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // ... and the example project run to completion, its results gathered.
    let out = kubectl(&[
        "wait",
        "--for=condition=Succeeded",
        "kamachiqproject/market-brief",
        "-n",
        "tenant-acme",
        "--timeout=120s",
    ]);
    assert!(
        out.status.success(),
        "kubectl wait on the example project: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&[
        "get",
        "configmap",
        "market-brief-results",
        "-n",
        "tenant-acme",
        "-o",
        "jsonpath={.data.write-brief}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "result of write-brief: Combine both summaries into a one-page brief."
    );

    // What a user sees: the `somastack` category lists every applied object of our kinds.
    let out = kubectl(&["get", "somastack", "-A", "-o", "name"]);
    assert!(
        out.status.success(),
        "kubectl get somastack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for (kind, name) in &applied {
        let name = name.as_str().unwrap_or_default();
        let needle = format!("{kind}.somastack.io/{name}");
        assert!(
            listed.lines().any(|l| l == needle),
            "`kubectl get somastack -A` does not list {needle}:\n{listed}"
        );
    }
}
