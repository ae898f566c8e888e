//! Leader election with real operator processes: one leads, the other waits;
//! SIGKILL the leader and the other takes over; a leader whose Lease is taken
//! stops reconciling and leads again once it is free; SIGTERM releases the
//! Lease.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::{Api, Client};
use somastack_tests::process::sigterm;
use somastack_tests::{
    TestNamespace, client, free_port, http_get, kubeconfig_path, unique_suffix, wait_for, workspace_binary,
};
use tokio::process::{Child, Command};

struct Replica {
    identity: String,
    /// Port of its /metrics, /healthz and /readyz.
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Replica {
    /// A replica with webhooks on (its certificate Secret in `namespace`;
    /// no webhook configuration points at it, so nothing calls it).
    fn start(identity: &str, namespace: &str, lease: &str) -> Replica {
        let log = std::env::temp_dir().join(format!("somastack-leader-{identity}-{}.log", unique_suffix()));
        let port = free_port();
        let child = Command::new(workspace_binary("somastack-operator"))
            .args([
                "run",
                "--leader-elect",
                "--namespace",
                namespace,
                "--lease-name",
                lease,
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--webhook-configuration", &format!("{lease}-not-installed")])
            // Drills belong to the suite's operator: never two on one drill.
            .args(["--drill-selector", "somastack.io/drill-shard=none"])
            .args(["--project-selector", "somastack.io/project-shard=none"])
            .args(["--identity", identity, "--kubeconfig"])
            .arg(kubeconfig_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("operator starts");
        Replica {
            identity: identity.into(),
            port,
            log,
            child,
        }
    }

    /// The same process is still running (it did not exit or restart).
    fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("status");
        assert!(exited.is_none(), "exited {exited:?}: {}", self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn leads(&self) -> bool {
        self.logs().contains("controllers starting")
    }

    /// `somastack_leader` as its /metrics says, once it answers.
    async fn leader_gauge(&self) -> Option<String> {
        let (_, body) = http_get(self.port, "/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix("somastack_leader "))
            .map(str::to_string)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill")
                .success()
        );
    }
}

/// A namespace of its own and a fresh Lease name for one election: the
/// namespace, the Lease name and the Leases API there.
async fn election(client: &Client, prefix: &str) -> (TestNamespace, String, Api<Lease>) {
    let ns = TestNamespace::create(client, prefix).await;
    let lease = format!("somastack-{}", unique_suffix());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    (ns, lease, leases)
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok()??.spec?.holder_identity
}

#[tokio::test]
async fn one_leader_failover_after_sigkill_and_release_on_sigterm() {
    let client = client().await;
    let (ns, lease, leases) = election(&client, "leader").await;
    let mut a = Replica::start("op-a", &ns.name, &lease);
    let mut b = Replica::start("op-b", &ns.name, &lease);

    let first = wait_for("a replica to take the Lease", Duration::from_secs(60), || async {
        holder(&leases, &lease)
            .await
            .filter(|h| h == "op-a" || h == "op-b")
    })
    .await;
    let (leader, follower) = if first == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    wait_for(
        "the leader to start its controllers",
        Duration::from_secs(30),
        || async { leader.leads().then_some(()) },
    )
    .await;
    // Give the follower several retry rounds: it must keep waiting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !follower.leads(),
        "only one replica reconciles; follower logs:\n{}",
        follower.logs()
    );
    assert!(follower.logs().contains("another replica leads; waiting"));
    // Both are ready, the follower too: every replica serves the webhooks
    // (its certificate loaded) and keeps its caches; the gauge tells them apart.
    for r in [&*leader, &*follower] {
        wait_for(
            &format!("{} to be ready", r.identity),
            Duration::from_secs(30),
            || async { (http_get(r.port, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(()) },
        )
        .await;
    }
    assert_eq!(leader.leader_gauge().await.as_deref(), Some("1"));
    assert_eq!(follower.leader_gauge().await.as_deref(), Some("0"));

    // SIGKILL: no release; the follower takes over once the lease expires.
    leader.signal("-KILL");
    let killed = Instant::now();
    let _ = leader.child.wait().await;
    wait_for("the follower to take over", Duration::from_secs(30), || async {
        (holder(&leases, &lease).await.as_deref() == Some(follower.identity.as_str()) && follower.leads())
            .then_some(())
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("leader failover after SIGKILL: {failover:?}");
    assert!(failover < Duration::from_secs(15), "failover took {failover:?}");

    // SIGTERM: the new leader stops cleanly and gives the Lease up.
    let status = sigterm(&mut follower.child, Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}; logs:\n{}", follower.logs());
    assert_eq!(holder(&leases, &lease).await, None, "the Lease is released");
    ns.delete().await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_reconciling_and_leads_again_without_a_restart() {
    let client = client().await;
    let (ns, lease, leases) = election(&client, "lost").await;
    let mut only = Replica::start("op-solo", &ns.name, &lease);
    wait_for("the replica to lead", Duration::from_secs(60), || async {
        only.leads().then_some(())
    })
    .await;

    // Another party takes the Lease (as a partitioned replica's peer would),
    // for 8 s, and never renews it.
    let mut taken = leases.get(&lease).await.expect("lease");
    if let Some(spec) = taken.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        spec.lease_duration_seconds = Some(8);
    }
    leases
        .replace(&lease, &PostParams::default(), &taken)
        .await
        .expect("lease taken");
    wait_for(
        "the replica to stop its controllers",
        Duration::from_secs(20),
        || async {
            (only.logs().contains("another replica took the Lease")
                && only.leader_gauge().await.as_deref() == Some("0"))
            .then_some(())
        },
    )
    .await;
    // Still the same process, still serving: a follower now.
    only.assert_running();
    assert_eq!(
        http_get(only.port, "/readyz").await.map(|(code, _)| code),
        Some(200),
        "a follower stays ready: it serves the webhooks"
    );

    // Once the intruder's lease expires, it leads again, same process.
    wait_for("the replica to lead again", Duration::from_secs(30), || async {
        (holder(&leases, &lease).await.as_deref() == Some("op-solo")
            && only.logs().matches("controllers starting").count() == 2
            && only.leader_gauge().await.as_deref() == Some("1"))
        .then_some(())
    })
    .await;
    only.assert_running();
    let status = sigterm(&mut only.child, Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}; logs:\n{}", only.logs());
    ns.delete().await;
}
