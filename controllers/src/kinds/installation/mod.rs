//! `Installation` controller: provision a Capsule in a namespace and region,
//! only where policy allows; keep a revision history; roll back.
//!
//! The reconcile is a pipeline: dereference (caches and the Deployment) →
//! [`decide`] (pure: policy and capsule checks) → [`render::render`] (pure:
//! desired children) → apply (server-side apply, prune) → [`assess`] (pure:
//! status from what the Deployment reports) → write status.

pub mod render;
pub mod revisions;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::installation::{InstallationPhase, RollbackRecord};
use somastack_crds::{Capsule, Installation, PolicyBundle};

use crate::apply::{self, owner_reference};
use crate::conditions::{self, Desired, Status};
use crate::domain::capsules::{self, CapsuleUse, may_install};
use crate::domain::policy::{Bundle, Effective, Evaluation};
use crate::domain::regions::active_region;
use crate::runtime::Context;
use crate::status::{self, HasConditions};
use crate::{Error, Result};

/// Annotation holding the last rollback (JSON), written with the restored spec.
pub const LAST_ROLLBACK_ANNOTATION: &str = "somastack.io/last-rollback";

/// Re-reconciles Installations when their Capsule or any PolicyBundle changes
/// (a kill switch must act within seconds).
pub fn wire(ctl: Controller<Installation>, ctx: &Arc<Context>) -> Controller<Installation> {
    let client = ctx.client.clone();
    let (users, all) = (ctx.installations.clone(), ctx.installations.clone());
    ctl.watches(
        Api::<Capsule>::all(client.clone()),
        watcher::Config::default(),
        move |capsule| {
            users
                .state()
                .iter()
                .filter(|i| {
                    i.spec.capsule.package == capsule.spec.package
                        && i.spec.capsule.version == capsule.spec.version
                })
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect::<Vec<_>>()
        },
    )
    .watches(
        Api::<PolicyBundle>::all(client),
        watcher::Config::default(),
        move |_| {
            all.state()
                .iter()
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect::<Vec<_>>()
        },
    )
}

/// What the Deployment reports, reduced to what status needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub exists: bool,
    /// The Deployment controller has seen the latest Deployment spec.
    pub observed: bool,
    pub desired: i32,
    pub total: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: bool,
    pub deadline_exceeded: bool,
}

impl Workload {
    pub fn from_deployment(d: Option<&Deployment>) -> Self {
        let Some(d) = d else {
            return Workload::default();
        };
        let status = d.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_.as_deref() == Some(t))
                .cloned()
        };
        Workload {
            exists: true,
            observed: status.observed_generation.is_some()
                && status.observed_generation == d.metadata.generation,
            desired: d.spec.replicas.unwrap_or(1),
            total: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: cond("Available").is_some_and(|c| c.status.as_deref() == Some("True")),
            deadline_exceeded: cond("Progressing")
                .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")),
        }
    }

    /// Every replica runs the current template and is ready, no old ones left.
    pub fn rolled_out(&self) -> bool {
        self.exists
            && self.observed
            && self.updated == self.desired
            && self.ready == self.desired
            && self.total == self.desired
    }
}

/// Status of an Installation.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub phase: InstallationPhase,
    pub conditions: Vec<Desired>,
}

impl Assessment {
    /// The API server refused a child (`why`): the Installation is Blocked
    /// and `Ready=False` says which child and why, whatever the workload
    /// that may still run from before.
    pub fn refused(&mut self, why: &str) {
        self.phase = InstallationPhase::Blocked;
        self.conditions.retain(|c| c.type_ != "Ready");
        self.conditions.push(Desired::new(
            "Ready",
            Status::False,
            "ChildRejected",
            format!("{why}; fix the Installation (or what conflicts with it) and it is applied again"),
        ));
    }

