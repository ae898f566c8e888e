//! `Installation` controller: provision a Capsule in a namespace and region,
//! only where policy allows; keep a revision history; roll back.
//!
//! The reconcile is a pipeline: dereference (the [`ObjectKey`], caches) →
//! decide ([`may_install`], pure: policy and capsule checks) → build
//! ([`render::render`], pure: desired children) → apply (`provision`:
//! server-side apply, prune; record the revision) → assess ([`assess`],
//! pure: status from what the Deployment reports) → act on
//! [`rollback_decision`] (pure) → report (status and Events).

mod context;
pub mod drift;
pub mod gate;
pub mod render;
pub mod revisions;

pub use context::{InstallationContext, Provisioned, unchanged};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use somastack_crds::Installation;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::installation::{
    GatePhase, GateStatus, InstallationPhase, InstallationSpec, InstallationStatus, RollbackRecord,
};

use crate::apply::{self, owner_reference};
use crate::conditions::{self, Desired, Health, Status};
use crate::domain::capsules::{self, CapsuleUse, may_install};
use crate::domain::policy::{self, Effective, Evaluation};
use crate::domain::regions::active_region;
use crate::runtime::{Context, Wired};
use crate::status::{self, HasConditions};
use crate::triggers;
use crate::{Error, Result};
use drift::{AppliedChild, ChildKind};

/// Annotation holding the last rollback (JSON), written with the restored spec.
pub const LAST_ROLLBACK_ANNOTATION: &str = "somastack.io/last-rollback";

/// The Installation controller: reconciled on changes to its own spec,
/// labels and annotations (not to the status it writes), on changes to what
/// its Deployment reports (the one watch of Deployments, of those the
/// operator manages), for those that name a Capsule when what they read of
/// it changes, and all of them when any PolicyBundle's spec changes (a kill
/// switch must act within seconds), those of a namespace when its labels
/// change, and on changes someone else makes to its other children (one
/// metadata-only watch per kind, [`drift`]). Its own caches: the Deployments.
pub fn controller(
    ctx: &Arc<Context>,
) -> Wired<Installation, InstallationContext, impl Future<Output = ()> + Send + use<>> {
    let users = ctx.caches.installations.clone();
    let tenants = users.clone();
    let events = &ctx.caches;
    // Of the operator's children, only those it manages.
    let managed = ctx
        .tuning
        .watcher_config()
        .labels(&format!("app.kubernetes.io/managed-by={}", crate::MANAGED_BY));
    let (deployments, filled, caches) = crate::caches::own_cache(
        Api::<Deployment>::all(ctx.client.clone()),
        managed.clone(),
        trim_deployment,
    );
    let kind_ctx = Arc::new(InstallationContext::new(ctx.clone(), deployments.store(), filled));
    let (drift_tx, drift_rx) = tokio::sync::mpsc::unbounded_channel();
    let children = drift::watch(&ctx.client, &managed, &kind_ctx, drift_tx);
    // Judged when the window closes: an event that came in while the
    // Installation's own apply was under way is settled by that apply.
    let judge = kind_ctx.clone();
    let drifted = triggers::coalesced(triggers::received(drift_rx), triggers::WINDOW)
        .filter(move |inst| futures::future::ready(judge.drifted(inst)));
    let own = events.installations.changes(triggers::intent);
    // What a Deployment reports, for its Installation; a rollout's steps
    // (created, updated, ready) often come within one window, so status is
    // written once for them rather than once each.
    let rollouts = deployments
        .changes(|d| Workload::from_deployment(Some(d)).shown())
        .filter_map(|d| futures::future::ready(owner(&d)));
    // Judged when the window closes, against the Deployment as it is then:
    // what the last reconcile already saw (often the Deployment it just
    // created, as its apply answered) is no news.
    let seen = kind_ctx.clone();
    let rollouts = triggers::coalesced(rollouts, triggers::WINDOW)
        .filter(move |inst| futures::future::ready(!seen.saw(inst)));
    let bundles_changed = events.bundles.changes(triggers::intent).map(|_| ());
    let ctl = ctx
        .controller(own, &events.installations, |_| true)
        .watches_shared_stream(events.capsules.changes(capsules::as_used), move |capsule| {
            users.refs(|i| {
                i.spec.capsule.package == capsule.spec.package
                    && i.spec.capsule.version == capsule.spec.version
            })
        })
        // A namespace's labels decide which bundles govern it.
        .watches_shared_stream(
            events.namespaces.changes(|ns| ns.metadata.labels.clone()),
            move |ns| {
                let name = ns.name_any();
                tenants.refs(|i| i.metadata.namespace.as_deref() == Some(name.as_str()))
            },
        )
        .reconcile_all_on(triggers::coalesced(bundles_changed, triggers::WINDOW))
        .reconcile_on(rollouts)
        .reconcile_on(drifted);
    let caches = async move {
        futures::join!(caches, children);
    };
    Wired::new(ctl, kind_ctx, caches)
}

