//! Installations against the real cluster: residency, ceilings, kill switch,
//! upgrades, revisions, rollbacks and cleanup. Needs the operator running
//! (hack/test.sh starts it).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    apply_together, bundle, capsule, condition, condition_with, denied, installation, message, put, put_api,
    put_policy, setup_published, wait_condition, wait_refused,
};
use somastack_tests::{TestNamespace, api_for, setup, soma, soma_ok, unique_suffix, wait_event, wait_for};

const T: Duration = Duration::from_secs(90);

/// A namespace, a fresh capsule `<prefix>-<suffix>` of `class`, and the
/// PolicyBundle of the same name, with `spec`, governing the namespace
/// (reconciled): the client, the namespace, the package (and bundle) name,
/// the bundle.
async fn governed(prefix: &str, class: &str, spec: Value) -> (Client, TestNamespace, String, Value) {
    let (client, ns, package) = setup_published(prefix, class).await;
    let policy = bundle(&package, &ns.name, spec);
    put_policy(&client, ns.owns(&policy)).await;
    (client, ns, package, policy)
}

/// A namespace with a Ready Installation `app` (2 replicas in us-east-1)
/// of a fresh public capsule `<prefix>-<suffix>`: the namespace, the
/// Installation's manifest and its API (and the client).
async fn running(prefix: &str, name: &str) -> (Client, TestNamespace, Value, Api<kube::api::DynamicObject>) {
    let (client, ns, package) = setup_published(prefix, "public").await;
    let inst = installation(&ns.name, name, &package, "1.0.0", "us-east-1", 2);
    let api = put_api(&client, &inst).await;
    wait_condition(&api, name, "Ready", "True", None, T).await;
    (client, ns, inst, api)
}

#[tokio::test]
async fn residency_refuses_a_region_and_pods_land_only_in_the_allowed_one() {
    let (client, ns, package, policy) = governed(
        "res",
        "confidential",
        json!({
            "residency": { "rules": [{ "dataClassification": "confidential", "allowedRegions": ["eu-central-1"] }] },
        }),
    )
    .await;

    // Refused at admission: nothing is stored, the rule and the bundle are named.
    let refused = installation(&ns.name, "in-us", &package, "1.0.0", "us-east-1", 2);
    let msg = denied(&client, &refused, "installations.somastack.io").await;
    assert_eq!(
        msg,
        format!(
            "Installation in-us violates enforced policy: confidential data may not be processed in region \
             us-east-1; allowed regions: eu-central-1 (rule residency, PolicyBundle {package})"
        )
    );
    let api = api_for(&client, &refused).await;
    assert!(
        api.get_opt("in-us").await.unwrap().is_none(),
        "a denied Installation is not stored"
    );

    // Allowed: every pod runs on a node of eu-central-1.
    let allowed = installation(&ns.name, "in-eu", &package, "1.0.0", "eu-central-1", 4);
    put(&client, &allowed).await;
    let obj = wait_condition(&api, "in-eu", "Ready", "True", None, T).await;
    assert_eq!(obj.data["status"]["activeRegion"], "eu-central-1");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("somastack.io/installation=in-eu"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 4);
    let nodes: Api<Node> = Api::all(client.clone());
    for pod in &pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("scheduled");
        let region = nodes
            .get(&node)
            .await
            .unwrap()
            .labels()
            .get("topology.kubernetes.io/region")
            .cloned();
        assert_eq!(
            region.as_deref(),
            Some("eu-central-1"),
            "{} ran on {node}",
            pod.name_any()
        );
    }

    // The bundle tightens under a running Installation: the controller
    // flags it Blocked with the rule and bundle, keeps the workload, and
    // records an Event (admission judged it under the old policy).
    let mut tightened = policy.clone();
    tightened["spec"]["residency"]["rules"][0]["allowedRegions"] = json!(["eu-west-1"]);
    put_policy(&client, &tightened).await;
    let (obj, msg) = wait_refused(&api, "in-eu", T).await;
    assert!(
        msg.contains("confidential data may not be processed in region eu-central-1")
            && msg.contains(&format!("rule residency, PolicyBundle {package}")),
        "{msg}"
    );
    assert_eq!(obj.data["status"]["phase"], "Blocked");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("in-eu").await.unwrap().is_some(),
        "the running workload is kept"
    );
    assert!(
        somastack_tests::event_recorded(&ns.name, "PolicyViolation"),
        "a PolicyViolation Event is recorded"
    );
    ns.delete().await;
}

