//! The Helm chart (`charts/somastack-operator`) with the real `helm` binary:
//! it lints, renders what the operator needs (no RBAC wildcards, a restricted
//! pod spread over nodes and zones, the right webhook certificate mode,
//! secure metrics, NetworkPolicies), refuses bad values through its schema,
//! and installs into (and uninstalls from) the real local cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use somastack_tests::{client, kubeconfig_path, kubectl, parse_docs, repo_root, workspace_binary};

/// Suffixes of the user-facing ClusterRoles the chart ships (`<release>-<suffix>`).
const USER_ROLES: [&str; 6] = [
    "capsule-reviewer",
    "capsule-publisher",
    "project-reviewer",
    "view",
    "edit",
    "metrics-reader",
];

/// The Helm release hack/lib.sh pins and hack/build-tools.sh builds.
const HELM_VERSION: &str = "v4.3.1";
const RELEASE: &str = "chart-test";
const NAMESPACE: &str = "somastack-chart-test";
/// A label no object of the other tests carries: the installed webhook
/// configurations (whose Service has no real server behind it) never match.
const NEVER_MATCH: &str = r#"webhook.objectSelector={"matchLabels":{"somastack.io/chart-test":"never"}}"#;
/// Values that turn every optional part of the chart on.
const EVERYTHING_ON: &str = "webhook.certManager.enabled=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true";
const CRD_NAMES: [&str; 5] = [
    "capsules.somastack.io",
    "installations.somastack.io",
    "policybundles.somastack.io",
    "drdrills.somastack.io",
    "kamachiqprojects.somastack.io",
];

/// The helm binary, found as hack/lib.sh finds it.
fn helm_bin() -> PathBuf {
    let cache = match std::env::var_os("SOMASTACK_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => match std::env::var_os("XDG_CACHE_HOME") {
            Some(p) if !p.is_empty() => PathBuf::from(p).join("somastack"),
            _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/somastack"),
        },
    };
    let path = cache.join(format!("bin/helm-{HELM_VERSION}/helm"));
    assert!(
        path.is_file(),
        "helm {HELM_VERSION} is not at {}; build it with hack/build-tools.sh \
         (or point SOMASTACK_CACHE at the cache that holds it)",
        path.display()
    );
    path
}

fn chart_dir() -> String {
    repo_root()
        .join("charts/somastack-operator")
        .to_string_lossy()
        .into_owned()
}

fn fullname() -> String {
    format!("{RELEASE}-somastack-operator")
}

struct HelmRun {
    success: bool,
    stdout: String,
    stderr: String,
    command: String,
}

impl HelmRun {
    fn report(&self) -> String {
        format!(
            "`{}`\nstdout:\n{}\nstderr:\n{}",
            self.command, self.stdout, self.stderr
        )
    }
}

async fn helm(args: &[&str]) -> HelmRun {
    let out = tokio::process::Command::new(helm_bin())
        .args(args)
        .output()
        .await
        .expect("helm runs");
    HelmRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command: format!("helm {}", args.join(" ")),
    }
}

/// `helm template` of the chart as release `chart-test` in its namespace,
/// with `--set`s; the rendered objects.
async fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    for set in sets {
        args.extend(["--set", set]);
    }
    let run = helm(&args).await;
    assert!(run.success, "the chart renders: {}", run.report());
    parse_docs(&run.stdout)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} rendered; rendered: {have:?}")
        })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every Role/ClusterRole rule with a `*` in any of its lists.
fn wildcard_rules(docs: &[Value]) -> Vec<String> {
    let mut offending = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        let rules = doc["rules"].as_array().cloned().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let wild = [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ]
            .iter()
            .any(|field| strings(&rule[*field]).iter().any(|s| s.contains('*')));
            if wild {
                let kind = doc["kind"].as_str().unwrap_or_default();
                let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                offending.push(format!("{kind} {name} rule {i}: {rule}"));
            }
        }
    }
    offending
}

/// The value following `flag` in the operator container's args.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

fn operator_container(docs: &[Value]) -> &Value {
    let deployment = find(docs, "Deployment", &fullname());
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "operator"))
        .expect("a container named operator")
}

#[tokio::test]
async fn lint_passes_strictly() {
    let chart = chart_dir();
    for extra in [None, Some(EVERYTHING_ON)] {
        let mut args = vec!["lint", "--strict", &chart];
        if let Some(set) = extra {
            args.extend(["--set", set]);
        }
        let run = helm(&args).await;
        assert!(run.success, "helm lint --strict fails: {}", run.report());
        assert!(run.stdout.contains("0 chart(s) failed"), "{}", run.report());
    }
}

