//! The regression gate (`spec.upgrade.gate`): a new revision of the pod
//! template is brought up behind a preview Service, evaluated by an
//! evaluation capsule run as a Job, and promoted only when the evaluation
//! passes. Meanwhile, and when it fails, the serving children are left as
//! they are (docs/installations.md, "Regression gate").
//!
//! Pure: [`decide`] (what this reconcile does with the gate), [`preview`]
//! (the candidate's children under other names and labels),
//! [`evaluation_job`], [`judge`] and [`parse_report`]. The shell, [`run`],
//! applies and deletes them and records the outcome.

use crate::text::bounded_name;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, PodSpec, PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::installation::{
    GATE_OVERRIDE_ANNOTATION, GATE_OVERRIDE_REASON_ANNOTATION, GateBaseline, GateCheck, GatePhase,
    GateReport, GateStatus, UpgradeGate,
};
use somastack_crds::{Installation, PolicyBundle};

use super::render::{self, Children};
use super::{ObjectKey, Workload, revisions};
use crate::apply::{self, ApiResultExt};
use crate::domain::capsules::{self, CapsuleUse};
use crate::domain::pods::{container_resources, restricted_container_security, restricted_pod_security};
use crate::{INSTALLATION_LABEL, MANAGED_BY, Result, status, text};

/// Label on the candidate's preview pods (instead of the Installation's
/// own label, so neither its Service nor its disruption budget selects them).
pub const PREVIEW_LABEL: &str = "somastack.io/preview-of";
/// Label on the evaluation Job's pods.
pub const GATE_LABEL: &str = "somastack.io/gate-of";
/// Annotation on a revision (ControllerRevision): its gate's outcome.
pub const GATE_ANNOTATION: &str = "somastack.io/gate";
/// Annotation on a revision: why its gate ended so.
pub const GATE_REASON_ANNOTATION: &str = "somastack.io/gate-reason";
/// Most bytes of a report's summary and of a check's detail kept in status.
const MAX_REPORT_TEXT: usize = 256;
/// Most checks of a report kept in status.
const MAX_CHECKS: usize = 16;
/// Most characters of a Kubernetes object name used as a label value.
const MAX_NAME: usize = 63;
/// How often an evaluation in progress is looked at.
pub const POLL_SECONDS: u64 = 3;

/// Name of the candidate's preview Deployment, Service and NetworkPolicy.
pub fn preview_name(name: &str) -> String {
    bounded_name(name, "-preview", MAX_NAME)
}

/// Name of the evaluation Job of candidate revision `revision`.
pub fn job_name(name: &str, revision: i64) -> String {
    bounded_name(name, &format!("-gate-{revision}"), MAX_NAME)
}

/// Name of the NetworkPolicy of the evaluation pods.
pub fn evaluation_policy_name(name: &str) -> String {
    bounded_name(name, "-gate", MAX_NAME)
}

/// What one reconcile observed that the gate depends on.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub gate: Option<&'a UpgradeGate>,
    /// Revision hash of the children rendered from the spec (the candidate).
    pub candidate: &'a str,
    /// Revision hash of the pod template the Deployment runs now, if any.
    pub serving: Option<&'a str>,
    /// The serving Deployment is Available.
    pub serving_available: bool,
    /// The gate record in status.
    pub record: Option<&'a GateStatus>,
    /// The override annotation's value.
    pub override_revision: Option<&'a str>,
}

/// What this reconcile does with the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No gate applies (none asked for, nothing serving to protect, or the
    /// candidate already serves): apply the children as usual.
    Open,
    /// A new candidate: record its revision and start evaluating it.
    Start,
    /// The candidate is being evaluated: keep its preview and judge.
    Evaluate,
    /// The candidate passed: apply the children (it takes traffic).
    Promote,
    /// The candidate failed and a person overrode the gate: promote it and
    /// record the override.
    Override,
    /// The candidate failed: the serving children stay as they are.
    Hold,
}

/// Pure: what to do with the gate. A candidate is gated only when a gate is
/// asked for, another pod template serves and is Available (there is
/// something to protect and to compare with); a record for the candidate
/// decides how far it got.
pub fn decide(o: &Observed<'_>) -> Step {
    let Some(_) = o.gate else { return Step::Open };
    let record = o.record.filter(|r| r.revision_hash == o.candidate);
    if let Some(r) = record {
        return match r.phase {
            GatePhase::Passed | GatePhase::Overridden => Step::Promote,
            GatePhase::Evaluating if o.serving == Some(o.candidate) => Step::Open,
            GatePhase::Evaluating => Step::Evaluate,
            GatePhase::Failed
                if o.override_revision.map(str::trim) == Some(r.revision.to_string().as_str()) =>
            {
                Step::Override
            }
            GatePhase::Failed => Step::Hold,
        };
    }
    match o.serving {
        Some(serving) if serving != o.candidate && o.serving_available => Step::Start,
        _ => Step::Open,
    }
}

/// Pure: an evaluation still running whose candidate is no longer the
/// spec's, or whose gate the spec no longer asks for (the spec changed
/// meanwhile): its preview is removed.
pub fn superseded(record: Option<&GateStatus>, candidate: &str, gated: bool) -> bool {
    record.is_some_and(|r| r.phase == GatePhase::Evaluating && (r.revision_hash != candidate || !gated))
}

/// The candidate's children, renamed and relabelled from those rendered for
/// the spec: one replica, its own ConfigMap (the serving pods keep reading
/// theirs), a Service and a NetworkPolicy of its own. No autoscaler, no
/// disruption budget.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Preview {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Option<Service>,
    pub network_policy: NetworkPolicy,
}

