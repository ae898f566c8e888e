//! The desired children of an Installation, as a pure function of its spec,
//! its Capsule, the region it runs in and the effective policy.
//!
//! Children are rendered as JSON manifests (what server-side apply sends);
//! unit tests deserialize them into the typed Kubernetes objects to prove
//! their shape, and the integration tests have the API server accept them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use somastack_crds::Installation;
use somastack_crds::capsule::CapsuleSpec;

use crate::domain::pods::{
    EGRESS_CAPABILITY, container_resources, place, restricted_container_security, restricted_pod_security,
};
use crate::domain::regions::{REGION_LABEL, ZONE_LABEL, unavailable_regions};
use crate::domain::sha256_hex;
use crate::{INSTALLATION_LABEL, MANAGED_BY};

/// Pod-template annotation: hash of the rendered workload (the revision key).
pub const REVISION_HASH_ANNOTATION: &str = "somastack.io/revision-hash";
/// Pod-template annotation: hash of the config, so a config change rolls pods.
pub const CONFIG_HASH_ANNOTATION: &str = "somastack.io/config-hash";

/// Everything rendering needs.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub installation: &'a Installation,
    pub owner: OwnerReference,
    pub capsule: &'a CapsuleSpec,
    /// Region the workload runs in now (home, or a failover region).
    pub region: &'a str,
    /// An engaged kill switch: zero replicas, no autoscaler, no disruption budget.
    pub stopped: bool,
    /// Ceilings from the effective policy, used as limits the capsule did not set.
    pub max_cpu: Option<&'a str>,
    pub max_memory: Option<&'a str>,
}

/// The rendered children. Optional ones are absent when not wanted (and are
/// then pruned).
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub service_account: Value,
    pub config_map: Value,
    pub deployment: Value,
    pub service: Option<Value>,
    pub network_policy: Value,
    pub autoscaler: Option<Value>,
    pub disruption_budget: Option<Value>,
    /// sha256 of the workload as rendered for the home region (so a
    /// failover does not count as a new revision).
    pub revision_hash: String,
}

pub fn name(inst: &Installation) -> &str {
    inst.metadata.name.as_deref().unwrap_or_default()
}

pub fn config_map_name(inst: &Installation) -> String {
    format!("{}-config", name(inst))
}

/// Labels on every child and pod.
pub fn labels(inst: &Installation, capsule: &CapsuleSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), capsule.package.clone()),
        ("app.kubernetes.io/instance".into(), name(inst).to_string()),
        ("app.kubernetes.io/version".into(), capsule.version.clone()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (INSTALLATION_LABEL.into(), name(inst).to_string()),
    ])
}

fn selector(inst: &Installation) -> Value {
    json!({ INSTALLATION_LABEL: name(inst) })
}

fn metadata(input: &Input<'_>, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": input.installation.metadata.namespace,
        "labels": labels(input.installation, input.capsule),
        "ownerReferences": [input.owner],
    })
}

/// Replicas the spec asks for (autoscaling: its minimum).
pub fn base_replicas(inst: &Installation) -> i32 {
    match &inst.spec.autoscaling {
        Some(a) => a.min_replicas,
        None => inst.spec.replicas.unwrap_or(1),
    }
}

fn resources(input: &Input<'_>) -> Value {
    json!(container_resources(
        input.capsule,
        input.max_cpu,
        input.max_memory
    ))
}

fn probe(path: &Option<String>, port: Option<i32>, period: i32) -> Option<Value> {
    let (path, port) = (path.as_ref()?, port?);
    Some(json!({
        "httpGet": { "path": path, "port": port },
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }))
}

/// Sets a JSON pod spec's placement ([`place`]).
fn place_json(spec: &mut Value, placement: &somastack_crds::common::Placement) {
    let mut pod = k8s_openapi::api::core::v1::PodSpec::default();
    place(&mut pod, placement);
    for (k, v) in pod.node_selector.unwrap_or_default() {
        spec["nodeSelector"][k] = json!(v);
    }
    if let Some(t) = pod.tolerations {
        spec["tolerations"] = json!(t);
    }
}

