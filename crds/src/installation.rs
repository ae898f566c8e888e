//! `Installation`: a Capsule version running in a namespace and a region.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{self, CapsuleRef};

/// A Capsule version running in this namespace, in one region.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "somastack.io",
    version = "v1alpha1",
    kind = "Installation",
    plural = "installations",
    shortname = "inst",
    category = "somastack",
    namespaced,
    status = "InstallationStatus",
    doc = "A Capsule version running in a namespace and a region.",
    printcolumn(name = "Package", type_ = "string", json_path = ".spec.capsule.package"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.capsule.version"),
    printcolumn(name = "Region", type_ = "string", json_path = ".status.activeRegion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.currentRevision",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[kube(validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("an Installation's name must be a lowercase DNS label of at most 63 characters (letters, digits and '-', starting with a letter, no dots): it names the Service and labels the pods of the workload"))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.failoverRegions) || !(self.region in self.failoverRegions)").message("failoverRegions must not contain the home region (spec.region)").field_path(".failoverRegions"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.replicas) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)").message("replicas must lie between autoscaling.minReplicas and autoscaling.maxReplicas, or be left out when autoscaling is set").field_path(".replicas"))]
pub struct InstallationSpec {
    /// The Capsule (package and version) to run.
    pub capsule: CapsuleRef,
    /// Home region; pods are scheduled only onto nodes labelled `topology.kubernetes.io/region` with it.
    #[schemars(schema_with = "common::region")]
    pub region: String,
    /// Regions a disaster-recovery failover may move the workload to, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::region_set")]
    pub failover_regions: Vec<String>,
    /// Number of replicas (default 1). Left to the autoscaler when `autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Configuration, mounted as a ConfigMap and exposed as environment: at
    /// most 64 entries, each value at most 64 KiB, all of it at most 512 KiB
    /// (checked at admission).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "config_schema")]
    pub config: BTreeMap<String, String>,
    /// Stop reconciling the workload (nothing is deleted).
    #[serde(default)]
    pub paused: bool,
    /// How many old revisions to keep for rollback (default 10).
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub revision_history_limit: i32,
    /// How upgrades are watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradePolicy>,
    /// Which nodes of the region the pods may use (node labels, tolerated
    /// taints), in every region the workload runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<common::Placement>,
}

/// Most bytes of one `spec.config` value.
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of all `spec.config` keys and values together: the ConfigMap
/// made from them must stay well under the API server's 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 512 * 1024;

fn config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": MAX_CONFIG_VALUE_BYTES },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 253 && k.matches('^[-._a-zA-Z0-9]+$') && k != '.' && !k.startsWith('..'))",
            "message": "config keys may contain only letters, digits, '-', '_' and '.', at most 253 characters, and may not be '.' or start with '..' (ConfigMap key rules)",
        }],
    })
}

fn default_revision_history_limit() -> i32 {
    10
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
pub struct Autoscaling {
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation, percent of the request (default 80).
    #[serde(default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 100))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: i32,
}

fn default_target_cpu() -> i32 {
    80
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePolicy {
    /// Roll back automatically when a new revision is not Available within the deadline.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Seconds a new revision has to become Available (default 600).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 3600))]
    pub progress_deadline_seconds: i32,
    /// A regression gate: each new revision of the pod template is
    /// evaluated behind a preview Service before it takes traffic
    /// (docs/installations.md, "Regression gate").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<UpgradeGate>,
}

/// Most entries of `spec.upgrade.gate.inputs`.
pub const MAX_GATE_INPUTS: usize = 32;
/// Most bytes of one gate input value.
pub const MAX_GATE_INPUT_BYTES: usize = 16 * 1024;

/// An evaluation capsule run as a Job against a candidate revision before
/// it takes traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeGate {
    /// The evaluation capsule (package and version): signed, reviewed and
    /// allowed by policy like any capsule; its image runs once per candidate.
    pub capsule: CapsuleRef,
    /// What the evaluation gets, as the JSON object `SOMASTACK_GATE_INPUTS`
    /// (for the reference evaluator: `corpus`, `maxSentences`,
    /// `minAgreement`, `expected`, `maxLatencyMs`; docs/agent.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "gate_inputs_schema")]
    pub inputs: BTreeMap<String, String>,
    /// `Previous` (default): the evaluation calls the revision serving now
    /// too (`SOMASTACK_GATE_BASELINE`) and compares; `Fixed`: only the
    /// candidate, against expectations in `inputs`.
    #[serde(default)]
    pub baseline: GateBaseline,
    /// Seconds the candidate has to become ready and be evaluated (default
    /// 300); a gate still undecided then fails.
    #[serde(default = "default_gate_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub timeout_seconds: i32,
}

fn default_gate_timeout() -> i32 {
    300
}

fn gate_inputs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_GATE_INPUTS,
        "additionalProperties": { "type": "string", "maxLength": MAX_GATE_INPUT_BYTES },
    })
}