    /// Writing a child failed in a way that may pass (`why`): `Ready=False`
    /// says so while the write is retried; the phase stays what the
    /// workload shows.
    pub fn failed(&mut self, why: &str) {
        self.conditions.retain(|c| c.type_ != "Ready");
        self.conditions.push(Desired::new(
            "Ready",
            Status::False,
            "ApplyFailed",
            format!("{why}; retrying"),
        ));
    }
}

fn list_violations(eval: &Evaluation, blocking: bool) -> String {
    let vs = if blocking { &eval.blocking } else { &eval.warnings };
    vs.iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pure: phase and conditions from the decision and the workload.
pub fn assess(decision: &CapsuleUse, workload: &Workload, paused: bool, was_available: bool) -> Assessment {
    use InstallationPhase as P;
    let (compliant, blocked_reason) = match decision {
        CapsuleUse::CapsuleNotFound => (
            Desired::new(
                "PolicyCompliant",
                Status::Unknown,
                "CapsuleNotFound",
                "the Capsule is not published yet",
            ),
            Some((
                "CapsuleNotFound",
                "no Capsule with this package and version exists".to_string(),
            )),
        ),
        CapsuleUse::CapsuleUnusable(msg) => (
            Desired::new("PolicyCompliant", Status::Unknown, "CapsuleUnusable", msg.clone()),
            Some(("CapsuleUnusable", msg.clone())),
        ),
        CapsuleUse::Blocked(eval) => {
            let msg = list_violations(eval, true);
            (
                Desired::new("PolicyCompliant", Status::False, "PolicyViolation", msg.clone()),
                Some(("PolicyViolation", msg)),
            )
        }
        CapsuleUse::Allowed(eval) if eval.warnings.is_empty() => (
            Desired::new(
                "PolicyCompliant",
                Status::True,
                "Compliant",
                "every PolicyBundle's rules are met",
            ),
            None,
        ),
        CapsuleUse::Allowed(eval) => (
            Desired::new(
                "PolicyCompliant",
                Status::True,
                "CompliantWithAuditFindings",
                format!("allowed; audit findings: {}", list_violations(eval, false)),
            ),
            None,
        ),
    };
    let kill = match decision {
        CapsuleUse::Allowed(eval) if !eval.kill_switch.is_empty() => Some(
            eval.kill_switch
                .iter()
                .map(|(b, r)| format!("PolicyBundle {b}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    };

    let available = if let Some(why) = &kill {
        Desired::new(
            "Available",
            Status::False,
            "KillSwitchEngaged",
            format!("scaled to zero by the kill switch ({why})"),
        )
    } else if !workload.exists {
        Desired::new("Available", Status::False, "NotProvisioned", "no workload exists")
    } else if workload.available {
        Desired::new(
            "Available",
            Status::True,
            "MinimumReplicasAvailable",
            format!("{} replica(s) ready", workload.ready),
        )
    } else {
        Desired::new(
            "Available",
            Status::False,
            "Unavailable",
            format!("{} of {} replica(s) ready", workload.ready, workload.desired),
        )
    };

    let rollout = format!(
        "{}/{} replica(s) updated, {} ready",
        workload.updated, workload.desired, workload.ready
    );
    let progressing = if !workload.exists {
        Desired::new(
            "Progressing",
            Status::False,
            "NotProvisioned",
            "no workload exists",
        )
    } else if workload.deadline_exceeded && !workload.rolled_out() {
        Desired::new(
            "Progressing",
            Status::False,
            "ProgressDeadlineExceeded",
            format!("the rollout stalled: {rollout}"),
        )
    } else if workload.rolled_out() {
        Desired::new("Progressing", Status::False, "RolloutComplete", rollout.clone())
    } else {
        Desired::new("Progressing", Status::True, "RollingOut", rollout.clone())
    };

    let (phase, ready) = if let Some((reason, msg)) = blocked_reason {
        let phase = if matches!(decision, CapsuleUse::CapsuleNotFound) {
            P::Pending
        } else {
            P::Blocked
        };
        let suffix = if workload.exists {
            "; the running workload is left as it was"
        } else {
            ""
        };
        (
            phase,
            Desired::new("Ready", Status::False, reason, format!("{msg}{suffix}")),
        )
    } else if let Some(why) = kill {
        (
            P::Suspended,
            Desired::new(
                "Ready",
                Status::False,
                "KillSwitchEngaged",
                format!("stopped by the kill switch ({why})"),
            ),
        )
    } else if workload.rolled_out() && workload.available {
        let phase = if paused { P::Suspended } else { P::Ready };
        (
            phase,
            Desired::new("Ready", Status::True, "WorkloadReady", rollout),
        )
    } else if workload.deadline_exceeded {
        (
            P::Degraded,
            Desired::new(
                "Ready",
                Status::False,
                "ProgressDeadlineExceeded",
                progressing.message.clone(),
            ),
        )
    } else {
        let phase = if paused {
            P::Suspended
        } else if was_available && !workload.available {
            P::Degraded
        } else if workload.exists || !paused {
            P::Progressing
        } else {
            P::Pending
        };
        (phase, Desired::new("Ready", Status::False, "RollingOut", rollout))
    };
    Assessment {
        phase,
        conditions: vec![compliant, available, progressing, ready],
    }
}

pub async fn reconcile(inst: Arc<Installation>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await?;
    let namespace = inst
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = inst.name_any();
    let client = &ctx.client;
    let api: Api<Installation> = Api::namespaced(client.clone(), &namespace);
    let now = status::now();

    // Dereference.
    let capsules = ctx.capsules.state();
    let resolved = capsules::resolve(&capsules, &inst.spec.capsule);
    let capsule = resolved.found().map(Arc::as_ref);
    let bundles = ctx.governing_bundles(&namespace);
    let region = active_region(&inst);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);

    // Validate.
    let decision = may_install(&inst, &resolved, &bundles, &region);
    let mut current_revision = inst.status.as_ref().and_then(|s| s.current_revision);

    // Build and apply, unless blocked or paused.
    let mut refused: Option<String> = None;
    let mut failed: Option<Error> = None;
    let mut record_revision = None;
    if let (CapsuleUse::Allowed(eval), Some(capsule), false) = (&decision, capsule, inst.spec.paused) {
        let names: Vec<String> = bundles.iter().map(|b| b.name_any()).collect();
        let effective = Effective::combine(bundles.iter().zip(&names).map(|(b, n)| Bundle {
            name: n,
            spec: &b.spec,
        }));
        let owner = owner_reference(inst.as_ref())?;
        let children = render::render(&render::Input {
            installation: &inst,
            owner: owner.clone(),
            capsule: &capsule.spec,
            region: &region,
            stopped: !eval.kill_switch.is_empty(),
            max_cpu: effective.max_cpu.as_ref().map(|c| c.value.written.as_str()),
            max_memory: effective.max_memory.as_ref().map(|c| c.value.written.as_str()),
        });
        match provision(&ctx, &inst, &namespace, &children).await {
            Ok(()) => record_revision = Some((owner, children.revision_hash, capsule)),
            // Reported in status (and as an Event) below; no revision is
            // recorded for what was not applied.
            Err(e @ Error::ChildRefused { .. }) => refused = Some(e.to_string()),
            // Shown too, then retried with backoff.
            Err(e @ Error::ChildFailed { .. }) => failed = Some(e),
            Err(e) => return Err(e),
        }
    }
    if let Some((owner, revision_hash, capsule)) = record_revision {
        let (number, created) =
            revisions::record(client, &inst, &owner, &revision_hash, &capsule.spec.image).await?;
        if created {
            ctx.event(
                inst.as_ref(),
                EventType::Normal,
                "RevisionCreated",
                "Provision",
                format!(
                    "revision {number}: {} {}",
                    capsule.spec.package, capsule.spec.version
                ),
            )
            .await;
        }
        current_revision = Some(number);
    }

    // Assess.
    let deployment = deployments.get_opt(&name).await?;
    let workload = Workload::from_deployment(deployment.as_ref());
    let previous_available = inst.status.as_ref().and_then(|s| s.available_revision);
    let was_available = conditions::find(inst.conditions(), "Available").is_some_and(|c| c.status == "True");
    let mut assessment = assess(&decision, &workload, inst.spec.paused, was_available);
    if let Some(why) = &refused {
        assessment.refused(why);
    }
    if let Some(e) = &failed {
        assessment.failed(&e.to_string());
    }
    let available_revision = match (&decision, workload.rolled_out() && workload.available) {
        (CapsuleUse::Allowed(_), true) => current_revision,
        _ => previous_available,
    };

    // Automatic rollback of a revision that never became Available.
    let mut last_rollback = inst
        .annotations()
        .get(LAST_ROLLBACK_ANNOTATION)
        .and_then(|a| serde_json::from_str::<RollbackRecord>(a).ok())
        .or_else(|| inst.status.as_ref().and_then(|s| s.last_rollback.clone()));
    let auto = inst.spec.upgrade.as_ref().is_some_and(|u| u.auto_rollback);
    // Only a verdict on the current Deployment spec counts.
    let stalled = workload.observed && workload.deadline_exceeded && !workload.rolled_out();
    if let (true, true, Some(current), Some(target)) = (auto, stalled, current_revision, previous_available)
        && target != current
        && !inst.spec.paused
        && !already_rolled_back(last_rollback.as_ref(), current, target)
    {
        {
            let deadline = inst
                .spec
                .upgrade
                .as_ref()
                .map(|u| u.progress_deadline_seconds)
                .unwrap_or(600);
            let reason = format!(
                "revision {current} ({} {}) was not Available within {deadline}s; rolled back to revision {target}",
                inst.spec.capsule.package, inst.spec.capsule.version
            );
            let record = rollback(client, &inst, target, "Automatic", &reason).await?;
            ctx.event(
                inst.as_ref(),
                EventType::Warning,
                "RolledBack",
                "Rollback",
                reason,
            )
            .await;
            last_rollback = Some(record);
        }
    }

    // Events on transitions a person cares about.
    let merged = conditions::merge(
        inst.conditions(),
        &assessment.conditions,
        inst.metadata.generation,
        &now,
    );
    announce(&ctx, &inst, &merged).await;

    let body = json!({
        "observedGeneration": inst.metadata.generation,
        "phase": assessment.phase,
        "conditions": merged,
        "currentRevision": current_revision,
        "readyReplicas": workload.ready,
        "activeRegion": region,
        "availableRevision": available_revision,
        "lastRollback": last_rollback,
    });
    status::apply_if_changed(&api, inst.as_ref(), inst.status.as_ref(), body).await?;
    if let Some(e) = failed {
        return Err(e);
    }
    // While a rollout is under way, look again soon; otherwise rely on watches.
    let next = if assessment.phase == InstallationPhase::Ready || refused.is_some() {
        300
    } else {
        10
    };
    Ok(Action::requeue(Duration::from_secs(next)))
}

/// Applies every wanted child and prunes the optional ones no longer wanted.
async fn provision(ctx: &Context, inst: &Installation, namespace: &str, c: &render::Children) -> Result<()> {
    let client = &ctx.client;
    let name = inst.name_any();
    let uid = inst.uid().ok_or(Error::MissingField("metadata.uid"))?;
    apply::apply::<ServiceAccount>(client, namespace, &c.service_account).await?;
    apply::apply::<ConfigMap>(client, namespace, &c.config_map).await?;
    apply::apply::<NetworkPolicy>(client, namespace, &c.network_policy).await?;
    apply_or_prune::<Service>(ctx, namespace, &name, &uid, c.service.as_ref()).await?;
    apply::apply::<Deployment>(client, namespace, &c.deployment).await?;
    apply_or_prune::<HorizontalPodAutoscaler>(ctx, namespace, &name, &uid, c.autoscaler.as_ref()).await?;
    apply_or_prune::<PodDisruptionBudget>(ctx, namespace, &name, &uid, c.disruption_budget.as_ref()).await?;
    Ok(())
}

/// True when the last rollback already went to `target` and `current` came
/// after it: rolling back again would loop (the target itself does not get
/// Available), so the Installation stays Degraded for a person to look at.
pub fn already_rolled_back(last: Option<&RollbackRecord>, current: i64, target: i64) -> bool {
    last.is_some_and(|r| r.to_revision == target && current > r.from_revision)
}

/// Applies an optional child when wanted, deletes it (if ours) when not.
async fn apply_or_prune<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    manifest: Option<&serde_json::Value>,
) -> Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    match manifest {
        Some(m) => {
            apply::apply::<K>(&ctx.client, namespace, m).await?;
        }
        None => {
            if apply::delete_if_owned::<K>(&ctx.client, namespace, name, owner_uid).await? {
                tracing::info!(kind = %K::kind(&()), %name, "pruned a child that is no longer wanted");
            }
        }
    }
    Ok(())
}

/// Restores the spec recorded in revision `target` (a new revision follows,
/// as with Helm). Used by the automatic rollback and the `rollback` command.
pub async fn rollback(
    client: &kube::Client,
    inst: &Installation,
    target: i64,
    trigger: &str,
    reason: &str,
) -> Result<RollbackRecord> {
    let history = revisions::list(client, inst).await?;
    let Some(data) = history
        .iter()
        .find(|r| r.number == target)
        .and_then(|r| r.data.clone())
    else {
        return Err(Error::RevisionNotFound(target));
    };
    let namespace = inst.namespace().unwrap_or_default();
    let api: Api<Installation> = Api::namespaced(client.clone(), &namespace);
    let mut latest = api.get(&inst.name_any()).await?;
    let from = latest
        .status
        .as_ref()
        .and_then(|s| s.current_revision)
        .unwrap_or(0);
    let record = RollbackRecord {
        from_revision: from,
        to_revision: target,
        trigger: trigger.into(),
        reason: reason.into(),
        time: status::now(),
    };
    // The record travels with the spec change in one write, so no status
    // write can race it away; the controller copies it into status.
    latest.spec = data.spec;
    latest
        .annotations_mut()
        .insert(LAST_ROLLBACK_ANNOTATION.into(), serde_json::to_string(&record)?);
    let params = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.replace(&inst.name_any(), &params, &latest).await?;
    Ok(record)
}

async fn announce(
    ctx: &Context,
    inst: &Installation,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let before =
        |t: &str| conditions::find(inst.conditions(), t).map(|c| (c.status.clone(), c.reason.clone()));
    let after = |t: &str| conditions::find(merged, t);
    for t in ["PolicyCompliant", "Ready"] {
        let Some(now) = after(t) else { continue };
        if before(t) == Some((now.status.clone(), now.reason.clone())) {
            continue;
        }
        let (type_, reason) = match (t, now.status.as_str()) {
            ("PolicyCompliant", "False") => (EventType::Warning, "PolicyViolation"),
            ("Ready", "True") => (EventType::Normal, "Ready"),
            ("Ready", "False") if now.reason == "KillSwitchEngaged" => {
                (EventType::Warning, "KillSwitchEngaged")
            }
            ("Ready", "False") if now.reason == "ProgressDeadlineExceeded" => {
                (EventType::Warning, "ProgressDeadlineExceeded")
            }
            ("Ready", "False") if now.reason == "ChildRejected" => (EventType::Warning, "ChildRejected"),
            ("Ready", "False") if now.reason == "ApplyFailed" => (EventType::Warning, "ApplyFailed"),
            _ => continue,
        };
        ctx.event(inst, type_, reason, "Reconcile", now.message.clone())
            .await;
    }
}

#[cfg(test)]
mod tests;
