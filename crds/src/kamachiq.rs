//! `KamachiqProject`: a goal driven to completion as a DAG of agent tasks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{self, CapsuleRef};

/// Most tasks a project may list inline in `spec.tasks`.
pub const MAX_INLINE_TASKS: usize = 128;
/// Most tasks listed in status (failed first); counts cover the rest.
pub const MAX_LISTED_TASKS: usize = 50;
/// Most tasks a plan may have when `budget.maxTasks` is not set.
pub const DEFAULT_MAX_TASKS: i32 = 100;
/// Most retries of one task (`tasks[].retries`), planned tasks included.
pub const MAX_TASK_RETRIES: i32 = 10;
/// Longest timeout of one task attempt in seconds (`tasks[].timeoutSeconds`).
pub const MAX_TASK_TIMEOUT_SECONDS: i32 = 86400;
/// Most dependencies of one task.
pub const MAX_TASK_DEPENDENCIES: usize = 16;
/// Most bytes of one task's input.
pub const MAX_TASK_INPUT_BYTES: usize = 16384;
/// Most bytes of a plan as stored (`plan.json` in the plan ConfigMap): a
/// ConfigMap holds at most 1 MiB, and the plan shares it with nothing else.
pub const MAX_PLAN_BYTES: usize = 900 * 1024;

/// Label on every Job of a project: the project's uid (names may exceed a label value).
pub const PROJECT_UID_LABEL: &str = "kamachiq.somastack.io/project-uid";
/// Label on every Job of a project: the project's name (hashed when longer than 63).
pub const PROJECT_LABEL: &str = "kamachiq.somastack.io/project";
/// Label on every Job of a project: the task it runs.
pub const TASK_LABEL: &str = "kamachiq.somastack.io/task";
/// Label on every Job of a project: the attempt number (1, 2, ...), counted per task.
pub const ATTEMPT_LABEL: &str = "kamachiq.somastack.io/attempt";
/// Label on every Job of a project: `task` (the agent) or `review` (the reviewer).
pub const ROLE_LABEL: &str = "kamachiq.somastack.io/role";
/// Annotation the operator writes on a finished task Job: `accepted`, `rejected` or `failed`.
pub const VERDICT_ANNOTATION: &str = "kamachiq.somastack.io/verdict";
/// Annotation on a finished task Job: why it was rejected or failed.
pub const REASON_ANNOTATION: &str = "kamachiq.somastack.io/reason";
/// Annotation on an accepted task Job: the agent's output (its termination message).
pub const OUTPUT_ANNOTATION: &str = "kamachiq.somastack.io/output";
/// Annotation on a task Job: the retry round it belongs to (the value of
/// [`RETRY_FAILED_ANNOTATION`] when it was created).
pub const ROUND_ANNOTATION: &str = "kamachiq.somastack.io/round";
/// Annotation a user sets on a project (any new value) to run its failed tasks again.
pub const RETRY_FAILED_ANNOTATION: &str = "kamachiq.somastack.io/retry-failed";
/// Label shards projects between operators (`--project-selector`).
pub const SHARD_LABEL: &str = "somastack.io/project-shard";
/// Label on a moderation Job: the stage it moderates (`goal`, `input`, `output`).
pub const STAGE_LABEL: &str = "kamachiq.somastack.io/stage";
/// Annotation the operator writes on a finished moderation Job: `Allow` or `Refuse`.
pub const DECISION_ANNOTATION: &str = "kamachiq.somastack.io/decision";
/// Annotation on a moderation Job: the moderator it runs and where it comes from.
pub const MODERATOR_ANNOTATION: &str = "kamachiq.somastack.io/moderator";
/// Most entries of a moderator's `config`.
pub const MAX_MODERATION_CONFIG: usize = 32;
/// Most bytes of one `config` value.
pub const MAX_MODERATION_CONFIG_VALUE: usize = 4096;
/// Most moderators listed in status (`status.moderators`).
pub const MAX_LISTED_MODERATORS: usize = 16;

