//! The operator binary against the real cluster: it waits for its CRDs,
//! reports on every kind, follows spec changes, and stops cleanly on SIGTERM.
//! (This test runs its own operator process, beside the one hack/test.sh
//! starts for the other tests: reconciles are idempotent, so two agree.)

use std::process::Stdio;
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use somastack_tests::fixtures::wait_condition;
use somastack_tests::process::sigterm;
use somastack_tests::{
    TEST_LABEL, TEST_MANAGER, api_for, apply, client, kubeconfig_path, setup, unique_suffix, wait_for,
    workspace_binary,
};

fn objects(ns: &str, suffix: &str) -> Vec<Value> {
    let capsule_ref = json!({ "package": "observed", "version": "1.0.0" });
    vec![
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule",
            "metadata": { "name": format!("observed-{suffix}"), "labels": { TEST_LABEL: "true" } },
            "spec": { "package": "observed", "version": "1.0.0", "publisher": "acme",
                "image": "r.example/a@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4",
                "dataClassification": "internal" } }),
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
            "metadata": { "name": format!("observed-{suffix}"), "labels": { TEST_LABEL: "true" } },
            "spec": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } } } }),
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": "observed", "namespace": ns },
            "spec": { "capsule": capsule_ref, "region": "eu-west-1", "replicas": 1 } }),
        // Labelled for this test's operator alone (the suite's operator skips
        // it): two operators must never run one drill.
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": { "name": "observed", "namespace": ns,
                "labels": { "somastack.io/drill-shard": format!("operator-{suffix}") } },
            "spec": { "installationRef": { "name": "observed" }, "scenario": "PodLoss",
                "objectives": { "rtoSeconds": 60 } } }),
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
            "metadata": { "name": "observed", "namespace": ns,
                "labels": { "somastack.io/project-shard": format!("operator-{suffix}") } },
            "spec": { "goal": "g", "tasks": [{ "name": "a", "capsule": capsule_ref }] } }),
    ]
}

/// Waits until the object's status says the operator saw `generation`, and
/// returns that status.
async fn observed(api: &kube::Api<DynamicObject>, name: &str, generation: i64) -> Value {
    wait_for(
        &format!("{name} to report observedGeneration {generation}"),
        Duration::from_secs(60),
        || async {
            let obj = api.get(name).await.ok()?;
            let status = obj.data.get("status")?.clone();
            (status["observedGeneration"] == json!(generation)).then_some(status)
        },
    )
    .await
}

#[tokio::test]
async fn operator_observes_every_kind_and_stops_on_sigterm() {
    let (client, ns) = setup("operator").await;
    let suffix = unique_suffix();

    let log_path = std::env::temp_dir().join(format!("somastack-operator-test-{suffix}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut operator = tokio::process::Command::new(workspace_binary("somastack-operator"))
        .args([
            "run",
            "--crd-wait",
            "30s",
            "--no-webhook",
            "--metrics-addr",
            "127.0.0.1:0",
            "--project-selector",
            &format!("somastack.io/project-shard=operator-{suffix}"),
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");

    for doc in objects(&ns.name, &suffix) {
        let stored = apply(&client, ns.owns(&doc)).await.expect("applied");
        let api = api_for(&client, &doc).await;
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let generation = stored.metadata.generation.expect("generation");
        let status = observed(&api, name, generation).await;
        let kind = doc["kind"].as_str().unwrap_or_default();
        let condition_type = if matches!(kind, "DrDrill" | "KamachiqProject") {
            "Succeeded"
        } else {
            "Ready"
        };
        let condition = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == condition_type))
            .unwrap_or_else(|| panic!("{kind}/{name}: no {condition_type} condition in {status}"));
        assert_eq!(condition["observedGeneration"], json!(generation));
        if kind == "KamachiqProject" {
            // Its one task runs (kwok plays the agent) and the project ends.
            wait_condition(
                &api,
                name,
                "Succeeded",
                "True",
                Some("AllTasksSucceeded"),
                Duration::from_secs(60),
            )
            .await;
        }
    }

    // A spec change is followed: observedGeneration moves, lastTransitionTime
    // of an unchanged condition does not.
    let project = &objects(&ns.name, &suffix)[4];
    let api = api_for(&client, project).await;
    let before = observed(&api, "observed", 1).await;
    let mut changed = project.clone();
    changed["spec"]["goal"] = json!("a changed goal");
    let patched = api
        .patch(
            "observed",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(changed),
        )
        .await
        .expect("spec updated");
    let after = observed(&api, "observed", patched.metadata.generation.expect("generation")).await;
    assert_eq!(
        before["conditions"][0]["lastTransitionTime"], after["conditions"][0]["lastTransitionTime"],
        "an unchanged condition status keeps its lastTransitionTime"
    );

    // SIGTERM: in-flight work drains and the process exits successfully.
    let status = sigterm(&mut operator, Duration::from_secs(30)).await;
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "operator exit status {status:?}; logs:\n{logs}");
    assert!(logs.contains("all controllers stopped"), "logs:\n{logs}");
    ns.delete().await;
}

/// The CRDs that `somastack-operator crd` prints are the ones the cluster
/// serves (hack/cluster-up.sh installs the committed YAML), so the binary,
/// the chart and the cluster agree.
#[tokio::test]
async fn crd_yaml_printed_by_the_binary_is_what_the_cluster_serves() {
    let out = std::process::Command::new(workspace_binary("somastack-operator"))
        .arg("crd")
        .output()
        .expect("crd subcommand runs");
    assert!(out.status.success());
    let docs = somastack_tests::parse_docs(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(docs.len(), 5);
    let client = client().await;
    for crd in docs {
        let name = crd["metadata"]["name"].as_str().expect("name");
        let api: kube::Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = kube::Api::all(client.clone());
        let served = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} installed in the test cluster: {e}"));
        let served = serde_json::to_value(&served.spec).expect("json");
        assert!(
            somastack_tests::is_subset(&crd["spec"], &served),
            "{name}: the cluster's CRD differs from what the binary prints; re-run hack/cluster-up.sh"
        );
    }
}