#[tokio::test]
async fn ceilings_and_capabilities_are_refused() {
    let (client, ns) = setup("ceil").await;
    let s = unique_suffix();
    let policy = bundle(
        &format!("ceil-{s}"),
        &ns.name,
        json!({
            "limits": { "maxReplicas": 2, "maxCpu": "200m" },
            "capabilities": { "allowed": ["llm-inference"] },
        }),
    );
    put_policy(&client, ns.owns(&policy)).await;
    let mut small = capsule(&format!("small-{s}"), &format!("small-{s}"), "1.0.0", "public");
    let mut big = capsule(&format!("big-{s}"), &format!("big-{s}"), "1.0.0", "public");
    big["spec"]["resources"]["limits"]["cpu"] = json!("1");
    let mut egress = capsule(&format!("egress-{s}"), &format!("egress-{s}"), "1.0.0", "public");
    egress["spec"]["resources"]["limits"]["cpu"] = json!("100m");
    egress["spec"]["capabilities"] = json!(["network-egress", "llm-inference"]);
    small["spec"]["resources"]["limits"]["cpu"] = json!("100m");
    for c in [&small, &big, &egress] {
        put(&client, ns.owns(c)).await;
    }
    let cases = [
        (
            "too-many",
            format!("small-{s}"),
            3,
            "3 replicas exceed the ceiling of 2 (rule maxReplicas",
        ),
        (
            "too-big",
            format!("big-{s}"),
            1,
            "CPU per replica 1 exceeds the ceiling of 200m (rule maxCpu",
        ),
        (
            "egress",
            format!("egress-{s}"),
            1,
            "capabilities not allowed: network-egress (rule capabilities",
        ),
    ];
    for (name, package, replicas, expected) in &cases {
        let doc = installation(&ns.name, name, package, "1.0.0", "us-east-1", *replicas);
        let msg = denied(&client, &doc, "installations.somastack.io").await;
        assert!(
            msg.contains(expected) && msg.contains(&format!("PolicyBundle ceil-{s}")),
            "{name}: {msg}"
        );
    }
    let api = api_for(
        &client,
        &installation(&ns.name, "x", "x", "1.0.0", "us-east-1", 1),
    )
    .await;
    // Within the ceilings it runs, with the ceiling as its limits where unset.
    put(
        &client,
        &installation(&ns.name, "fits", &format!("small-{s}"), "1.0.0", "us-east-1", 2),
    )
    .await;
    wait_condition(&api, "fits", "Ready", "True", None, T).await;
    ns.delete().await;
}

#[tokio::test]
async fn kill_switch_stops_and_release_restores() {
    let (client, ns, package, mut policy) =
        governed("kill", "public", json!({ "killSwitch": { "engaged": false } })).await;
    let inst = installation(&ns.name, "svc", &package, "1.0.0", "eu-west-1", 2);
    let api = put_api(&client, &inst).await;
    wait_condition(&api, "svc", "Ready", "True", None, T).await;

    policy["spec"]["killSwitch"] =
        json!({ "engaged": true, "reason": "incident 7: suspected prompt injection" });
    put(&client, &policy).await;
    let engaged = std::time::Instant::now();
    let obj = wait_condition(
        &api,
        "svc",
        "Ready",
        "False",
        Some("KillSwitchEngaged"),
        Duration::from_secs(20),
    )
    .await;
    assert!(message(&obj, "Ready").contains("incident 7"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the workload to scale to zero",
        Duration::from_secs(20),
        || async {
            let d = deployments.get("svc").await.ok()?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (d.spec.replicas == Some(0) && ready == 0).then_some(())
        },
    )
    .await;
    eprintln!("kill switch: stopped {:?} after engaging", engaged.elapsed());
    assert_eq!(obj.data["status"]["phase"], "Suspended");

    policy["spec"]["killSwitch"] = json!({ "engaged": false });
    put(&client, &policy).await;
    let obj = wait_condition(&api, "svc", "Ready", "True", None, T).await;
    assert_eq!(obj.data["status"]["readyReplicas"], 2);
    ns.delete().await;
}

async fn deployment_image(client: &kube::Client, ns: &str, name: &str) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    d.spec.template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn upgrade_history_manual_rollback_and_autoscaler_pruning() {
    let (client, ns) = setup("upgrade").await;
    let package = format!("up-{}", unique_suffix());
    let v1 = capsule(&format!("{package}-1"), &package, "1.0.0", "internal");
    let v2 = capsule(&format!("{package}-2"), &package, "2.0.0", "internal");
    put(&client, ns.owns(&v1)).await;
    put(&client, ns.owns(&v2)).await;
    let mut inst = installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2);
    let api = put_api(&client, &inst).await;
    let obj = wait_condition(&api, "app", "Ready", "True", None, T).await;
    assert_eq!(obj.data["status"]["currentRevision"], 1);

    // Upgrade: the Deployment never drops below the desired ready replicas.
    inst["spec"]["capsule"]["version"] = json!("2.0.0");
    put(&client, &inst).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let mut lowest_available = i32::MAX;
    let obj = loop {
        let d = deployments.get("app").await.unwrap();
        lowest_available =
            lowest_available.min(d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0));
        let o = api.get("app").await.unwrap();
        if o.data["status"]["currentRevision"] == 2
            && condition(&o, "Ready").is_some_and(|c| c["status"] == "True")
            && o.data["status"]["observedGeneration"] == json!(o.metadata.generation)
        {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        lowest_available, 2,
        "the old revision kept serving during the upgrade"
    );
    assert_eq!(
        deployment_image(&client, &ns.name, "app").await,
        v2["spec"]["image"].as_str().unwrap()
    );
    assert_eq!(obj.data["status"]["availableRevision"], 2);

    // Autoscaling on, then off: the autoscaler comes and goes.
    inst["spec"].as_object_mut().unwrap().remove("replicas");
    inst["spec"]["autoscaling"] = json!({ "minReplicas": 2, "maxReplicas": 4 });
    put(&client, &inst).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the autoscaler to be created", T, || async {
        hpas.get_opt("app").await.ok()?.map(|_| ())
    })
    .await;
    inst["spec"].as_object_mut().unwrap().remove("autoscaling");
    inst["spec"]["replicas"] = json!(2);
    put(&client, &inst).await;
    wait_for("the autoscaler to be pruned", T, || async {
        hpas.get_opt("app").await.ok()?.is_none().then_some(())
    })
    .await;

    // Manual rollback to revision 1, with the binary, as an operator would.
    let out = soma_ok(&["installation", "rollback", "app", "-n", &ns.name, "--to", "1"]);
    assert!(out.contains("rolled back from revision 2 to revision 1"));
    let obj = wait_for("the rollback to become revision 3", T, || async {
        let o = api.get("app").await.ok()?;
        (o.data["status"]["currentRevision"] == 3 && condition(&o, "Ready")?["status"] == "True").then_some(o)
    })
    .await;
    assert_eq!(obj.data["spec"]["capsule"]["version"], "1.0.0");
    assert_eq!(obj.data["status"]["lastRollback"]["trigger"], "Manual");
    assert_eq!(
        deployment_image(&client, &ns.name, "app").await,
        v1["spec"]["image"].as_str().unwrap()
    );

    let out = soma(&["installation", "history", "app", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[2].starts_with("3") && rows[2].contains('*') && rows[2].contains("1.0.0"),
        "{table}"
    );

    ns.delete().await;
}