/// The Installation that controls `d`.
fn owner(d: &Deployment) -> Option<kube::runtime::reflector::ObjectRef<Installation>> {
    let owner = d
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Installation")?;
    Some(kube::runtime::reflector::ObjectRef::new(&owner.name).within(d.metadata.namespace.as_deref()?))
}

/// Keeps of a Deployment what triggers need: its owner (which Installation
/// it belongs to) and what [`Workload::from_deployment`] reads.
fn trim_deployment(d: &mut Deployment) {
    // The pod template's revision hash: which revision serves (the gate).
    let hash = gate::serving_hash(d);
    d.spec = k8s_openapi::api::apps::v1::DeploymentSpec {
        replicas: d.spec.replicas,
        template: k8s_openapi::api::core::v1::PodTemplateSpec {
            metadata: hash.map(|h| ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    render::REVISION_HASH_ANNOTATION.to_string(),
                    h,
                )])),
                ..Default::default()
            }),
            spec: None,
        },
        ..Default::default()
    };
    d.metadata.annotations = None;
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

    /// What an Installation's status shows of it (whether the Deployment
    /// controller has seen the latest spec shows only through
    /// [`Workload::rolled_out`]): a change to anything else writes no status.
    pub fn shown(&self) -> impl std::hash::Hash + Eq + use<> {
        (
            self.exists,
            self.desired,
            self.total,
            self.updated,
            self.ready,
            self.available,
            self.deadline_exceeded,
            self.rolled_out(),
        )
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
        self.not_ready(
            "ChildRejected",
            format!("{why}; fix the Installation (or what conflicts with it) and it is applied again"),
        );
    }

    /// Writing a child failed in a way that may pass (`why`): `Ready=False`
    /// says so while the write is retried; the phase stays what the
    /// workload shows.
    pub fn failed(&mut self, why: &str) {
        self.not_ready("ApplyFailed", format!("{why}; retrying"));
    }

    /// The regression gate holds the serving children: a candidate is
    /// evaluated (Progressing) or was rejected (Blocked, Stalled until the
    /// spec changes); `Ready=False` says which and why.
    pub fn gated(&mut self, record: &GateStatus) {
        let (phase, reason) = match record.phase {
            GatePhase::Evaluating => (InstallationPhase::Progressing, "EvaluatingUpgrade"),
            _ => (InstallationPhase::Blocked, "UpgradeRejected"),
        };
        self.phase = phase;
        let message = match record.phase {
            GatePhase::Evaluating => record.message.clone(),
            _ => format!("{}; change the spec to try again, or override", record.message),
        };
        self.not_ready(reason, message);
    }

    /// Replaces the `Ready` condition with `Ready=False` for `reason`.
    fn not_ready(&mut self, reason: &'static str, message: String) {
        self.conditions.retain(|c| c.type_ != "Ready");
        self.conditions
            .push(Desired::new("Ready", Status::False, reason, message));
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

/// The Installation's identity, read once at the start of a reconcile:
/// its children are named after it and owned by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectKey {
    /// The key of `inst`; [`Error::MissingField`] for what the API server
    /// always sets but `inst` lacks.
    pub fn of(inst: &Installation) -> Result<Self> {
        let field = |value: &Option<String>, path| value.clone().ok_or(Error::MissingField(path));
        Ok(ObjectKey {
            namespace: field(&inst.metadata.namespace, "metadata.namespace")?,
            name: field(&inst.metadata.name, "metadata.name")?,
            uid: field(&inst.metadata.uid, "metadata.uid")?,
        })
    }
}

/// What applying the children came to.
#[derive(Debug, Default)]
pub struct Applied {
    /// The revision recorded for the children applied.
    pub revision: Option<i64>,
    /// The API server refused a child for good: reported, not retried.
    pub refused: Option<String>,
    /// Writing a child failed in a way that may pass: reported, then retried.
    pub failed: Option<Error>,
    /// The Deployment as our apply left it (fresher than the cache).
    pub deployment: Option<Deployment>,
}

