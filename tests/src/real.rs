//! What the tests on real pods look at: where a pod really runs, and what
//! an Installation's Service really answers.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::fixtures::REAL_NODE_LABEL;

/// The names of the real nodes (kubelet + containerd) of the cluster.
pub async fn real_nodes(client: &Client) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels(&format!("{REAL_NODE_LABEL}=true")))
        .await
        .expect("list nodes");
    let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
    assert!(
        !names.is_empty(),
        "no real nodes: the local cluster starts them unless SOMASTACK_REAL_NODES=0"
    );
    names
}

/// The live pods matching `selector` in `ns`, each asserted to run on a real
/// node with containers that containerd started (a `containerd://` ID): a
/// kwok node has neither.
pub async fn pods_on_real_nodes(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    let real = real_nodes(client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    let live: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    for p in &live {
        let node = node_of(p);
        assert!(
            real.contains(&node),
            "pod {} runs on {node:?}, not a real node {real:?}",
            p.name_any()
        );
        let ids: Vec<String> = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().filter_map(|c| c.container_id.clone()).collect())
            .unwrap_or_default();
        assert!(
            !ids.is_empty() && ids.iter().all(|i| i.starts_with("containerd://")),
            "pod {} on {node}: container IDs {ids:?}",
            p.name_any()
        );
    }
    live
}

/// The node a pod runs on.
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The cluster IP and port of Service `name` in `ns`: what kube-proxy on
/// this machine serves (hack/real-nodes.sh routes the Service range to the
/// pod bridge, so nothing leaves the machine).
pub async fn service_addr(client: &Client, ns: &str, name: &str, port: u16) -> SocketAddr {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = services.get(name).await.expect("the Service exists");
    let ip: IpAddr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("the Service has a cluster IP");
    SocketAddr::new(ip, port)
}

/// `POST /v1/summarize` to the agent behind `addr`: the summary's sentences,
/// or why the request failed.
pub async fn summarize(addr: SocketAddr, text: &str, max: usize) -> Result<Vec<String>, String> {
    let body = json!({ "text": text, "maxSentences": max });
    let (code, answer) = crate::http_request(addr, "POST", "/v1/summarize", Some(&body)).await?;
    if code != 200 {
        return Err(format!("{code}: {answer}"));
    }
    let v: Value = serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
    Ok(v["sentences"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default())
}

/// Requests through a Service, `POST /v1/summarize` of one text every 50 ms,
/// from [`Requests::start`] until [`Requests::stop`]: how a test measures
/// that a workload kept serving during an upgrade.
pub struct Requests {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Requests {
    /// Starts sending `text` to `addr`, asking for `max` sentences; an
    /// answer other than `expected` counts as a failure.
    pub fn start(addr: SocketAddr, text: &'static str, max: usize, expected: Vec<String>) -> Requests {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                match summarize(addr, text, max).await {
                    Ok(got) if got == expected => ok += 1,
                    Ok(got) => failures.push(format!("other answer {got:?}")),
                    Err(e) => failures.push(e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            (ok, failures)
        });
        Requests { stop, task }
    }

    /// Stops sending: how many requests got the expected answer, and what
    /// the others got.
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the request loop")
    }

    /// Sends for one more second, stops, and requires that every request
    /// got the expected answer and that at least 100 were sent (`during`
    /// names the episode in the output).
    pub async fn all_succeeded(self, during: &str) {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let (ok, errors) = self.stop().await;
        let failed = errors.len();
        eprintln!("requests through the Service during {during}: {ok} succeeded, {failed} failed");
        assert_eq!(failed, 0, "requests failed during {during}: {errors:?}");
        assert!(ok >= 100, "only {ok} requests were sent during {during}");
    }
}
