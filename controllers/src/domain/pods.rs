//! What every pod the operator creates has in common (Installation
//! workloads and project agents alike): the restricted Pod Security
//! Standard, resources within the policy's ceilings, and a placement. Pure,
//! and typed: the structs serialize to exactly what server-side apply sends.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use somastack_crds::capsule::{CapsuleSpec, ResourceAmounts};
use somastack_crds::common::{Placement, TaintEffect, TolerationOperator};

/// Capability that opens egress in the NetworkPolicy.
pub const EGRESS_CAPABILITY: &str = "network-egress";
/// The unprivileged user (and group) every pod runs as.
pub const NON_ROOT_ID: i64 = 65532;

/// A container securityContext that meets the restricted Pod Security Standard.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The pod securityContext: non-root with [`NON_ROOT_ID`], the runtime's
/// default seccomp profile; `fs_group` for pods that mount volumes another
/// user must read.
pub fn restricted_pod_security(fs_group: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        fs_group: fs_group.then_some(NON_ROOT_ID),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The container resources of `capsule`; within a ceiling, a capsule without
/// a limit gets the ceiling as its limit.
pub fn container_resources(
    capsule: &CapsuleSpec,
    max_cpu: Option<&str>,
    max_memory: Option<&str>,
) -> ResourceRequirements {
    let res = capsule.resources.clone().unwrap_or_default();
    let amounts = |a: Option<&ResourceAmounts>| {
        let mut m = BTreeMap::new();
        if let Some(a) = a {
            if let Some(cpu) = &a.cpu {
                m.insert("cpu".to_string(), Quantity(cpu.0.clone()));
            }
            if let Some(mem) = &a.memory {
                m.insert("memory".to_string(), Quantity(mem.0.clone()));
            }
        }
        m
    };
    let requests = amounts(res.requests.as_ref());
    let mut limits = amounts(res.limits.as_ref());
    if let Some(cpu) = max_cpu {
        limits.entry("cpu".into()).or_insert_with(|| Quantity(cpu.into()));
    }
    if let Some(mem) = max_memory {
        limits
            .entry("memory".into())
            .or_insert_with(|| Quantity(mem.into()));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// Sets a pod spec's `nodeSelector` (merged with what is there) and
/// `tolerations` from a [`Placement`]; the region stays the caller's.
pub fn place(pod: &mut PodSpec, placement: &Placement) {
    if !placement.node_selector.is_empty() {
        pod.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(placement.node_selector.clone());
    }
    if !placement.tolerations.is_empty() {
        pod.tolerations = Some(placement.tolerations.iter().map(toleration).collect());
    }
}

fn toleration(t: &somastack_crds::common::Toleration) -> Toleration {
    Toleration {
        key: (!t.key.is_empty()).then(|| t.key.clone()),
        operator: Some(
            match t.operator {
                TolerationOperator::Equal => "Equal",
                TolerationOperator::Exists => "Exists",
            }
            .into(),
        ),
        value: (!t.value.is_empty()).then(|| t.value.clone()),
        effect: t.effect.map(|e| {
            match e {
                TaintEffect::NoSchedule => "NoSchedule",
                TaintEffect::PreferNoSchedule => "PreferNoSchedule",
                TaintEffect::NoExecute => "NoExecute",
            }
            .into()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_toleration_is_what_the_user_wrote() {
        let wrote = json!([
            { "key": "node.somastack.io/real", "operator": "Equal", "value": "true", "effect": "NoSchedule" },
            { "operator": "Exists" },
        ]);
        let placement = Placement {
            node_selector: BTreeMap::from([("pool".into(), "gpu".into())]),
            tolerations: serde_json::from_value(wrote.clone()).unwrap_or_default(),
        };
        let mut pod = PodSpec::default();
        place(&mut pod, &placement);
        let got = serde_json::to_value(&pod).unwrap_or_default();
        assert_eq!(got["tolerations"], wrote);
        assert_eq!(got["nodeSelector"], json!({ "pool": "gpu" }));
    }

    #[test]
    fn ceilings_become_limits_only_where_the_capsule_set_none() {
        let capsule: CapsuleSpec = serde_json::from_value(json!({
            "publisher": "p", "package": "a", "version": "1.0.0",
            "image": "localhost/a@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "dataClassification": "internal",
            "resources": { "requests": { "cpu": "100m" }, "limits": { "memory": "64Mi" } },
        }))
        .unwrap_or_else(|e| panic!("capsule: {e}"));
        let got =
            serde_json::to_value(container_resources(&capsule, Some("2"), Some("1Gi"))).unwrap_or_default();
        assert_eq!(
            got,
            json!({ "requests": { "cpu": "100m" }, "limits": { "cpu": "2", "memory": "64Mi" } })
        );
    }
}