pub async fn reconcile(inst: Arc<Installation>, ctx: Arc<InstallationContext>) -> Result<Action> {
    ctx.caches_ready().await?;
    ctx.deployments_ready().await?;
    // Dereference: the key once, then the Capsule, bundles and region.
    let key = ObjectKey::of(&inst)?;
    let capsules = ctx.caches.capsules.state();
    let resolved = capsules::resolve(&capsules, &inst.spec.capsule);
    let bundles = ctx.governing_bundles(&key.namespace);
    let region = active_region(&inst);

    // Decide (pure): may the Capsule run here, under these bundles?
    let decision = may_install(&inst, &resolved, &bundles, &region);

    // Build (pure) and apply, unless blocked or paused, or held by the
    // regression gate (the serving children stay as they are).
    let mut gate_record = inst.status.as_ref().and_then(|s| s.gate.clone());
    let mut held = None;
    let applied = match (&decision, resolved.found(), inst.spec.paused) {
        (CapsuleUse::Allowed(eval), Some(capsule), false) => {
            let owner = owner_reference(inst.as_ref())?;
            let names: Vec<String> = bundles.iter().map(|b| b.name_any()).collect();
            let effective = Effective::combine(policy::views(&bundles, &names));
            let ceilings = Ceilings {
                cpu: effective.max_cpu.as_ref().map(|c| c.value.written.as_str()),
                memory: effective.max_memory.as_ref().map(|c| c.value.written.as_str()),
            };
            let children = build(
                &inst,
                &key,
                owner.clone(),
                &capsule.spec,
                &region,
                eval,
                &ceilings,
            )?;
            let gated =
                if gate_record.is_some() || inst.spec.upgrade.as_ref().is_some_and(|u| u.gate.is_some()) {
                    gate::Run {
                        ctx: &ctx,
                        inst: &inst,
                        key: &key,
                        owner: &owner,
                        capsule: &capsule.spec,
                        children: &children,
                        region: &region,
                        bundles: &bundles,
                        max_cpu: ceilings.cpu,
                        max_memory: ceilings.memory,
                    }
                    .run()
                    .await?
                } else {
                    gate::Gated::Open(None)
                };
            match gated {
                gate::Gated::Open(record) => {
                    gate_record = record;
                    apply_children(&ctx, &inst, &key, &owner, &capsule.spec, &children).await?
                }
                gate::Gated::Held(record) => {
                    held = Some(record.clone());
                    gate_record = Some(record);
                    Applied::default()
                }
            }
        }
        _ => Applied::default(),
    };

    // Assess (pure) what the Deployment reports: as our apply left it, or
    // as the cache has it.
    let workload = match &applied.deployment {
        Some(d) => Workload::from_deployment(Some(d)),
        None => Workload::from_deployment(ctx.deployment(&key).as_deref()),
    };
    ctx.seen(&key, &workload);
    let mut assessment = assess_applied(&inst, &decision, &workload, &applied);
    if let Some(record) = &held {
        assessment.gated(record);
    }
    let current_revision = applied
        .revision
        .or(inst.status.as_ref().and_then(|s| s.current_revision));
    let previous_available = inst.status.as_ref().and_then(|s| s.available_revision);

    // Act on the automatic-rollback decision (pure).
    let mut last_rollback = last_rollback(&inst);
    let plan = rollback_decision(
        &inst.spec,
        &workload,
        current_revision,
        previous_available,
        last_rollback.as_ref(),
    );
    if let Some(plan) = plan {
        last_rollback = Some(roll_back(&ctx, &inst, plan).await?);
    }

    // Report: Events on transitions a person cares about, and status.
    let observed = InstallationStatus {
        observed_generation: inst.metadata.generation,
        phase: Some(assessment.phase),
        conditions: vec![], // the assessment's, merged by `report`
        current_revision,
        ready_replicas: Some(workload.ready),
        available_revision: available_revision(&decision, &workload, current_revision, previous_available),
        active_region: Some(region),
        last_rollback,
        gate: gate_record,
    };
    report(&ctx, &inst, &key, &assessment.conditions, observed).await?;
    if let Some(e) = applied.failed {
        return Err(e);
    }
    // While a rollout is under way, look again soon; a refused child is
    // tried again in 5 minutes (a quota may have grown). Otherwise rely on
    // watches, and look again after an hour for whatever one may have missed
    // (a delete while it was down): from the caches, sending no request
    // when the children are as applied.
    let evaluating = held.as_ref().is_some_and(|r| r.phase == GatePhase::Evaluating);
    let next = if evaluating {
        gate::POLL_SECONDS
    } else if applied.refused.is_some() {
        300
    } else if assessment.phase == InstallationPhase::Ready {
        3600
    } else {
        10
    };
    Ok(Action::requeue(Duration::from_secs(next)))
}