#[tokio::test]
async fn rbac_has_no_wildcards_and_only_the_named_objects() {
    for sets in [&[][..], &[EVERYTHING_ON][..]] {
        let docs = render(sets).await;
        let offending = wildcard_rules(&docs);
        assert!(
            offending.is_empty(),
            "RBAC rules with a wildcard (with --set {sets:?}):\n{}",
            offending.join("\n")
        );
        let name = fullname();
        let cluster_role = find(&docs, "ClusterRole", &name);
        let rules = cluster_role["rules"].as_array().expect("rules");
        assert!(
            rules.len() > 5,
            "the operator's ClusterRole has its rules: {cluster_role}"
        );
        let rule_for = |resource: &str| {
            rules
                .iter()
                .find(|r| strings(&r["resources"]).contains(&resource))
                .unwrap_or_else(|| panic!("a ClusterRole rule for {resource}: {cluster_role}"))
        };
        // The operator may touch only its own webhook configurations and CRDs.
        for resource in ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"] {
            let rule = rule_for(resource);
            assert_eq!(strings(&rule["resourceNames"]), [name.as_str()], "{rule}");
            assert_eq!(strings(&rule["verbs"]), ["get", "patch"], "{rule}");
        }
        let crds = rule_for("customresourcedefinitions");
        assert_eq!(strings(&crds["resourceNames"]), CRD_NAMES, "{crds}");
        assert_eq!(strings(&crds["verbs"]), ["get"], "{crds}");
        // Secrets and Leases only in the release namespace.
        assert!(
            rules.iter().all(|r| {
                let res = strings(&r["resources"]);
                !res.contains(&"secrets") && !res.contains(&"leases")
            }),
            "no cluster-wide secrets or leases: {cluster_role}"
        );
        let role = find(&docs, "Role", &name);
        assert_eq!(role["metadata"]["namespace"], NAMESPACE);
        let role_rules = role["rules"].as_array().expect("rules");
        let secret_rules: Vec<&Value> = role_rules
            .iter()
            .filter(|r| strings(&r["resources"]) == ["secrets"])
            .collect();
        let secret_name = format!("{name}-webhook-tls");
        let cert_manager = sets.contains(&EVERYTHING_ON);
        if cert_manager {
            // cert-manager writes the certificate: the operator may only
            // read its one Secret.
            assert_eq!(secret_rules.len(), 1, "{role}");
            assert_eq!(
                strings(&secret_rules[0]["verbs"]),
                ["get", "list", "watch"],
                "{role}"
            );
            assert_eq!(strings(&secret_rules[0]["resourceNames"]), [secret_name.as_str()]);
        } else {
            // Self-managed: writes its own Secret by name; create (which
            // cannot be limited by name) in a rule of its own.
            assert_eq!(secret_rules.len(), 2, "{role}");
            assert_eq!(
                strings(&secret_rules[0]["verbs"]),
                ["get", "list", "watch", "update", "patch"],
                "{role}"
            );
            assert_eq!(strings(&secret_rules[0]["resourceNames"]), [secret_name.as_str()]);
            assert_eq!(strings(&secret_rules[1]["verbs"]), ["create"], "{role}");
        }
        assert!(
            role_rules
                .iter()
                .all(|r| strings(&r["resources"]) == ["leases"] || strings(&r["resources"]) == ["secrets"]),
            "{role}"
        );
        let view = find(&docs, "ClusterRole", &format!("{name}-view"));
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
            "true"
        );
        // Secure metrics (the default): tokens are reviewed, and scrapers
        // are granted /metrics by a ClusterRole of their own.
        let tokens = rule_for("tokenreviews");
        assert_eq!(strings(&tokens["apiGroups"]), ["authentication.k8s.io"]);
        assert_eq!(strings(&tokens["verbs"]), ["create"]);
        let access = rule_for("subjectaccessreviews");
        assert_eq!(strings(&access["verbs"]), ["create"]);
        let reader = find(&docs, "ClusterRole", &format!("{name}-metrics-reader"));
        assert_eq!(
            reader["rules"],
            json!([{ "nonResourceURLs": ["/metrics"], "verbs": ["get"] }]),
            "{reader}"
        );
    }
    // Plain metrics: no TokenReviews.
    let docs = render(&["metrics.secure=false"]).await;
    let cluster_role = find(&docs, "ClusterRole", &fullname());
    assert!(
        !cluster_role.to_string().contains("tokenreviews"),
        "{cluster_role}"
    );
}

