//! The objects a KamachiqProject owns, rendered as pure functions: task and
//! review Jobs, the agents' ServiceAccount and NetworkPolicies, the plan and
//! results ConfigMaps.

pub use crate::text::bounded_name;
use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EmptyDirVolumeSource, EnvVar, PodSpec, PodTemplateSpec, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::kamachiq::{
    ATTEMPT_LABEL, PROJECT_LABEL, PROJECT_UID_LABEL, ROLE_LABEL, ROUND_ANNOTATION, STAGE_LABEL, TASK_LABEL,
    Task,
};

use super::moderation::{self, Moderator, Stage, Subject};
use super::plan::Role;
use crate::MANAGED_BY;
use crate::domain::pods::{
    EGRESS_CAPABILITY, container_resources, place, restricted_container_security, restricted_pod_security,
};
use crate::domain::regions::REGION_LABEL;

/// Label on agent pods whose capsule may reach the network.
pub const EGRESS_LABEL: &str = "kamachiq.somastack.io/egress";
/// Annotation on the plan ConfigMap: what the plan was made from (planner plans).
pub const PLAN_INPUT_ANNOTATION: &str = "kamachiq.somastack.io/plan-input";
/// Annotation on the plan ConfigMap: the plan's digest.
pub const PLAN_DIGEST_ANNOTATION: &str = "kamachiq.somastack.io/plan-digest";
/// Annotation on a results ConfigMap: which shard of how many (`1 of 2`).
pub const SHARD_ANNOTATION: &str = "kamachiq.somastack.io/shard";
/// Key of the plan in its ConfigMap.
pub const PLAN_KEY: &str = "plan.json";
/// Key of the plan ConfigMap when the planner's plan was refused (too large
/// to store): why, so the planner is not asked again for the same input.
pub const REFUSED_KEY: &str = "refused";
/// Most characters of a Kubernetes name used as a label value or Job name.
const MAX_NAME: usize = 63;

/// The project's identity, as children need it.
#[derive(Clone, Debug)]
pub struct Project<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub goal: &'a str,
    pub owner: OwnerReference,
    pub region: Option<&'a str>,
    pub placement: Option<&'a somastack_crds::common::Placement>,
}

impl Project<'_> {
    /// Labels every child carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
            ("app.kubernetes.io/part-of".into(), "kamachiq".into()),
            (PROJECT_LABEL.into(), bounded_name(self.name, "", MAX_NAME)),
            (PROJECT_UID_LABEL.into(), self.uid.into()),
        ])
    }

    fn metadata(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.into()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// [`Self::metadata`] with `annotations`.
    fn annotated(&self, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
        let annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ObjectMeta {
            annotations: Some(annotations),
            ..self.metadata(name)
        }
    }

    /// The agents' ServiceAccount.
    pub fn service_account_name(&self) -> String {
        bounded_name(self.name, "-agent", 253)
    }

    pub fn plan_config_map_name(&self) -> String {
        bounded_name(self.name, "-plan", 253)
    }

    /// The first results ConfigMap is `<name>-results`, later shards `-results-2`, ...
    pub fn results_config_map_name(&self, shard: usize) -> String {
        let suffix = if shard == 0 {
            "-results".to_string()
        } else {
            format!("-results-{}", shard + 1)
        };
        bounded_name(self.name, &suffix, 253)
    }

    /// Deterministic Job name of one attempt of a task (or its review):
    /// `<project>-<task>-<attempt>[-review]`, hashed to fit 63 characters.
    pub fn job_name(&self, task: &str, attempt: u32, role: Role) -> String {
        let suffix = match role {
            Role::Task => format!("-{attempt}"),
            Role::Review => format!("-{attempt}-review"),
        };
        bounded_name(&format!("{}-{task}", self.name), &suffix, MAX_NAME)
    }

    /// The ServiceAccount agents run as: no API token, no rights; tenants may
    /// bind more to it (e.g. a workload identity).
    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.metadata(&self.service_account_name()),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }
    }

    /// Agent pods accept no connection; only those whose capsule has the
    /// `network-egress` capability may open any (a second policy, since
    /// NetworkPolicies add up).
    pub fn network_policies(&self) -> [NetworkPolicy; 2] {
        let selector = |labels: &[(&str, &str)]| {
            Some(LabelSelector {
                match_labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..LabelSelector::default()
            })
        };
        let types = |types: &[&str]| Some(types.iter().map(|t| t.to_string()).collect());
        [
            NetworkPolicy {
                metadata: self.metadata(&bounded_name(self.name, "-agents", 253)),
                spec: Some(NetworkPolicySpec {
                    pod_selector: selector(&[(PROJECT_UID_LABEL, self.uid)]),
                    policy_types: types(&["Ingress", "Egress"]),
                    ingress: Some(vec![]),
                    egress: Some(vec![]),
                }),
            },
            NetworkPolicy {
                metadata: self.metadata(&bounded_name(self.name, "-agents-egress", 253)),
                spec: Some(NetworkPolicySpec {
                    pod_selector: selector(&[(PROJECT_UID_LABEL, self.uid), (EGRESS_LABEL, "true")]),
                    policy_types: types(&["Egress"]),
                    ingress: None,
                    egress: Some(vec![NetworkPolicyEgressRule::default()]),
                }),
            },
        ]
    }

    /// The plan ConfigMap: `plan.json` (the tasks), its digest, and what
    /// it was made from.
    pub fn plan_config_map(&self, tasks: &[Task], digest: &str, made_from: &str) -> ConfigMap {
        let plan = serde_json::to_string_pretty(tasks).unwrap_or_default();
        let annotations = [
            (PLAN_DIGEST_ANNOTATION, digest),
            (PLAN_INPUT_ANNOTATION, made_from),
        ];
        ConfigMap {
            metadata: self.annotated(&self.plan_config_map_name(), &annotations),
            data: Some(BTreeMap::from([(PLAN_KEY.to_string(), plan)])),
            ..ConfigMap::default()
        }
    }

    /// The plan ConfigMap when the planner's plan cannot be stored: the
    /// reason instead of the plan, for the same input.
    pub fn refused_plan_config_map(&self, why: &str, made_from: &str) -> ConfigMap {
        ConfigMap {
            metadata: self.annotated(
                &self.plan_config_map_name(),
                &[(PLAN_INPUT_ANNOTATION, made_from)],
            ),
            data: Some(BTreeMap::from([(REFUSED_KEY.to_string(), why.to_string())])),
            ..ConfigMap::default()
        }
    }

    /// One results ConfigMap: task name -> accepted output.
    pub fn results_config_map(&self, shard: usize, of: usize, data: &BTreeMap<String, String>) -> ConfigMap {
        let which = format!("{} of {of}", shard + 1);
        ConfigMap {
            metadata: self.annotated(
                &self.results_config_map_name(shard),
                &[(SHARD_ANNOTATION, which.as_str())],
            ),
            data: Some(data.clone()),
            ..ConfigMap::default()
        }
    }
}