/// The effective policy's ceilings, used as limits a capsule did not set.
#[derive(Clone, Copy, Debug, Default)]
struct Ceilings<'a> {
    cpu: Option<&'a str>,
    memory: Option<&'a str>,
}

/// Pure: the children wanted for `capsule`, within the `ceilings` of the
/// governing bundles; none run while a kill switch is engaged.
fn build(
    inst: &Installation,
    key: &ObjectKey,
    owner: OwnerReference,
    capsule: &CapsuleSpec,
    region: &str,
    eval: &Evaluation,
    ceilings: &Ceilings<'_>,
) -> Result<render::Children> {
    render::render(&render::Input {
        installation: inst,
        key,
        owner,
        capsule,
        region,
        stopped: !eval.kill_switch.is_empty(),
        max_cpu: ceilings.cpu,
        max_memory: ceilings.memory,
    })
}

/// Applies the children and records the revision of what was applied
/// (with an Event when it is new), unless the very same children were
/// applied a moment ago ([`unchanged`]). A refused or failed child is kept
/// to report; any other error ends the reconcile.
async fn apply_children(
    ctx: &InstallationContext,
    inst: &Installation,
    key: &ObjectKey,
    owner: &OwnerReference,
    capsule: &CapsuleSpec,
    children: &render::Children,
) -> Result<Applied> {
    let digest = children.digest(inst.metadata.generation)?;
    if let Some(revision) = ctx.unchanged(key, &digest) {
        return Ok(Applied {
            revision: Some(revision),
            ..Applied::default()
        });
    }
    let (deployment, others) = match provision(ctx, key, children).await {
        Ok(applied) => applied,
        // Reported in status (and as an Event); no revision is recorded
        // for what was not applied.
        Err(e @ Error::ChildRefused { .. }) => {
            return Ok(Applied {
                refused: Some(e.to_string()),
                ..Applied::default()
            });
        }
        // Shown too, then retried with backoff.
        Err(e @ Error::ChildFailed { .. }) => {
            return Ok(Applied {
                failed: Some(e),
                ..Applied::default()
            });
        }
        Err(e) => return Err(e),
    };
    let (number, created) = revisions::record(
        &ctx.client,
        inst,
        key,
        owner,
        &children.revision_hash,
        &capsule.image,
    )
    .await?;
    if created {
        let note = format!("revision {number}: {} {}", capsule.package, capsule.version);
        ctx.event(inst, EventType::Normal, "RevisionCreated", "Provision", note)
            .await;
    }
    let provisioned = Provisioned {
        digest,
        deployment_generation: deployment.metadata.generation,
        revision: number,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        children: others,
        drift: Default::default(),
    };
    ctx.remember(key, provisioned);
    Ok(Applied {
        revision: Some(number),
        deployment: Some(deployment),
        ..Applied::default()
    })
}