#[tokio::test]
async fn deployment_is_restricted_highly_available_and_probed() {
    let docs = render(&[]).await;
    let deployment = find(&docs, "Deployment", &fullname());
    assert_eq!(deployment["spec"]["replicas"], 2, "{deployment}");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{pod}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname",
        "{pod}"
    );

    let container = operator_container(&docs);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true, "{container}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{container}");
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{container}");
    // /metrics is served over HTTPS: the probes use the plain health port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{container}");
        assert_eq!(container[probe]["httpGet"]["port"], "health", "{container}");
    }
    let ports: Vec<(&str, i64)> = container["ports"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| Some((p["name"].as_str()?, p["containerPort"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ports, [("metrics", 8080), ("webhook", 8443), ("health", 8081)]);
    // Spread over nodes and zones, as a preference only: two replicas still
    // schedule on a single node.
    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints");
    let keys: Vec<&str> = spread.iter().filter_map(|c| c["topologyKey"].as_str()).collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
        "{pod}"
    );
    for constraint in spread {
        assert_eq!(constraint["whenUnsatisfiable"], "ScheduleAnyway", "{constraint}");
        assert_eq!(constraint["maxSkew"], 1, "{constraint}");
        assert_eq!(
            constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            RELEASE
        );
    }
    assert!(
        pod["affinity"].get("nodeAffinity").is_none()
            && pod["affinity"]["podAntiAffinity"]
                .get("requiredDuringSchedulingIgnoredDuringExecution")
                .is_none(),
        "no hard placement rule: {pod}"
    );
    let env: Vec<&str> = container["env"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "RUST_LOG"]);
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");

    let pdb = find(&docs, "PodDisruptionBudget", &fullname());
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow", "{pdb}");

    // Plain metrics: the probes go back to the metrics port.
    let docs = render(&["metrics.secure=false"]).await;
    let container = operator_container(&docs);
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    assert!(!container.to_string().contains("\"health\""), "{container}");
}

#[tokio::test]
async fn operator_args_follow_the_values() {
    let name = fullname();
    let docs = render(&[]).await;
    let args = strings(&operator_container(&docs)["args"]);
    let expected_self_managed = [
        "run".to_string(),
        "--leader-elect".into(),
        "--lease-name".into(),
        name.clone(),
        "--log-format".into(),
        "json".into(),
        "--concurrency".into(),
        "8".into(),
        "--initial-list".into(),
        "stream".into(),
        "--page-size".into(),
        "500".into(),
        "--metrics-addr".into(),
        "0.0.0.0:8080".into(),
        "--metrics-secure".into(),
        "--health-probe-addr".into(),
        "0.0.0.0:8081".into(),
        "--webhook-addr".into(),
        "0.0.0.0:8443".into(),
        "--webhook-service".into(),
        format!("{name}-webhook"),
        "--webhook-secret".into(),
        format!("{name}-webhook-tls"),
        "--webhook-configuration".into(),
        name.clone(),
        "--webhook-cert-mode".into(),
        "self-managed".into(),
        "--bundle-record".into(),
        format!("{name}-bundle-writes"),
    ];
    assert_eq!(args, expected_self_managed);

    let docs = render(&[EVERYTHING_ON]).await;
    let args = strings(&operator_container(&docs)["args"]);
    assert_eq!(
        flag_value(&args, "--webhook-cert-mode"),
        Some("external"),
        "{args:?}"
    );

    let docs = render(&[
        "webhook.enabled=false,leaderElection.enabled=false,otlp.endpoint=http://otel:4317",
        "extraArgs={--crd-wait,30s}",
        "concurrency=16,initialList=pages,pageSize=200",
    ])
    .await;
    let args = strings(&operator_container(&docs)["args"]);
    assert_eq!(flag_value(&args, "--concurrency"), Some("16"));
    assert_eq!(flag_value(&args, "--initial-list"), Some("pages"));
    assert_eq!(flag_value(&args, "--page-size"), Some("200"));
    assert!(args.contains(&"--no-webhook"), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--webhook-")), "{args:?}");
    assert!(!args.contains(&"--leader-elect"), "{args:?}");
    assert_eq!(flag_value(&args, "--otlp-endpoint"), Some("http://otel:4317"));
    assert_eq!(
        args[args.len() - 2..],
        ["--crd-wait", "30s"],
        "extraArgs come last"
    );
    let webhook_objects: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("WebhookConfiguration"))
        })
        .collect();
    assert!(
        webhook_objects.is_empty(),
        "webhook disabled: {webhook_objects:?}"
    );
}

