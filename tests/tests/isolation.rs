//! Tenant isolation on the real nodes (docs/real-nodes.md): NetworkPolicies
//! are enforced there for real (kube-router's firewall, started by
//! hack/real-nodes.sh), so what an agent can reach is measured from inside
//! its pod with `somastack-agent connect` (`kubectl exec`: the image has no
//! shell), each denial beside a positive control that must connect, so the
//! tests can fail. And what a tenant's user can read is asked of the API
//! server as that user (a ServiceAccount with the tenant role the docs give
//! tenants: `edit` in its own namespace).
//!
//! Needs the real nodes, the agent image (SOMASTACK_AGENT_IMAGE) and the
//! operator hack/test.sh starts; skipped with `--skip real_node::` when
//! SOMASTACK_REAL_NODES=0.

mod real_node {
    use std::net::{IpAddr, SocketAddr};
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{DynamicObject, ListParams, PostParams};
    use kube::{Api, Client, ResourceExt};
    use serde_json::json;
    use somastack_tests::fixtures::{
        REAL_NODE_LABEL, REAL_NODE_TAINT, agent_capsule, agent_image, installation, on_real_nodes, put,
        put_api, wait_condition,
    };
    use somastack_tests::real::{pods_on_real_nodes, service_addr};
    use somastack_tests::users::tenant;
    use somastack_tests::{TestNamespace, api_for, kubectl, setup, unique_suffix, wait_for};

    const T: Duration = Duration::from_secs(120);
    /// How long a freshly started pod may be open before kube-router has
    /// written its firewall chain (it resyncs on every pod change).
    const ENFORCED_WITHIN: Duration = Duration::from_secs(30);
    const SELECTOR: &str = "somastack.io/installation=app";

    /// What `somastack-agent connect` in `pod` said of `addr`: its first
    /// word (`connected`, `timeout`, `refused`, `error`) and its line.
    fn connect_from(ns: &str, pod: &str, addr: SocketAddr) -> (String, String) {
        let target = addr.to_string();
        let out = kubectl(&[
            "-n",
            ns,
            "exec",
            pod,
            "--",
            "/somastack-agent",
            "connect",
            &target,
            "--timeout",
            "2s",
        ]);
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let word = line.split_whitespace().next().unwrap_or_default().to_string();
        assert!(
            ["connected", "timeout", "refused", "error"].contains(&word.as_str()),
            "kubectl exec {pod} -- /somastack-agent connect {target}: {line:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (word, line)
    }

    /// Waits until `pod` can no longer connect to `addr` (the policy is in
    /// place), then checks that three attempts in a row fail; how long it
    /// took from the call, and the last line.
    async fn closed(ns: &str, pod: &str, addr: SocketAddr, what: &str) -> (Duration, String) {
        let start = Instant::now();
        let first = wait_for(
            &format!("{what}: {pod} refused {addr}"),
            ENFORCED_WITHIN,
            || async {
                let (word, line) = connect_from(ns, pod, addr);
                (word != "connected").then_some(line)
            },
        )
        .await;
        let took = start.elapsed();
        let mut last = first;
        for _ in 0..3 {
            let (word, line) = connect_from(ns, pod, addr);
            assert_ne!(word, "connected", "{what}: {pod} reached {addr} again: {line}");
            last = line;
        }
        (took, last)
    }

    /// `connect` in `pod` to `addr` succeeds (within the time a new pod
    /// takes to be known to kube-router).
    async fn open(ns: &str, pod: &str, addr: SocketAddr, what: &str) -> String {
        wait_for(
            &format!("{what}: {pod} connects to {addr}"),
            ENFORCED_WITHIN,
            || async {
                let (word, line) = connect_from(ns, pod, addr);
                (word == "connected").then_some(line)
            },
        )
        .await
    }

    fn pod_ip(pod: &Pod) -> IpAddr {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("pod {} has no IP", pod.name_any()))
    }

    /// A Capsule of the reference agent for `ns`'s test (a package of its
    /// own), with `capabilities`, applied.
    async fn agent(client: &Client, ns: &TestNamespace, prefix: &str, capabilities: &[&str]) -> String {
        let package = format!("{prefix}-{}", unique_suffix());
        let mut capsule = agent_capsule(&package, &package, "1.0.0", "internal", &[]);
        capsule["spec"]["capabilities"] = json!(capabilities);
        put(client, ns.owns(&capsule)).await;
        package
    }

    /// Installation `app` of `package` in `ns` on the real node of `region`,
    /// Ready (its pods' readiness probes passed); its pods.
    async fn app(
        client: &Client,
        ns: &TestNamespace,
        package: &str,
        region: &str,
        replicas: i32,
    ) -> Vec<Pod> {
        let inst = on_real_nodes(installation(&ns.name, "app", package, "1.0.0", region, replicas));
        let api = put_api(client, &inst).await;
        wait_condition(&api, "app", "Ready", "True", None, T).await;
        wait_for("the Installation's pods to run", T, || async {
            let pods = pods_on_real_nodes(client, &ns.name, SELECTOR).await;
            let ready = pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
            (pods.len() == replicas as usize && ready).then_some(pods)
        })
        .await
    }

