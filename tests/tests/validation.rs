//! Bad specs are refused by the real API server with a message a person
//! understands (CRD schema and CEL rules: the first line of defence).

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use somastack_crds::Capsule;
use somastack_tests::{TEST_LABEL, TEST_MANAGER, client, create_dry_run, read_docs, repo_root};

const EXPECT: &str = "somastack.io/test-expect";

/// Creates every document of `tests/invalid/<file>` (dry run) and checks the
/// API server refuses each with its expected message.
async fn refused_with_message(file: &str, kind: &str) {
    let client = client().await;
    let docs = read_docs(&repo_root().join("tests/invalid").join(file));
    assert!(
        docs.len() >= 3,
        "{file}: at least three invalid manifests per kind"
    );
    for doc in docs {
        assert_eq!(doc["kind"], kind, "{file} holds only {kind}s");
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let expected = doc["metadata"]["annotations"][EXPECT]
            .as_str()
            .unwrap_or_else(|| panic!("{file}/{name}: annotation {EXPECT} missing"))
            .to_string();
        match create_dry_run(&client, &doc).await {
            Ok(_) => {
                panic!("{file}/{name}: the API server accepted it; expected a refusal saying {expected:?}")
            }
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{file}/{name}: {status:?}");
                assert!(
                    status.message.contains(&expected),
                    "{file}/{name}: message {:?} does not contain {expected:?}",
                    status.message
                );
            }
            Err(other) => panic!("{file}/{name}: unexpected error {other}"),
        }
    }
}

/// One test per kind: `test_name: file of tests/invalid, kind;`.
macro_rules! refused_tests {
    ($($test:ident: $file:literal, $kind:literal;)*) => {$(
        #[tokio::test]
        async fn $test() {
            refused_with_message($file, $kind).await;
        }
    )*};
}

refused_tests! {
    invalid_capsules_are_refused: "capsule.yaml", "Capsule";
    invalid_policy_bundles_are_refused: "policybundle.yaml", "PolicyBundle";
    invalid_installations_are_refused: "installation.yaml", "Installation";
    invalid_drills_are_refused: "drdrill.yaml", "DrDrill";
    invalid_projects_are_refused: "kamachiqproject.yaml", "KamachiqProject";
}

/// The valid examples pass the same checks, so the rules above refuse only
/// what they should.
#[tokio::test]
async fn examples_pass_validation() {
    let client = client().await;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        for doc in read_docs(&path) {
            // Whole objects only (25-capsule-review.yaml adds annotations to one).
            let ours = doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("somastack.io/"));
            if ours && doc.get("spec").is_some() {
                let mut doc = doc;
                // A fresh name (the example itself may already be applied),
                // in `default` (the example's namespace may not exist yet).
                let name = format!("dry-run-{}", doc["metadata"]["name"].as_str().unwrap_or_default());
                doc["metadata"]["name"] = json!(name);
                if doc["kind"] == "Capsule" {
                    // A package version is published once: the example's
                    // own may be published already.
                    let package = format!("dry-run-{}", doc["spec"]["package"].as_str().unwrap_or_default());
                    doc["spec"]["package"] = json!(package);
                }
                if doc["metadata"].get("namespace").is_some() {
                    doc["metadata"]["namespace"] = json!("default");
                }
                if let Err(e) = create_dry_run(&client, &doc).await {
                    panic!("{}: valid example refused: {e}", path.display());
                }
            }
        }
    }
}

/// A transition rule: a Capsule's package and publisher cannot change.
#[tokio::test]
async fn capsule_package_is_immutable() {
    let client = client().await;
    let api: Api<Capsule> = Api::all(client.clone());
    let name = format!("immutable-{}", somastack_tests::unique_suffix());
    let capsule: Value = json!({
        "apiVersion": "somastack.io/v1alpha1",
        "kind": "Capsule",
        "metadata": { "name": name, "labels": { TEST_LABEL: "true" } },
        "spec": {
            "package": "immutable", "version": "1.0.0", "publisher": "acme",
            "image": "r.example/a@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4",
            "dataClassification": "public"
        }
    });
    let created: Capsule = serde_json::from_value(capsule.clone()).expect("capsule");
    api.create(&PostParams::default(), &created)
        .await
        .expect("valid capsule is created");

    let mut changed = capsule.clone();
    changed["spec"]["package"] = json!("renamed");
    let err = api
        .patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&changed),
        )
        .await
        .expect_err("changing the package must be refused");
    assert!(
        err.to_string()
            .contains("package and publisher cannot change; publish a new Capsule instead"),
        "{err}"
    );

    let mut new_version = capsule;
    new_version["spec"]["version"] = json!("1.0.1");
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&new_version),
    )
    .await
    .expect("other spec fields may change");
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("deleted");
}