fn preview_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(PREVIEW_LABEL.to_string(), name.to_string())])
}

/// Replaces the Installation's own selector label with the preview's.
fn relabel(labels: &mut Option<BTreeMap<String, String>>, name: &str) {
    let map = labels.get_or_insert_with(BTreeMap::new);
    map.remove(INSTALLATION_LABEL);
    map.extend(preview_labels(name));
}

fn rename(meta: &mut ObjectMeta, to: String, name: &str) {
    meta.name = Some(to);
    relabel(&mut meta.labels, name);
}

fn preview_selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(preview_labels(name)),
        ..Default::default()
    }
}

/// Pure: the preview of the candidate rendered in `children`.
pub fn preview(children: &Children, key: &ObjectKey) -> Preview {
    let name = key.name.as_str();
    let to = preview_name(name);
    let config = render::config_map_name(&to);
    let mut config_map = children.config_map.clone();
    rename(&mut config_map.metadata, config.clone(), name);

    let mut deployment = children.deployment.clone();
    rename(&mut deployment.metadata, to.clone(), name);
    {
        let spec = &mut deployment.spec;
        spec.replicas = Some(1);
        spec.selector = preview_selector(name);
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let template = &mut spec.template;
        if let Some(meta) = template.metadata.as_mut() {
            relabel(&mut meta.labels, name);
        }
        if let Some(pod) = template.spec.as_mut() {
            for volume in pod.volumes.iter_mut().flatten() {
                if let Some(cm) = volume.config_map.as_mut() {
                    cm.name = config.clone();
                }
            }
            for c in &mut pod.containers {
                for from in c.env_from.iter_mut().flatten() {
                    if let Some(cm) = from.config_map_ref.as_mut() {
                        cm.name = config.clone();
                    }
                }
            }
            for spread in pod.topology_spread_constraints.iter_mut().flatten() {
                spread.label_selector = Some(preview_selector(name));
            }
        }
    }

    let service = children.service.clone().map(|mut svc| {
        rename(&mut svc.metadata, to.clone(), name);
        if let Some(spec) = svc.spec.as_mut() {
            spec.selector = Some(preview_labels(name));
        }
        svc
    });
    let mut network_policy = children.network_policy.clone();
    rename(&mut network_policy.metadata, to, name);
    if let Some(spec) = network_policy.spec.as_mut() {
        spec.pod_selector = Some(preview_selector(name));
    }
    Preview {
        config_map,
        deployment,
        service,
        network_policy,
    }
}

/// Everything the evaluation Job is made of.
#[derive(Clone, Debug)]
pub struct Evaluation<'a> {
    pub key: &'a ObjectKey,
    pub owner: &'a OwnerReference,
    pub gate: &'a UpgradeGate,
    /// The evaluation capsule.
    pub capsule: &'a CapsuleSpec,
    /// The candidate's (and the serving revision's) capsule: its port.
    pub port: i32,
    pub candidate_ip: &'a str,
    pub baseline_ip: Option<&'a str>,
    pub revision: i64,
    pub baseline_revision: Option<i64>,
    /// Seconds left before the gate's deadline.
    pub seconds_left: i64,
    /// The pod template the candidate runs with: its region affinity and
    /// placement, which the evaluation pod shares (it runs where the
    /// workload's data may be).
    pub template: &'a PodTemplateSpec,
    pub max_cpu: Option<&'a str>,
    pub max_memory: Option<&'a str>,
}

fn gate_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GATE_LABEL.to_string(), name.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Pure: the evaluation Job: the evaluation capsule's image run once (no
/// retry, no API rights), told where the candidate and the baseline answer
/// and what the gate's inputs are, ended by the gate's deadline.
pub fn evaluation_job(e: &Evaluation<'_>) -> Result<Job> {
    let name = &e.key.name;
    let url = |ip: &str| format!("http://{ip}:{}", e.port);
    let mut vars: Vec<EnvVar> = e
        .capsule
        .env
        .iter()
        .map(|v| env(&v.name, v.value.clone()))
        .collect();
    vars.push(env("SOMASTACK_INSTALLATION", name.clone()));
    vars.push(env("SOMASTACK_GATE_CANDIDATE", url(e.candidate_ip)));
    if let Some(ip) = e.baseline_ip {
        vars.push(env("SOMASTACK_GATE_BASELINE", url(ip)));
    }
    vars.push(env(
        "SOMASTACK_GATE_INPUTS",
        serde_json::to_string(&e.gate.inputs)?,
    ));
    vars.push(env("SOMASTACK_GATE_REVISION", e.revision.to_string()));
    if let Some(b) = e.baseline_revision {
        vars.push(env("SOMASTACK_GATE_BASELINE_REVISION", b.to_string()));
    }
    let candidate_pod = e.template.spec.as_ref();
    let mut pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(name.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security(false)),
        affinity: candidate_pod.and_then(|p| p.affinity.clone()),
        containers: vec![Container {
            name: "evaluate".into(),
            image: Some(e.capsule.image.clone()),
            env: Some(vars),
            resources: Some(container_resources(e.capsule, e.max_cpu, e.max_memory)),
            security_context: Some(restricted_container_security()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    // The same node selection and tolerations as the workload's pods.
    pod.node_selector = candidate_pod.and_then(|p| p.node_selector.clone());
    pod.tolerations = candidate_pod.and_then(|p| p.tolerations.clone());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(name, e.revision)),
            namespace: Some(e.key.namespace.clone()),
            labels: Some(gate_labels(name)),
            owner_references: Some(vec![e.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(e.seconds_left.max(1)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(gate_labels(name)),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Pure: what the evaluation pods may reach: the Installation's pods and
/// the candidate's, on the capsule's ports; nothing else.
pub fn evaluation_policy(key: &ObjectKey, owner: &OwnerReference, ports: &[i32]) -> NetworkPolicy {
    let name = &key.name;
    let to = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(evaluation_policy_name(name)),
            namespace: Some(key.namespace.clone()),
            labels: Some(gate_labels(name)),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(GATE_LABEL.to_string(), name.clone())])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![
                    to(BTreeMap::from([(INSTALLATION_LABEL.to_string(), name.clone())])),
                    to(preview_labels(name)),
                ]),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(*p)),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }]),
        }),
    }
}