    /// Tenant A's agent may send anywhere (its capsule has the
    /// `network-egress` capability), so when it cannot reach tenant B's pod
    /// it is B's NetworkPolicy that refused it. In the same test it reaches
    /// the other pod of its own Installation, directly and through its
    /// Service: the policy admits its own tenant.
    #[tokio::test]
    async fn an_agent_reaches_its_own_tenants_pods_but_not_another_tenants() {
        let (client, a) = setup("iso-a").await;
        let b = TestNamespace::create(&client, "iso-b").await;
        let package_a = agent(&client, &a, "iso-a", &["network-egress"]).await;
        let package_b = agent(&client, &b, "iso-b", &[]).await;
        let pods_a = app(&client, &a, &package_a, "eu-west-1", 2).await;
        let pods_b = app(&client, &b, &package_b, "eu-central-1", 1).await;
        let (a1, a2) = (pods_a[0].name_any(), &pods_a[1]);
        let own_pod = SocketAddr::new(pod_ip(a2), 8080);
        let own_service = service_addr(&client, &a.name, "app", 8080).await;
        let other_pod = SocketAddr::new(pod_ip(&pods_b[0]), 8080);
        let other_service = service_addr(&client, &b.name, "app", 8080).await;

        // Positive controls: the tool, the pod network and A's policy let
        // A's agent reach its own tenant.
        let line = open(&a.name, &a1, own_pod, "own pod").await;
        eprintln!("{a1} -> own pod {own_pod}: {line}");
        let line = open(&a.name, &a1, own_service, "own Service").await;
        eprintln!("{a1} -> own Service {own_service}: {line}");

        // B's pod and B's Service (DNATed by kube-proxy to that pod) stay
        // closed to A.
        let (took, line) = closed(&a.name, &a1, other_pod, "tenant B's pod").await;
        eprintln!("{a1} -> tenant B's pod {other_pod}: {line} (closed after {took:?})");
        let (_, line) = closed(&a.name, &a1, other_service, "tenant B's Service").await;
        eprintln!("{a1} -> tenant B's Service {other_service}: {line}");

        // And still open within A after all that: the denial is B's policy,
        // not A's pod losing its network.
        let (word, line) = connect_from(&a.name, &a1, own_pod);
        assert_eq!(word, "connected", "own pod afterwards: {line}");

        b.delete().await;
        a.delete().await;
    }

    /// The `kubernetes` Service's address and the endpoint it leads to (the
    /// relay on the pod bridge, hack/real-nodes.sh), as a pod would find
    /// them.
    async fn api_server_addresses(client: &Client) -> Vec<SocketAddr> {
        let svc = Api::<Service>::namespaced(client.clone(), "default")
            .get("kubernetes")
            .await
            .expect("the kubernetes Service");
        let cluster_ip: IpAddr = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .and_then(|ip| ip.parse().ok())
            .expect("the kubernetes Service has a cluster IP");
        let mut addrs = vec![SocketAddr::new(cluster_ip, 443)];
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
            .await
            .expect("the kubernetes EndpointSlices");
        for slice in slices.items {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find_map(|p| p.port)
                .expect("the kubernetes endpoint has a port");
            for e in slice.endpoints.into_iter().flatten() {
                for ip in e.addresses {
                    let ip: IpAddr = ip.parse().expect("an endpoint IP");
                    addrs.push(SocketAddr::new(ip, port as u16));
                }
            }
        }
        assert!(
            addrs.len() >= 2,
            "no endpoint for the kubernetes Service: {addrs:?}"
        );
        addrs
    }