/// The args are the operator's real command line: the built binary parses
/// every one of them (clap validates all arguments before acting on `--help`,
/// so exit 0 means each flag and value was accepted).
#[tokio::test]
async fn the_operator_binary_accepts_the_rendered_args() {
    let binary = workspace_binary("somastack-operator");
    let variants: [&[&str]; 5] = [
        &[],
        &[
            EVERYTHING_ON,
            "otlp.endpoint=http://otel:4318,leaderElection.enabled=false",
        ],
        &["webhook.enabled=false"],
        &["metrics.certSecret=metrics-tls"],
        &["metrics.secure=false"],
    ];
    for sets in variants {
        let docs = render(sets).await;
        let args = strings(&operator_container(&docs)["args"]);
        let out = tokio::process::Command::new(&binary)
            .args(&args)
            .arg("--help")
            .output()
            .await
            .expect("the operator binary runs");
        assert!(
            out.status.success(),
            "somastack-operator refuses the chart's args {args:?} (--set {sets:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn webhook_certificates_self_managed_or_from_cert_manager() {
    let name = fullname();
    let annotation = "cert-manager.io/inject-ca-from";
    let kinds = ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"];

    let docs = render(&[]).await;
    for kind in kinds {
        let config = find(&docs, kind, &name);
        for webhook in config["webhooks"].as_array().expect("webhooks") {
            let client_config = &webhook["clientConfig"];
            assert!(client_config.get("caBundle").is_none(), "{kind}: {client_config}");
            assert_eq!(client_config["service"]["name"], format!("{name}-webhook"));
            assert_eq!(client_config["service"]["namespace"], NAMESPACE);
            assert_eq!(client_config["service"]["port"], 443);
        }
        assert!(
            config["metadata"]["annotations"].get(annotation).is_none(),
            "{config}"
        );
    }
    let validating = find(&docs, "ValidatingWebhookConfiguration", &name);
    let webhook = &validating["webhooks"][0];
    assert_eq!(webhook["name"], "installations.somastack.io");
    assert_eq!(
        webhook["clientConfig"]["service"]["path"],
        "/validate/installations"
    );
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(
        webhook["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", NAMESPACE])
    );
    let mutating = find(&docs, "MutatingWebhookConfiguration", &name);
    assert_eq!(
        mutating["webhooks"][0]["clientConfig"]["service"]["path"],
        "/mutate/capsules"
    );
    assert!(
        !docs.iter().any(|d| d["kind"] == "Certificate"),
        "no cert-manager objects in self-managed mode"
    );

    let docs = render(&[EVERYTHING_ON]).await;
    for kind in kinds {
        let config = find(&docs, kind, &name);
        assert_eq!(
            config["metadata"]["annotations"][annotation],
            format!("{NAMESPACE}/{name}-webhook"),
            "{config}"
        );
        for webhook in config["webhooks"].as_array().expect("webhooks") {
            assert!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "{kind}: {webhook}"
            );
        }
    }
    let certificate = find(&docs, "Certificate", &format!("{name}-webhook"));
    assert_eq!(certificate["spec"]["secretName"], format!("{name}-webhook-tls"));
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            format!("{name}-webhook.{NAMESPACE}.svc"),
            format!("{name}-webhook.{NAMESPACE}.svc.cluster.local")
        ])
    );
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        format!("{name}-selfsigned")
    );
    find(&docs, "Issuer", &format!("{name}-selfsigned"));
    find(&docs, "ServiceMonitor", &name);
    let rule = find(&docs, "PrometheusRule", &name);
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().expect("alerts");
    assert!(alerts.len() >= 4, "{rule}");
    for alert in alerts {
        for field in ["summary", "description"] {
            assert!(
                alert["annotations"][field]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "alert without {field}: {alert}"
            );
        }
    }

    // Development: the API server calls an operator outside the cluster.
    let docs = render(&["webhook.url=https://192.0.2.10:9443/"]).await;
    let validating = find(&docs, "ValidatingWebhookConfiguration", &name);
    assert_eq!(
        validating["webhooks"][0]["clientConfig"],
        json!({ "url": "https://192.0.2.10:9443/validate/installations" })
    );
}