#[tokio::test]
async fn a_namespace_labelled_into_a_bundles_reach_is_judged_at_once() {
    let (client, ns, package) = setup_published("nslabel", "confidential").await;
    // Governs namespaces labelled `<package>=eu` only: not this one, yet.
    let mut policy = bundle(
        &package,
        &ns.name,
        json!({
            "residency": { "rules": [{ "dataClassification": "confidential", "allowedRegions": ["eu-central-1"] }] },
        }),
    );
    policy["spec"]["namespaceSelector"] = json!({ "matchLabels": { package.clone(): "eu" } });
    put_policy(&client, ns.owns(&policy)).await;
    let api = put_api(
        &client,
        &installation(&ns.name, "app", &package, "1.0.0", "us-east-1", 1),
    )
    .await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;

    // Labelled: the bundle governs it now, and its rule forbids us-east-1.
    // No change to the Installation, the Capsule or the bundle: only the
    // namespace's labels tell (before, a Ready Installation saw it within 5
    // minutes, on its periodic requeue; that is an hour now).
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "metadata": { "labels": { package.clone(): "eu" } } })),
        )
        .await
        .unwrap();
    let obj = wait_condition(
        &api,
        "app",
        "PolicyCompliant",
        "False",
        Some("PolicyViolation"),
        PUT_BACK,
    )
    .await;
    assert!(
        message(&obj, "PolicyCompliant").contains("us-east-1"),
        "{}",
        message(&obj, "PolicyCompliant")
    );
    ns.delete().await;
}

/// How soon what someone changed in a child by hand is put back: the
/// watches of children see it (there is no periodic apply; before there was
/// one, every 5 minutes, and no sooner).
const PUT_BACK: Duration = Duration::from_secs(30);