/// The pod template for `region`, never on a node of `unavailable` regions.
fn pod_template(input: &Input<'_>, region: &str, unavailable: &[String], config_hash: &str) -> Value {
    let inst = input.installation;
    let capsule = input.capsule;
    let first_port = capsule.ports.first().map(|p| p.port);
    let mut container = json!({
        "name": capsule.package,
        "image": capsule.image,
        "ports": capsule.ports.iter().map(|p| json!({
            "name": p.name, "containerPort": p.port, "protocol": p.protocol,
        })).collect::<Vec<_>>(),
        "env": capsule.env.iter().map(|e| json!({ "name": e.name, "value": e.value })).collect::<Vec<_>>(),
        "envFrom": [{ "configMapRef": { "name": config_map_name(inst) } }],
        "resources": resources(input),
        "securityContext": json!(restricted_container_security()),
        "volumeMounts": [
            { "name": "config", "mountPath": "/etc/somastack/config", "readOnly": true },
            { "name": "tmp", "mountPath": "/tmp" },
        ],
    });
    if let Some(p) = probe(&capsule.health_path, first_port, 10) {
        container["livenessProbe"] = p;
    }
    if let Some(p) = probe(&capsule.ready_path, first_port, 5) {
        container["readinessProbe"] = p;
    }
    let mut region_terms = vec![json!({ "key": REGION_LABEL, "operator": "In", "values": [region] })];
    if !unavailable.is_empty() {
        region_terms.push(json!({ "key": REGION_LABEL, "operator": "NotIn", "values": unavailable }));
    }
    let mut template = json!({
        "metadata": {
            "labels": labels(inst, capsule),
            "annotations": { CONFIG_HASH_ANNOTATION: config_hash },
        },
        "spec": {
            "serviceAccountName": name(inst),
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": json!(restricted_pod_security(true)),
            "containers": [container],
            "volumes": [
                { "name": "config", "configMap": { "name": config_map_name(inst) } },
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
            ],
            // Residency, enforced by the scheduler: only nodes of the region
            // (and, during a drill's outage, none of the unavailable ones).
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": region_terms }]
            } } },
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": ZONE_LABEL,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": selector(inst) },
            }],
        },
    });
    if let Some(placement) = &inst.spec.placement {
        place_json(&mut template["spec"], placement);
    }
    template
}

