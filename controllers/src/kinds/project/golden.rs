//! Byte identity of every child a project renders: each object, serialized
//! as server-side apply sends it, is compared to a golden file under
//! `golden/`. A missing golden file fails the test, unless
//! `SOMASTACK_BLESS=1` is set, which writes it (review the new file).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use somastack_crds::capsule::{CapsuleSpec, EnvVar, ResourceAmounts, ResourceRequirements};
use somastack_crds::common::{DataClassification, Placement, TaintEffect, Toleration, TolerationOperator};

use super::fixtures::{job_input, project, task};
use super::plan::Role;
use super::render::{self, JobInput, Project};
use crate::testing::capsule_spec;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/kinds/project/golden")
}

/// Compares `obj`, serialized, to `golden/<name>.json`.
fn assert_golden<T: Serialize>(name: &str, obj: &T) {
    let value = serde_json::to_value(obj).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = serde_json::to_string_pretty(&value).unwrap_or_else(|e| panic!("{name}: {e}")) + "\n";
    let path = golden_dir().join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(want) => assert!(
            got == want,
            "{name} differs from {}:\n--- got\n{got}\n--- want\n{want}",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("SOMASTACK_BLESS").as_deref() == Ok("1") {
                std::fs::create_dir_all(golden_dir()).unwrap_or_else(|e| panic!("{name}: {e}"));
                std::fs::write(&path, got).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                panic!(
                    "golden file {} is missing; run with SOMASTACK_BLESS=1 to write it",
                    path.display()
                );
            }
        }
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// A capsule with its own environment and resources.
fn capsule() -> CapsuleSpec {
    let mut c = capsule_spec(DataClassification::Internal);
    c.env = vec![EnvVar {
        name: "MODEL".into(),
        value: "small".into(),
    }];
    c.resources = Some(ResourceRequirements {
        requests: Some(ResourceAmounts {
            cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "100m".into(),
            )),
            memory: None,
        }),
        limits: Some(ResourceAmounts {
            cpu: None,
            memory: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            )),
        }),
    });
    c
}

#[test]
fn task_and_review_jobs_render_byte_for_byte() {
    let none = BTreeMap::new();
    let gather = task("gather", &[]);
    let c = capsule();

    // A task's first attempt, under the policy's ceilings.
    let p = project();
    let first = JobInput {
        max_cpu: Some("2"),
        max_memory: Some("1Gi"),
        ..job_input(&gather, &c, &none)
    };
    assert_golden("job-task-first-attempt", &render::job(&p, &first));

    // The review of a second attempt, in a retry round, with the output.
    let review = JobInput {
        role: Role::Review,
        attempt: 2,
        round: "r1",
        output: Some("Prices rose 4%.\nDetails follow."),
        ..job_input(&gather, &c, &none)
    };
    assert_golden("job-review", &render::job(&p, &review));

    // Placement and region together.
    let placement = Placement {
        node_selector: BTreeMap::from([("somastack.io/real-node".into(), "true".into())]),
        tolerations: vec![
            Toleration {
                key: "node.somastack.io/real".into(),
                operator: TolerationOperator::Exists,
                value: String::new(),
                effect: None,
            },
            Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Equal,
                value: "agents".into(),
                effect: Some(TaintEffect::NoSchedule),
            },
        ],
    };
    let placed = Project {
        placement: Some(&placement),
        ..project()
    };
    assert_golden(
        "job-placement-region",
        &render::job(&placed, &job_input(&gather, &c, &none)),
    );

    // Dependencies' outputs, without a region.
    let brief = task("brief", &["solar", "wind"]);
    let deps = BTreeMap::from([
        ("solar".to_string(), "Solar rose.".to_string()),
        ("wind".to_string(), "Wind \"fell\".".to_string()),
    ]);
    let unplaced = Project {
        region: None,
        ..project()
    };
    let plain = capsule_spec(DataClassification::Internal);
    assert_golden(
        "job-dependencies",
        &render::job(&unplaced, &job_input(&brief, &plain, &deps)),
    );

    // A capsule that may reach the network.
    let mut egress = capsule_spec(DataClassification::Internal);
    egress.capabilities = vec!["network-egress".into()];
    assert_golden(
        "job-egress",
        &render::job(&p, &job_input(&gather, &egress, &none)),
    );
}

#[test]
fn what_agents_run_under_renders_byte_for_byte() {
    let p = project();
    assert_golden("service-account", &p.service_account());
    for (i, np) in p.network_policies().iter().enumerate() {
        assert_golden(&format!("network-policy-{i}"), np);
    }
}

#[test]
fn plan_and_results_config_maps_render_byte_for_byte() {
    let p = project();
    let tasks = vec![
        task("solar", &[]),
        task("wind", &[]),
        task("brief", &["solar", "wind"]),
    ];
    let digest = super::plan::digest(p.goal, &tasks);
    assert_golden(
        "plan-config-map",
        &p.plan_config_map(&tasks, &digest, "spec.tasks"),
    );
    assert_golden(
        "refused-plan-config-map",
        &p.refused_plan_config_map("planner planned 9000 tasks", "0123456789abcdef"),
    );
    let shard = BTreeMap::from([
        ("solar".to_string(), "Solar rose.".to_string()),
        ("wind".to_string(), "Wind fell.".to_string()),
    ]);
    assert_golden("results-config-map-0", &p.results_config_map(0, 2, &shard));
    assert_golden(
        "results-config-map-1",
        &p.results_config_map(1, 2, &BTreeMap::new()),
    );
}
