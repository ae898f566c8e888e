//! Byte-identity guard of [`render::render`]: a representative set of
//! Installations is rendered and every child (as canonical JSON: keys
//! sorted, pretty-printed) and the revision hash are compared with the
//! files under `golden/<case>/`, which record what the API server is sent.
//! A change to what the operator applies, or to the revision hash (a new
//! revision for every running Installation), fails here first.
//!
//! The files were produced by the code before the typed rewrite of
//! `render`. To record a new case, run the test with `SOMASTACK_BLESS=1`:
//! it writes the files that are missing (and only those). To accept a
//! changed rendering on purpose, delete the case's files and bless again.
//! Without `SOMASTACK_BLESS=1`, a missing file is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use somastack_crds::Installation;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::common::{DataClassification, Placement, TaintEffect, Toleration, TolerationOperator};
use somastack_crds::installation::{Autoscaling, UNAVAILABLE_REGIONS_ANNOTATION, UpgradePolicy};

use super::ObjectKey;
use super::render::{self, Input};
use crate::domain::pods::EGRESS_CAPABILITY;
use crate::testing::{capsule, capsule_spec, installation};

/// One rendering to guard.
struct Case {
    name: &'static str,
    installation: Installation,
    capsule: CapsuleSpec,
    region: &'static str,
    stopped: bool,
    max_cpu: Option<&'static str>,
    max_memory: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, installation: Installation) -> Self {
        Case {
            name,
            installation,
            capsule: capsule(),
            region: "eu-west-1",
            stopped: false,
            max_cpu: None,
            max_memory: None,
        }
    }
}

fn autoscaled() -> Installation {
    installation(
        None,
        Some(Autoscaling {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization_percentage: 70,
        }),
    )
}

fn in_an_outage() -> Installation {
    let mut inst = installation(Some(2), None);
    inst.metadata.annotations = Some(BTreeMap::from([(
        UNAVAILABLE_REGIONS_ANNOTATION.to_string(),
        "eu-west-1".to_string(),
    )]));
    inst
}

fn cases() -> Vec<Case> {
    let mut placed = installation(Some(2), None);
    placed.spec.placement = Some(Placement {
        node_selector: BTreeMap::from([("pool".into(), "gpu".into()), ("disk".into(), "ssd".into())]),
        tolerations: vec![
            Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Equal,
                value: "agents".into(),
                effect: Some(TaintEffect::NoSchedule),
            },
            Toleration {
                key: String::new(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect: None,
            },
        ],
    });

    let mut sized = capsule();
    sized.resources = Some(
        serde_json::from_value(json!({
            "requests": { "cpu": "100m", "memory": "32Mi" },
            "limits": { "memory": "64Mi" },
        }))
        .unwrap(),
    );
    sized.env = serde_json::from_value(json!([
        { "name": "LOG_LEVEL", "value": "debug" },
        { "name": "EMPTY", "value": "" },
    ]))
    .unwrap();

    let mut portless = capsule_spec(DataClassification::Internal);
    portless.capabilities.push(EGRESS_CAPABILITY.into());
    let mut watched = installation(None, None);
    watched.spec.config.clear();
    watched.spec.upgrade = Some(UpgradePolicy {
        gate: None,
        auto_rollback: true,
        progress_deadline_seconds: 120,
    });

    vec![
        Case::new("plain", installation(Some(3), None)),
        Case::new("autoscaled", autoscaled()),
        Case::new("placement", placed),
        Case::new("outage_in_the_active_region", in_an_outage()),
        Case {
            region: "eu-central-1",
            ..Case::new("failed_over_during_an_outage", in_an_outage())
        },
        Case {
            stopped: true,
            ..Case::new("kill_switch", autoscaled())
        },
        Case {
            capsule: sized,
            max_cpu: Some("500m"),
            max_memory: Some("1Gi"),
            ..Case::new("policy_ceilings", installation(Some(1), None))
        },
        Case {
            capsule: portless,
            ..Case::new("no_ports", watched)
        },
    ]
}

/// The owner reference of the Installation `summarizer` (uid `uid-1`),
/// shared with the unit tests of `render`.
pub(super) fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "somastack.io/v1alpha1".into(),
        kind: "Installation".into(),
        name: "summarizer".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Canonical JSON of a child: `serde_json::Value` keeps keys sorted (the
/// crate does not enable `preserve_order`), so this is independent of the
/// order in which a typed struct declares its fields. An absent child is `null`.
fn canonical<T: serde::Serialize>(child: &T) -> String {
    let value: Value = serde_json::to_value(child).unwrap();
    format!("{}\n", serde_json::to_string_pretty(&value).unwrap())
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kinds/installation/golden")
}

/// Compares `got` with the golden file `case/file`; returns a description
/// of the difference, if any.
fn check(case: &str, file: &str, got: &str) -> Option<String> {
    let path = golden_dir().join(case).join(file);
    match std::fs::read_to_string(&path) {
        Ok(want) if want == got => None,
        Ok(want) => Some(format!(
            "{} differs from the rendering:\n--- golden\n{want}\n+++ rendered\n{got}",
            path.display()
        )),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && std::env::var("SOMASTACK_BLESS").as_deref() == Ok("1") =>
        {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
            None
        }
        Err(e) => Some(format!(
            "{}: {e} (record it with SOMASTACK_BLESS=1, see this module's docs)",
            path.display()
        )),
    }
}

#[test]
fn rendering_is_byte_identical_to_the_golden_files() {
    let mut failures = Vec::new();
    for case in cases() {
        let key = ObjectKey::of(&case.installation).unwrap();
        let children = render::render(&Input {
            installation: &case.installation,
            key: &key,
            owner: owner(),
            capsule: &case.capsule,
            region: case.region,
            stopped: case.stopped,
            max_cpu: case.max_cpu,
            max_memory: case.max_memory,
        })
        .unwrap();
        let files = [
            ("service_account.json", canonical(&children.service_account)),
            ("config_map.json", canonical(&children.config_map)),
            ("deployment.json", canonical(&children.deployment)),
            ("service.json", canonical(&children.service)),
            ("network_policy.json", canonical(&children.network_policy)),
            ("autoscaler.json", canonical(&children.autoscaler)),
            ("disruption_budget.json", canonical(&children.disruption_budget)),
            ("revision_hash.txt", format!("{}\n", children.revision_hash)),
        ];
        for (file, got) in files {
            failures.extend(check(case.name, file, &got));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
