//! `DrDrill`: a disaster-recovery drill against an Installation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common;

/// The RBAC verb on `drdrills.somastack.io` a user needs to create or change
/// a drill beyond the tenant bounds below: `scope: Region` (which taints
/// every node of a region, evicting every tenant's pods there), a timeout
/// above [`TENANT_MAX_TIMEOUT_SECONDS`], or a schedule that runs more often
/// than every [`TENANT_MIN_SCHEDULE_INTERVAL_SECONDS`]. The built-in `edit`
/// and `admin` roles do not have it.
pub const DISRUPT_VERB: &str = "disrupt";
/// Longest drill timeout (seconds an outage may last) a tenant may set.
pub const TENANT_MAX_TIMEOUT_SECONDS: i32 = 1800;
/// Shortest time between two scheduled runs a tenant may set.
pub const TENANT_MIN_SCHEDULE_INTERVAL_SECONDS: i64 = 3600;
/// Annotation the admission webhook stamps on a drill: the user (and groups)
/// who last created or changed its spec, as JSON `{"user":..,"groups":[..]}`.
/// The operator acts on the drill only within that user's authority.
pub const REQUESTER_ANNOTATION: &str = "drills.somastack.io/requested-by";
/// Annotation a user sets on a drill (any new value, e.g. the time; `kubectl
/// soma drill run` writes one) to ask for a run now, once: the controller
/// starts a run for each new value it sees while no run is in progress (and
/// the drill is not suspended), and records the value in
/// `status.runRequest`. Setting it counts as asking for the drill: admission
/// stamps the requester and checks the verb `disrupt` as for a spec change.
pub const RUN_ANNOTATION: &str = "drills.somastack.io/run";

/// Inject an outage into an Installation, fail over, measure the recovery
/// time (RTO), restore, and record a timeline and a verdict; once or on a
/// cron schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "somastack.io",
    version = "v1alpha1",
    kind = "DrDrill",
    plural = "drdrills",
    shortname = "drill",
    category = "somastack",
    namespaced,
    status = "DrDrillStatus",
    doc = "A disaster-recovery drill against an Installation, with a measured RTO and a verdict.",
    printcolumn(
        name = "Installation",
        type_ = "string",
        json_path = ".spec.installationRef.name"
    ),
    printcolumn(name = "Scenario", type_ = "string", json_path = ".spec.scenario"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(name = "RTO", type_ = "number", json_path = ".status.measuredRtoSeconds"),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        priority = 1
    ),
    printcolumn(name = "Last-Run", type_ = "date", json_path = ".status.lastRunTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.targetRegion) || !has(self.failoverRegion) || self.targetRegion != self.failoverRegion").message("failoverRegion must differ from targetRegion: a drill cannot fail over into the region it takes down").field_path(".failoverRegion"))]
#[x_kube(validation = Rule::new("self.scope != 'Region' || self.scenario == 'RegionOutage'").message("scope: Region applies only to the RegionOutage scenario").field_path(".scope"))]
#[x_kube(validation = Rule::new("self.scenario != 'PodLoss' || !has(self.failoverRegion)").message("failoverRegion does not apply to PodLoss, which recovers in place").field_path(".failoverRegion"))]
pub struct DrDrillSpec {
    /// The Installation (in this namespace) to drill.
    pub installation_ref: LocalRef,
    /// What goes wrong.
    pub scenario: Scenario,
    /// `Installation` (default): only the target's pods lose the region. `Region`: the region's nodes are tainted NoExecute.
    #[serde(default)]
    pub scope: Scope,
    /// Region taken down; default the Installation's active region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::region")]
    pub target_region: Option<String>,
    /// Region to fail over to; default the first allowed entry of the Installation's failoverRegions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::region")]
    pub failover_region: Option<String>,
    /// What counts as a pass.
    pub objectives: Objectives,
    /// Cron schedule (five fields, UTC); absent runs the drill once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::cron")]
    pub schedule: Option<String>,
    /// A run that takes longer is ended, restored and failed (default 900).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 30, max = 86400))]
    pub timeout_seconds: i32,
    /// Return the Installation to its home region after the drill (default true).
    #[serde(default = "default_true")]
    pub restore: bool,
    /// Abort a running drill (restoring) and start no new run.
    #[serde(default)]
    pub suspend: bool,
    /// Past runs kept in status (default 5).
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 50))]
    pub history_limit: i32,
}

