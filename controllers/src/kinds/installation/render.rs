//! The desired children of an Installation, as a pure function of its spec,
//! its Capsule, the region it runs in and the effective policy.
//!
//! Children are the typed Kubernetes objects server-side apply sends:
//! k8s-openapi structs serialize `apiVersion` and `kind` and omit what is
//! unset, so each is exactly the fields the operator owns. The golden test
//! (`golden.rs`) holds their JSON byte for byte; the integration tests have
//! the API server accept them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, HTTPGetAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
    ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use somastack_crds::Installation;
use somastack_crds::capsule::{CapsulePort, CapsuleSpec, Protocol};

use super::ObjectKey;
use crate::domain::pods::{
    EGRESS_CAPABILITY, container_resources, place, restricted_container_security, restricted_pod_security,
};
use crate::domain::regions::{REGION_LABEL, ZONE_LABEL, unavailable_regions};
use crate::domain::sha256_hex;
use crate::{INSTALLATION_LABEL, MANAGED_BY, Result};

/// Pod-template annotation: hash of the rendered workload (the revision key).
pub const REVISION_HASH_ANNOTATION: &str = "somastack.io/revision-hash";
/// Pod-template annotation: hash of the config, so a config change rolls pods.
pub const CONFIG_HASH_ANNOTATION: &str = "somastack.io/config-hash";
/// The node label the replicas are spread over, beside the zone.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Namespace label, set by a cluster administrator (tenants cannot label
/// namespaces), that marks the namespace the operator runs in: its pods may
/// connect to every Installation's ports (planner capsules are called at
/// their Service).
pub const OPERATOR_NAMESPACE_LABEL: &str = "somastack.io/operator";
/// Pod labels of the operator (the chart's `app.kubernetes.io/part-of` and
/// `app.kubernetes.io/component`).
pub const OPERATOR_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/part-of", "somastack"),
    ("app.kubernetes.io/component", "operator"),
];

/// Everything rendering needs.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub installation: &'a Installation,
    /// Namespace and name of the Installation: its children's.
    pub key: &'a ObjectKey,
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
/// then pruned). Serialized whole for their digest ([`Children::digest`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Option<Service>,
    pub network_policy: NetworkPolicy,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// sha256 of the workload as rendered for the home region (so a
    /// failover does not count as a new revision).
    pub revision_hash: String,
}

impl Children {
    /// Digest of every child, and of the Installation's `generation` they
    /// were rendered for: what decides whether they need applying again.
    pub fn digest(&self, generation: Option<i64>) -> Result<String, serde_json::Error> {
        Ok(crate::domain::sha256_hex(&serde_json::to_vec(&(
            generation, self,
        ))?))
    }
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// Labels on every child and pod of the Installation `name`.
pub fn labels(name: &str, capsule: &CapsuleSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), capsule.package.clone()),
        ("app.kubernetes.io/instance".into(), name.to_string()),
        ("app.kubernetes.io/version".into(), capsule.version.clone()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (INSTALLATION_LABEL.into(), name.to_string()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(INSTALLATION_LABEL.to_string(), name.to_string())])
}

fn label_selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector(name)),
        ..Default::default()
    }
}

fn metadata(input: &Input<'_>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(input.key.namespace.clone()),
        labels: Some(labels(&input.key.name, input.capsule)),
        owner_references: Some(vec![input.owner.clone()]),
        ..Default::default()
    }
}

fn protocol(p: Protocol) -> Option<String> {
    Some(
        match p {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
        .into(),
    )
}

/// Replicas the spec asks for (autoscaling: its minimum).
pub fn base_replicas(inst: &Installation) -> i32 {
    match &inst.spec.autoscaling {
        Some(a) => a.min_replicas,
        None => inst.spec.replicas.unwrap_or(1),
    }
}

fn probe(path: &Option<String>, port: Option<i32>, period: i32) -> Option<Probe> {
    let (path, port) = (path.as_ref()?, port?);
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.clone()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    })
}

/// The capsule's ports, each as `T`.
fn each_port<T>(capsule: &CapsuleSpec, as_t: impl Fn(&CapsulePort) -> T) -> Option<Vec<T>> {
    Some(capsule.ports.iter().map(as_t).collect())
}

