//! What GitOps tools make of SomaStack objects, read from the real control
//! plane in each state a user meets: kstatus (sigs.k8s.io/cli-utils, as Flux
//! computes health) and Argo CD's health scripts (gitops/argocd, run by
//! gopher-lua, the interpreter Argo CD embeds), both through `verdicts`
//! (hack/verdicts, built by hack/build-checkers.sh). Pods run on kwok nodes
//! here: what is under test is how our status reads, not whether an agent
//! works (the real-node tests and `hack/run.sh --check` cover that).
//!
//! `SOMASTACK_GITOPS_CAPTURE=1` also writes each object judged into the
//! Argo CD test data (gitops/argocd/resource_customizations/.../testdata),
//! which `verdicts test` replays offline.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    bundle, capsule, condition, installation, put, put_api, put_policy, wait_condition,
};
use somastack_tests::users::{PUBLISHER_ROLE, REVIEWER_ROLE, user};
use somastack_tests::{repo_root, setup, unique_suffix, wait_for};

const T: Duration = Duration::from_secs(120);

/// One tool's reading.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Reading {
    kstatus: String,
    argocd: String,
    /// Both messages, for assertions on the reason shown.
    messages: String,
    object: Value,
}

fn verdicts() -> PathBuf {
    somastack_tests::checker("verdicts")
}

fn argocd_dir() -> PathBuf {
    repo_root().join("gitops/argocd")
}

