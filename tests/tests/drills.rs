//! DrDrills against the real control plane: kwok nodes in four regions, the
//! real scheduler, Deployment controller and taint manager. Needs the
//! operator that hack/test.sh starts (it skips drills labelled
//! `somastack.io/drill-shard`, which the crash test's own operator takes).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    agent_capsule, bundle, capsule, installation, on_real_nodes, put, put_api, put_policy, setup_published,
    wait_condition,
};
use somastack_tests::{TestNamespace, api_for, setup, spawn_shard_operator, unique_suffix, wait_for};

const T: Duration = Duration::from_secs(90);
const STEPS: [&str; 7] = [
    "Validate", "Snapshot", "Inject", "Failover", "Verify", "Restore", "Report",
];
const TAINT_KEY: &str = "somastack.io/drill-outage";

/// A namespace with a Ready Installation `app` of a fresh confidential
/// capsule in `region`, failing over to `failover`.
struct Target {
    ns: TestNamespace,
    installation: Value,
    region: String,
}

impl Target {
    /// The client and the target: what every kwok drill test starts with.
    async fn new(prefix: &str, region: &str, failover: &str, ready_path: &str) -> (Client, Target) {
        let capsule_of = |package: &str| {
            let mut cap = capsule(package, package, "1.0.0", "confidential");
            cap["spec"]["readyPath"] = json!(ready_path);
            cap
        };
        Target::start(prefix, region, failover, capsule_of, std::convert::identity).await
    }

    /// The same on the real nodes: the reference agent, whose readiness
    /// a real probe checks (tests in `real_node`).
    async fn real(prefix: &str, region: &str, failover: &str) -> (Client, Target) {
        let capsule_of = |package: &str| agent_capsule(package, package, "1.0.0", "confidential", &[]);
        Target::start(prefix, region, failover, capsule_of, on_real_nodes).await
    }

    /// `capsule_of(package)` gives the Capsule; `place` adjusts the Installation.
    async fn start(
        prefix: &str,
        region: &str,
        failover: &str,
        capsule_of: impl FnOnce(&str) -> Value,
        place: impl FnOnce(Value) -> Value,
    ) -> (Client, Target) {
        let (client, ns) = setup(prefix).await;
        let package = format!("{prefix}-{}", unique_suffix());
        put(&client, ns.owns(&capsule_of(&package))).await;
        let mut inst = place(installation(&ns.name, "app", &package, "1.0.0", region, 2));
        inst["spec"]["failoverRegions"] = json!([failover]);
        let api = put_api(&client, &inst).await;
        wait_condition(&api, "app", "Ready", "True", None, T).await;
        let target = Target {
            ns,
            installation: inst,
            region: region.into(),
        };
        (client, target)
    }

    /// Applies the drill `name` of `spec` on the Installation; the DrDrills' API.
    async fn start_drill(&self, client: &Client, name: &str, spec: Value) -> Api<DynamicObject> {
        put_api(client, &self.drill(name, spec)).await
    }

    fn drill(&self, name: &str, spec: Value) -> Value {
        drill(&self.ns.name, name, spec)
    }

    /// The Installation is home: no drill annotation left, every pod in its
    /// home region, as many Ready as it asks for.
    async fn assert_home(&self, client: &Client) {
        let api = api_for(client, &self.installation).await;
        let inst = api.get("app").await.unwrap();
        let annotations = inst.annotations();
        for key in [
            "somastack.io/active-region",
            "somastack.io/unavailable-regions",
            "somastack.io/drill",
        ] {
            assert!(
                !annotations.contains_key(key),
                "{key} left on the Installation: {annotations:?}"
            );
        }
        assert_eq!(inst.data["status"]["activeRegion"], self.region.as_str());
        let regions = pod_regions(client, &self.ns.name).await;
        assert!(
            regions.iter().all(|(_, r)| r == &self.region) && regions.len() >= 2,
            "pods: {regions:?}"
        );
    }

    /// Waits until the workload is back in its home region (the drill
    /// restored it), then asserts it is home as [`Target::assert_home`] does.
    async fn back_home(&self, client: &Client) {
        let what = format!("the workload back home in {}", self.region);
        wait_for(&what, T, || async {
            let r = pod_regions(client, &self.ns.name).await;
            (r.len() >= 2 && r.iter().all(|(_, r)| *r == self.region)).then_some(())
        })
        .await;
        self.assert_home(client).await;
    }

    async fn delete(self) {
        self.ns.delete().await;
    }
}

