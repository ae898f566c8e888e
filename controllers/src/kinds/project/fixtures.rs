//! Fixtures shared by the project's unit tests (`tests`, `golden` and the
//! gates' tests): the project `market-brief` in `tenant-acme`, its tasks,
//! the summarizer capsule and the `eu-only` residency bundle.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::common::{CapsuleRef, DataClassification};
use somastack_crds::kamachiq::Task;
use somastack_crds::policy::{Residency, ResidencyRule};
use somastack_crds::{Capsule, PolicyBundle, PolicyBundleSpec};

use super::plan::Role;
use super::render::{JobInput, Project};
use crate::testing::capsule_spec;

/// Task `name` of summarizer 1.4.2, depending on `deps`, with input `do <name>`.
pub fn task(name: &str, deps: &[&str]) -> Task {
    Task {
        name: name.into(),
        capsule: CapsuleRef {
            package: "summarizer".into(),
            version: "1.4.2".into(),
        },
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input: format!("do {name}"),
        timeout_seconds: 600,
        retries: 1,
    }
}

/// The project `market-brief` in `tenant-acme`, in region eu-central-1.
pub fn project() -> Project<'static> {
    Project {
        name: "market-brief",
        namespace: "tenant-acme",
        uid: "0000-1111",
        goal: "Brief the market on energy prices",
        owner: OwnerReference {
            api_version: "somastack.io/v1alpha1".into(),
            kind: "KamachiqProject".into(),
            name: "market-brief".into(),
            uid: "0000-1111".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
        region: Some("eu-central-1"),
        placement: None,
    }
}

/// The first attempt of `task` (no round, no output, no ceilings).
pub fn job_input<'a>(
    task: &'a Task,
    capsule: &'a CapsuleSpec,
    dependencies: &'a BTreeMap<String, String>,
) -> JobInput<'a> {
    JobInput {
        task,
        role: Role::Task,
        attempt: 1,
        round: "",
        capsule,
        output: None,
        dependencies,
        max_cpu: None,
        max_memory: None,
    }
}

/// The published Capsule summarizer 1.4.2, handling confidential data.
pub fn capsules() -> Vec<Arc<Capsule>> {
    let mut spec = capsule_spec(DataClassification::Confidential);
    spec.package = "summarizer".into();
    spec.version = "1.4.2".into();
    vec![Arc::new(Capsule::new("summarizer-1-4-2", spec))]
}

/// The PolicyBundle `name`, as the cache holds it.
pub fn bundle(name: &str, spec: PolicyBundleSpec) -> Arc<PolicyBundle> {
    let mut b = PolicyBundle::new(name, spec);
    b.metadata.name = Some(name.into());
    Arc::new(b)
}

/// A bundle keeping confidential data in eu-central-1.
pub fn eu_only() -> Arc<PolicyBundle> {
    bundle(
        "eu-only",
        PolicyBundleSpec {
            residency: Some(Residency {
                rules: vec![ResidencyRule {
                    data_classification: DataClassification::Confidential,
                    allowed_regions: vec!["eu-central-1".into()],
                }],
            }),
            ..PolicyBundleSpec::default()
        },
    )
}