/// What kstatus and Argo CD's script make of the object now.
fn read(resource: &str, namespace: &str, name: &str) -> Reading {
    let out = Command::new(verdicts())
        .arg("read")
        .arg("--kubeconfig")
        .arg(somastack_tests::kubeconfig_path())
        .arg("--lua")
        .arg(argocd_dir())
        .args([resource, namespace, name])
        .output()
        .expect("verdicts runs");
    assert!(
        out.status.success(),
        "verdicts read {resource} {namespace} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("verdicts prints JSON");
    Reading {
        kstatus: v["kstatus"]["status"].as_str().unwrap_or_default().into(),
        argocd: v["argocd"]["status"].as_str().unwrap_or_default().into(),
        messages: format!("{} | {}", v["kstatus"]["message"], v["argocd"]["message"]),
        object: v["object"].clone(),
    }
}

/// Waits until kstatus says `kstatus` and Argo CD `argocd` about the object,
/// with Argo CD's message naming `reason` (a state can pass through another
/// with the same verdicts, e.g. a missed deadline before the rollback it
/// causes); returns the reading.
async fn reads(resource: &str, ns: &str, name: &str, kstatus: &str, argocd: &str, reason: &str) -> Reading {
    let what = format!("{resource}/{name} to read {kstatus} (kstatus) and {argocd} (Argo CD)");
    let mut last = None;
    let found = tokio::time::timeout(T, async {
        loop {
            let r = read(resource, ns, name);
            if r.kstatus == kstatus && r.argocd == argocd && r.messages.contains(reason) {
                return r;
            }
            last = Some(r);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let r = found.unwrap_or_else(|_| panic!("timed out waiting for {what} ({reason}); last: {last:?}"));
    capture(resource, name, argocd, reason, &r);
    r
}

/// With SOMASTACK_GITOPS_CAPTURE set: the object as read, as Argo CD test data.
fn capture(resource: &str, name: &str, argocd: &str, reason: &str, r: &Reading) {
    if std::env::var_os("SOMASTACK_GITOPS_CAPTURE").is_none() {
        return;
    }
    let kind = r.object["kind"].as_str().unwrap_or(resource).to_string();
    let dir = argocd_dir()
        .join("resource_customizations/somastack.io")
        .join(&kind)
        .join("testdata");
    std::fs::create_dir_all(&dir).expect("testdata folder");
    let mut obj = r.object.clone();
    if let Some(m) = obj["metadata"].as_object_mut() {
        for noise in ["managedFields", "uid", "resourceVersion", "creationTimestamp"] {
            m.remove(noise);
        }
    }
    let file = dir.join(format!(
        "{}-{}.yaml",
        argocd.to_lowercase(),
        reason.to_lowercase()
    ));
    let text = serde_saphyr::to_string(&obj).expect("YAML");
    std::fs::write(&file, text).expect("write testdata");
    eprintln!("captured {name} into {}", file.display());
}

#[tokio::test]
async fn the_argocd_scripts_pass_their_own_tests_and_match_the_snippet() {
    let run = |cmd: &str| {
        let out = Command::new(verdicts())
            .args([cmd])
            .arg(argocd_dir())
            .output()
            .expect("verdicts runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "verdicts {cmd}: {text}");
        text
    };
    // Each kind's copy of health.lua and the argocd-cm snippet are current.
    run("check");
    // Argo CD's health_test.yaml of every kind, on objects read from the cluster.
    let text = run("test");
    for kind in [
        "Capsule",
        "DrDrill",
        "Installation",
        "KamachiqProject",
        "PolicyBundle",
    ] {
        assert!(
            text.contains(&format!("ok {kind}/")),
            "{kind} has no passing case: {text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test]
async fn capsules_read_awaiting_review_rejected_and_installable() {
    let (client, ns) = setup("gitops-cap").await;
    let publisher = user(&client, "publisher", &[PUBLISHER_ROLE]).await;
    let reviewer = user(&client, "reviewer", &[REVIEWER_ROLE]).await;
    let package = format!("gcap-{}", unique_suffix());
    let policy = bundle(
        &package,
        &ns.name,
        json!({ "trust": { "requireApproval": true } }),
    );
    put_policy(&client, ns.owns(&policy)).await;
    let cap = capsule(&package, &package, "1.0.0", "internal");
    put(&publisher.client, ns.owns(&cap)).await;
    reads(
        "capsules",
        "",
        &package,
        "InProgress",
        "Suspended",
        "AwaitingReview",
    )
    .await;

    // Rejected: failed until a new version is published, or approved.
    let review = |decision: &str| {
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule", "metadata": { "name": package,
                "annotations": { "review.somastack.io/decision": decision } } })
    };
    somastack_tests::apply_as(&reviewer.client, &review("reject"), "reviewer")
        .await
        .expect("rejected");
    reads("capsules", "", &package, "Failed", "Degraded", "Rejected").await;
    somastack_tests::apply_as(&reviewer.client, &review("approve"), "reviewer")
        .await
        .expect("approved");
    reads("capsules", "", &package, "Current", "Healthy", "Installable").await;
    ns.delete().await;
}

#[tokio::test]
async fn bundles_read_ready_with_or_without_a_kill_switch() {
    let (client, ns) = setup("gitops-pb").await;
    let name = format!("gpb-{}", unique_suffix());
    let mut policy = bundle(&name, &ns.name, json!({ "killSwitch": { "engaged": false } }));
    put_policy(&client, ns.owns(&policy)).await;
    reads("policybundles", "", &name, "Current", "Healthy", "Enforcing").await;
    // An engaged kill switch is the bundle doing what it says.
    policy["spec"]["killSwitch"] = json!({ "engaged": true, "reason": "incident 12" });
    put(&client, &policy).await;
    reads(
        "policybundles",
        "",
        &name,
        "Current",
        "Healthy",
        "KillSwitchEngaged",
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn installations_read_progressing_ready_failed_rolled_back_and_stopped() {
    let (client, ns) = setup("gitops-inst").await;
    let package = format!("ginst-{}", unique_suffix());
    for version in ["1.0.0", "2.0.0"] {
        let cap = capsule(
            &format!("{package}-{}", &version[..1]),
            &package,
            version,
            "internal",
        );
        put(&client, ns.owns(&cap)).await;
    }
    let policy = bundle(&package, &ns.name, json!({ "killSwitch": { "engaged": false } }));
    put_policy(&client, ns.owns(&policy)).await;
    let n = &ns.name;

    // No node serves region nowhere-1: the rollout makes no progress, then
    // misses its deadline.
    let mut inst = installation(n, "app", &package, "1.0.0", "nowhere-1", 1);
    inst["spec"]["upgrade"] = json!({ "autoRollback": true, "progressDeadlineSeconds": 15 });
    let api = put_api(&client, &inst).await;
    reads(
        "installations",
        n,
        "app",
        "InProgress",
        "Progressing",
        "RollingOut",
    )
    .await;
    reads(
        "installations",
        n,
        "app",
        "Failed",
        "Degraded",
        "ProgressDeadlineExceeded",
    )
    .await;

    // Moved to a region with nodes: Ready.
    inst["spec"]["region"] = json!("eu-west-1");
    put(&client, &inst).await;
    reads("installations", n, "app", "Current", "Healthy", "WorkloadReady").await;

    // An upgrade that cannot come up is rolled back automatically: the old
    // version serves again, and the Installation reads Failed until its spec
    // changes, in the rollback's words.
    inst["spec"]["capsule"]["version"] = json!("2.0.0");
    inst["spec"]["region"] = json!("nowhere-1");
    put(&client, &inst).await;
    let r = reads("installations", n, "app", "Failed", "Degraded", "RolledBack").await;
    assert!(r.messages.contains("rolled back to revision"), "{}", r.messages);
    let obj = api.get("app").await.expect("installation");
    assert_eq!(
        obj.data["spec"]["capsule"]["version"], "1.0.0",
        "the rollback restored 1.0.0"
    );
    assert_eq!(
        condition(&obj, "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );

    // A kill switch stops it: waiting for a person to release it.
    let mut stopped = policy.clone();
    stopped["spec"]["killSwitch"] = json!({ "engaged": true, "reason": "incident 13" });
    put(&client, &stopped).await;
    reads(
        "installations",
        n,
        "app",
        "InProgress",
        "Suspended",
        "KillSwitchEngaged",
    )
    .await;
    ns.delete().await;
}

/// A drill of the Installation `app`.
fn drill(ns: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["installationRef"] = json!({ "name": "app" });
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": { "name": name, "namespace": ns }, "spec": spec })
}

#[tokio::test]
async fn drills_read_scheduled_suspended_running_and_failed() {
    let (client, ns) = setup("gitops-drill").await;
    let package = format!("gdrill-{}", unique_suffix());
    let mut cap = capsule(&package, &package, "1.0.0", "confidential");
    // Replacement pods take 6 s to get ready (hack/kwok-stages.yaml).
    cap["spec"]["readyPath"] = json!("/slow-ready");
    put(&client, ns.owns(&cap)).await;
    let mut inst = installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2);
    inst["spec"]["failoverRegions"] = json!(["eu-central-1"]);
    let api = put_api(&client, &inst).await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;
    let n = &ns.name;

    // Scheduled once a year: Ready until its first run.
    let yearly = json!({ "scenario": "RegionOutage", "schedule": "0 3 1 1 *",
                         "objectives": { "rtoSeconds": 60 } });
    let drills: Api<DynamicObject> = put_api(&client, &drill(n, "yearly", yearly.clone())).await;
    reads("drdrills", n, "yearly", "Current", "Healthy", "Scheduled").await;
    let mut paused = yearly;
    paused["suspend"] = json!(true);
    put(&client, &drill(n, "yearly", paused)).await;
    reads("drdrills", n, "yearly", "Current", "Suspended", "Suspended").await;
    drills
        .delete("yearly", &Default::default())
        .await
        .expect("delete drill");

    // A run with an objective it cannot meet: running, then failed.
    let tight = json!({ "scenario": "RegionOutage", "objectives": { "rtoSeconds": 2 } });
    put(&client, &drill(n, "tight", tight)).await;
    reads("drdrills", n, "tight", "InProgress", "Progressing", "Running").await;
    reads("drdrills", n, "tight", "Failed", "Degraded", "DrillFailed").await;
    wait_for("the failed drill to restore", T, || async {
        let d = drills.get("tight").await.ok()?;
        d.data["status"]["run"].is_null().then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn projects_read_awaiting_approval_running_suspended_succeeded_and_failed() {
    let (client, ns) = setup("gitops-kp").await;
    let package = format!("gkp-{}", unique_suffix());
    put(
        &client,
        ns.owns(&capsule(&package, &package, "1.0.0", "internal")),
    )
    .await;
    let n = &ns.name;
    let task = |name: &str, deps: &[&str], input: &str| {
        json!({ "name": name, "capsule": { "package": package, "version": "1.0.0" },
                "dependsOn": deps, "input": input })
    };
    let project = |name: &str, spec: Value| {
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                "metadata": { "name": name, "namespace": n }, "spec": spec })
    };

    // The approval gate holds the plan: waiting for a reviewer.
    let gated = json!({ "goal": "g", "approval": { "required": true }, "tasks": [task("a", &[], "a")] });
    put(&client, &project("gated", gated)).await;
    reads(
        "kamachiqprojects",
        n,
        "gated",
        "InProgress",
        "Suspended",
        "AwaitingApproval",
    )
    .await;

    // A task that runs a minute (hack/kwok-stages.yaml): running, then
    // suspended by its spec.
    let mut long = json!({ "goal": "g", "tasks": [task("slow", &[], "kwok:run=60s")] });
    put(&client, &project("long", long.clone())).await;
    reads(
        "kamachiqprojects",
        n,
        "long",
        "InProgress",
        "Progressing",
        "Running",
    )
    .await;
    long["suspend"] = json!(true);
    put(&client, &project("long", long)).await;
    reads("kamachiqprojects", n, "long", "Current", "Suspended", "Suspended").await;

    // One short task (kwok's agent stand-in answers in a second): succeeded.
    let short = json!({ "goal": "g", "tasks": [task("quick", &[], "q")] });
    put(&client, &project("short", short)).await;
    reads(
        "kamachiqprojects",
        n,
        "short",
        "Current",
        "Healthy",
        "AllTasksSucceeded",
    )
    .await;

    // A task that fails every attempt (hack/kwok-stages.yaml), with no
    // retry: the project fails for good. (A plan with a cycle is refused
    // when written now.)
    let mut broken = task("a", &[], "kwok:fail");
    broken["retries"] = json!(0);
    put(
        &client,
        &project("broken", json!({ "goal": "g", "tasks": [broken] })),
    )
    .await;
    reads(
        "kamachiqprojects",
        n,
        "broken",
        "Failed",
        "Degraded",
        "TasksFailed",
    )
    .await;
    ns.delete().await;
}