/// What one Job runs.
#[derive(Clone, Debug)]
pub struct JobInput<'a> {
    pub task: &'a Task,
    pub role: Role,
    pub attempt: u32,
    pub round: &'a str,
    pub capsule: &'a CapsuleSpec,
    /// For a review: the output under review.
    pub output: Option<&'a str>,
    /// The accepted outputs of the task's dependencies, by task name.
    pub dependencies: &'a BTreeMap<String, String>,
    pub max_cpu: Option<&'a str>,
    pub max_memory: Option<&'a str>,
}

/// Environment variables every agent gets (documented in docs/kamachiq.md).
pub const ENV_GOAL: &str = "SOMASTACK_GOAL";
pub const ENV_PROJECT: &str = "SOMASTACK_PROJECT";
pub const ENV_TASK: &str = "SOMASTACK_TASK";
pub const ENV_INPUT: &str = "SOMASTACK_TASK_INPUT";
pub const ENV_ATTEMPT: &str = "SOMASTACK_TASK_ATTEMPT";
pub const ENV_OUTPUT: &str = "SOMASTACK_TASK_OUTPUT";
/// The accepted outputs of the task's dependencies, a JSON object
/// `{task: output}` (each output at most 4096 bytes, at most 16 dependencies).
pub const ENV_DEPENDENCIES: &str = "SOMASTACK_TASK_DEPENDENCIES";

/// A Job for one attempt of a task, or for its review. It never restarts a
/// failed pod (`backoffLimit: 0`): each attempt is its own Job, so every
/// attempt stays visible and a restart cannot run one twice.
pub fn job(project: &Project<'_>, input: &JobInput<'_>) -> Job {
    let task = input.task;
    let role = match input.role {
        Role::Task => "task",
        Role::Review => "review",
    };
    let mut labels = project.labels();
    labels.insert(TASK_LABEL.into(), task.name.clone());
    labels.insert(ATTEMPT_LABEL.into(), input.attempt.to_string());
    labels.insert(ROLE_LABEL.into(), role.into());
    let mut pod_labels = labels.clone();
    if input.capsule.capabilities.iter().any(|c| c == EGRESS_CAPABILITY) {
        pod_labels.insert(EGRESS_LABEL.into(), "true".into());
    }
    let name = project.job_name(&task.name, input.attempt, input.role);
    Job {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..project.annotated(&name, &[(ROUND_ANNOTATION, input.round)])
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::from(task.timeout_seconds)),
            suspend: Some(false),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(project, input)),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The pod of a task or review Job: the agent container, restricted, on