/// Applies every wanted child and prunes the optional ones no longer
/// wanted; the Deployment as the apply left it, and the other children.
async fn provision(
    ctx: &Context,
    key: &ObjectKey,
    children: &render::Children,
) -> Result<(Deployment, BTreeMap<ChildKind, AppliedChild>)> {
    // Destructured without `..` on purpose (Stackable's KubernetesResources
    // pattern): a child added to `Children` but not applied here is a
    // compile error, so no rendered child can be forgotten.
    let render::Children {
        service_account,
        config_map,
        deployment,
        service,
        network_policy,
        autoscaler,
        disruption_budget,
        revision_hash: _,
    } = children;
    let (client, namespace) = (&ctx.client, key.namespace.as_str());
    let mut applied = BTreeMap::new();
    let mut keep = |kind, meta: Option<&ObjectMeta>| {
        // Nothing to judge later events by without a name and version.
        let child = meta.and_then(|m| {
            Some(AppliedChild {
                name: m.name.clone()?,
                version: drift::Version::of(m)?,
            })
        });
        if let Some(child) = child {
            applied.insert(kind, child);
        }
    };
    let sa = apply::apply_object(client, namespace, service_account).await?;
    keep(ChildKind::ServiceAccount, Some(&sa.metadata));
    let cm = apply::apply_object(client, namespace, config_map).await?;
    keep(ChildKind::ConfigMap, Some(&cm.metadata));
    let np = apply::apply_object(client, namespace, network_policy).await?;
    keep(ChildKind::NetworkPolicy, Some(&np.metadata));
    let svc = apply_or_prune(ctx, key, service.as_ref()).await?;
    keep(ChildKind::Service, svc.as_ref().map(|c| &c.metadata));
    let deployment = apply::apply_object(client, namespace, deployment).await?;
    let hpa = apply_or_prune(ctx, key, autoscaler.as_ref()).await?;
    keep(
        ChildKind::HorizontalPodAutoscaler,
        hpa.as_ref().map(|c| &c.metadata),
    );
    let pdb = apply_or_prune(ctx, key, disruption_budget.as_ref()).await?;
    keep(ChildKind::PodDisruptionBudget, pdb.as_ref().map(|c| &c.metadata));
    Ok((deployment, applied))
}

/// Applies an optional child (named after the Installation) when wanted,
/// deletes it (if ours) when not; the child as the apply left it.
async fn apply_or_prune<K>(ctx: &Context, key: &ObjectKey, child: Option<&K>) -> Result<Option<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    match child {
        Some(obj) => Ok(Some(apply::apply_object(&ctx.client, &key.namespace, obj).await?)),
        None => {
            if apply::delete_if_owned::<K>(&ctx.client, &key.namespace, &key.name, &key.uid).await? {
                tracing::info!(kind = %K::kind(&()), name = %key.name, "pruned a child that is no longer wanted");
            }
            Ok(None)
        }
    }
}

/// Pure: the assessment, with what applying the children met.
fn assess_applied(
    inst: &Installation,
    decision: &CapsuleUse,
    workload: &Workload,
    applied: &Applied,
) -> Assessment {
    let was_available = conditions::find(inst.conditions(), "Available").is_some_and(|c| c.status == "True");
    let mut assessment = assess(decision, workload, inst.spec.paused, was_available);
    if let Some(why) = &applied.refused {
        assessment.refused(why);
    }
    if let Some(e) = &applied.failed {
        assessment.failed(&e.to_string());
    }
    assessment
}

/// Pure: the newest revision fully rolled out and Available: the current
/// one once it is, else the one recorded before.
pub fn available_revision(
    decision: &CapsuleUse,
    workload: &Workload,
    current: Option<i64>,
    previous_available: Option<i64>,
) -> Option<i64> {
    match (decision, workload.rolled_out() && workload.available) {
        (CapsuleUse::Allowed(_), true) => current,
        _ => previous_available,
    }
}

/// The last rollback: the record a rollback wrote with the restored spec,
/// else the one status holds.
pub fn last_rollback(inst: &Installation) -> Option<RollbackRecord> {
    inst.annotations()
        .get(LAST_ROLLBACK_ANNOTATION)
        .and_then(|a| serde_json::from_str::<RollbackRecord>(a).ok())
        .or_else(|| inst.status.as_ref().and_then(|s| s.last_rollback.clone()))
}

/// An automatic rollback to make: from the current revision, which never
/// became Available, to the last one that was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackPlan {
    pub from: i64,
    pub to: i64,
    /// Why, for people (the rollback record and the `RolledBack` Event).
    pub reason: String,
}

/// Pure: whether to roll `current` back automatically, and where to. Only
/// when `spec` asks for it and is not paused, the rollout of the current
/// Deployment spec (`workload.observed`) stalled past its deadline, an
/// earlier revision was Available, and the last rollback did not already
/// go there from an earlier revision.
pub fn rollback_decision(
    spec: &InstallationSpec,
    workload: &Workload,
    current: Option<i64>,
    previous_available: Option<i64>,
    last: Option<&RollbackRecord>,
) -> Option<RollbackPlan> {
    let auto = spec.upgrade.as_ref().is_some_and(|u| u.auto_rollback);
    // Only a verdict on the current Deployment spec counts.
    let stalled = workload.observed && workload.deadline_exceeded && !workload.rolled_out();
    let (current, target) = (current?, previous_available?);
    if !auto || !stalled || spec.paused || target == current || already_rolled_back(last, current, target) {
        return None;
    }
    let deadline = spec
        .upgrade
        .as_ref()
        .map(|u| u.progress_deadline_seconds)
        .unwrap_or(600);
    Some(RollbackPlan {
        from: current,
        to: target,
        reason: format!(
            "revision {current} ({} {}) was not Available within {deadline}s; rolled back to revision {target}",
            spec.capsule.package, spec.capsule.version
        ),
    })
}