/// Renders every child.
pub fn render(input: &Input<'_>) -> Children {
    let inst = input.installation;
    let spec = &inst.spec;
    let capsule = input.capsule;
    let n = name(inst);

    let config_hash = sha256_hex(serde_json::to_string(&spec.config).unwrap_or_default().as_bytes());
    let home = pod_template(input, &spec.region, &[], &config_hash);
    let revision_hash =
        sha256_hex(serde_json::to_string(&home).unwrap_or_default().as_bytes())[..16].to_string();
    let unavailable = unavailable_regions(inst);
    let mut template = pod_template(input, input.region, &unavailable, &config_hash);
    // The region the workload runs in is down (a drill's outage): its pods
    // stop at once, as in a real outage, instead of being kept until
    // replacements are ready (they could not be).
    let strategy = if unavailable.iter().any(|r| r == input.region) {
        json!({ "type": "Recreate" })
    } else {
        // The old revision keeps serving until the new one is ready.
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } })
    };
    template["metadata"]["annotations"][REVISION_HASH_ANNOTATION] = json!(revision_hash);

    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(input, n),
        "spec": {
            "selector": { "matchLabels": selector(inst) },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.upgrade.as_ref().map(|u| u.progress_deadline_seconds).unwrap_or(600),
            "strategy": strategy,
            "template": template,
        },
    });
    // With an autoscaler, replicas are its business (not set here).
    if input.stopped {
        deployment["spec"]["replicas"] = json!(0);
    } else if spec.autoscaling.is_none() {
        deployment["spec"]["replicas"] = json!(spec.replicas.unwrap_or(1));
    }

    let service = (!capsule.ports.is_empty()).then(|| {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(input, n),
            "spec": {
                "type": "ClusterIP",
                "selector": selector(inst),
                "ports": capsule.ports.iter().map(|p| json!({
                    "name": p.name, "port": p.port, "targetPort": p.name, "protocol": p.protocol,
                })).collect::<Vec<_>>(),
            },
        })
    });

    let egress = if capsule.capabilities.iter().any(|c| c == EGRESS_CAPABILITY) {
        json!([{}])
    } else {
        json!([])
    };
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(input, n),
        "spec": {
            "podSelector": { "matchLabels": selector(inst) },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": if capsule.ports.is_empty() { json!([]) } else { json!([{
                "ports": capsule.ports.iter().map(|p| json!({ "port": p.port, "protocol": p.protocol })).collect::<Vec<_>>(),
            }]) },
            "egress": egress,
        },
    });

    let autoscaler = match (&spec.autoscaling, input.stopped) {
        (Some(a), false) => Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(input, n),
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": n },
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{ "type": "Resource", "resource": {
                    "name": "cpu",
                    "target": { "type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage },
                } }],
            },
        })),
        _ => None,
    };

    let disruption_budget = (!input.stopped && base_replicas(inst) > 1).then(|| {
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(input, n),
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector(inst) } },
        })
    });

    Children {
        service_account: json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(input, n),
            "automountServiceAccountToken": false,
        }),
        config_map: json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(input, &config_map_name(inst)),
            "data": spec.config,
        }),
        deployment,
        service,
        network_policy,
        autoscaler,
        disruption_budget,
        revision_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{capsule, installation};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use somastack_crds::common::Placement;
    use somastack_crds::installation::UNAVAILABLE_REGIONS_ANNOTATION;

    use somastack_crds::installation::Autoscaling;

    /// An Installation autoscaled between 2 and 5 replicas.
    fn autoscaled() -> Installation {
        let scaling = Autoscaling {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization_percentage: 70,
        };
        installation(None, Some(scaling))
    }

    fn input<'a>(
        inst: &'a Installation,
        capsule: &'a CapsuleSpec,
        region: &'a str,
        stopped: bool,
    ) -> Input<'a> {
        Input {
            installation: inst,
            owner: OwnerReference {
                api_version: "somastack.io/v1alpha1".into(),
                kind: "Installation".into(),
                name: "summarizer".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            capsule,
            region,
            stopped,
            max_cpu: None,
            max_memory: None,
        }
    }

    #[test]
    fn children_have_the_shape_of_their_kinds() {
        let inst = installation(Some(3), None);
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-west-1", false));
        let _: ServiceAccount = serde_json::from_value(c.service_account.clone()).unwrap();
        let _: ConfigMap = serde_json::from_value(c.config_map.clone()).unwrap();
        let d: Deployment = serde_json::from_value(c.deployment.clone()).unwrap();
        let _: Service = serde_json::from_value(c.service.clone().unwrap()).unwrap();
        let _: NetworkPolicy = serde_json::from_value(c.network_policy.clone()).unwrap();
        let _: PodDisruptionBudget = serde_json::from_value(c.disruption_budget.clone().unwrap()).unwrap();
        assert!(c.autoscaler.is_none());
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.containers[0].image.as_deref(), Some(cap.image.as_str()));
    }

    #[test]
    fn pods_are_pinned_to_the_region_and_spread_across_zones() {
        let inst = installation(Some(2), None);
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-central-1", false));
        let term = &c.deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(term["key"], REGION_LABEL);
        assert_eq!(term["values"], json!(["eu-central-1"]));
        let spread = &c.deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
        assert_eq!(spread["topologyKey"], ZONE_LABEL);
    }

    #[test]
    fn placement_adds_node_labels_and_tolerations_and_keeps_the_region() {
        use somastack_crds::common::{TaintEffect, Toleration, TolerationOperator};
        let mut inst = installation(Some(2), None);
        let cap = capsule();
        let plain = render(&input(&inst, &cap, "eu-west-1", false));
        let pod = &plain.deployment["spec"]["template"]["spec"];
        assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
        inst.spec.placement = Some(Placement {
            node_selector: BTreeMap::from([("pool".into(), "gpu".into())]),
            tolerations: vec![Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Equal,
                value: "agents".into(),
                effect: Some(TaintEffect::NoSchedule),
            }],
        });
        let placed = render(&input(&inst, &cap, "eu-west-1", false));
        let pod = &placed.deployment["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({ "pool": "gpu" }));
        assert_eq!(
            pod["tolerations"],
            json!([{ "key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule" }])
        );
        let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0];
        assert_eq!(term["values"], json!(["eu-west-1"]));
        // Placement is part of the workload: changing it is a new revision.
        assert_ne!(plain.revision_hash, placed.revision_hash);
        let d: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(placed.deployment.clone()).unwrap();
        let tolerations = d
            .spec
            .template
            .spec
            .and_then(|s| s.tolerations)
            .unwrap_or_default();
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
    }

    #[test]
    fn security_context_meets_the_restricted_pod_security_standard() {
        let inst = installation(None, None);
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-west-1", false));
        let pod = &c.deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let sc = &pod["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
    }

    #[test]
    fn probes_use_the_capsule_paths() {
        let inst = installation(None, None);
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-west-1", false));
        let container = &c.deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], 8080);
    }

    #[test]
    fn autoscaling_owns_replicas_and_adds_an_autoscaler() {
        let inst = autoscaled();
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-west-1", false));
        assert!(c.deployment["spec"].get("replicas").is_none());
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(c.autoscaler.clone().unwrap()).unwrap();
        assert_eq!(hpa.spec.max_replicas, 5);
        assert!(
            c.disruption_budget.is_some(),
            "min 2 replicas: a disruption budget"
        );
    }

    #[test]
    fn a_single_replica_has_no_disruption_budget() {
        let inst = installation(Some(1), None);
        let cap = capsule();
        assert!(
            render(&input(&inst, &cap, "eu-west-1", false))
                .disruption_budget
                .is_none()
        );
    }

    #[test]
    fn kill_switch_scales_to_zero_without_autoscaler_or_budget() {
        let inst = autoscaled();
        let cap = capsule();
        let c = render(&input(&inst, &cap, "eu-west-1", true));
        assert_eq!(c.deployment["spec"]["replicas"], 0);
        assert!(c.autoscaler.is_none());
        assert!(c.disruption_budget.is_none());
    }

    #[test]
    fn egress_only_with_the_capability() {
        let inst = installation(None, None);
        let mut cap = capsule();
        let closed = render(&input(&inst, &cap, "eu-west-1", false));
        assert_eq!(closed.network_policy["spec"]["egress"], json!([]));
        assert_eq!(
            closed.network_policy["spec"]["ingress"][0]["ports"][0]["port"],
            8080
        );
        cap.capabilities.push(EGRESS_CAPABILITY.into());
        let open = render(&input(&inst, &cap, "eu-west-1", false));
        assert_eq!(open.network_policy["spec"]["egress"], json!([{}]));
    }

    #[test]
    fn ceilings_fill_missing_limits() {
        let inst = installation(None, None);
        let cap = capsule();
        let mut i = input(&inst, &cap, "eu-west-1", false);
        i.max_cpu = Some("500m");
        let c = render(&i);
        assert_eq!(
            c.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
    }

    #[test]
    fn revision_hash_follows_the_workload_but_not_failover_or_scale() {
        let inst = installation(Some(2), None);
        let cap = capsule();
        let home = render(&input(&inst, &cap, "eu-west-1", false)).revision_hash;
        assert_eq!(
            render(&input(&inst, &cap, "eu-central-1", false)).revision_hash,
            home,
            "failover is not a new revision"
        );
        let scaled = installation(Some(5), None);
        assert_eq!(
            render(&input(&scaled, &cap, "eu-west-1", false)).revision_hash,
            home,
            "scaling is not a new revision"
        );
        let mut upgraded = cap.clone();
        upgraded.version = "1.5.0".into();
        upgraded.image = upgraded.image.replace("3b06", "4c17");
        assert_ne!(
            render(&input(&inst, &upgraded, "eu-west-1", false)).revision_hash,
            home
        );
        let mut reconfigured = installation(Some(2), None);
        reconfigured.spec.config.insert("STYLE".into(), "long".into());
        assert_ne!(
            render(&input(&reconfigured, &cap, "eu-west-1", false)).revision_hash,
            home
        );
    }

    #[test]
    fn an_unavailable_region_is_excluded_and_its_pods_stop_at_once() {
        let mut inst = installation(Some(2), None);
        inst.metadata.annotations = Some(
            [(
                UNAVAILABLE_REGIONS_ANNOTATION.to_string(),
                "eu-west-1".to_string(),
            )]
            .into(),
        );
        let cap = capsule();
        let normal = render(&input(&installation(Some(2), None), &cap, "eu-west-1", false));
        let down = render(&input(&inst, &cap, "eu-west-1", false));
        let terms = &down.deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"];
        assert_eq!(
            terms[1],
            json!({ "key": REGION_LABEL, "operator": "NotIn", "values": ["eu-west-1"] })
        );
        assert_eq!(down.deployment["spec"]["strategy"], json!({ "type": "Recreate" }));
        // Not a new revision: history and rollback ignore the outage.
        assert_eq!(down.revision_hash, normal.revision_hash);
        // Failed over: runs in eu-central-1, rolling again, still never in eu-west-1.
        let moved = render(&input(&inst, &cap, "eu-central-1", false));
        assert_eq!(moved.deployment["spec"]["strategy"]["type"], "RollingUpdate");
        let terms = &moved.deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"];
        assert_eq!(terms[0]["values"], json!(["eu-central-1"]));
        assert_eq!(terms[1]["values"], json!(["eu-west-1"]));
    }
}