/// What a candidate is compared with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GateBaseline {
    /// The revision serving now answers the same requests.
    #[default]
    Previous,
    /// Fixed expectations given in the gate's inputs.
    Fixed,
}

/// Where the gate of one candidate revision stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GatePhase {
    /// The candidate runs behind its preview Service and is evaluated.
    Evaluating,
    /// The evaluation passed: the candidate was promoted.
    Passed,
    /// The evaluation failed, timed out or could not run: the candidate
    /// was removed and the serving revision kept.
    Failed,
    /// Failed, then promoted by a person's explicit override.
    Overridden,
}

/// The regression gate of the newest candidate revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// Number of the candidate revision.
    pub revision: i64,
    /// Its pod-template hash (the revision key).
    pub revision_hash: String,
    /// The revision that served (and was compared with) meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_revision: Option<i64>,
    pub phase: GatePhase,
    /// `Evaluating`, `EvaluationPassed`, `EvaluationFailed`,
    /// `EvaluationTimedOut`, `EvaluationNotRun` or `Overridden`.
    pub reason: String,
    pub message: String,
    pub start_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The evaluation Job (kept until the next candidate, for its logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The evaluation's report, bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<GateReport>,
    /// Who promoted a failed candidate: the field manager that set the
    /// override annotation, and when (the API server's audit log has the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
}

/// What the evaluation reported (docs/evaluation.schema.json), bounded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateReport {
    /// `Pass` or `Fail`.
    pub verdict: String,
    /// One line.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub checks: Vec<GateCheck>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateCheck {
    pub name: String,
    pub passed: bool,
    #[serde(default)]
    pub detail: String,
}

fn default_progress_deadline() -> i32 {
    600
}

/// Lifecycle phase of an Installation, for people; automation reads the conditions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum InstallationPhase {
    #[default]
    Pending,
    Progressing,
    Ready,
    Degraded,
    Blocked,
    Suspended,
}

/// What the operator observed about an Installation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstallationPhase>,
    /// `PolicyCompliant`, `Available`, `Progressing`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::conditions")]
    pub conditions: Vec<Condition>,
    /// Number of the revision the workload runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Region the workload runs in now (the home region unless failed over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_region: Option<String>,
    /// Newest revision that was fully rolled out and Available (what an
    /// automatic rollback returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_revision: Option<i64>,
    /// The last rollback, manual or automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<RollbackRecord>,
    /// The regression gate of the newest candidate revision, when
    /// `spec.upgrade.gate` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateStatus>,
}

/// A rollback: which revision failed or was left, and where it went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// Revision that was running (and failed, for an automatic rollback).
    pub from_revision: i64,
    /// Revision whose spec was restored.
    pub to_revision: i64,
    /// `Automatic` or `Manual`.
    pub trigger: String,
    pub reason: String,
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// Annotation a disaster-recovery failover sets to move the workload to one
/// of `spec.failoverRegions`; absent, the workload runs in `spec.region`.
pub const ACTIVE_REGION_ANNOTATION: &str = "somastack.io/active-region";
/// Regions the workload may not run in for now (comma-separated), set by a
/// DrDrill during a simulated outage: its pods there stop and cannot return.
pub const UNAVAILABLE_REGIONS_ANNOTATION: &str = "somastack.io/unavailable-regions";
/// The DrDrill acting on an Installation (one at a time).
pub const DRILL_LOCK_ANNOTATION: &str = "somastack.io/drill";
/// Set to a candidate revision's number to promote it although its
/// regression gate failed: an explicit override, recorded in status and a
/// Warning Event.
pub const GATE_OVERRIDE_ANNOTATION: &str = "somastack.io/gate-override";
/// Why a person overrode the gate (`kubectl soma installation gate
/// --override N --reason TEXT` sets it with the override); the operator
/// quotes it in the `GateOverridden` Event and `status.gate.message`.
pub const GATE_OVERRIDE_REASON_ANNOTATION: &str = "somastack.io/gate-override-reason";