/// How a gate ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    /// `EvaluationPassed`, `EvaluationFailed`, `EvaluationTimedOut` or
    /// `EvaluationNotRun`.
    pub reason: &'static str,
    pub message: String,
    pub report: Option<GateReport>,
}

impl Verdict {
    fn failed(reason: &'static str, message: String) -> Self {
        Verdict {
            passed: false,
            reason,
            message,
            report: None,
        }
    }
}

/// Pure: the report in an evaluation's termination message (the contract
/// of docs/evaluation.schema.json), bounded for status.
pub fn parse_report(message: &str) -> std::result::Result<GateReport, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        verdict: String,
        #[serde(default)]
        summary: String,
        #[serde(default)]
        checks: Vec<GateCheck>,
    }
    let raw: Raw = serde_json::from_str(message.trim()).map_err(|e| format!("not a report: {e}"))?;
    if raw.verdict != "Pass" && raw.verdict != "Fail" {
        return Err(format!(
            "verdict {:?} is neither Pass nor Fail",
            text::bounded(&raw.verdict, 32)
        ));
    }
    let clean = |s: &str| text::bounded(&text::sanitize(s), MAX_REPORT_TEXT);
    Ok(GateReport {
        verdict: raw.verdict,
        summary: clean(&raw.summary),
        checks: raw
            .checks
            .iter()
            .take(MAX_CHECKS)
            .map(|c| GateCheck {
                name: clean(&c.name),
                passed: c.passed,
                detail: clean(&c.detail),
            })
            .collect(),
    })
}

/// What the evaluation Job shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Complete,
    Failed,
}

/// The state of a Job from its conditions.
pub fn job_state(job: &Job) -> JobState {
    let done = |t: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if done("Complete") {
        JobState::Complete
    } else if done("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    }
}

/// Pure: the verdict on a finished evaluation Job from its state and its
/// pod's termination message; `None` while it runs.
pub fn judge(state: &JobState, message: Option<&str>) -> Option<Verdict> {
    let said = message.map(|m| text::bounded(&text::sanitize(m.trim()), MAX_REPORT_TEXT));
    match state {
        JobState::Running => None,
        JobState::Failed => Some(Verdict::failed(
            "EvaluationNotRun",
            format!(
                "the evaluation could not run: {}",
                said.unwrap_or_else(|| "its Job failed without a message".into())
            ),
        )),
        JobState::Complete => Some(match parse_report(message.unwrap_or_default()) {
            Ok(report) => {
                let passed = report.verdict == "Pass";
                let (reason, head) = if passed {
                    ("EvaluationPassed", "the evaluation passed")
                } else {
                    ("EvaluationFailed", "the evaluation failed")
                };
                let failed: Vec<&str> = report
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| c.name.as_str())
                    .collect();
                let checks = if failed.is_empty() {
                    String::new()
                } else {
                    format!(" (failed checks: {})", failed.join(", "))
                };
                Verdict {
                    passed,
                    reason,
                    message: format!("{head}: {}{checks}", report.summary),
                    report: Some(report),
                }
            }
            Err(why) => Verdict::failed(
                "EvaluationNotRun",
                format!("the evaluation's report is unreadable ({why})"),
            ),
        }),
    }
}

/// Pure: the field manager that set the override annotation, and when,
/// from the object's managed fields.
pub fn override_manager(managed: &[ManagedFieldsEntry]) -> Option<String> {
    let key = format!("f:{GATE_OVERRIDE_ANNOTATION}");
    managed
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:metadata")?.get("f:annotations")?.get(&key))
                .is_some()
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .map(|m| {
            let who = m.manager.clone().unwrap_or_else(|| "an unnamed manager".into());
            match &m.time {
                Some(t) => format!("{} at {}", text::sanitize(&who), t.0),
                None => text::sanitize(&who),
            }
        })
}

/// Pure: the seconds left of a gate started at `start` with `timeout`.
pub fn seconds_left(start: &Time, timeout_seconds: i32, now: &Time) -> i64 {
    let deadline = start.0.as_second() + i64::from(timeout_seconds);
    deadline - now.0.as_second()
}

/// What the gate decided for this reconcile.
#[derive(Debug)]
pub enum Gated {
    /// Apply the children as usual; the record to keep in status.
    Open(Option<GateStatus>),
    /// Leave the serving children as they are: the candidate is evaluated
    /// or was rejected.
    Held(GateStatus),
}

/// Everything [`run`] needs from the reconcile.
pub struct Run<'a> {
    pub ctx: &'a super::InstallationContext,
    pub inst: &'a Installation,
    pub key: &'a ObjectKey,
    pub owner: &'a OwnerReference,
    pub capsule: &'a CapsuleSpec,
    pub children: &'a Children,
    pub region: &'a str,
    pub bundles: &'a [Arc<PolicyBundle>],
    pub max_cpu: Option<&'a str>,
    pub max_memory: Option<&'a str>,
}