/// (pod, region of its node) for the Installation's live pods.
async fn pod_regions(client: &Client, ns: &str) -> Vec<(String, String)> {
    let nodes: BTreeMap<String, String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|n| {
            let region = n
                .labels()
                .get("topology.kubernetes.io/region")
                .cloned()
                .unwrap_or_default();
            (n.name_any(), region)
        })
        .collect();
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("somastack.io/installation=app"))
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            (
                p.metadata.name.unwrap_or_default(),
                nodes.get(&node).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Nodes carrying a drill taint with `value` (a drill's uid), or any drill taint.
async fn tainted(client: &Client, value: Option<&str>) -> Vec<String> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|n| {
            n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.key == TAINT_KEY && value.is_none_or(|v| t.value.as_deref() == Some(v)))
            })
        })
        .map(|n| n.name_any())
        .collect()
}

/// The DrDrill `name` in `ns` of `spec`, on the Installation `app`.
fn drill(ns: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["installationRef"] = json!({ "name": "app" });
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": { "name": name, "namespace": ns }, "spec": spec })
}

/// A drill spec: `scenario` with an RTO objective of `rto_seconds`.
fn scenario(scenario: &str, rto_seconds: u32) -> Value {
    json!({ "scenario": scenario, "objectives": { "rtoSeconds": rto_seconds } })
}

/// Waits for the drill's status to satisfy `check`.
async fn wait_drill(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("drill {name}: {what}"), T, || async {
        let obj = api.get(name).await.ok()?;
        let status = obj.data["status"].clone();
        check(&status).then_some(status)
    })
    .await
}

/// The drill's `Succeeded` condition (conditions are sorted by type, and
/// `Ready` comes first).
fn succeeded(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Succeeded"))
        .unwrap_or(&Value::Null)
}

fn finished(s: &Value) -> bool {
    s["run"].is_null()
        && matches!(s["phase"].as_str(), Some("Succeeded" | "Failed"))
        && s["history"].is_array()
}