/// The ports (names or numbers, as strings) of a NetworkPolicy rule.
fn rule_ports(rule: &Value) -> Vec<String> {
    rule["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| match &p["port"] {
                    Value::String(name) => name.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rule of `rules` (ingress or egress) that names `port`.
fn rule_with_port<'a>(rules: &'a Value, port: &str) -> Option<&'a Value> {
    rules
        .as_array()
        .and_then(|r| r.iter().find(|rule| rule_ports(rule).iter().any(|p| p == port)))
}

#[tokio::test]
async fn network_policy_admits_scrapers_and_the_api_server_only() {
    let name = fullname();
    // helm template cannot look the API server up: the webhook port then
    // admits any address, and the operator may reach any address on the
    // usual API server ports.
    let docs = render(&[]).await;
    let policy = find(&docs, "NetworkPolicy", &name);
    let spec = &policy["spec"];
    assert_eq!(policy["metadata"]["namespace"], NAMESPACE);
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    let ingress = &spec["ingress"];
    let metrics = rule_with_port(ingress, "metrics").expect("a metrics rule");
    assert_eq!(
        metrics["from"],
        json!([{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } }])
    );
    let webhook = rule_with_port(ingress, "webhook").expect("a webhook rule");
    assert!(webhook.get("from").is_none(), "{webhook}");
    let health = rule_with_port(ingress, "health").expect("a health rule");
    assert_eq!(rule_ports(health), ["health"]);
    assert_eq!(ingress.as_array().map(Vec::len), Some(3), "{ingress}");
    let egress = &spec["egress"];
    let api = rule_with_port(egress, "443").expect("an API server rule");
    assert_eq!(rule_ports(api), ["443", "6443"]);
    let dns = rule_with_port(egress, "53").expect("a DNS rule");
    assert_eq!(
        dns["ports"],
        json!([{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }])
    );
    let installations = egress
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r.get("ports").is_none()))
        .expect("a rule to Installation pods");
    assert_eq!(
        installations["to"][0]["podSelector"]["matchExpressions"][0]["key"],
        "somastack.io/installation"
    );

    // The API server named: only its addresses, on its port, both ways;
    // scrapers named by their own selector; no extra rules.
    let docs = render(&[
        "networkPolicy.apiServer.cidrs={10.0.0.0/28,fd00::1/128}",
        "networkPolicy.apiServer.ports={6443}",
        "networkPolicy.dns.enabled=false,networkPolicy.egress.installations=false",
    ])
    .await;
    let spec = &find(&docs, "NetworkPolicy", &name)["spec"];
    let blocks = json!([{ "ipBlock": { "cidr": "10.0.0.0/28" } }, { "ipBlock": { "cidr": "fd00::1/128" } }]);
    assert_eq!(
        rule_with_port(&spec["ingress"], "webhook").expect("webhook")["from"],
        blocks
    );
    let egress = spec["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 1, "only the API server: {egress:?}");
    assert_eq!(egress[0]["to"], blocks);
    assert_eq!(rule_ports(&egress[0]), ["6443"]);

    // Scrapers: nobody, or whom the values name.
    let docs = render(&["networkPolicy.metrics.from=null", "metrics.secure=false"]).await;
    let spec = &find(&docs, "NetworkPolicy", &name)["spec"];
    assert!(rule_with_port(&spec["ingress"], "metrics").is_none(), "{spec}");
    assert!(rule_with_port(&spec["ingress"], "health").is_none(), "{spec}");
    let chart = chart_dir();
    let run = helm(&[
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--set-json",
        r#"networkPolicy.metrics.from=[{"podSelector":{"matchLabels":{"app":"prometheus"}}}]"#,
    ])
    .await;
    assert!(run.success, "{}", run.report());
    let docs = parse_docs(&run.stdout);
    let spec = &find(&docs, "NetworkPolicy", &name)["spec"];
    assert_eq!(
        rule_with_port(&spec["ingress"], "metrics").expect("metrics")["from"],
        json!([{ "podSelector": { "matchLabels": { "app": "prometheus" } } }])
    );

    let docs = render(&["networkPolicy.enabled=false"]).await;
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
}