impl Run<'_> {
    /// The shell around [`decide`]: starts, drives and ends the evaluation
    /// of a candidate; what to do with the serving children.
    pub async fn run(&self) -> Result<Gated> {
        let inst = self.inst;
        let record = inst.status.as_ref().and_then(|s| s.gate.clone());
        let gate = inst.spec.upgrade.as_ref().and_then(|u| u.gate.as_ref());
        let candidate = self.children.revision_hash.as_str();
        if superseded(record.as_ref(), candidate, gate.is_some()) {
            self.remove_preview().await?;
        }
        let serving = self.ctx.deployment(self.key);
        let serving_hash = serving.as_deref().and_then(serving_hash);
        let observed = Observed {
            gate,
            candidate,
            serving: serving_hash.as_deref(),
            serving_available: Workload::from_deployment(serving.as_deref()).available,
            record: record.as_ref(),
            override_revision: inst
                .annotations()
                .get(GATE_OVERRIDE_ANNOTATION)
                .map(String::as_str),
        };
        let step = decide(&observed);
        let (Some(gate), Some(record)) = (gate, record.clone()) else {
            return match (step, gate) {
                (Step::Start, Some(gate)) => self.start(gate).await,
                _ => Ok(Gated::Open(record.map(|r| self.superseding(r, candidate)))),
            };
        };
        match step {
            Step::Open => Ok(Gated::Open(Some(self.superseding(record, candidate)))),
            Step::Promote => Ok(Gated::Open(Some(record))),
            Step::Hold => Ok(Gated::Held(record)),
            Step::Start => self.start(gate).await,
            Step::Evaluate => self.evaluate(gate, record).await,
            Step::Override => {
                // The caches drop managedFields: who set the override is read
                // from the object itself, once.
                let api: Api<Installation> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
                let fresh = api.get(&self.key.name).await?;
                let by = override_manager(fresh.metadata.managed_fields.as_deref().unwrap_or_default())
                    .unwrap_or_else(|| "an unknown manager".into());
                let why = fresh
                    .annotations()
                    .get(GATE_OVERRIDE_REASON_ANNOTATION)
                    .map(|r| format!(": {}", text::bounded(&text::sanitize(r), MAX_REPORT_TEXT)))
                    .unwrap_or_default();
                let message = format!(
                    "revision {} was promoted although its evaluation failed, by an override ({GATE_OVERRIDE_ANNOTATION}) set by {by}{why}",
                    record.revision
                );
                self.mark_revision(record.revision, "Overridden", &message)
                    .await?;
                self.ctx
                    .event(
                        inst,
                        EventType::Warning,
                        "GateOverridden",
                        "Gate",
                        message.clone(),
                    )
                    .await;
                Ok(Gated::Open(Some(GateStatus {
                    phase: GatePhase::Overridden,
                    reason: "Overridden".into(),
                    message,
                    overridden_by: Some(by),
                    completion_time: Some(status::now()),
                    ..record
                })))
            }
        }
    }

    /// A record of an evaluation whose candidate the spec no longer asks
    /// for, ended as superseded.
    fn superseding(&self, record: GateStatus, candidate: &str) -> GateStatus {
        let gated = self.inst.spec.upgrade.as_ref().is_some_and(|u| u.gate.is_some());
        if !superseded(Some(&record), candidate, gated) {
            return record;
        }
        GateStatus {
            phase: GatePhase::Failed,
            reason: "Superseded".into(),
            message: format!(
                "the spec changed before revision {} was evaluated; its preview was removed",
                record.revision
            ),
            completion_time: Some(status::now()),
            ..record
        }
    }

    /// A new candidate: its revision recorded, its evaluation started.
    async fn start(&self, gate: &UpgradeGate) -> Result<Gated> {
        let (inst, key) = (self.inst, self.key);
        let candidate = &self.children.revision_hash;
        // A rollback returns to what served before: not gated.
        if let Some(rollback) = super::last_rollback(inst) {
            let history = revisions::list(&self.ctx.client, key).await?;
            if history
                .iter()
                .any(|r| r.number == rollback.to_revision && &r.hash == candidate)
            {
                return Ok(Gated::Open(inst.status.as_ref().and_then(|s| s.gate.clone())));
            }
        }
        if let Some(old) = inst
            .status
            .as_ref()
            .and_then(|s| s.gate.as_ref())
            .and_then(|g| g.job.clone())
        {
            let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
            jobs.delete(&old, &DeleteParams::background())
                .await
                .ok_if_not_found()?;
        }
        let (number, created) = revisions::record(
            &self.ctx.client,
            inst,
            key,
            self.owner,
            candidate,
            &self.capsule.image,
        )
        .await?;
        if created {
            let note = format!(
                "revision {number}: {} {}",
                self.capsule.package, self.capsule.version
            );
            self.ctx
                .event(inst, EventType::Normal, "RevisionCreated", "Provision", note)
                .await;
        }
        let baseline = inst.status.as_ref().and_then(|s| s.current_revision);
        let message = format!(
            "revision {number} is evaluated by {} {} behind its preview Service before it takes traffic; {} keeps serving",
            gate.capsule.package,
            gate.capsule.version,
            baseline.map_or("the running revision".to_string(), |b| format!("revision {b}"))
        );
        self.ctx
            .event(
                inst,
                EventType::Normal,
                "EvaluatingUpgrade",
                "Gate",
                message.clone(),
            )
            .await;
        let record = GateStatus {
            revision: number,
            revision_hash: candidate.clone(),
            baseline_revision: baseline,
            phase: GatePhase::Evaluating,
            reason: "Evaluating".into(),
            message,
            start_time: status::now(),
            completion_time: None,
            job: None,
            report: None,
            overridden_by: None,
        };
        self.evaluate(gate, record).await
    }

    /// One look at the evaluation: preview applied, Job created once the
    /// preview is ready, its verdict read once it ends; the deadline kept.
    async fn evaluate(&self, gate: &UpgradeGate, mut record: GateStatus) -> Result<Gated> {
        let left = seconds_left(&record.start_time, gate.timeout_seconds, &status::now());
        if left <= 0 {
            let verdict = Verdict::failed(
                "EvaluationTimedOut",
                format!(
                    "revision {} was not evaluated within {}s ({})",
                    record.revision, gate.timeout_seconds, record.message
                ),
            );
            return self.end(record, verdict).await;
        }
        match self.progress(gate, &mut record, left).await? {
            Some(verdict) => self.end(record, verdict).await,
            None => Ok(Gated::Held(record)),
        }
    }

    /// Moves the evaluation on; its verdict when it ended.
    async fn progress(
        &self,
        gate: &UpgradeGate,
        record: &mut GateStatus,
        left: i64,
    ) -> Result<Option<Verdict>> {
        let (client, key) = (&self.ctx.client, self.key);
        let Some(port) = self.capsule.ports.first().map(|p| p.port) else {
            return Ok(Some(Verdict::failed(
                "EvaluationNotRun",
                "the capsule exposes no port, so nothing can be evaluated".into(),
            )));
        };
        let evaluator = {
            let capsules = self.ctx.caches.capsules.state();
            let resolved = capsules::resolve(&capsules, &gate.capsule);
            match capsules::may_use(&resolved, self.bundles, self.region, 1) {
                CapsuleUse::Allowed(_) => resolved.found().map(|c| c.spec.clone()),
                other => {
                    record.message = format!(
                        "waiting for the evaluation capsule {} {}: {}",
                        gate.capsule.package,
                        gate.capsule.version,
                        other.refusal().unwrap_or_default()
                    );
                    return Ok(None);
                }
            }
        };
        let Some(evaluator) = evaluator else {
            return Ok(None);
        };
        let preview = preview(self.children, key);
        let Preview {
            config_map,
            deployment,
            service,
            network_policy,
        } = &preview;
        apply::apply_object(client, &key.namespace, config_map).await?;
        apply::apply_object(client, &key.namespace, network_policy).await?;
        let service = match service {
            Some(s) => apply::apply_object(client, &key.namespace, s).await?,
            None => return Ok(None),
        };
        let deployment = apply::apply_object(client, &key.namespace, deployment).await?;
        let workload = Workload::from_deployment(Some(&deployment));
        if !(workload.rolled_out() && workload.available) {
            record.message = format!(
                "revision {}: waiting for its preview pod to be ready ({} of 1 ready)",
                record.revision, workload.ready
            );
            return Ok(None);
        }
        let jobs: Api<Job> = Api::namespaced(client.clone(), &key.namespace);
        let name = job_name(&key.name, record.revision);
        record.job = Some(name.clone());
        let Some(job) = jobs.get_opt(&name).await? else {
            let baseline_ip = match gate.baseline {
                GateBaseline::Fixed => Some(None),
                GateBaseline::Previous => {
                    let services: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
                    services
                        .get_opt(&key.name)
                        .await?
                        .as_ref()
                        .and_then(cluster_ip)
                        .map(Some)
                }
            };
            let (Some(candidate_ip), Some(baseline_ip)) = (cluster_ip(&service), baseline_ip) else {
                record.message = format!(
                    "revision {}: waiting for the Services' cluster IPs",
                    record.revision
                );
                return Ok(None);
            };
            let ports: Vec<i32> = self.capsule.ports.iter().map(|p| p.port).collect();
            apply::apply_object(
                client,
                &key.namespace,
                &evaluation_policy(key, self.owner, &ports),
            )
            .await?;
            let job = evaluation_job(&Evaluation {
                key,
                owner: self.owner,
                gate,
                capsule: &evaluator,
                port,
                candidate_ip: &candidate_ip,
                baseline_ip: baseline_ip.as_deref(),
                revision: record.revision,
                baseline_revision: record.baseline_revision,
                seconds_left: left,
                template: &deployment.spec.template,
                max_cpu: self.max_cpu,
                max_memory: self.max_memory,
            })?;
            jobs.create(&PostParams::default(), &job).await.ok_if_conflict()?;
            record.message = format!("revision {}: evaluation Job {name} started", record.revision);
            return Ok(None);
        };
        let state = job_state(&job);
        if state == JobState::Running {
            record.message = format!("revision {}: evaluation Job {name} running", record.revision);
            return Ok(None);
        }
        let message = crate::jobs::termination_message(client, &key.namespace, &name).await?;
        Ok(judge(&state, message.as_deref()))
    }

    /// Ends the gate with `verdict`: the preview removed (and a Job that ran
    /// out of time), the revision marked, an Event, the record.
    async fn end(&self, record: GateStatus, verdict: Verdict) -> Result<Gated> {
        self.remove_preview().await?;
        if verdict.reason == "EvaluationTimedOut"
            && let Some(job) = &record.job
        {
            let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
            jobs.delete(job, &DeleteParams::background())
                .await
                .ok_if_not_found()?;
        }
        let (mark, phase, event, type_) = if verdict.passed {
            (
                "Passed",
                GatePhase::Passed,
                "UpgradePassedGate",
                EventType::Normal,
            )
        } else {
            (
                "Rejected",
                GatePhase::Failed,
                "UpgradeRejected",
                EventType::Warning,
            )
        };
        let message = if verdict.passed {
            format!(
                "revision {} passed its gate and is promoted: {}",
                record.revision, verdict.message
            )
        } else {
            format!(
                "revision {} was rejected and removed: {}; {} keeps serving",
                record.revision,
                verdict.message,
                record
                    .baseline_revision
                    .map_or("the running revision".to_string(), |b| format!("revision {b}"))
            )
        };
        self.mark_revision(record.revision, mark, &message).await?;
        self.ctx
            .event(self.inst, type_, event, "Gate", message.clone())
            .await;
        let record = GateStatus {
            phase,
            reason: verdict.reason.into(),
            message,
            completion_time: Some(status::now()),
            report: verdict.report,
            ..record
        };
        Ok(if verdict.passed {
            Gated::Open(Some(record))
        } else {
            Gated::Held(record)
        })
    }

    /// Deletes the candidate's preview children and the evaluation pods'
    /// NetworkPolicy (those this Installation owns).
    async fn remove_preview(&self) -> Result<()> {
        let (client, ns, uid) = (
            &self.ctx.client,
            self.key.namespace.as_str(),
            self.key.uid.as_str(),
        );
        let name = preview_name(&self.key.name);
        apply::delete_if_owned::<Deployment>(client, ns, &name, uid).await?;
        apply::delete_if_owned::<Service>(client, ns, &name, uid).await?;
        apply::delete_if_owned::<NetworkPolicy>(client, ns, &name, uid).await?;
        apply::delete_if_owned::<ConfigMap>(client, ns, &render::config_map_name(&name), uid).await?;
        apply::delete_if_owned::<NetworkPolicy>(client, ns, &evaluation_policy_name(&self.key.name), uid)
            .await?;
        Ok(())
    }

    /// Marks revision `number` with its gate's outcome.
    async fn mark_revision(&self, number: i64, mark: &str, reason: &str) -> Result<()> {
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let patch = json!({ "metadata": { "annotations": {
            GATE_ANNOTATION: mark,
            GATE_REASON_ANNOTATION: text::bounded(reason, 512),
        } } });
        api.patch(
            &revisions::revision_name(self.key, number),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .ok_if_not_found()?;
        Ok(())
    }
}

