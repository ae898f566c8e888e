//! What one change costs the operator: creating many Installations of one
//! Capsule must not requeue every Installation on each status write of the
//! Capsule (its count of Installations) or of a PolicyBundle (its audit);
//! counted from the running operator's own metrics. Once they are Ready,
//! the operator writes nothing more about them: counted from the API
//! server's audit log of the operator's requests (hack/cluster-up.sh keeps
//! it). A test binary of its own, so no other test's objects are reconciled
//! while it counts (cargo runs test binaries one after another). Needs the
//! operator running (hack/test.sh).

use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::time::Duration;

use kube::Api;
use kube::api::DynamicObject;
use somastack_tests::fixtures::{installation, put, setup_published, wait_condition};
use somastack_tests::{api_for, metric, wait_for};

const INSTALLATIONS: usize = 50;
/// Reconciles one Installation may cost on average: its creation, and what
/// its Deployment reports as the rollout progresses and completes.
const RECONCILES_EACH: usize = 3;

/// `somastack_reconcile_total{kind="<kind>"}` as the operator reports it now.
async fn reconciles(kind: &str) -> f64 {
    metric(&format!("somastack_reconcile_total{{kind=\"{kind}\"}}")).await
}

/// The API server's audit log of the operator's requests (hack/cluster-up.sh).
fn audit_log() -> PathBuf {
    let cluster = std::env::var("SOMASTACK_CLUSTER").unwrap_or_else(|_| "somastack".into());
    somastack_tests::repo_root().join(format!(".local/kwok/clusters/{cluster}/logs/audit.log"))
}

/// Where the audit log ends now.
fn audit_end() -> u64 {
    let path = audit_log();
    std::fs::metadata(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (a cluster started before hack/cluster-up.sh kept an audit log? \
                 hack/cluster-down.sh, then hack/test.sh)",
                path.display()
            )
        })
        .len()
}

/// The operator's writes since `from` (an [`audit_end`]) to objects of
/// `namespace` or named `name`: `verb resource namespace/name` each.
fn writes_since(from: u64, namespace: &str, name: &str) -> Vec<String> {
    let mut file = std::fs::File::open(audit_log()).expect("the audit log opens");
    file.seek(std::io::SeekFrom::Start(from)).expect("seek");
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|e| {
            let verb = e["verb"].as_str().unwrap_or_default();
            let object = &e["objectRef"];
            ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
                && (object["namespace"] == namespace || object["name"] == name)
        })
        .map(|e| {
            let o = &e["objectRef"];
            format!(
                "{} {} {}/{}",
                e["verb"].as_str().unwrap_or_default(),
                o["resource"].as_str().unwrap_or_default(),
                o["namespace"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test]
async fn fifty_installations_of_one_capsule_cost_at_most_three_reconciles_each_and_no_write_at_idle() {
    let (client, ns, package) = setup_published("fanout", "public").await;
    let before = reconciles("Installation").await;

    let docs: Vec<_> = (0..INSTALLATIONS)
        .map(|i| installation(&ns.name, &format!("app-{i}"), &package, "1.0.0", "eu-west-1", 1))
        .collect();
    for doc in &docs {
        put(&client, doc).await;
    }
    let api: Api<DynamicObject> = api_for(&client, &docs[0]).await;
    for i in 0..INSTALLATIONS {
        wait_condition(
            &api,
            &format!("app-{i}"),
            "Ready",
            "True",
            None,
            Duration::from_secs(180),
        )
        .await;
    }
    // The Capsule still counts its Installations, through the coalesced path.
    let capsules: Api<DynamicObject> = api_for(
        &client,
        &serde_json::json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule", "metadata": { "name": package } }),
    )
    .await;
    wait_for(
        "the Capsule to count 50 Installations",
        Duration::from_secs(30),
        || async {
            let c = capsules.get(&package).await.ok()?;
            (c.data["status"]["installations"] == INSTALLATIONS).then_some(())
        },
    )
    .await;
    // Whatever the last status writes trigger has run by now.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let cost = reconciles("Installation").await - before;
    eprintln!("{INSTALLATIONS} Installations of one Capsule: {cost} Installation reconciles");
    assert!(
        cost <= (INSTALLATIONS * RECONCILES_EACH) as f64,
        "{cost} Installation reconciles for {INSTALLATIONS} Installations (at most {})",
        INSTALLATIONS * RECONCILES_EACH
    );

    // At idle, nothing about them is written: not their status, not a
    // child, not an Event, not the Capsule's count.
    let idle_from = audit_end();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let writes = writes_since(idle_from, &ns.name, &package);
    assert!(writes.is_empty(), "writes in 30 s at idle: {writes:#?}");
    ns.delete().await;
}