#[tokio::test]
async fn service_monitor_scrapes_over_https_with_a_token() {
    let docs = render(&["metrics.serviceMonitor.enabled=true"]).await;
    let monitor = find(&docs, "ServiceMonitor", &fullname());
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https", "{endpoint}");
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    assert_eq!(endpoint["tlsConfig"], json!({ "insecureSkipVerify": true }));

    let chart = chart_dir();
    let run = helm(&[
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set-json",
        r#"metrics.serviceMonitor.tlsConfig={"ca":{"secret":{"name":"metrics-ca","key":"ca.crt"}},"serverName":"op"}"#,
    ])
    .await;
    assert!(run.success, "{}", run.report());
    let docs = parse_docs(&run.stdout);
    let endpoint = &find(&docs, "ServiceMonitor", &fullname())["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["tlsConfig"],
        json!({ "ca": { "secret": { "name": "metrics-ca", "key": "ca.crt" } }, "serverName": "op" })
    );

    let docs = render(&["metrics.serviceMonitor.enabled=true,metrics.secure=false"]).await;
    let endpoint = &find(&docs, "ServiceMonitor", &fullname())["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "http");
    assert!(endpoint.get("bearerTokenFile").is_none(), "{endpoint}");
}

/// The rule file the PrometheusRule ships, as promtool tests it.
fn rule_file() -> Value {
    let path = repo_root().join("charts/somastack-operator/files/prometheus-rules.yaml");
    let text = std::fs::read_to_string(&path).expect("the rule file");
    serde_saphyr::from_str(&text).expect("the rule file is YAML")
}

/// The PrometheusRule's alerts, by name.
fn rendered_alerts(docs: &[Value]) -> std::collections::BTreeMap<String, Value> {
    let rule = find(docs, "PrometheusRule", &fullname());
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| (r["alert"].as_str().expect("alert").to_string(), r))
        .collect()
}

#[tokio::test]
async fn prometheus_rule_and_dashboard_ship_the_files_and_follow_the_values() {
    // Off by default.
    let docs = render(&[]).await;
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "PrometheusRule"
                || d["metadata"]["name"] == format!("{}-dashboard", fullname())),
        "no PrometheusRule or dashboard by default"
    );

    // With defaults, the groups are the file's, in the release namespace.
    let docs = render(&[EVERYTHING_ON]).await;
    let rule = find(&docs, "PrometheusRule", &fullname());
    let text = serde_json::to_string(&rule_file()["groups"])
        .expect("json")
        .replace("somastack-system", NAMESPACE);
    let expected: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        rule["spec"]["groups"], expected,
        "the PrometheusRule holds files/prometheus-rules.yaml"
    );
    assert!(!rule.to_string().contains("somastack-system"), "{rule}");
    let alerts = rendered_alerts(&docs);
    for name in [
        "SomastackOperatorNoLeader",
        "SomastackOperatorReconcileErrors",
        "SomastackOperatorWebhookCertificateExpiring",
        "SomastackKillSwitchEngaged",
        "SomastackPolicyAuditViolations",
        "SomastackDrillFailing",
        "SomastackDrillOverdue",
    ] {
        assert!(alerts.contains_key(name), "{name} in {alerts:?}");
    }

    let dashboard = find(&docs, "ConfigMap", &format!("{}-dashboard", fullname()));
    assert_eq!(dashboard["metadata"]["namespace"], NAMESPACE);
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        dashboard["data"]["somastack-operator.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .expect("the shipped dashboard is JSON");
    let file = std::fs::read_to_string(
        repo_root().join("charts/somastack-operator/dashboards/somastack-operator.json"),
    )
    .expect("the dashboard file");
    assert_eq!(shipped, serde_json::from_str::<Value>(&file).expect("JSON"));

    // Values: thresholds, severities, disabled alerts, labels, runbooks,
    // the dashboard's labels, annotations and namespace.
    let docs = render(&[
        EVERYTHING_ON,
        "metrics.prometheusRule.severities.SomastackPolicyAuditViolations=info",
        "metrics.prometheusRule.disabledAlerts={SomastackKillSwitchEngaged}",
        "metrics.prometheusRule.additionalLabels.team=platform",
        "metrics.prometheusRule.runbookBaseUrl=https://wiki.example/ops",
        "metrics.prometheusRule.thresholds.certificateExpiryDays=14",
        "metrics.prometheusRule.thresholds.drillOverdueSeconds=7200",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.labels.grafana_dashboard=off",
        "metrics.grafanaDashboard.annotations.grafana_folder=SomaStack",
    ])
    .await;
    let alerts = rendered_alerts(&docs);
    assert!(!alerts.contains_key("SomastackKillSwitchEngaged"), "{alerts:?}");
    let expr = |name: &str| alerts[name]["expr"].as_str().expect("expr").to_string();
    assert!(expr("SomastackOperatorWebhookCertificateExpiring").ends_with("< 14 * 86400"));
    assert!(expr("SomastackDrillOverdue").ends_with("> 7200"));
    assert_eq!(
        alerts["SomastackPolicyAuditViolations"]["labels"]["severity"],
        "info"
    );
    for (name, alert) in &alerts {
        assert_eq!(alert["labels"]["team"], "platform", "{name}");
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!("https://wiki.example/ops#{}", name.to_lowercase())
        );
    }
    let dashboard = find(&docs, "ConfigMap", &format!("{}-dashboard", fullname()));
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "SomaStack"
    );
}