    /// A pod in `ns` on a real node that no NetworkPolicy selects: the agent
    /// image, serving on its own loopback (nothing to do but be there).
    async fn unconfined_pod(client: &Client, ns: &str) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "unconfined", "namespace": ns },
            "spec": {
                "nodeSelector": { REAL_NODE_LABEL: "true", "topology.kubernetes.io/region": "eu-west-1" },
                "tolerations": [{ "key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule" }],
                "automountServiceAccountToken": false,
                "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                "containers": [{
                    "name": "agent",
                    "image": agent_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["serve"],
                    "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
                }],
            },
        }))
        .expect("pod manifest");
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("the unconfined pod is created");
        wait_for("the unconfined pod to run", T, || async {
            let p = pods.get("unconfined").await.ok()?;
            let running = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                });
            running.then_some(())
        })
        .await;
        "unconfined".into()
    }

    /// An agent (no `network-egress` capability: what the default policy
    /// gives) cannot open a connection to the API server, neither at the
    /// `kubernetes` Service's address nor at the address on the pod bridge
    /// that Service leads to; a pod of the same namespace that no policy
    /// confines reaches both, on the same node, so the path exists and it
    /// is the Installation's NetworkPolicy that closes it.
    #[tokio::test]
    async fn an_agent_cannot_reach_the_api_server() {
        let (client, ns) = setup("iso-api").await;
        let package = agent(&client, &ns, "iso-api", &[]).await;
        let pods = app(&client, &ns, &package, "eu-west-1", 1).await;
        let agent_pod = pods[0].name_any();
        let control = unconfined_pod(&client, &ns.name).await;
        let addrs = api_server_addresses(&client).await;

        for addr in &addrs {
            let line = open(&ns.name, &control, *addr, "the unconfined pod").await;
            eprintln!("{control} -> API server {addr}: {line}");
        }
        for addr in &addrs {
            let (took, line) = closed(&ns.name, &agent_pod, *addr, "the API server").await;
            eprintln!("{agent_pod} -> API server {addr}: {line} (closed after {took:?})");
        }
        ns.delete().await;
    }

    /// A one-task project of the reference agent in `ns` on the real
    /// nodes, succeeded; its name.
    async fn project(client: &Client, ns: &TestNamespace, input: &str) -> String {
        let package = agent(client, ns, "iso-kp", &[]).await;
        let doc = on_real_nodes(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
            "metadata": { "name": "research", "namespace": ns.name },
            "spec": {
                "goal": "summarize one document",
                "region": "eu-west-1",
                "tasks": [{ "name": "summary", "capsule": { "package": package, "version": "1.0.0" },
                            "dependsOn": [], "input": input }],
            },
        }));
        let api = put_api(client, &doc).await;
        wait_condition(
            &api,
            "research",
            "Succeeded",
            "True",
            Some("AllTasksSucceeded"),
            T,
        )
        .await;
        "research".into()
    }

    fn is_forbidden<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> bool {
        matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
    }

    /// A tenant's user (a ServiceAccount with `edit` in its own namespace,
    /// as docs/security.md has platform teams give tenants) reads its own
    /// project's results, the ConfigMap the operator gathers them in and
    /// the project's status, and gets 403 Forbidden for the other tenant's
    /// results, by name and by listing, in that namespace or across all.
    #[tokio::test]
    async fn a_tenants_user_reads_its_own_results_but_not_another_tenants() {
        let (admin, a) = setup("iso-ra").await;
        let b = TestNamespace::create(&admin, "iso-rb").await;
        let text_a = "Tenant A studies river deltas. Sediment builds new land every year. \
                      Dams upstream starve the delta of sand.";
        let text_b = "Tenant B studies glaciers. Ice cores record ancient air. \
                      Melting glaciers raise the level of the sea.";
        let (pa, pb) = tokio::join!(project(&admin, &a, text_a), project(&admin, &b, text_b));
        let alice = tenant(&admin, "isolation-tenant-a", &a.name).await;
        let bob = tenant(&admin, "isolation-tenant-b", &b.name).await;

        for (user, own, own_project, own_text, other, other_project) in [
            (&alice, &a, &pa, text_a, &b, &pb),
            (&bob, &b, &pb, text_b, &a, &pa),
        ] {
            let who = &user.name;
            let results = format!("{own_project}-results");
            let cm = Api::<ConfigMap>::namespaced(user.client.clone(), &own.name)
                .get(&results)
                .await
                .unwrap_or_else(|e| panic!("{who} reads its own results {results}: {e}"));
            let summary = cm.data.unwrap_or_default().remove("summary").unwrap_or_default();
            let first = summary.lines().next().unwrap_or_default().trim().to_string();
            assert!(
                !first.is_empty() && own_text.contains(&first),
                "{who} sees its agent's result, a sentence of its own text: {summary:?}"
            );
            let project_doc = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                                      "metadata": { "namespace": own.name } });
            let own_api: Api<DynamicObject> = api_for(&user.client, &project_doc).await;
            let got = own_api
                .get(own_project)
                .await
                .unwrap_or_else(|e| panic!("{who} reads its own project: {e}"));
            assert!(
                !got.data["status"].is_null(),
                "{who} sees its project's status: {:?}",
                got.data
            );

            let other_results = format!("{other_project}-results");
            let cms = Api::<ConfigMap>::namespaced(user.client.clone(), &other.name);
            let by_name = cms.get(&other_results).await;
            assert!(
                is_forbidden(&by_name),
                "{who} must not read {}/{other_results}: {by_name:?}",
                other.name
            );
            let listed = cms.list(&ListParams::default()).await;
            assert!(
                is_forbidden(&listed),
                "{who} must not list ConfigMaps of {}: {:?}",
                other.name,
                listed.map(|l| l.items.len())
            );
            let all = Api::<ConfigMap>::all(user.client.clone())
                .list(&ListParams::default())
                .await;
            assert!(
                is_forbidden(&all),
                "{who} must not list ConfigMaps across namespaces: {:?}",
                all.map(|l| l.items.len())
            );
            let other_doc = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                                    "metadata": { "namespace": other.name } });
            let other_api: Api<DynamicObject> = api_for(&user.client, &other_doc).await;
            let project = other_api.get(other_project).await;
            assert!(
                is_forbidden(&project),
                "{who} must not read the project (and its status) of {}: {:?}",
                other.name,
                project.map(|p| p.data["status"].clone())
            );
            let listed = other_api.list(&ListParams::default()).await;
            assert!(
                is_forbidden(&listed),
                "{who} must not list the projects of {}: {:?}",
                other.name,
                listed.map(|l| l.items.len())
            );
        }
        b.delete().await;
        a.delete().await;
    }
}