fn default_timeout() -> i32 {
    900
}
fn default_true() -> bool {
    true
}
fn default_history_limit() -> i32 {
    5
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalRef {
    #[schemars(schema_with = "common::dns_label")]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Scenario {
    /// The target region becomes unusable; the workload must fail over.
    RegionOutage,
    /// The Installation's pods are deleted; the workload must recover in place.
    PodLoss,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Scope {
    #[default]
    Installation,
    Region,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Objectives {
    /// Recovery time objective: most seconds from injection to Available again.
    #[schemars(range(min = 1, max = 86400))]
    pub rto_seconds: i32,
    /// Recovery point objective, in seconds of data loss tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub rpo_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DrillPhase {
    #[default]
    Pending,
    Waiting,
    Running,
    Restoring,
    Succeeded,
    Failed,
    Scheduled,
    Suspended,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
}

/// A step of a drill run, in the order a run takes them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum DrillStep {
    /// Check the target and the failover region before anything is touched.
    Validate,
    /// Record what a restore must put back.
    Snapshot,
    /// Make the outage.
    Inject,
    /// Point the Installation at its failover region.
    Failover,
    /// Wait for the workload to be Available again (the RTO ends here).
    Verify,
    /// Undo the outage (and the failover, unless `restore: false`).
    Restore,
    /// Record the verdict.
    Report,
}

impl DrillStep {
    /// The name on the wire (`Validate` .. `Report`).
    pub fn as_str(self) -> &'static str {
        match self {
            DrillStep::Validate => "Validate",
            DrillStep::Snapshot => "Snapshot",
            DrillStep::Inject => "Inject",
            DrillStep::Failover => "Failover",
            DrillStep::Verify => "Verify",
            DrillStep::Restore => "Restore",
            DrillStep::Report => "Report",
        }
    }
}

impl std::fmt::Display for DrillStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step of the timeline went.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StepOutcome {
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// One step of a drill run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub step: DrillStep,
    pub start: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    pub outcome: StepOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Summary of one finished run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillRun {
    pub start: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_rto_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The state of a run in progress (the drill's resumable state machine).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRun {
    pub start: Time,
    /// The schedule time this run stands for (scheduled drills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Time>,
    /// The step in progress.
    pub step: DrillStep,
    /// Region taken down.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_region: String,
    /// Region the workload fails over to (RegionOutage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_region: Option<String>,
    /// Snapshot: the Installation's home region and its active-region
    /// annotation before the drill (absent: it ran at home).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub home_region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_active_region: Option<String>,
    /// Replicas that must be ready for the workload to count as recovered.
    #[serde(default)]
    pub replicas: i32,
    /// When the outage was injected (RTO starts here; microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_at: Option<MicroTime>,
    /// When the workload was Available again (RTO ends here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<MicroTime>,
    /// PodLoss: the pods deleted at injection (recovery counts only others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub lost_pods: Vec<String>,
    /// Why the run is ending early (timeout, suspend, delete, a finding); restore follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<String>,
    /// A failed check that makes the verdict Fail (e.g. a refused failover region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

/// What the operator observed about a DrDrill.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrDrillStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrillPhase>,
    /// `Succeeded` (a run's outcome).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The step of the run in progress.
    pub current_step: Option<DrillStep>,
    /// Steps of the current or last run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub timeline: Vec<TimelineEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_rto_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// The run in progress: what it acts on and what a restore must put back.
    /// Written before each step acts, so a restarted operator resumes or restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<ActiveRun>,
    /// Past runs, newest first, at most `historyLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub history: Vec<DrillRun>,
    /// The `drills.somastack.io/run` value last acted on (a run was started for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_request: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A status written before the step and outcome were typed: the same
    /// strings, read back and written again unchanged.
    #[test]
    fn a_status_written_with_string_steps_reads_and_writes_the_same() {
        let old = json!({
            "phase": "Running",
            "currentStep": "Verify",
            "timeline": [
                { "step": "Validate", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T10:00:01Z", "outcome": "Succeeded", "message": "ok" },
                { "step": "Snapshot", "start": "2026-11-23T10:00:01Z", "end": "2026-11-23T10:00:01Z", "outcome": "Succeeded" },
                { "step": "Inject", "start": "2026-11-23T10:00:01Z", "end": "2026-11-23T10:00:02Z", "outcome": "Succeeded" },
                { "step": "Failover", "start": "2026-11-23T10:00:02Z", "end": "2026-11-23T10:00:02Z", "outcome": "Skipped" },
                { "step": "Verify", "start": "2026-11-23T10:00:02Z", "outcome": "Running" },
                { "step": "Restore", "start": "2026-11-23T10:00:03Z", "outcome": "Failed" },
                { "step": "Report", "start": "2026-11-23T10:00:03Z", "outcome": "Succeeded" }
            ],
            "run": { "start": "2026-11-23T10:00:00Z", "step": "Verify", "replicas": 2 }
        });
        let status: DrDrillStatus = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(status.current_step, Some(DrillStep::Verify));
        assert_eq!(status.run.as_ref().map(|r| r.step), Some(DrillStep::Verify));
        let steps: Vec<(DrillStep, StepOutcome)> =
            status.timeline.iter().map(|e| (e.step, e.outcome)).collect();
        assert_eq!(
            steps,
            [
                (DrillStep::Validate, StepOutcome::Succeeded),
                (DrillStep::Snapshot, StepOutcome::Succeeded),
                (DrillStep::Inject, StepOutcome::Succeeded),
                (DrillStep::Failover, StepOutcome::Skipped),
                (DrillStep::Verify, StepOutcome::Running),
                (DrillStep::Restore, StepOutcome::Failed),
                (DrillStep::Report, StepOutcome::Succeeded),
            ]
        );
        assert_eq!(serde_json::to_value(&status).unwrap(), old);
        let named: Vec<String> = status.timeline.iter().map(|e| e.step.to_string()).collect();
        assert_eq!(
            named,
            [
                "Validate", "Snapshot", "Inject", "Failover", "Verify", "Restore", "Report"
            ]
        );
    }

    #[test]
    fn steps_are_ordered_as_a_run_takes_them() {
        assert!(DrillStep::Validate < DrillStep::Snapshot);
        assert!(DrillStep::Verify < DrillStep::Restore);
        assert!(DrillStep::Restore < DrillStep::Report);
    }
}