#[tokio::test]
async fn the_schema_refuses_bad_values() {
    let chart = chart_dir();
    for (set, names) in [("logFormat=xml", "logFormat"), ("logFromat=json", "logFromat")] {
        for command in ["template", "lint"] {
            let mut args = vec![command];
            if command == "template" {
                args.push(RELEASE);
            }
            args.extend([chart.as_str(), "--set", set]);
            let run = helm(&args).await;
            let output = format!("{}{}", run.stdout, run.stderr);
            assert!(
                !run.success,
                "the schema lets --set {set} through: {}",
                run.report()
            );
            assert!(
                output.contains("schema") && output.contains(names),
                "the refusal of --set {set} names the schema and {names}: {}",
                run.report()
            );
        }
    }
}

/// `Some(problem)` unless the object is in the API server (`installed`),
/// or unless it is not (after the uninstall).
async fn check<K>(api: Api<K>, name: &str, installed: bool) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    match api.get_opt(name).await {
        Ok(found) if found.is_some() == installed => None,
        Ok(_) if installed => Some(format!("{kind} {name} is not in the cluster")),
        Ok(_) => Some(format!("{kind} {name} is left after uninstall")),
        Err(e) => Some(format!("{kind} {name}: {e}")),
    }
}

/// [`check`] of every cluster-scoped object of the release: its
/// ClusterRole and binding, webhook configurations and user-facing roles.
async fn check_cluster_scoped(client: &Client, installed: bool) -> Vec<String> {
    let name = fullname();
    let mut problems: Vec<String> = [
        check(Api::<ClusterRole>::all(client.clone()), &name, installed).await,
        check(Api::<ClusterRoleBinding>::all(client.clone()), &name, installed).await,
        check(
            Api::<ValidatingWebhookConfiguration>::all(client.clone()),
            &name,
            installed,
        )
        .await,
        check(
            Api::<MutatingWebhookConfiguration>::all(client.clone()),
            &name,
            installed,
        )
        .await,
    ]
    .into_iter()
    .flatten()
    .collect();
    for suffix in USER_ROLES {
        let role = format!("{name}-{suffix}");
        problems.extend(check(Api::<ClusterRole>::all(client.clone()), &role, installed).await);
    }
    problems
}

/// The namespace of the previous run, while still terminating, would refuse
/// the install; wait until it is gone. (One left by an interrupted run is
/// reused: `helm upgrade --install` takes over its release.)
async fn wait_until_not_terminating(namespaces: &Api<Namespace>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Ok(Some(ns)) = namespaces.get_opt(NAMESPACE).await {
        if ns.metadata.deletion_timestamp.is_none() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "namespace {NAMESPACE} of an earlier run is still terminating after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The installed NetworkPolicy names the API server as the cluster has it
/// (helm install looked up the default/kubernetes EndpointSlice): its
/// addresses are the only sources of the webhook port and, with its port,
/// the only destinations of the operator's API calls.
async fn check_network_policy(client: &Client) -> Vec<String> {
    let slice = match Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
    {
        Ok(slice) => slice,
        Err(e) => return vec![format!("EndpointSlice default/kubernetes: {e}")],
    };
    let cidrs: Vec<Value> = slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.iter())
        .map(|a| {
            let bits = if a.contains(':') { 128 } else { 32 };
            json!({ "ipBlock": { "cidr": format!("{a}/{bits}") } })
        })
        .collect();
    let ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.map(|p| p.to_string()))
        .collect();
    let policy = match Api::<NetworkPolicy>::namespaced(client.clone(), NAMESPACE)
        .get(&fullname())
        .await
    {
        Ok(p) => serde_json::to_value(p).unwrap_or_default(),
        Err(e) => return vec![format!("NetworkPolicy {}: {e}", fullname())],
    };
    let spec = &policy["spec"];
    let mut problems = Vec::new();
    if cidrs.is_empty() || ports.is_empty() {
        problems.push(format!(
            "the EndpointSlice default/kubernetes names no address or port: {slice:?}"
        ));
    }
    match rule_with_port(&spec["ingress"], "webhook") {
        Some(rule) if rule["from"] == Value::Array(cidrs.clone()) => {}
        other => problems.push(format!("webhook ingress {other:?}, want from {cidrs:?}")),
    }
    let api = spec["egress"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["to"] == Value::Array(cidrs.clone())));
    match api {
        Some(rule) if rule_ports(rule) == ports => {}
        other => problems.push(format!(
            "API server egress {other:?}, want to {cidrs:?} on {ports:?}"
        )),
    }
    problems
}