/// A goal decomposed into a DAG of tasks, each run as an agent Job, reviewed
/// and aggregated, under budgets and approval gates.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "somastack.io",
    version = "v1alpha1",
    kind = "KamachiqProject",
    plural = "kamachiqprojects",
    shortname = "kp",
    category = "somastack",
    namespaced,
    status = "KamachiqProjectStatus",
    doc = "Autonomous project orchestration: goal -> task DAG -> agent Jobs -> review -> aggregated results.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Tasks", type_ = "integer", json_path = ".status.taskCounts.total"),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.taskCounts.succeeded"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.taskCounts.failed"),
    printcolumn(name = "Goal", type_ = "string", json_path = ".spec.goal", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.planner) || (has(self.tasks) && size(self.tasks) > 0)").message("a project needs tasks or a planner: list spec.tasks, or set spec.planner to decompose the goal"))]
#[x_kube(validation = Rule::new("!has(self.tasks) || self.tasks.all(t, !has(t.dependsOn) || t.dependsOn.all(d, self.tasks.exists(u, u.name == d)))").message("every dependsOn entry must name a task listed in spec.tasks").field_path(".tasks"))]
#[x_kube(validation = Rule::new("!has(self.tasks) || size(self.tasks) <= (has(self.budget) && has(self.budget.maxTasks) ? self.budget.maxTasks : 100)").message("spec.tasks has more tasks than budget.maxTasks allows (100 when not set)").field_path(".tasks"))]
pub struct KamachiqProjectSpec {
    /// What the project should achieve, in plain words; given to the planner and every task.
    #[schemars(length(min = 1, max = 4096))]
    pub goal: String,
    /// Decomposes the goal into tasks when `tasks` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<Planner>,
    /// The task DAG (names unique; dependsOn names other tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tasks: Vec<Task>,
    /// Most tasks running at once (default 4).
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 100))]
    pub parallelism: i32,
    /// Limits on the whole project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Approval gate before anything is spawned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// A reviewer capsule run per task; its verdict decides accept or retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<CapsuleRef>,
    /// Stop spawning and stop running Jobs; resume by setting false.
    #[serde(default)]
    pub suspend: bool,
    /// Region whose nodes run the task Jobs (`topology.kubernetes.io/region`);
    /// residency rules are checked against it. Required when a PolicyBundle
    /// restricts where a task capsule's data may be processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::region")]
    pub region: Option<String>,
    /// Which nodes the task and review Jobs may use (node labels, tolerated
    /// taints), within `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<common::Placement>,
    /// A moderator capsule that checks the goal before it is planned, every
    /// task input before its Job starts and every output before it is
    /// accepted (docs/kamachiq.md). PolicyBundles may require more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,
}

/// A moderator: a capsule run as a Job per text it checks, whose
/// termination message (`{"decision":"Allow"|"Refuse","stage":...,"reason":...}`)
/// decides; anything else (a failure, a timeout, an unreadable answer) refuses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Moderation {
    /// The moderator capsule (published, usable and allowed like a task capsule).
    pub capsule: CapsuleRef,
    /// Settings given to the moderator as environment variables (at most 32,
    /// values at most 4 KiB; names are environment variable names, never
    /// `SOMASTACK_*`), e.g. `MODERATION_DENY`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(schema_with = "moderation_config")]
    pub config: std::collections::BTreeMap<String, String>,
    /// Seconds one moderation Job may run (default 120, 10 to 3600); one
    /// that runs longer refuses.
    #[serde(default = "default_moderation_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub timeout_seconds: i32,
}

fn default_moderation_timeout() -> i32 {
    120
}

fn moderation_config(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, size(k) <= 128 && k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
                "message": "moderation.config keys are environment variable names: letters, digits and '_', not starting with a digit, at most 128 characters",
            },
            {
                "rule": "self.all(k, !k.startsWith('SOMASTACK_'))",
                "message": "moderation.config keys may not start with SOMASTACK_: the operator sets those (SOMASTACK_MODERATION_STAGE, _SUBJECT, _TEXT)",
            },
        ],
    })
}