fn container(input: &Input<'_>) -> Container {
    let capsule = input.capsule;
    let first_port = capsule.ports.first().map(|p| p.port);
    Container {
        name: capsule.package.clone(),
        image: Some(capsule.image.clone()),
        ports: each_port(capsule, |p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.port,
            protocol: protocol(p.protocol),
            ..Default::default()
        }),
        env: Some(
            capsule
                .env
                .iter()
                .map(|e| EnvVar {
                    name: e.name.clone(),
                    value: Some(e.value.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(&input.key.name),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        resources: Some(container_resources(capsule, input.max_cpu, input.max_memory)),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/somastack/config".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        liveness_probe: probe(&capsule.health_path, first_port, 10),
        readiness_probe: probe(&capsule.ready_path, first_port, 5),
        ..Default::default()
    }
}

/// Residency, enforced by the scheduler: only nodes of `region` (and,
/// during a drill's outage, none of the `unavailable` ones).
fn residency(region: &str, unavailable: &[String]) -> Affinity {
    let mut terms = vec![NodeSelectorRequirement {
        key: REGION_LABEL.into(),
        operator: "In".into(),
        values: Some(vec![region.to_string()]),
    }];
    if !unavailable.is_empty() {
        terms.push(NodeSelectorRequirement {
            key: REGION_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(unavailable.to_vec()),
        });
    }
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(terms),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod template for `region`, never on a node of `unavailable` regions.
fn pod_template(
    input: &Input<'_>,
    region: &str,
    unavailable: &[String],
    annotations: BTreeMap<String, String>,
) -> PodTemplateSpec {
    let name = &input.key.name;
    let mut pod = PodSpec {
        service_account_name: Some(name.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security(true)),
        containers: vec![container(input)],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("64Mi".into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        affinity: Some(residency(region, unavailable)),
        // Over zones and over nodes; preferences only, so replicas still
        // schedule where the region has one zone or one node.
        topology_spread_constraints: Some(
            [ZONE_LABEL, HOSTNAME_LABEL]
                .into_iter()
                .map(|key| TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: key.into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(label_selector(name)),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    if let Some(placement) = &input.installation.spec.placement {
        place(&mut pod, placement);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name, input.capsule)),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(pod),
    }
}

/// The revision key of a pod template: the first 16 hex digits of the
/// sha256 of its compact JSON with keys sorted. Hashed through
/// `serde_json::Value` (which sorts keys; the crate does not enable
/// `preserve_order`) rather than the struct's own field order, so the bytes
/// are those the JSON-built template of earlier versions hashed and a
/// running Installation keeps its revision.
fn revision_hash(template: &PodTemplateSpec) -> Result<String> {
    let canonical = serde_json::to_string(&serde_json::to_value(template)?)?;
    Ok(sha256_hex(canonical.as_bytes())[..16].to_string())
}

/// Renders every child.
pub fn render(input: &Input<'_>) -> Result<Children> {
    let inst = input.installation;
    let spec = &inst.spec;
    let capsule = input.capsule;
    let n = input.key.name.as_str();

    let config_hash = sha256_hex(serde_json::to_string(&spec.config)?.as_bytes());
    let mut annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash)]);
    let home = pod_template(input, &spec.region, &[], annotations.clone());
    let revision_hash = revision_hash(&home)?;
    annotations.insert(REVISION_HASH_ANNOTATION.into(), revision_hash.clone());
    let unavailable = unavailable_regions(inst);
    let template = pod_template(input, input.region, &unavailable, annotations);
    // The region the workload runs in is down (a drill's outage): its pods
    // stop at once, as in a real outage, instead of being kept until
    // replacements are ready (they could not be).
    let strategy = if unavailable.iter().any(|r| r == input.region) {
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        }
    } else {
        // The old revision keeps serving until the new one is ready.
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        }
    };
    let deployment = Deployment {
        metadata: metadata(input, n),
        spec: DeploymentSpec {
            selector: label_selector(n),
            revision_history_limit: Some(3),
            progress_deadline_seconds: Some(
                spec.upgrade
                    .as_ref()
                    .map(|u| u.progress_deadline_seconds)
                    .unwrap_or(600),
            ),
            strategy: Some(strategy),
            template,
            // With an autoscaler, replicas are its business (not set here).
            replicas: if input.stopped {
                Some(0)
            } else if spec.autoscaling.is_none() {
                Some(spec.replicas.unwrap_or(1))
            } else {
                None
            },
            ..Default::default()
        },
        status: None,
    };

    let service = (!capsule.ports.is_empty()).then(|| Service {
        metadata: metadata(input, n),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(n)),
            ports: each_port(capsule, |p| ServicePort {
                name: Some(p.name.clone()),
                port: p.port,
                target_port: Some(IntOrString::String(p.name.clone())),
                protocol: protocol(p.protocol),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    });

    let egress = if capsule.capabilities.iter().any(|c| c == EGRESS_CAPABILITY) {
        vec![NetworkPolicyEgressRule::default()]
    } else {
        vec![]
    };
    // The capsule's ports, to pods of the Installation's own namespace and
    // to the operator's pods (which call planner capsules at their
    // Service); never to another tenant's pods.
    let ingress = if capsule.ports.is_empty() {
        vec![]
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(vec![
                NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector::default()),
                    ..Default::default()
                },
                NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            OPERATOR_NAMESPACE_LABEL.to_string(),
                            "true".to_string(),
                        )])),
                        ..Default::default()
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(
                            OPERATOR_POD_LABELS
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ports: each_port(capsule, |p| NetworkPolicyPort {
                port: Some(IntOrString::Int(p.port)),
                protocol: protocol(p.protocol),
                ..Default::default()
            }),
        }]
    };
    let network_policy = NetworkPolicy {
        metadata: metadata(input, n),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(n)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    };

    let autoscaler = match (&spec.autoscaling, input.stopped) {
        (Some(a), false) => Some(HorizontalPodAutoscaler {
            metadata: metadata(input, n),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: n.to_string(),
                },
                min_replicas: Some(a.min_replicas),
                max_replicas: a.max_replicas,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(a.target_cpu_utilization_percentage),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            status: None,
        }),
        _ => None,
    };

    let disruption_budget = (!input.stopped && base_replicas(inst) > 1).then(|| PodDisruptionBudget {
        metadata: metadata(input, n),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(n)),
            ..Default::default()
        }),
        status: None,
    });

    Ok(Children {
        service_account: ServiceAccount {
            metadata: metadata(input, n),
            automount_service_account_token: Some(false),
            ..Default::default()
        },
        config_map: ConfigMap {
            metadata: metadata(input, &config_map_name(n)),
            data: Some(spec.config.clone()),
            ..Default::default()
        },
        deployment,
        service,
        network_policy,
        autoscaler,
        disruption_budget,
        revision_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{capsule, installation};
    use somastack_crds::common::Placement;
    use somastack_crds::installation::{Autoscaling, UNAVAILABLE_REGIONS_ANNOTATION};

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
        key: &'a ObjectKey,
        capsule: &'a CapsuleSpec,
        region: &'a str,
        stopped: bool,
    ) -> Input<'a> {
        Input {
            installation: inst,
            key,
            owner: crate::kinds::installation::golden::owner(),
            capsule,
            region,
            stopped,
            max_cpu: None,
            max_memory: None,
        }
    }

    /// The children of `inst` running `capsule` in `region`.
    fn rendered(inst: &Installation, capsule: &CapsuleSpec, region: &str, stopped: bool) -> Children {
        let key = ObjectKey::of(inst).unwrap();
        render(&input(inst, &key, capsule, region, stopped)).unwrap()
    }

    fn pod(c: &Children) -> &PodSpec {
        c.deployment.spec.template.spec.as_ref().unwrap()
    }

    fn deployment_spec(c: &Children) -> &DeploymentSpec {
        &c.deployment.spec
    }

    /// The region rules of the pods' required node affinity.
    fn region_terms(c: &Children) -> &[NodeSelectorRequirement] {
        let affinity = pod(c).affinity.as_ref().unwrap().node_affinity.as_ref().unwrap();
        let required = affinity
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        required.node_selector_terms[0]
            .match_expressions
            .as_deref()
            .unwrap()
    }

    #[test]
    fn children_have_the_shape_of_their_kinds() {
        let inst = installation(Some(3), None);
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-west-1", false);
        assert!(c.service.is_some());
        assert!(c.disruption_budget.is_some());
        assert!(c.autoscaler.is_none());
        assert_eq!(deployment_spec(&c).replicas, Some(3));
        assert_eq!(pod(&c).automount_service_account_token, Some(false));
        assert_eq!(pod(&c).containers[0].image.as_deref(), Some(cap.image.as_str()));
        assert_eq!(c.service_account.automount_service_account_token, Some(false));
        assert_eq!(c.config_map.metadata.name.as_deref(), Some("summarizer-config"));
    }

    #[test]
    fn pods_are_pinned_to_the_region_and_spread_across_zones() {
        let inst = installation(Some(2), None);
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-central-1", false);
        let term = &region_terms(&c)[0];
        assert_eq!(term.key, REGION_LABEL);
        assert_eq!(term.values, Some(vec!["eu-central-1".to_string()]));
        let spread = pod(&c).topology_spread_constraints.as_ref().unwrap();
        let keys: Vec<&str> = spread.iter().map(|s| s.topology_key.as_str()).collect();
        assert_eq!(keys, [ZONE_LABEL, HOSTNAME_LABEL]);
        for constraint in spread {
            // A preference: never keeps a replica Pending.
            assert_eq!(constraint.when_unsatisfiable, "ScheduleAnyway");
            assert_eq!(constraint.max_skew, 1);
            assert_eq!(
                constraint.label_selector.as_ref().unwrap().match_labels,
                Some(selector("summarizer"))
            );
        }
    }

    #[test]
    fn ingress_admits_the_namespace_and_the_operator_only() {
        let inst = installation(None, None);
        let cap = capsule();
        let policy = rendered(&inst, &cap, "eu-west-1", false)
            .network_policy
            .spec
            .unwrap();
        let ingress = policy.ingress.unwrap();
        assert_eq!(ingress.len(), 1);
        let from = ingress[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 2, "{from:?}");
        // Every pod of the Installation's own namespace, and no other: a
        // podSelector without namespaceSelector.
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(from[0].namespace_selector, None);
        assert_eq!(from[0].ip_block, None);
        // The operator's pods, only in a namespace an administrator labelled.
        let operator_ns = from[1].namespace_selector.as_ref().unwrap();
        assert_eq!(
            operator_ns.match_labels,
            Some(BTreeMap::from([(
                OPERATOR_NAMESPACE_LABEL.to_string(),
                "true".to_string()
            )]))
        );
        assert_eq!(operator_ns.match_expressions, None);
        let operator_pods = from[1]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(operator_pods["app.kubernetes.io/component"], "operator");
        // No peer selects every namespace.
        assert!(
            from.iter().all(|p| p
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.match_labels.as_ref().is_some_and(|m| !m.is_empty()))),
            "{from:?}"
        );
    }

    #[test]
    fn placement_adds_node_labels_and_tolerations_and_keeps_the_region() {
        use somastack_crds::common::{TaintEffect, Toleration, TolerationOperator};
        let mut inst = installation(Some(2), None);
        let cap = capsule();
        let plain = rendered(&inst, &cap, "eu-west-1", false);
        assert!(pod(&plain).node_selector.is_none() && pod(&plain).tolerations.is_none());
        inst.spec.placement = Some(Placement {
            node_selector: BTreeMap::from([("pool".into(), "gpu".into())]),
            tolerations: vec![Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Equal,
                value: "agents".into(),
                effect: Some(TaintEffect::NoSchedule),
            }],
        });
        let placed = rendered(&inst, &cap, "eu-west-1", false);
        assert_eq!(
            pod(&placed).node_selector,
            Some(BTreeMap::from([("pool".to_string(), "gpu".to_string())]))
        );
        assert_eq!(
            pod(&placed).tolerations,
            Some(vec![k8s_openapi::api::core::v1::Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("agents".into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: None,
            }])
        );
        assert_eq!(
            region_terms(&placed)[0].values,
            Some(vec!["eu-west-1".to_string()])
        );
        // Placement is part of the workload: changing it is a new revision.
        assert_ne!(plain.revision_hash, placed.revision_hash);
    }

    #[test]
    fn security_context_meets_the_restricted_pod_security_standard() {
        let inst = installation(None, None);
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-west-1", false);
        let psc = pod(&c).security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let sc = pod(&c).containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.read_only_root_filesystem, Some(true));
    }

    #[test]
    fn probes_use_the_capsule_paths() {
        let inst = installation(None, None);
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-west-1", false);
        let container = &pod(&c).containers[0];
        let http = |p: &Option<Probe>| p.as_ref().unwrap().http_get.clone().unwrap();
        assert_eq!(http(&container.liveness_probe).path.as_deref(), Some("/healthz"));
        assert_eq!(http(&container.readiness_probe).path.as_deref(), Some("/readyz"));
        assert_eq!(http(&container.readiness_probe).port, IntOrString::Int(8080));
    }

    #[test]
    fn autoscaling_owns_replicas_and_adds_an_autoscaler() {
        let inst = autoscaled();
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-west-1", false);
        assert_eq!(deployment_spec(&c).replicas, None);
        assert_eq!(c.autoscaler.unwrap().spec.max_replicas, 5);
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
            rendered(&inst, &cap, "eu-west-1", false)
                .disruption_budget
                .is_none()
        );
    }

    #[test]
    fn kill_switch_scales_to_zero_without_autoscaler_or_budget() {
        let inst = autoscaled();
        let cap = capsule();
        let c = rendered(&inst, &cap, "eu-west-1", true);
        assert_eq!(deployment_spec(&c).replicas, Some(0));
        assert!(c.autoscaler.is_none());
        assert!(c.disruption_budget.is_none());
    }

    #[test]
    fn egress_only_with_the_capability() {
        let inst = installation(None, None);
        let mut cap = capsule();
        let closed = rendered(&inst, &cap, "eu-west-1", false)
            .network_policy
            .spec
            .unwrap();
        assert_eq!(closed.egress, Some(vec![]));
        let ingress = closed.ingress.unwrap();
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8080))
        );
        cap.capabilities.push(EGRESS_CAPABILITY.into());
        let open = rendered(&inst, &cap, "eu-west-1", false)
            .network_policy
            .spec
            .unwrap();
        assert_eq!(open.egress, Some(vec![NetworkPolicyEgressRule::default()]));
    }

    #[test]
    fn ceilings_fill_missing_limits() {
        let inst = installation(None, None);
        let key = ObjectKey::of(&inst).unwrap();
        let cap = capsule();
        let mut i = input(&inst, &key, &cap, "eu-west-1", false);
        i.max_cpu = Some("500m");
        let c = render(&i).unwrap();
        let resources = pod(&c).containers[0].resources.as_ref().unwrap();
        assert_eq!(
            resources.limits.as_ref().unwrap().get("cpu"),
            Some(&Quantity("500m".into()))
        );
    }

    #[test]
    fn revision_hash_follows_the_workload_but_not_failover_or_scale() {
        let inst = installation(Some(2), None);
        let cap = capsule();
        let home = rendered(&inst, &cap, "eu-west-1", false).revision_hash;
        assert_eq!(
            rendered(&inst, &cap, "eu-central-1", false).revision_hash,
            home,
            "failover is not a new revision"
        );
        let scaled = installation(Some(5), None);
        assert_eq!(
            rendered(&scaled, &cap, "eu-west-1", false).revision_hash,
            home,
            "scaling is not a new revision"
        );
        let mut upgraded = cap.clone();
        upgraded.version = "1.5.0".into();
        upgraded.image = upgraded.image.replace("3b06", "4c17");
        assert_ne!(rendered(&inst, &upgraded, "eu-west-1", false).revision_hash, home);
        let mut reconfigured = installation(Some(2), None);
        reconfigured.spec.config.insert("STYLE".into(), "long".into());
        assert_ne!(
            rendered(&reconfigured, &cap, "eu-west-1", false).revision_hash,
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
        let normal = rendered(&installation(Some(2), None), &cap, "eu-west-1", false);
        let down = rendered(&inst, &cap, "eu-west-1", false);
        assert_eq!(
            region_terms(&down)[1],
            NodeSelectorRequirement {
                key: REGION_LABEL.into(),
                operator: "NotIn".into(),
                values: Some(vec!["eu-west-1".into()]),
            }
        );
        assert_eq!(
            deployment_spec(&down).strategy,
            Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            })
        );
        // Not a new revision: history and rollback ignore the outage.
        assert_eq!(down.revision_hash, normal.revision_hash);
        // Failed over: runs in eu-central-1, rolling again, still never in eu-west-1.
        let moved = rendered(&inst, &cap, "eu-central-1", false);
        let strategy = deployment_spec(&moved).strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let terms = region_terms(&moved);
        assert_eq!(terms[0].values, Some(vec!["eu-central-1".to_string()]));
        assert_eq!(terms[1].values, Some(vec!["eu-west-1".to_string()]));
    }
}