/// What the installed release put in the cluster; problems found, never a
/// panic, so the uninstall always runs.
async fn check_installed(client: &Client) -> Vec<String> {
    let name = fullname();
    let ns = NAMESPACE;
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let mut problems: Vec<String> = [
        check(Api::<Deployment>::namespaced(client.clone(), ns), &name, true).await,
        check(Api::<ServiceAccount>::namespaced(client.clone(), ns), &name, true).await,
        check(Api::<Role>::namespaced(client.clone(), ns), &name, true).await,
        check(Api::<RoleBinding>::namespaced(client.clone(), ns), &name, true).await,
        check(services.clone(), &format!("{name}-metrics"), true).await,
        check(services, &format!("{name}-webhook"), true).await,
        check(
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
            &name,
            true,
        )
        .await,
    ]
    .into_iter()
    .flatten()
    .collect();
    problems.extend(check_cluster_scoped(client, true).await);
    problems.extend(check_network_policy(client).await);

    // The guard that keeps these webhooks away from the other tests' objects.
    let never = json!({ "matchLabels": { "somastack.io/chart-test": "never" } });
    if let Ok(config) = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(&name)
        .await
    {
        let selectors: Vec<Value> = config
            .webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| serde_json::to_value(&w.object_selector).unwrap_or_default())
            .collect();
        if selectors.iter().any(|s| *s != never) {
            problems.push(format!("stored objectSelectors {selectors:?}, want {never}"));
        }
    }

    // The pods pass the restricted Pod Security Standard, as the API server
    // judges it: a server-side dry run of the enforce label warns about every
    // existing pod that would violate it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut count = 0;
    while Instant::now() < deadline {
        count = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if count < 2 {
        problems.push(format!("the Deployment made {count} pods within 60 s, want 2"));
    } else {
        let out = kubectl(&[
            "label",
            "--dry-run=server",
            "--overwrite",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("violate") {
            problems.push(format!(
                "the pods do not pass the restricted Pod Security Standard: {}{stderr}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    problems
}

#[tokio::test]
async fn installs_into_the_cluster_and_uninstalls_cleanly() {
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_until_not_terminating(&namespaces).await;
    let kubeconfig = kubeconfig_path().to_string_lossy().into_owned();
    let chart = chart_dir();

    let install = helm(&[
        "upgrade",
        "--install",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        // Helm 4's spelling of --wait=false: wait for hooks only (there are none).
        "--wait=hookOnly",
        "--kubeconfig",
        &kubeconfig,
        "--set-json",
        NEVER_MATCH,
    ])
    .await;
    let problems = if install.success {
        check_installed(&client).await
    } else {
        Vec::new()
    };

    // Clean up before judging, so a failed check still uninstalls.
    let uninstall = helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    let leftovers = check_cluster_scoped(&client, false).await;
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::background()).await;

    assert!(install.success, "helm install fails: {}", install.report());
    assert!(
        problems.is_empty(),
        "after helm install:\n{}\n{}",
        problems.join("\n"),
        install.report()
    );
    assert!(uninstall.success, "helm uninstall fails: {}", uninstall.report());
    assert!(
        leftovers.is_empty(),
        "after helm uninstall:\n{}",
        leftovers.join("\n")
    );
    // The CRDs are the cluster's, not the release's: uninstalling keeps them.
    let out = kubectl(&["get", "crd", "-o", "name"]);
    let crds = String::from_utf8_lossy(&out.stdout);
    for crd in CRD_NAMES {
        assert!(crds.contains(crd), "CRD {crd} survives the uninstall: {crds}");
    }
}