/// the project's placement and region.
fn pod_spec(project: &Project<'_>, input: &JobInput<'_>) -> PodSpec {
    agent_pod(
        project,
        input.capsule,
        env(project, input),
        input.max_cpu,
        input.max_memory,
    )
}

/// The pod of a task, review or moderation Job: one container `agent`
/// running `capsule`'s image with `env`, restricted, on the project's
/// placement and region, as the agents' ServiceAccount.
fn agent_pod(
    project: &Project<'_>,
    capsule: &CapsuleSpec,
    env: Vec<EnvVar>,
    max_cpu: Option<&str>,
    max_memory: Option<&str>,
) -> PodSpec {
    let agent = Container {
        name: "agent".into(),
        image: Some(capsule.image.clone()),
        env: Some(env),
        resources: Some(container_resources(capsule, max_cpu, max_memory)),
        // The agent writes its result to /dev/termination-log; if it
        // crashes without writing one, the end of its log is used.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let mut pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(project.service_account_name()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security(false)),
        containers: vec![agent],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    if let Some(placement) = project.placement {
        place(&mut pod, placement);
    }
    if let Some(region) = project.region {
        pod.node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(REGION_LABEL.into(), region.into());
    }
    pod
}

/// The agent's environment: the capsule's own, then what every agent gets.
fn env(project: &Project<'_>, input: &JobInput<'_>) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let task = input.task;
    let mut env: Vec<EnvVar> = input.capsule.env.iter().map(|e| var(&e.name, &e.value)).collect();
    for (k, v) in [
        (ENV_GOAL, project.goal),
        (ENV_PROJECT, project.name),
        (ENV_TASK, task.name.as_str()),
        (ENV_INPUT, task.input.as_str()),
        (ENV_ATTEMPT, &input.attempt.to_string()),
    ] {
        env.push(var(k, v));
    }
    if let Some(out) = input.output {
        env.push(var(ENV_OUTPUT, out));
    }
    if !input.dependencies.is_empty() {
        env.push(var(ENV_DEPENDENCIES, &json!(input.dependencies).to_string()));
    }
    env
}

/// Environment variables of a moderation Job (the contract in
/// docs/kamachiq.md and docs/moderation.schema.json).
pub const ENV_MODERATION_STAGE: &str = "SOMASTACK_MODERATION_STAGE";
pub const ENV_MODERATION_SUBJECT: &str = "SOMASTACK_MODERATION_SUBJECT";
pub const ENV_MODERATION_TEXT: &str = "SOMASTACK_MODERATION_TEXT";

/// What one moderation Job runs.
#[derive(Clone, Debug)]
pub struct ModerationInput<'a> {
    pub subject: &'a Subject<'a>,
    pub moderator: &'a Moderator,
    pub capsule: &'a CapsuleSpec,
    pub max_cpu: Option<&'a str>,
    pub max_memory: Option<&'a str>,
}

/// The Job of one moderator checking one text: named from the digest of
/// both ([`moderation::job_name`]), so it is created once; like a review
/// Job it runs the capsule's image without API rights, under the agents'
/// NetworkPolicies, on the project's region and placement, and never
/// restarts (`backoffLimit: 0`); `activeDeadlineSeconds` is the moderator's
/// `timeoutSeconds`. Its environment: the capsule's, then the moderator's
/// `config`, then the stage, subject and text (set last, so they win).
pub fn moderation_job(project: &Project<'_>, input: &ModerationInput<'_>) -> Job {
    let subject = input.subject;
    let name = moderation::job_name(project.name, subject, input.moderator);
    let mut labels = project.labels();
    labels.insert(ROLE_LABEL.into(), moderation::ROLE.into());
    labels.insert(STAGE_LABEL.into(), subject.stage.as_str().into());
    if subject.stage != Stage::Goal {
        labels.insert(TASK_LABEL.into(), subject.name.into());
    }
    let mut pod_labels = labels.clone();
    if input.capsule.capabilities.iter().any(|c| c == EGRESS_CAPABILITY) {
        pod_labels.insert(EGRESS_LABEL.into(), "true".into());
    }
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut env: Vec<EnvVar> = input.capsule.env.iter().map(|e| var(&e.name, &e.value)).collect();
    env.extend(input.moderator.config.iter().map(|(k, v)| var(k, v)));
    env.push(var(ENV_PROJECT, project.name));
    env.push(var(ENV_MODERATION_STAGE, subject.stage.as_str()));
    env.push(var(ENV_MODERATION_SUBJECT, subject.name));
    env.push(var(ENV_MODERATION_TEXT, subject.text));
    let annotations = moderation::created_annotations(input.moderator);
    let annotations: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Job {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..project.annotated(&name, &annotations)
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::from(input.moderator.timeout_seconds)),
            suspend: Some(false),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(agent_pod(
                    project,
                    input.capsule,
                    env,
                    input.max_cpu,
                    input.max_memory,
                )),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