/// True when the last rollback already went to `target` and `current` came
/// after it: rolling back again would loop (the target itself does not get
/// Available), so the Installation stays Degraded for a person to look at.
pub fn already_rolled_back(last: Option<&RollbackRecord>, current: i64, target: i64) -> bool {
    last.is_some_and(|r| r.to_revision == target && current > r.from_revision)
}

/// Makes the automatic rollback `plan` and says so in a `RolledBack` Event.
async fn roll_back(ctx: &Context, inst: &Installation, plan: RollbackPlan) -> Result<RollbackRecord> {
    let record = rollback(&ctx.client, inst, plan.to, "Automatic", &plan.reason).await?;
    ctx.event(inst, EventType::Warning, "RolledBack", "Rollback", plan.reason)
        .await;
    Ok(record)
}

/// Writes the status: `observed` with the conditions of the assessment
/// merged into the current ones; Events for the transitions among them.
async fn report(
    ctx: &Context,
    inst: &Installation,
    key: &ObjectKey,
    conditions: &[Desired],
    mut observed: InstallationStatus,
) -> Result<()> {
    let (health, stalled) = health(&observed, conditions);
    let mut conditions = conditions.to_vec();
    conditions.extend(stalled);
    observed.conditions = conditions::merge_with_health(
        inst.conditions(),
        &conditions,
        health,
        inst.metadata.generation,
        &status::now(),
    );
    announce(ctx, inst, &observed.conditions).await;
    let api: Api<Installation> = Api::namespaced(ctx.client.clone(), &key.namespace);
    status::apply_if_changed(&api, inst, inst.status.as_ref(), serde_json::to_value(&observed)?).await
}

/// Pure: how GitOps tools read an Installation (and, when it is stalled in
/// words other than `Ready`'s, its `Stalled` condition). A finished
/// automatic rollback (the restored revision Ready) is Stalled until the
/// spec changes again: the revision the rollback wrote (the one after the
/// failed one) is still current, and the upgrade it undid needs a person;
/// while the rollback rolls out, it is Progressing like any rollout. A rollout, or a write being retried,
/// is Progressing; a paused rollout, a kill switch and a Capsule not (yet)
/// usable wait for someone else; a policy violation, a refused child and a
/// missed progress deadline stay until something changes: Stalled.
pub fn health(observed: &InstallationStatus, conditions: &[Desired]) -> (Health, Option<Desired>) {
    let Some(ready) = conditions.iter().find(|d| d.type_ == "Ready") else {
        return (Health::Progressing, None);
    };
    let rolled_back = observed.last_rollback.as_ref().filter(|r| {
        ready.status == Status::True
            && r.trigger == "Automatic"
            && observed.current_revision == Some(r.from_revision + 1)
    });
    if let Some(r) = rolled_back {
        let message = format!("{}; change the spec to try again", r.reason);
        return (
            Health::Stalled,
            Some(Desired::new("Stalled", Status::True, "RolledBack", message)),
        );
    }
    let health = match (ready.status, ready.reason) {
        (Status::True, _) => Health::Current,
        (_, "RollingOut") if observed.phase == Some(InstallationPhase::Suspended) => Health::Waiting,
        (_, "KillSwitchEngaged" | "CapsuleNotFound" | "CapsuleUnusable") => Health::Waiting,
        (_, "ProgressDeadlineExceeded" | "PolicyViolation" | "ChildRejected" | "UpgradeRejected") => {
            Health::Stalled
        }
        _ => Health::Progressing,
    };
    (health, None)
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
    let key = &ObjectKey::of(inst)?;
    let history = revisions::list(client, key).await?;
    let Some(data) = history
        .iter()
        .find(|r| r.number == target)
        .and_then(|r| r.data.clone())
    else {
        return Err(Error::RevisionNotFound(target));
    };
    let api: Api<Installation> = Api::namespaced(client.clone(), &key.namespace);
    let mut latest = api.get(&key.name).await?;
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
    api.replace(&key.name, &params, &latest).await?;
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
mod golden;
#[cfg(test)]
mod tests;