#[tokio::test]
async fn children_changed_or_deleted_by_hand_are_put_back_within_seconds() {
    let (client, ns, _, _) = running("drift", "app").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let merge = |v: Value| kube::api::Patch::Merge(v);
    let by_hand = kube::api::PatchParams::default();
    let types = |p: &NetworkPolicy| {
        p.spec
            .as_ref()
            .and_then(|s| s.policy_types.clone())
            .unwrap_or_default()
    };
    assert_eq!(types(&policies.get("app").await.unwrap()), ["Ingress", "Egress"]);

    // Someone opens egress (a spec change: the policy's generation moves).
    policies
        .patch(
            "app",
            &by_hand,
            &merge(json!({ "spec": { "policyTypes": ["Ingress"] } })),
        )
        .await
        .unwrap();
    wait_for(
        "the NetworkPolicy's policyTypes to be put back",
        PUT_BACK,
        || async {
            let p = policies.get("app").await.ok()?;
            (types(&p) == ["Ingress", "Egress"]).then_some(())
        },
    )
    .await;

    // Someone deletes the ConfigMap and the Service.
    maps.delete("app-config", &DeleteParams::default()).await.unwrap();
    services.delete("app", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the ConfigMap and the Service to be created again",
        PUT_BACK,
        || async {
            let map = maps.get_opt("app-config").await.ok()??;
            let service = services.get_opt("app").await.ok()??;
            (map.metadata.deletion_timestamp.is_none() && service.metadata.deletion_timestamp.is_none())
                .then_some(())
        },
    )
    .await;

    // Someone scales the Deployment by hand.
    deployments
        .patch("app", &by_hand, &merge(json!({ "spec": { "replicas": 3 } })))
        .await
        .unwrap();
    wait_for("the Deployment's replicas to be put back", PUT_BACK, || async {
        let d = deployments.get("app").await.ok()?;
        (d.spec.replicas == Some(2)).then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn deleting_an_installation_removes_every_child() {
    let (client, ns, _, api) = running("del", "gone").await;
    let n = ns.name.clone();
    let c = client.clone();
    let present = move || {
        let (c, n) = (c.clone(), n.clone());
        async move {
            let mut kinds = Vec::new();
            macro_rules! check {
                ($k:ty, $name:expr) => {
                    if Api::<$k>::namespaced(c.clone(), &n)
                        .get_opt($name)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        kinds.push(stringify!($k));
                    }
                };
            }
            check!(Deployment, "gone");
            check!(Service, "gone");
            check!(ServiceAccount, "gone");
            check!(ConfigMap, "gone-config");
            check!(NetworkPolicy, "gone");
            check!(PodDisruptionBudget, "gone");
            check!(ControllerRevision, "gone-1");
            kinds
        }
    };
    assert_eq!(present().await.len(), 7, "every child exists while installed");
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_for("garbage collection of every child", T, || {
        let p = present.clone();
        async move { p().await.is_empty().then_some(()) }
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn audit_bundles_report_without_blocking() {
    let (client, ns, package, policy) = governed(
        "aud",
        "public",
        json!({
            "enforcement": "Audit",
            "limits": { "maxReplicas": 1 },
        }),
    )
    .await;
    // Admitted, and kubectl shows the admission webhook's warning.
    let inst = installation(&ns.name, "over", &package, "1.0.0", "us-east-1", 2);
    let file = std::env::temp_dir().join(format!("somastack-audit-{package}.json"));
    std::fs::write(&file, inst.to_string()).unwrap();
    let out = somastack_tests::kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply: {stderr}");
    assert!(
        stderr.contains(&format!(
            "Warning: audit: 2 replicas exceed the ceiling of 1 (rule maxReplicas, PolicyBundle {package})"
        )),
        "kubectl shows the audit finding: {stderr}"
    );
    let api = api_for(&client, &inst).await;
    let obj = wait_condition(&api, "over", "Ready", "True", None, T).await;
    let compliant = condition_with(&obj, "PolicyCompliant", "reason", "CompliantWithAuditFindings");
    assert!(
        compliant.contains("2 replicas exceed the ceiling of 1"),
        "{compliant}"
    );

    let bundles = api_for(&client, &policy).await;
    let status = wait_for("the bundle to list the violation", T, || async {
        let b = bundles.get(&package).await.ok()?;
        (b.data["status"]["violationCount"] == 1).then(|| b.data["status"].clone())
    })
    .await;
    assert_eq!(status["governedNamespaces"], 1);
    let v = &status["violations"][0];
    assert_eq!(
        (v["namespace"].as_str(), v["name"].as_str(), v["rule"].as_str()),
        (Some(ns.name.as_str()), Some("over"), Some("maxReplicas"))
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_record_of_bundle_writes_the_cache_does_not_show_is_listed_and_repaired() {
    // The record says a bundle was written as something the cache does not
    // hold (as when a write the webhook let through was never stored): the
    // webhook must not trust its cache, and once the record is old enough
    // for that write to be over, it repairs it from what it listed.
    let (client, ns, package, _bundle) = governed(
        "record",
        "public",
        json!({ "enforcement": "Enforce", "limits": { "maxReplicas": 1 } }),
    )
    .await;
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), &somastack_tests::operator_namespace());
    let record = "somastack-operator-bundle-writes";
    let hour_ago = jiff::Timestamp::now().as_second() - 3600;
    let never_stored = format!("{} {hour_ago}", "0".repeat(32));
    let patch = json!({ "data": { &package: &never_stored } });
    records
        .patch(
            record,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let listed = r#"somastack_webhook_bundle_reads_total{source="list"}"#;
    let before = somastack_tests::metric(listed).await;
    let inst = installation(&ns.name, "app", &package, "1.0.0", "us-east-1", 2);
    let out = apply_together(&[&inst]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("PolicyBundle {package}")),
        "refused by the bundle: {stderr}"
    );
    assert!(
        somastack_tests::metric(listed).await > before,
        "judged from a list"
    );
    let repaired = wait_for("the record to be repaired", T, || async {
        let cm = records.get(record).await.ok()?;
        let value = cm.data?.get(&package)?.clone();
        (value != never_stored).then_some(value)
    })
    .await;
    assert!(!repaired.starts_with(&"0".repeat(32)), "{repaired}");
    ns.delete().await;
}

#[tokio::test]
async fn paused_leaves_children_alone() {
    let (client, ns, mut inst, api) = running("pause", "app").await;

    inst["spec"]["paused"] = json!(true);
    inst["spec"]["replicas"] = json!(3);
    put(&client, &inst).await;
    let obj = wait_for("the paused Installation to be observed", T, || async {
        let o = api.get("app").await.ok()?;
        (o.data["status"]["observedGeneration"] == json!(o.metadata.generation)).then_some(o)
    })
    .await;
    assert_eq!(obj.data["status"]["phase"], "Suspended");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("app")
        .await
        .unwrap();
    assert_eq!(
        deployment.spec.replicas,
        Some(2),
        "a paused Installation does not touch its workload"
    );

    inst["spec"]["paused"] = json!(false);
    put(&client, &inst).await;
    wait_for("the resumed Installation to scale to 3", T, || async {
        let o = api.get("app").await.ok()?;
        (o.data["status"]["readyReplicas"] == 3 && condition(&o, "Ready")?["status"] == "True").then_some(())
    })
    .await;
    ns.delete().await;
}

/// On the real nodes: real readiness probes, a real Service, real requests.
mod real_node {
    use std::sync::atomic::{AtomicBool, Ordering};

    use somastack_tests::fixtures::{agent_capsule, on_real_nodes};
    use somastack_tests::real::{Requests, node_of, pods_on_real_nodes, service_addr, summarize};

    use super::*;

    const TEXT: &str = "Residency rules keep confidential data in the European Union. \
        The operator places each workload only on nodes of its region. \
        A drill proves that a workload survives the loss of its region. \
        Nothing in this test leaves the machine.";

    /// An Installation of the reference agent is Ready because its pods'
    /// readiness probes pass, and its Service answers. A release whose pods
    /// never get ready (the capsule sets AGENT_READY=never) is rolled back
    /// automatically, and requests sent through the Service all along, one
    /// every 50 ms, all succeed.
    #[tokio::test]
    async fn a_never_ready_release_is_rolled_back_while_every_request_to_the_service_succeeds() {
        let (client, ns) = setup("real-rb").await;
        let package = format!("rrb-{}", unique_suffix());
        let good = agent_capsule(&format!("{package}-1"), &package, "1.0.0", "internal", &[]);
        let broken = agent_capsule(
            &format!("{package}-2"),
            &package,
            "2.0.0",
            "internal",
            &[("AGENT_READY", "never")],
        );
        put(&client, ns.owns(&good)).await;
        put(&client, ns.owns(&broken)).await;
        let mut inst = on_real_nodes(installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2));
        inst["spec"]["upgrade"] = json!({ "autoRollback": true, "progressDeadlineSeconds": 15 });
        let api = put_api(&client, &inst).await;
        wait_condition(&api, "app", "Ready", "True", None, T).await;

        let selector = "somastack.io/installation=app";
        let pods = pods_on_real_nodes(&client, &ns.name, selector).await;
        assert_eq!(pods.len(), 2);
        assert!(
            pods.iter().all(|p| node_of(p) == "real-eu-west-1"),
            "pods stay in eu-west-1"
        );

        // The Service answers with a summary the agent computed from the text.
        let addr = service_addr(&client, &ns.name, "app", 8080).await;
        let first = wait_for("the Service to answer", T, || async {
            summarize(addr, TEXT, 2).await.ok()
        })
        .await;
        let sentences: Vec<&str> = TEXT.split_inclusive(". ").map(str::trim).collect();
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(
            first.iter().all(|s| sentences.contains(&s.as_str())),
            "{first:?} from {sentences:?}"
        );

        // Requests through the Service during the whole upgrade.
        let requests = Requests::start(addr, TEXT, 2, first.clone());

        inst["spec"]["capsule"]["version"] = json!("2.0.0");
        put(&client, &inst).await;
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let saw_never_ready = AtomicBool::new(false);
        let saw = &saw_never_ready;
        let obj = wait_for("the automatic rollback", T, || async {
            // The broken release's pod runs (started by containerd) and its
            // readiness probe keeps failing.
            for p in pod_api
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items
            {
                let never = p.spec.as_ref().is_some_and(|s| {
                    s.containers[0]
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "AGENT_READY" && e.value.as_deref() == Some("never"))
                });
                let status = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
                if never
                    && status.is_some_and(|cs| {
                        cs.iter().all(|c| {
                            !c.ready
                                && c.container_id
                                    .as_deref()
                                    .is_some_and(|i| i.starts_with("containerd://"))
                        })
                    })
                {
                    saw.store(true, Ordering::Relaxed);
                }
            }
            let o = api.get("app").await.ok()?;
            (!o.data["status"]["lastRollback"].is_null()).then_some(o)
        })
        .await;
        assert!(
            saw_never_ready.load(Ordering::Relaxed),
            "the broken release's pod ran and was never ready"
        );
        let record = &obj.data["status"]["lastRollback"];
        assert_eq!(record["trigger"], "Automatic");
        assert_eq!(
            (record["fromRevision"].as_i64(), record["toRevision"].as_i64()),
            (Some(2), Some(1))
        );
        assert!(
            record["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("was not Available within 15s"),
            "{record}"
        );
        let obj = wait_condition(&api, "app", "Ready", "True", None, T).await;
        assert_eq!(obj.data["spec"]["capsule"]["version"], "1.0.0");
        assert_eq!(obj.data["status"]["currentRevision"], 3);
        // A few more requests against the rolled-back release, then stop.
        requests.all_succeeded("the upgrade and rollback").await;
        assert!(somastack_tests::event_recorded(&ns.name, "RolledBack"));
        ns.delete().await;
    }

    /// The regression gate on the real nodes: a real candidate behind a real
    /// preview Service, evaluated by the reference agent's evaluation mode,
    /// with the gate's inputs of examples/30-installation.yaml.
    mod gate {
        use k8s_openapi::api::batch::v1::Job;
        use somastack_tests::fixtures::{agent_capsule, on_real_nodes};
        use somastack_tests::real::{Requests, node_of, service_addr, summarize};

        use super::*;

        const T_GATE: Duration = Duration::from_secs(240);
        const TEXT: &str = "Residency rules keep confidential data in the European Union. \
            The operator places each workload only on nodes of its region. \
            A drill proves that a workload survives the loss of its region. \
            Nothing in this test leaves the machine.";

        /// The gate of examples/30-installation.yaml, evaluated by `evaluator`
        /// (a package at 1.0.0), ending after `timeout` seconds.
        fn example_gate(evaluator: &str, timeout: i64) -> Value {
            let example = somastack_tests::read_docs(
                &somastack_tests::repo_root().join("examples/30-installation.yaml"),
            );
            let mut gate = example[0]["spec"]["upgrade"]["gate"].clone();
            assert!(
                gate["inputs"]["corpus"].is_string(),
                "the example has a gate with a corpus"
            );
            gate["capsule"] = json!({ "package": evaluator, "version": "1.0.0" });
            gate["timeoutSeconds"] = json!(timeout);
            gate
        }

        /// A namespace where the reference agent is published as `<prefix>-<suffix>`
        /// 1.0.0 and, with `env`, as 2.0.0, and an Installation `app` of 1.0.0
        /// (2 replicas on the real nodes) gated by 1.0.0 itself, Ready.
        async fn gated(
            prefix: &str,
            env: &[(&str, &str)],
            timeout: i64,
        ) -> (Client, TestNamespace, Value, Api<kube::api::DynamicObject>) {
            let (client, ns) = setup(prefix).await;
            let package = format!("{prefix}-{}", unique_suffix());
            let v1 = agent_capsule(&format!("{package}-1"), &package, "1.0.0", "internal", &[]);
            let v2 = agent_capsule(&format!("{package}-2"), &package, "2.0.0", "internal", env);
            put(&client, ns.owns(&v1)).await;
            put(&client, ns.owns(&v2)).await;
            let mut inst = on_real_nodes(installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2));
            inst["spec"]["upgrade"] = json!({ "gate": example_gate(&package, timeout) });
            let api = put_api(&client, &inst).await;
            let obj = wait_condition(&api, "app", "Ready", "True", None, T).await;
            assert!(
                obj.data["status"]["gate"].is_null(),
                "a first install is not gated: nothing serves yet"
            );
            (client, ns, inst, api)
        }

        async fn gate_phase(api: &Api<kube::api::DynamicObject>, phase: &str) -> kube::api::DynamicObject {
            wait_for(&format!("the gate to end {phase}"), T_GATE, || async {
                let o = api.get("app").await.ok()?;
                (o.data["status"]["gate"]["phase"] == phase).then_some(o)
            })
            .await
        }

        async fn gone<K>(client: &Client, ns: &str, name: &str)
        where
            K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug,
        {
            let api: Api<K> = Api::namespaced(client.clone(), ns);
            wait_for(&format!("{} {name} to be deleted", K::kind(&())), T, || async {
                api.get_opt(name).await.ok()?.is_none().then_some(())
            })
            .await;
        }

        /// The gate mark of revision `n` (its ControllerRevision's annotation).
        async fn revision_mark(client: &Client, ns: &str, n: i64) -> Option<String> {
            let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
            api.get(&format!("app-{n}"))
                .await
                .ok()?
                .annotations()
                .get("somastack.io/gate")
                .cloned()
        }

        /// Pods of `selector` that ran on a real node under containerd.
        async fn ran_on_real_nodes(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            pods.list(&ListParams::default().labels(selector))
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    node_of(p).starts_with("real-")
                        && p.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().all(|c| {
                                    c.container_id
                                        .as_deref()
                                        .is_some_and(|i| i.starts_with("containerd://"))
                                })
                            })
                })
                .collect()
        }

        fn env_of(pod: &Pod, name: &str) -> Option<String> {
            pod.spec.as_ref()?.containers[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        }

        /// A configuration change is a new revision: evaluated behind its
        /// preview Service by the evaluation agent, which compares the
        /// candidate's summaries of the example corpus with those of the
        /// revision serving, finds them equal, and passes it; the candidate is
        /// then promoted and the report stays in status.
        #[tokio::test]
        async fn an_upgrade_whose_evaluation_passes_is_promoted() {
            let (client, ns, mut inst, api) = gated("rgok", &[], 180).await;
            inst["spec"]["config"] = json!({ "RELEASE": "2" });
            put(&client, &inst).await;
            let obj = gate_phase(&api, "Passed").await;
            let gate = &obj.data["status"]["gate"];
            assert_eq!(
                (gate["revision"].as_i64(), gate["baselineRevision"].as_i64()),
                (Some(2), Some(1))
            );
            assert_eq!(gate["reason"], "EvaluationPassed");
            assert_eq!(gate["report"]["verdict"], "Pass", "{gate}");
            let checks = gate["report"]["checks"].as_array().cloned().unwrap_or_default();
            assert!(checks.iter().any(|c| c["name"] == "agreement"), "{gate}");
            assert!(checks.iter().all(|c| c["passed"] == true), "{gate}");
            let obj = wait_condition(&api, "app", "Ready", "True", None, T).await;
            assert_eq!(obj.data["status"]["currentRevision"], 2);
            let config: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
            let served = config.get("app-config").await.expect("the config");
            assert_eq!(
                served.data.unwrap_or_default().get("RELEASE").map(String::as_str),
                Some("2")
            );
            // The evaluation ran as a pod on a real node, and the preview is gone.
            let evaluators = ran_on_real_nodes(&client, &ns.name, "somastack.io/gate-of=app").await;
            assert_eq!(evaluators.len(), 1, "one evaluation pod ran on a real node");
            gone::<Deployment>(&client, &ns.name, "app-preview").await;
            gone::<Service>(&client, &ns.name, "app-preview").await;
            assert_eq!(
                revision_mark(&client, &ns.name, 2).await.as_deref(),
                Some("Passed")
            );
            assert!(somastack_tests::event_recorded(&ns.name, "EvaluatingUpgrade"));
            assert!(somastack_tests::event_recorded(&ns.name, "UpgradePassedGate"));
            ns.delete().await;
        }

        /// A regressed release (AGENT_METHOD=lead: the first sentences instead
        /// of the best) is brought up behind its preview Service, evaluated,
        /// found to disagree with the serving release, removed, and marked
        /// rejected; the Installation is Stalled saying why. Requests sent
        /// through the Service all along, one every 50 ms, all get the serving
        /// release's answer.
        #[tokio::test]
        async fn an_upgrade_whose_evaluation_fails_is_removed_with_no_failed_request() {
            let (client, ns, mut inst, api) = gated("rgfail", &[("AGENT_METHOD", "lead")], 180).await;
            let addr = service_addr(&client, &ns.name, "app", 8080).await;
            let first = wait_for("the Service to answer", T, || async {
                summarize(addr, TEXT, 2).await.ok()
            })
            .await;
            let requests = Requests::start(addr, TEXT, 2, first.clone());

            inst["spec"]["capsule"]["version"] = json!("2.0.0");
            put(&client, &inst).await;
            // The candidate really ran: its preview pod on a real node, with
            // the regressed setting.
            let preview = wait_for("the candidate's preview pod", T_GATE, || async {
                let pods = ran_on_real_nodes(&client, &ns.name, "somastack.io/preview-of=app").await;
                pods.into_iter()
                    .find(|p| env_of(p, "AGENT_METHOD").as_deref() == Some("lead"))
            })
            .await;
            assert!(
                node_of(&preview).starts_with("real-eu-west-1"),
                "{}",
                node_of(&preview)
            );
            let obj = gate_phase(&api, "Failed").await;
            let gate = &obj.data["status"]["gate"];
            assert_eq!(gate["reason"], "EvaluationFailed", "{gate}");
            assert_eq!(gate["report"]["verdict"], "Fail", "{gate}");
            let agreement = gate["report"]["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "agreement").cloned())
                .unwrap_or_default();
            assert_eq!(agreement["passed"], false, "{gate}");
            let obj = wait_condition(&api, "app", "Ready", "False", Some("UpgradeRejected"), T).await;
            let msg = message(&obj, "Ready");
            assert!(
                msg.contains("revision 2 was rejected") && msg.contains("agreement"),
                "{msg}"
            );
            assert!(msg.contains("revision 1 keeps serving"), "{msg}");
            let stalled = condition(&obj, "Stalled").expect("a Stalled condition");
            assert_eq!(
                (stalled["status"].as_str(), stalled["reason"].as_str()),
                (Some("True"), Some("UpgradeRejected"))
            );
            assert_eq!(obj.data["status"]["phase"], "Blocked");
            assert_eq!(obj.data["status"]["currentRevision"], 1);
            assert_eq!(condition(&obj, "Available").expect("Available")["status"], "True");
            wait_event(&ns.name, "UpgradeRejected", T).await;
            gone::<Deployment>(&client, &ns.name, "app-preview").await;
            gone::<Service>(&client, &ns.name, "app-preview").await;
            assert_eq!(
                revision_mark(&client, &ns.name, 2).await.as_deref(),
                Some("Rejected")
            );
            // Only the serving release runs behind the Service.
            let serving = ran_on_real_nodes(&client, &ns.name, "somastack.io/installation=app").await;
            assert_eq!(serving.len(), 2);
            assert!(serving.iter().all(|p| env_of(p, "AGENT_METHOD").is_none()));
            // What `kubectl soma` shows: the gate's record (exit 3: rejected)
            // and the revision marked in the history.
            let shown = soma(&["installation", "gate", "app", "-n", &ns.name, "-o", "json"]);
            assert_eq!(shown.status.code(), Some(3), "{shown:?}");
            let shown: Value = serde_json::from_slice(&shown.stdout).expect("the gate as JSON");
            let now = api.get("app").await.expect("the Installation");
            assert_eq!(shown, now.data["status"]["gate"]);
            let history = soma_ok(&["installation", "history", "app", "-n", &ns.name]);
            let second = history.lines().find(|l| l.starts_with("2 ")).unwrap_or_default();
            assert!(second.contains("Rejected"), "{history}");

            requests.all_succeeded("the gated upgrade").await;
            ns.delete().await;
        }

        /// A release that answers too slowly (AGENT_DELAY) keeps the
        /// evaluation from ending within the gate's 30 s: the gate fails as
        /// timed out and the evaluation Job is stopped. A person then
        /// overrides the gate explicitly: the rejected revision is promoted,
        /// and status and a Warning Event say who set the override.
        #[tokio::test]
        async fn an_evaluation_that_times_out_fails_the_gate_and_an_override_promotes_it() {
            let (client, ns, mut inst, api) = gated("rgslow", &[("AGENT_DELAY", "300s")], 30).await;
            inst["spec"]["upgrade"]["gate"]["inputs"]["requestTimeoutSeconds"] = json!("300");
            inst["spec"]["capsule"]["version"] = json!("2.0.0");
            put(&client, &inst).await;
            let obj = gate_phase(&api, "Failed").await;
            let gate = obj.data["status"]["gate"].clone();
            assert_eq!(gate["reason"], "EvaluationTimedOut", "{gate}");
            assert!(
                gate["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("was not evaluated within 30s"),
                "{gate}"
            );
            wait_condition(&api, "app", "Ready", "False", Some("UpgradeRejected"), T).await;
            let job = gate["job"]
                .as_str()
                .expect("the evaluation Job was started")
                .to_string();
            gone::<Job>(&client, &ns.name, &job).await;
            gone::<Deployment>(&client, &ns.name, "app-preview").await;
            assert_eq!(
                revision_mark(&client, &ns.name, 2).await.as_deref(),
                Some("Rejected")
            );

            // An override of a revision the gate did not reject is refused.
            let refused = soma(&[
                "installation",
                "gate",
                "app",
                "-n",
                &ns.name,
                "--override",
                "1",
                "--reason",
                "test",
            ]);
            assert_eq!(refused.status.code(), Some(1), "{refused:?}");
            soma_ok(&[
                "installation",
                "gate",
                "app",
                "-n",
                &ns.name,
                "--override",
                "2",
                "--reason",
                "slow is acceptable for this test",
            ]);
            let obj = gate_phase(&api, "Overridden").await;
            let by = obj.data["status"]["gate"]["overriddenBy"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(by.starts_with("kubectl-soma at "), "{by}");
            let said = obj.data["status"]["gate"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(said.ends_with(": slow is acceptable for this test"), "{said}");
            wait_event(&ns.name, "GateOverridden", T).await;
            let obj = wait_condition(&api, "app", "Ready", "True", None, T_GATE).await;
            assert_eq!(obj.data["status"]["currentRevision"], 2);
            let serving = ran_on_real_nodes(&client, &ns.name, "somastack.io/installation=app").await;
            assert!(
                serving
                    .iter()
                    .any(|p| env_of(p, "AGENT_DELAY").as_deref() == Some("300s"))
            );
            assert_eq!(
                revision_mark(&client, &ns.name, 2).await.as_deref(),
                Some("Overridden")
            );
            ns.delete().await;
        }
    }
}

#[tokio::test]
async fn a_child_refused_by_a_quota_shows_on_the_installation_and_as_a_warning() {
    let (client, ns, package) = setup_published("quota", "public").await;
    // Something real runs out: the namespace may hold no Service.
    let quota = json!({ "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": { "name": "no-services", "namespace": ns.name },
        "spec": { "hard": { "services": "0" } } });
    put(&client, &quota).await;
    let inst = installation(&ns.name, "app", &package, "1.0.0", "us-east-1", 1);
    let api = put_api(&client, &inst).await;
    let obj = wait_condition(&api, "app", "Ready", "False", Some("ChildRejected"), T).await;
    let msg = message(&obj, "Ready");
    assert!(msg.starts_with("the API server refused Service app: "), "{msg}");
    assert!(msg.contains("exceeded quota: no-services"), "{msg}");
    assert_eq!(obj.data["status"]["phase"], "Blocked");
    wait_event(&ns.name, "ChildRejected", T).await;

    // The quota lifted and the Installation touched: applied again, Ready.
    kube::Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(client.clone(), &ns.name)
        .delete("no-services", &DeleteParams::default())
        .await
        .expect("the quota is deleted");
    let mut touched = inst.clone();
    touched["metadata"]["labels"] = json!({ "touched": "yes" });
    put(&client, &touched).await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        services
            .get_opt("app")
            .await
            .expect("services are readable")
            .is_some()
    );
    ns.delete().await;
}