/// The pod-template revision hash of a Deployment.
pub fn serving_hash(d: &Deployment) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(render::REVISION_HASH_ANNOTATION)
        .cloned()
}

fn cluster_ip(s: &Service) -> Option<String> {
    s.spec
        .as_ref()?
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{capsule, installation};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use somastack_crds::common::CapsuleRef;

    fn gate(baseline: GateBaseline) -> UpgradeGate {
        UpgradeGate {
            capsule: CapsuleRef {
                package: "evaluator".into(),
                version: "1.0.0".into(),
            },
            inputs: BTreeMap::from([("corpus".into(), "One. Two.".into())]),
            baseline,
            timeout_seconds: 120,
        }
    }

    fn record(hash: &str, phase: GatePhase) -> GateStatus {
        GateStatus {
            revision: 4,
            revision_hash: hash.into(),
            baseline_revision: Some(3),
            phase,
            reason: "Evaluating".into(),
            message: String::new(),
            start_time: Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()),
            completion_time: None,
            job: None,
            report: None,
            overridden_by: None,
        }
    }

    fn observed<'a>(
        gate: Option<&'a UpgradeGate>,
        serving: Option<&'a str>,
        available: bool,
        record: Option<&'a GateStatus>,
        override_revision: Option<&'a str>,
    ) -> Observed<'a> {
        Observed {
            gate,
            candidate: "new",
            serving,
            serving_available: available,
            record,
            override_revision,
        }
    }

    #[test]
    fn a_new_template_is_gated_only_when_another_serves_and_is_available() {
        let g = gate(GateBaseline::Previous);
        assert_eq!(decide(&observed(None, Some("old"), true, None, None)), Step::Open);
        assert_eq!(
            decide(&observed(Some(&g), Some("old"), true, None, None)),
            Step::Start
        );
        // Nothing serves (a first install), or what serves is not Available:
        // nothing to protect or compare with.
        assert_eq!(decide(&observed(Some(&g), None, false, None, None)), Step::Open);
        assert_eq!(
            decide(&observed(Some(&g), Some("old"), false, None, None)),
            Step::Open
        );
        // The candidate already serves (promoted, or a scale change only).
        assert_eq!(
            decide(&observed(Some(&g), Some("new"), true, None, None)),
            Step::Open
        );
        // A record of another candidate says nothing about this one.
        let other = record("older", GatePhase::Failed);
        assert_eq!(
            decide(&observed(Some(&g), Some("old"), true, Some(&other), None)),
            Step::Start
        );
    }

    #[test]
    fn the_record_of_the_candidate_decides_how_far_it_got() {
        let g = gate(GateBaseline::Previous);
        let at = |phase, o: Option<&str>| {
            let r = record("new", phase);
            decide(&observed(Some(&g), Some("old"), true, Some(&r), o))
        };
        assert_eq!(at(GatePhase::Evaluating, None), Step::Evaluate);
        assert_eq!(at(GatePhase::Passed, None), Step::Promote);
        assert_eq!(at(GatePhase::Overridden, None), Step::Promote);
        assert_eq!(at(GatePhase::Failed, None), Step::Hold);
        // An override names the rejected revision explicitly; another
        // number (an old override left behind) does not promote it.
        assert_eq!(at(GatePhase::Failed, Some("4")), Step::Override);
        assert_eq!(at(GatePhase::Failed, Some("3")), Step::Hold);
    }

    #[test]
    fn an_evaluation_is_superseded_when_the_spec_moves_on() {
        let r = record("new", GatePhase::Evaluating);
        assert!(!superseded(Some(&r), "new", true));
        assert!(superseded(Some(&r), "newer", true));
        assert!(superseded(Some(&r), "new", false));
        assert!(!superseded(
            Some(&record("new", GatePhase::Failed)),
            "newer",
            true
        ));
    }

    fn children() -> (Children, ObjectKey) {
        let inst = installation(Some(3), None);
        let key = ObjectKey::of(&inst).unwrap();
        let cap = capsule();
        let children = render::render(&render::Input {
            installation: &inst,
            key: &key,
            owner: crate::kinds::installation::golden::owner(),
            capsule: &cap,
            region: "eu-west-1",
            stopped: false,
            max_cpu: None,
            max_memory: None,
        })
        .unwrap();
        (children, key)
    }

    #[test]
    fn the_preview_is_one_replica_that_the_installations_service_does_not_select() {
        let (children, key) = children();
        let p = preview(&children, &key);
        assert_eq!(p.deployment.metadata.name.as_deref(), Some("summarizer-preview"));
        assert_eq!(p.deployment.spec.replicas, Some(1));
        let pod_labels = p
            .deployment
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        // The serving Service selects by the Installation's label: the
        // preview's pods do not carry it, so they never take its traffic.
        let selector = |svc: &Option<Service>| {
            svc.as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .selector
                .clone()
                .unwrap()
        };
        let serving = selector(&children.service);
        assert!(!serving.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        let own = selector(&p.service);
        assert!(own.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(p.deployment.spec.selector.match_labels.as_ref(), Some(&own));
        // Its own config, so the serving pods keep reading theirs.
        assert_eq!(
            p.config_map.metadata.name.as_deref(),
            Some("summarizer-preview-config")
        );
        assert_eq!(p.config_map.data, children.config_map.data);
        let pod = p.deployment.spec.template.spec.as_ref().unwrap();
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .filter_map(|v| v.config_map.as_ref())
                .all(|c| c.name == "summarizer-preview-config")
        );
        assert!(
            pod.containers[0]
                .env_from
                .iter()
                .flatten()
                .all(|f| f.config_map_ref.as_ref().unwrap().name == "summarizer-preview-config")
        );
        // The same workload otherwise: image, probes, region.
        let serving_pod = children.deployment.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].image, serving_pod.containers[0].image);
        assert_eq!(
            pod.containers[0].readiness_probe,
            serving_pod.containers[0].readiness_probe
        );
        assert_eq!(pod.affinity, serving_pod.affinity);
        assert_eq!(serving_hash(&p.deployment), Some(children.revision_hash.clone()));
        let np = p.network_policy.spec.as_ref().unwrap();
        assert_eq!(
            np.pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&own)
        );
    }

    #[test]
    fn names_stay_within_63_characters() {
        let long = "a".repeat(63);
        assert!(preview_name(&long).len() <= 63);
        assert!(job_name(&long, 123).len() <= 63);
        assert_ne!(preview_name(&long), preview_name(&format!("{}b", "a".repeat(62))));
        assert_eq!(job_name("app", 4), "app-gate-4");
    }

    #[test]
    fn the_evaluation_job_runs_once_with_the_contract_variables_where_the_workload_runs() {
        let (children, key) = children();
        let owner = crate::kinds::installation::golden::owner();
        let mut evaluator = capsule();
        evaluator.env = vec![somastack_crds::capsule::EnvVar {
            name: "AGENT_LISTEN".into(),
            value: "0.0.0.0:8080".into(),
        }];
        let previous = gate(GateBaseline::Previous);
        let e = Evaluation {
            key: &key,
            owner: &owner,
            gate: &previous,
            capsule: &evaluator,
            port: 8080,
            candidate_ip: "10.96.0.20",
            baseline_ip: Some("10.96.0.10"),
            revision: 4,
            baseline_revision: Some(3),
            seconds_left: 90,
            template: &children.deployment.spec.template,
            max_cpu: None,
            max_memory: None,
        };
        let job = evaluation_job(&e).unwrap();
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            (spec.backoff_limit, spec.active_deadline_seconds),
            (Some(0), Some(90))
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let var = |n: &str| {
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .find(|v| v.name == n)
                .and_then(|v| v.value.clone())
        };
        assert_eq!(
            var("SOMASTACK_GATE_CANDIDATE").as_deref(),
            Some("http://10.96.0.20:8080")
        );
        assert_eq!(
            var("SOMASTACK_GATE_BASELINE").as_deref(),
            Some("http://10.96.0.10:8080")
        );
        assert_eq!(
            var("SOMASTACK_GATE_INPUTS").as_deref(),
            Some(r#"{"corpus":"One. Two."}"#)
        );
        assert_eq!(var("SOMASTACK_GATE_REVISION").as_deref(), Some("4"));
        assert_eq!(var("AGENT_LISTEN").as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.affinity,
            children.deployment.spec.template.spec.as_ref().unwrap().affinity
        );
        assert!(!pod.containers[0].image.as_deref().unwrap_or_default().is_empty());

        let fixed = gate(GateBaseline::Fixed);
        let job = evaluation_job(&Evaluation {
            gate: &fixed,
            baseline_ip: None,
            seconds_left: -5,
            ..e
        })
        .unwrap();
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(1));
        assert!(
            spec.template.spec.unwrap().containers[0]
                .env
                .iter()
                .flatten()
                .all(|v| v.name != "SOMASTACK_GATE_BASELINE")
        );
    }

    #[test]
    fn the_evaluation_pods_reach_only_the_installations_and_the_previews_pods() {
        let (_, key) = children();
        let np = evaluation_policy(&key, &crate::kinds::installation::golden::owner(), &[8080]);
        let spec = np.spec.unwrap();
        assert_eq!(spec.ingress, Some(vec![]));
        let egress = spec.egress.unwrap();
        assert_eq!(egress.len(), 1);
        let to: Vec<_> = egress[0]
            .to
            .iter()
            .flatten()
            .map(|p| p.pod_selector.clone().unwrap().match_labels.unwrap())
            .collect();
        assert_eq!(
            to,
            vec![
                BTreeMap::from([(INSTALLATION_LABEL.to_string(), "summarizer".to_string())]),
                BTreeMap::from([(PREVIEW_LABEL.to_string(), "summarizer".to_string())]),
            ]
        );
        assert!(
            egress[0]
                .to
                .iter()
                .flatten()
                .all(|p| p.namespace_selector.is_none() && p.ip_block.is_none())
        );
    }

    fn finished(condition: &str) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: condition.into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_evaluation_is_judged_from_its_report() {
        assert_eq!(job_state(&Job::default()), JobState::Running);
        assert_eq!(judge(&job_state(&Job::default()), None), None);
        let pass = r#"{"verdict":"Pass","summary":"agreement 1.00 >= 0.80 on 3 documents","checks":[{"name":"agreement","passed":true,"detail":"1.00"}]}"#;
        let v = judge(&job_state(&finished("Complete")), Some(pass)).unwrap();
        assert!(v.passed);
        assert_eq!(v.reason, "EvaluationPassed");
        assert_eq!(
            v.message,
            "the evaluation passed: agreement 1.00 >= 0.80 on 3 documents"
        );
        let fail = r#"{"verdict":"Fail","summary":"agreement 0.33 < 0.80","checks":[{"name":"answers","passed":true,"detail":""},{"name":"agreement","passed":false,"detail":"0.33"}]}"#;
        let v = judge(&JobState::Complete, Some(fail)).unwrap();
        assert!(!v.passed);
        assert_eq!(v.reason, "EvaluationFailed");
        assert_eq!(
            v.message,
            "the evaluation failed: agreement 0.33 < 0.80 (failed checks: agreement)"
        );
        assert_eq!(v.report.unwrap().checks.len(), 2);
        // Could not run: a failed Job (the evaluator's reason), or a report
        // that is not one; fail closed.
        let v = judge(
            &JobState::Failed,
            Some("baseline http://10.96.0.10:8080 did not answer"),
        )
        .unwrap();
        assert_eq!((v.passed, v.reason), (false, "EvaluationNotRun"));
        assert!(
            v.message
                .ends_with("baseline http://10.96.0.10:8080 did not answer"),
            "{}",
            v.message
        );
        let v = judge(&JobState::Failed, None).unwrap();
        assert!(v.message.contains("without a message"));
        let v = judge(&JobState::Complete, Some("all good")).unwrap();
        assert_eq!((v.passed, v.reason), (false, "EvaluationNotRun"));
        let v = judge(&JobState::Complete, Some(r#"{"verdict":"Maybe"}"#)).unwrap();
        assert!(v.message.contains("neither Pass nor Fail"), "{}", v.message);
    }

    #[test]
    fn a_report_is_bounded_and_made_safe_to_show() {
        let checks: Vec<_> = (0..40)
            .map(|i| json!({"name": format!("c{i}"), "passed": true, "detail": "x".repeat(1000)}))
            .collect();
        let raw = json!({"verdict": "Pass", "summary": format!("\u{1b}[31mred{}", "y".repeat(1000)), "checks": checks});
        let report = parse_report(&raw.to_string()).unwrap();
        assert_eq!(report.checks.len(), MAX_CHECKS);
        assert!(report.summary.len() <= MAX_REPORT_TEXT + 4);
        assert!(report.summary.starts_with("\\u{1b}[31mred"));
        assert!(
            report
                .checks
                .iter()
                .all(|c| c.detail.len() <= MAX_REPORT_TEXT + 4)
        );
    }

    #[test]
    fn the_override_names_the_manager_that_set_it_last() {
        let entry = |manager: &str, second: i64, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            time: Some(Time(jiff::Timestamp::from_second(second).unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        let set = json!({"f:metadata": {"f:annotations": {"f:somastack.io/gate-override": {}}}});
        let other = json!({"f:spec": {"f:replicas": {}}});
        let managed = vec![
            entry("kubectl-client-side-apply", 1_800_000_000, other),
            entry("kubectl-annotate", 1_800_000_100, set.clone()),
        ];
        assert_eq!(
            override_manager(&managed).as_deref(),
            Some("kubectl-annotate at 2027-01-15T08:01:40Z")
        );
        assert_eq!(override_manager(&managed[..1]), None);
    }

    #[test]
    fn the_deadline_counts_from_the_start() {
        let start = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let at = |s| Time(jiff::Timestamp::from_second(s).unwrap());
        assert_eq!(seconds_left(&start, 120, &at(1_800_000_000)), 120);
        assert_eq!(seconds_left(&start, 120, &at(1_800_000_100)), 20);
        assert_eq!(seconds_left(&start, 120, &at(1_800_000_130)), -10);
    }
}