fn steps(status: &Value) -> Vec<(String, String)> {
    status["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| {
                    (
                        e["step"].as_str().unwrap_or_default().to_string(),
                        e["outcome"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_too_tight_rto_objective_fails_the_verdict() {
    // Replacement pods take 6 s to get ready (hack/kwok-stages.yaml).
    let (client, t) = Target::new("tight", "eu-west-1", "eu-central-1", "/slow-ready").await;
    let api = t.start_drill(&client, "tight", scenario("RegionOutage", 2)).await;
    let status = wait_drill(&api, "tight", "finished", finished).await;
    assert_eq!(status["verdict"], "Fail", "{status:#}");
    let rto = status["measuredRtoSeconds"].as_f64().expect("an RTO");
    assert!(rto > 2.0, "{rto}");
    let message = status["history"][0]["message"].as_str().unwrap();
    assert_eq!(message, format!("recovered in {rto:.1}s, over the 2s objective"));
    assert_eq!(succeeded(&status)["reason"], "DrillFailed");
    t.assert_home(&client).await;
    t.delete().await;
}

#[tokio::test]
async fn a_failover_region_residency_forbids_is_a_finding_never_executed() {
    let (client, t) = Target::new("refused", "eu-west-1", "us-east-1", "/readyz").await;
    let s = unique_suffix();
    let policy = bundle(
        &format!("drill-res-{s}"),
        &t.ns.name,
        json!({ "residency": { "rules": [{ "dataClassification": "confidential", "allowedRegions": ["eu-west-1", "eu-central-1"] }] } }),
    );
    put_policy(&client, t.ns.owns(&policy)).await;
    let api = t
        .start_drill(&client, "refused", scenario("RegionOutage", 120))
        .await;
    let status = wait_drill(&api, "refused", "finished", finished).await;
    assert_eq!(status["verdict"], "Fail");
    let got = steps(&status);
    assert_eq!(
        got[0],
        ("Validate".to_string(), "Failed".to_string()),
        "{status:#}"
    );
    assert!(
        !got.iter().any(|(s, _)| s == "Inject" || s == "Failover"),
        "nothing injected: {got:?}"
    );
    let restore = status["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["step"] == "Restore"))
        .map(|e| e["message"].clone());
    assert_eq!(
        restore,
        Some(json!("nothing was injected; releasing the drill lock")),
        "{status:#}"
    );
    let message = status["history"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("failover to us-east-1 refused by policy")
            && message.contains(&format!("rule residency, PolicyBundle drill-res-{s}")),
        "{message}"
    );
    assert!(status["measuredRtoSeconds"].is_null());
    t.assert_home(&client).await;
    t.delete().await;
}

#[tokio::test]
async fn scope_region_taints_the_region_and_untaints_it() {
    // ap-south-1 is reserved for this test (hack/nodes.sh).
    let (client, t) = Target::new("region", "ap-south-1", "eu-central-1", "/readyz").await;
    let mut spec = scenario("RegionOutage", 120);
    spec["scope"] = json!("Region");
    let api = t.start_drill(&client, "region", spec).await;
    let uid = api.get("region").await.unwrap().uid().unwrap();
    let during = wait_for("the region's nodes to be tainted", T, || async {
        let nodes = tainted(&client, Some(&uid)).await;
        (!nodes.is_empty()).then_some(nodes)
    })
    .await;
    assert_eq!(during, ["kwok-ap-south-1-a", "kwok-ap-south-1-b"]);
    let status = wait_drill(&api, "region", "finished", finished).await;
    assert_eq!(status["verdict"], "Pass", "{status:#}");
    assert!(
        status["timeline"][2]["message"]
            .as_str()
            .unwrap()
            .contains("every node of ap-south-1 tainted"),
        "{status:#}"
    );
    assert_eq!(
        tainted(&client, Some(&uid)).await,
        Vec::<String>::new(),
        "untainted"
    );
    t.back_home(&client).await;
    t.delete().await;
}

/// GitOps applies a drill and its Installation in one sync: the drill
/// waits for its target to exist and become Ready instead of failing.
#[tokio::test]
async fn a_drill_applied_before_its_installation_waits_for_it() {
    let (client, ns, package) = setup_published("together", "confidential").await;
    let api = put_api(&client, &drill(&ns.name, "early", scenario("PodLoss", 60))).await;
    let waiting = wait_drill(&api, "early", "waiting for its target", |s| {
        succeeded(s)["reason"] == "WaitingForTarget"
    })
    .await;
    assert_eq!(
        succeeded(&waiting)["message"],
        "waiting for Installation app to be created",
        "{waiting:#}"
    );
    assert!(
        waiting["history"].as_array().is_none_or(|h| h.is_empty()),
        "{waiting:#}"
    );
    put(
        &client,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2),
    )
    .await;
    let status = wait_drill(&api, "early", "finished", finished).await;
    assert_eq!(status["verdict"], "Pass", "{status:#}");
    assert_eq!(
        steps(&status)[0],
        ("Validate".to_string(), "Succeeded".to_string()),
        "{status:#}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn suspend_and_delete_abort_and_restore_and_a_second_drill_waits() {
    let (client, t) = Target::new("abort", "eu-west-1", "eu-central-1", "/slow-ready").await;
    let api = t
        .start_drill(&client, "first", scenario("RegionOutage", 120))
        .await;
    wait_drill(&api, "first", "verifying", |s| s["run"]["step"] == "Verify").await;

    // A second drill on the same Installation waits, saying why.
    let _ = t.start_drill(&client, "second", scenario("PodLoss", 60)).await;
    let waiting = wait_drill(&api, "second", "waiting", |s| s["phase"] == "Waiting").await;
    assert_eq!(succeeded(&waiting)["reason"], "WaitingForInstallation");
    assert_eq!(
        succeeded(&waiting)["message"],
        "DrDrill first is acting on Installation app; this run starts when it ends"
    );

    // Suspend: the run ends, restored, and no new one starts.
    api.patch(
        "first",
        // A field manager of its own: it states only `suspend`.
        &PatchParams::apply("drill-suspender").force(),
        &Patch::Apply(json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": { "name": "first" }, "spec": { "suspend": true } })),
    )
    .await
    .unwrap();
    let status = wait_drill(&api, "first", "suspended", |s| s["phase"] == "Suspended").await;
    assert_eq!(status["history"][0]["verdict"], "Fail");
    assert_eq!(
        status["history"][0]["message"],
        "aborted: the drill was suspended"
    );

    // The second one now runs, and passes.
    let status = wait_drill(&api, "second", "finished", finished).await;
    assert_eq!(status["verdict"], "Pass", "{status:#}");

    // Delete in the middle of a run: restored before the drill goes away.
    let _ = t
        .start_drill(&client, "third", scenario("RegionOutage", 120))
        .await;
    wait_drill(&api, "third", "verifying", |s| s["run"]["step"] == "Verify").await;
    api.delete("third", &DeleteParams::default()).await.unwrap();
    wait_for("the deleted drill to go", T, || async {
        api.get_opt("third").await.ok()?.is_none().then_some(())
    })
    .await;
    t.back_home(&client).await;
    t.delete().await;
}

#[tokio::test]
async fn an_operator_killed_mid_drill_resumes_and_restores() {
    let (client, t) = Target::new("crash", "eu-west-1", "eu-central-1", "/slow-ready").await;
    let shard = format!("crash-{}", unique_suffix());
    let selector = format!("somastack.io/drill-shard={shard}");
    let start = || spawn_shard_operator(&selector, "somastack.io/project-shard=none");
    let mut operator = start();
    let mut doc = t.drill("crash", scenario("RegionOutage", 120));
    doc["metadata"]["labels"] = json!({ "somastack.io/drill-shard": shard });
    let api = put_api(&client, &doc).await;
    // Killed after the outage was injected and the failover made.
    wait_drill(&api, "crash", "verifying", |s| s["run"]["step"] == "Verify").await;
    operator.start_kill().unwrap();
    let _ = operator.wait().await;
    let inst = api_for(&client, &t.installation).await.get("app").await.unwrap();
    assert_eq!(
        inst.annotations()
            .get("somastack.io/active-region")
            .map(String::as_str),
        Some("eu-central-1"),
        "displaced while the operator is down"
    );

    // Restarted: it picks the run up where it was, then restores.
    let mut operator = start();
    let status = wait_drill(&api, "crash", "finished", finished).await;
    assert_eq!(status["verdict"], "Pass", "{status:#}");
    let uid = api.get("crash").await.unwrap().uid().unwrap();
    assert_eq!(tainted(&client, Some(&uid)).await, Vec::<String>::new());
    t.back_home(&client).await;
    let _ = operator.start_kill();
    let _ = operator.wait().await;
    t.delete().await;
}

#[tokio::test]
async fn a_schedule_makes_runs_that_never_overlap() {
    let (client, t) = Target::new("cron", "us-east-1", "eu-central-1", "/readyz").await;
    let mut spec = scenario("PodLoss", 60);
    spec["schedule"] = json!("* * * * *");
    spec["historyLimit"] = json!(3);
    let api = t.start_drill(&client, "cron", spec).await;
    let scheduled = wait_drill(&api, "cron", "scheduled", |s| s["nextRunTime"].is_string()).await;
    assert_eq!(scheduled["phase"], "Scheduled");
    let status = wait_for("two runs", Duration::from_secs(200), || async {
        let obj = api.get("cron").await.ok()?;
        let s = obj.data["status"].clone();
        (s["history"].as_array().map(Vec::len) >= Some(2)).then_some(s)
    })
    .await;
    let (newer, older) = (&status["history"][0], &status["history"][1]);
    let time = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert!(
        time(&newer["start"]) >= time(&older["end"]),
        "no overlap: {status:#}"
    );
    let apart = time(&newer["start"]).as_second() - time(&older["start"]).as_second();
    assert!(apart >= 50, "runs a schedule period apart: {apart}s");
    for run in [newer, older] {
        assert_eq!(run["verdict"], "Pass", "{status:#}");
    }
    t.delete().await;
}

/// On the real nodes: the drills move and kill pods that containerd runs,
/// and the RTO is the time until real readiness probes pass again.
mod real_node {
    use somastack_tests::real::{node_of, pods_on_real_nodes};

    use super::*;

    const APP: &str = "somastack.io/installation=app";

    #[tokio::test]
    async fn region_outage_passes_with_a_measured_rto_and_a_full_timeline() {
        let (client, t) = Target::real("outage", "eu-west-1", "eu-central-1").await;
        let before = pods_on_real_nodes(&client, &t.ns.name, APP).await;
        assert!(
            before.iter().all(|p| node_of(p) == "real-eu-west-1"),
            "pods start at home"
        );
        let api = t
            .start_drill(&client, "outage", scenario("RegionOutage", 120))
            .await;

        let status = wait_drill(&api, "outage", "finished", finished).await;
        assert_eq!(status["verdict"], "Pass", "{status:#}");
        let rto = status["measuredRtoSeconds"].as_f64().expect("an RTO");
        eprintln!("region outage drill: measured RTO {rto}s");
        assert!((0.0..=120.0).contains(&rto), "{rto}");
        let got = steps(&status);
        assert_eq!(
            got,
            STEPS
                .iter()
                .map(|s| (s.to_string(), "Succeeded".to_string()))
                .collect::<Vec<_>>(),
            "{status:#}"
        );
        for e in status["timeline"].as_array().unwrap() {
            assert!(e["start"].is_string() && e["end"].is_string(), "{e}");
        }
        // Verify saw the workload recovered in the failover region.
        let verify = &status["timeline"][4];
        assert_eq!(
            verify["message"],
            format!("2 replica(s) ready in eu-central-1; RTO {rto:.1}s"),
            "{verify}"
        );
        assert_eq!(status["history"][0]["verdict"], "Pass");
        assert_eq!(status["history"][0]["measuredRtoSeconds"].as_f64(), Some(rto));
        let cond = succeeded(&status);
        assert_eq!(
            (cond["type"].as_str(), cond["status"].as_str()),
            (Some("Succeeded"), Some("True"))
        );
        // Ready too (kstatus and Argo CD read it): a passed drill is Current.
        let ready = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| (c["status"].clone(), c["reason"].clone()));
        assert_eq!(ready, Some((json!("True"), json!("DrillPassed"))), "{status:#}");
        // Restored: home again, no finalizer left.
        t.back_home(&client).await;
        let home = pods_on_real_nodes(&client, &t.ns.name, APP).await;
        assert!(
            home.iter().all(|p| node_of(p) == "real-eu-west-1"),
            "home on real-eu-west-1 again"
        );
        assert!(api.get("outage").await.unwrap().finalizers().is_empty());
        assert!(somastack_tests::event_recorded(&t.ns.name, "DrillPassed"));

        // The summary: the CLI (table and JSON) and the metrics.
        let cli = |args: &[&str]| {
            let mut all = vec!["drill", "summary", "-n", &t.ns.name];
            all.extend_from_slice(args);
            somastack_tests::soma_ok(&all)
        };
        let rows: Value = serde_json::from_str(&cli(&["-o", "json"])).expect("JSON");
        assert_eq!(rows[0]["installation"], "app");
        assert_eq!(
            (rows[0]["runs"].as_u64(), rows[0]["passRate"].as_f64()),
            (Some(1), Some(1.0))
        );
        assert_eq!(rows[0]["worstRtoSeconds"].as_f64(), Some(rto));
        let table = cli(&[]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE") && lines[0].contains("MEDIAN-RTO"),
            "{table}"
        );
        assert!(lines[1].contains("app") && lines[1].contains("100%"), "{table}");
        let (_, metrics) = somastack_tests::http_get(somastack_tests::metrics_port(), "/metrics")
            .await
            .expect("/metrics");
        let runs = format!(
            "somastack_drill_runs_total{{namespace=\"{}\",drill=\"outage\",verdict=\"Pass\"}} 1",
            t.ns.name
        );
        assert!(metrics.contains(&runs), "{runs} in:\n{metrics}");
        assert!(
            metrics.contains(&format!(
                "somastack_drill_last_rto_seconds{{namespace=\"{}\",drill=\"outage\"}}",
                t.ns.name
            )),
            "{metrics}"
        );
        t.delete().await;
    }

    #[tokio::test]
    async fn pod_loss_recovers_in_place() {
        let (client, t) = Target::real("podloss", "eu-central-1", "eu-west-1").await;
        pods_on_real_nodes(&client, &t.ns.name, APP).await;
        let before: Vec<String> = pod_regions(&client, &t.ns.name)
            .await
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let api = t.start_drill(&client, "podloss", scenario("PodLoss", 60)).await;
        let status = wait_drill(&api, "podloss", "finished", finished).await;
        assert_eq!(status["verdict"], "Pass", "{status:#}");
        assert!(status["measuredRtoSeconds"].as_f64().is_some());
        let got = steps(&status);
        assert!(
            got.contains(&("Failover".to_string(), "Skipped".to_string())),
            "{got:?}"
        );
        assert!(
            got.contains(&("Verify".to_string(), "Succeeded".to_string())),
            "{got:?}"
        );
        let after = pod_regions(&client, &t.ns.name).await;
        assert!(
            after
                .iter()
                .all(|(p, r)| !before.contains(p) && r == "eu-central-1"),
            "{before:?} -> {after:?}"
        );
        let after_pods = pods_on_real_nodes(&client, &t.ns.name, APP).await;
        assert!(
            after_pods.iter().all(|p| node_of(p) == "real-eu-central-1"),
            "replaced in place, on the real node"
        );
        t.delete().await;
    }
}
