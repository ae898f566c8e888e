//! The local cluster is a real control plane: kwok nodes in four regions, two
//! zones each (hack/nodes.sh; the tests need at least three regions), and the
//! real scheduler and controllers run workloads (kwok plays the kubelets).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use somastack_tests::{TestNamespace, client, setup, wait_for};

const REGION: &str = "topology.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";

#[tokio::test]
async fn nodes_span_three_regions_with_zones() {
    let client = client().await;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .expect("nodes");
    let mut zones_by_region: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in &nodes {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let labels = node.labels();
        if let (true, Some(region), Some(zone)) = (ready, labels.get(REGION), labels.get(ZONE)) {
            zones_by_region
                .entry(region.clone())
                .or_default()
                .insert(zone.clone());
        }
    }
    assert!(
        zones_by_region.len() >= 3,
        "Ready nodes in at least three regions, found {zones_by_region:?}"
    );
    assert!(
        zones_by_region.values().all(|z| z.len() >= 2),
        "two zones per region: {zones_by_region:?}"
    );
}

/// A manifest named `name` with `spec`, whose pod template (`template`:
/// its metadata and spec) runs one pause container `container` (kwok plays
/// it).
fn pause_workload(name: &str, mut spec: Value, mut template: Value, container: &str) -> Value {
    template["spec"]["containers"] = json!([{ "name": container, "image": "registry.k8s.io/pause:3.10" }]);
    spec["template"] = template;
    json!({ "metadata": { "name": name }, "spec": spec })
}

/// Creates `manifest`, an object of kind `K`, in a namespace of its own
/// ([`setup`]): the client, the namespace and the API of `K` there.
async fn created<K>(prefix: &str, manifest: Value) -> (Client, TestNamespace, Api<K>)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let (client, ns) = setup(prefix).await;
    let api: Api<K> = Api::namespaced(client.clone(), &ns.name);
    let object: K = serde_json::from_value(manifest).expect("a manifest of its kind");
    api.create(&PostParams::default(), &object)
        .await
        .expect("created");
    (client, ns, api)
}

#[tokio::test]
async fn a_plain_deployment_becomes_available() {
    let labels = json!({ "app": "web" });
    let manifest = pause_workload(
        "web",
        json!({ "replicas": 3, "selector": { "matchLabels": labels } }),
        json!({ "metadata": { "labels": labels } }),
        "web",
    );
    let (client, ns, api) = created::<Deployment>("deploy", manifest).await;

    wait_for(
        "deployment web to be Available with 3 ready replicas",
        Duration::from_secs(90),
        || async {
            let d = api.get("web").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True"));
            (available && status.ready_replicas == Some(3)).then_some(())
        },
    )
    .await;

    // The real scheduler placed each pod on a kwok node, and kwok runs it.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 3);
    for pod in &pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-"),
            "{} scheduled to {node:?}",
            pod.name_any()
        );
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_job_completes() {
    let manifest = pause_workload(
        "once",
        json!({ "backoffLimit": 0 }),
        json!({ "spec": { "restartPolicy": "Never" } }),
        "work",
    );
    let (_, ns, api) = created::<Job>("job", manifest).await;
    wait_for("job once to complete", Duration::from_secs(90), || async {
        let j = api.get("once").await.ok()?;
        let done = j
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        done.then_some(())
    })
    .await;
    ns.delete().await;
}