fn default_parallelism() -> i32 {
    4
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.capsule) != has(self.url)").message("planner needs exactly one of capsule (an installed planner capsule) or url"))]
pub struct Planner {
    /// An Installation in this namespace running a planner capsule; its Service is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule: Option<CapsuleRef>,
    /// An HTTP endpoint implementing the planner contract (docs/planner.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::http_url")]
    pub url: Option<String>,
    /// The agent capsule the planner assigns to the tasks it plans (it may name others).
    pub agent: CapsuleRef,
    /// Seconds one planner call may take (default 30).
    #[serde(default = "default_planner_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: i32,
}

fn default_planner_timeout() -> i32 {
    30
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dependsOn) || !(self.name in self.dependsOn)").message("a task cannot depend on itself"))]
pub struct Task {
    /// Unique task name.
    #[schemars(schema_with = "common::dns_label")]
    pub name: String,
    /// The agent capsule that performs the task.
    pub capsule: CapsuleRef,
    /// Tasks that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "dependency_set")]
    pub depends_on: Vec<String>,
    /// Input handed to the agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 16384))]
    pub input: String,
    /// Seconds one attempt may run (default 600, at most 86400).
    #[serde(default = "default_task_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// Attempts after the first failure (default 1, at most 10).
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
}

fn dependency_set(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = common::dns_label_set(generator);
    s.insert("maxItems".into(), 16.into());
    s
}

fn default_task_timeout() -> i32 {
    600
}
fn default_retries() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Most tasks the plan may have (default 100); a larger plan is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5000))]
    pub max_tasks: Option<i32>,
    /// Wall-clock seconds for the whole project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_duration_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Wait in AwaitingApproval until a reviewer approves the plan digest.
    #[serde(default)]
    pub required: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProjectPhase {
    #[default]
    Pending,
    Planning,
    AwaitingApproval,
    Running,
    Suspended,
    Halted,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    pub total: i32,
    /// Waiting for dependencies or a free slot (or never to run: a dependency failed).
    pub pending: i32,
    /// An attempt or its review is running (or suspended).
    pub running: i32,
    pub succeeded: i32,
    pub failed: i32,
}

/// Where one task of a project stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum TaskPhase {
    /// Waiting for dependencies or a free slot (or never to run: a dependency failed).
    Pending,
    /// An attempt or its review is running (or suspended).
    Running,
    /// An attempt was accepted.
    Succeeded,
    /// Every attempt allowed failed or was rejected.
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    pub phase: TaskPhase,
    #[serde(default)]
    pub attempts: i32,
    /// The task's latest Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What the operator observed about a KamachiqProject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KamachiqProjectStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProjectPhase>,
    /// `Succeeded` (the project's outcome), plus `Approved` when a gate applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::conditions")]
    pub conditions: Vec<Condition>,
    /// `sha256:<hex>` of the validated plan; approvals are bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_counts: Option<TaskCounts>,
    /// Up to 50 tasks, failed first; the Jobs hold every task's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub tasks: Vec<TaskState>,
    /// Name of the ConfigMap holding the aggregated results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Name of the ConfigMap holding the validated plan (`plan.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_ref: Option<String>,
    /// The `kamachiq.somastack.io/retry-failed` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_token: Option<String>,
    /// The moderators that check this project (`<package> <version>
    /// (<PolicyBundle name | spec.moderation>)`), at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub moderators: Vec<String>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    /// The CEL rule on listed tasks spells the default budget out: it must
    /// be the one the operator applies.
    #[test]
    fn the_task_count_rule_uses_the_default_budget() {
        let crd = serde_json::to_string(&super::KamachiqProject::crd()).unwrap();
        assert!(
            crd.contains(&format!(": {})", super::DEFAULT_MAX_TASKS)),
            "the rule's default differs from DEFAULT_MAX_TASKS"
        );
    }
}
