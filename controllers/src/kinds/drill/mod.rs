//! `DrDrill` controller: a resumable state machine
//! Validate → Snapshot → Inject → Failover → Verify → Restore → Report.
//!
//! Every step is written to `status.run` and `status.timeline` before it
//! acts, so an operator restarted at any point resumes the run or restores.
//! The pure decisions are in [`logic`] (schedule, validation, recovery,
//! verdict, summary) and [`steps`] (the transitions, [`steps::next`]); this
//! module reads what they look at and performs the effects they ask for.
//!
//! How an outage is made:
//! - `RegionOutage`, `scope: Installation`: the Installation is annotated
//!   `somastack.io/unavailable-regions`; its Deployment then excludes the
//!   region and, while it runs there, uses the `Recreate` strategy, so its
//!   pods there stop at once and cannot return.
//! - `RegionOutage`, `scope: Region`: every node of the region is tainted
//!   `somastack.io/drill-outage=<drill uid>:NoExecute`; Kubernetes' taint
//!   manager evicts everything there, as a real outage would.
//! - `PodLoss`: the Installation's pods are deleted; it recovers in place.
//!
//! Failover sets `somastack.io/active-region` (which the Installation
//! controller honours only for one of its `failoverRegions`, and which the
//! admission webhook judges against residency). Restore removes taints and
//! annotations. The drill's annotations are written with a field manager of
//! its own, which is also the lock: one drill acts on an Installation at a time.

pub mod logic;
pub mod steps;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::drill::{
    ActiveRun, DISRUPT_VERB, DrDrillStatus, DrillPhase, DrillRun, REQUESTER_ANNOTATION, Verdict,
};
use somastack_crds::installation::{
    ACTIVE_REGION_ANNOTATION, DRILL_LOCK_ANNOTATION, UNAVAILABLE_REGIONS_ANNOTATION,
};
use somastack_crds::{DrDrill, Installation};

use crate::access::{self, Requester};
use crate::apply::ApiResultExt;
use crate::conditions::{self, Desired, Status};
use crate::domain::capsules::{self, CapsuleUse, may_install};
use crate::domain::regions::REGION_LABEL;
use crate::runtime::Context;
use crate::shards::admits;
use crate::status::{self, HasConditions};
use crate::{Error, INSTALLATION_LABEL, Result};
use logic::PodView;
use steps::{Acted, Effect, Finished, Observations, Then, Transition};

/// Held while a run may have changed something that must be restored.
pub const FINALIZER: &str = "somastack.io/drill-restore";
/// Taint key of a `scope: Region` outage; the value is the drill's uid.
pub const TAINT_KEY: &str = "somastack.io/drill-outage";

/// The DrDrill controller, for the drills of this operator's shard
/// (`--drill-selector`): reconciled on their own changes and when the
/// Installation they target changes.
pub fn controller(ctx: &Arc<Context>) -> Controller<DrDrill> {
    let shard = ctx.shards.drills.clone();
    let drills = ctx.caches.drills.clone();
    let events = &ctx.caches;
    ctx.controller(events.drills.applied(), &events.drills, move |d| {
        admits(shard.as_ref(), d.labels())
    })
    .watches_shared_stream(events.installations.touched(), move |inst| {
        let ns = inst.namespace();
        drills.refs(|d| d.namespace() == ns && d.spec.installation_ref.name == inst.name_any())
    })
}

/// The field manager of one drill's writes to its Installation.
fn manager(drill: &DrDrill) -> String {
    let mut m = format!("somastack-drill.{}", drill.name_any());
    m.truncate(128);
    m
}

/// The state of an Installation's drill lock, as one drill sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lock {
    Free,
    Ours,
    /// Another drill runs on the Installation.
    Held(String),
    /// The annotation names a drill that is not running on it; the
    /// Installation's resourceVersion when that was seen.
    Stale(String, String),
}

/// Everything one reconcile of a drill works with: what the API server
/// always sets on the drill, dereferenced once, and the status being written.
struct DrillReconcile<'a> {
    drill: &'a DrDrill,
    ctx: &'a Context,
    namespace: String,
    /// The drill's uid: the value of its `scope: Region` taint.
    uid: String,
    created: Timestamp,
    installations: Api<Installation>,
    status: DrDrillStatus,
    now: Timestamp,
}

pub async fn reconcile(drill: Arc<DrDrill>, ctx: Arc<Context>) -> Result<Action> {
    if !admits(ctx.shards.drills.as_ref(), drill.labels()) {
        // Another operator's shard.
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    let mut drill_reconcile = DrillReconcile::new(&drill, &ctx)?;
    let action = match drill_reconcile.status.run.clone() {
        Some(run) => drill_reconcile.advance(run).await,
        None if drill_reconcile.deleting() => Ok(Action::await_change()),
        None => drill_reconcile.maybe_start().await,
    };
    drill_reconcile.write_status().await?;
    let action = action?;
    if drill_reconcile.status.run.is_none() && drill.finalizers().iter().any(|f| f == FINALIZER) {
        drill_reconcile.finalizer(false).await?;
    }
    Ok(action)
}

impl<'a> DrillReconcile<'a> {
    /// Dereferences what the API server always sets on a drill.
    fn new(drill: &'a DrDrill, ctx: &'a Context) -> Result<Self> {
        let namespace = drill
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let uid = drill.uid().ok_or(Error::MissingField("metadata.uid"))?;
        let created = drill
            .metadata
            .creation_timestamp
            .as_ref()
            .ok_or(Error::MissingField("metadata.creationTimestamp"))?
            .0;
        Ok(DrillReconcile {
            drill,
            ctx,
            installations: Api::namespaced(ctx.client.clone(), &namespace),
            namespace,
            uid,
            created,
            status: drill.status.clone().unwrap_or_default(),
            now: Timestamp::now(),
        })
    }

    fn deleting(&self) -> bool {
        self.drill.metadata.deletion_timestamp.is_some()
    }

    /// Advances a run in progress by what can be done now: reads what
    /// [`steps::next`] looks at, records its decision, performs its effects;
    /// a step that acted looks again once, in this reconcile.
    async fn advance(&mut self, mut run: ActiveRun) -> Result<Action> {
        let mut acted = Acted::Nothing;
        for _ in 0..2 {
            let t = self.observe_and_step(&run, acted).await?;
            self.status.timeline = t.timeline;
            if let Some(wait) = t.waiting {
                self.set_phase(DrillPhase::Running, Status::Unknown, "WaitingForTarget", wait);
            }
            if let Some(rto) = t.measured_rto_seconds {
                self.status.measured_rto_seconds = Some(rto);
            }
            run = t.run;
            self.status.run = Some(run.clone());
            acted = self.perform(t.effects).await?;
            if let Some(finished) = t.finished {
                self.conclude(&run, finished).await;
            }
            if let Then::Requeue(after) = t.then {
                return Ok(Action::requeue(after));
            }
        }
        Ok(Action::requeue(Duration::ZERO))
    }

    /// Reads what [`steps::next`] looks at for `run`, and asks it.
    async fn observe_and_step(&self, run: &ActiveRun, acted: Acted) -> Result<Transition> {
        let spec = &self.drill.spec;
        let reads = steps::reads(run, spec, self.deleting(), &acted, self.now);
        let installation = match reads.installation {
            true => self.installations.get_opt(&spec.installation_ref.name).await?,
            false => None,
        };
        let pods = match reads.pods {
            true => self.pods().await?,
            false => vec![],
        };
        let (bundles, capsules) = match &installation {
            Some(_) => (
                self.ctx.governing_bundles(&self.namespace),
                self.ctx.caches.capsules.state(),
            ),
            None => (vec![], vec![]),
        };
        let judge = |region: &str| match &installation {
            Some(inst) => may_install(
                inst,
                &capsules::resolve(&capsules, &inst.spec.capsule),
                &bundles,
                region,
            ),
            None => CapsuleUse::CapsuleNotFound,
        };
        let seen = Observations {
            spec,
            drill_created: self.created,
            deleting: self.deleting(),
            timeline: &self.status.timeline,
            installation: installation.as_ref(),
            judge: &judge,
            pods: &pods,
            acted,
        };
        Ok(steps::next(run, &seen, self.now))
    }

    /// Performs a transition's effects, in order.
    async fn perform(&self, effects: Vec<Effect>) -> Result<Acted> {
        let mut acted = Acted::Done;
        for effect in effects {
            match effect {
                Effect::Finding(finding) => {
                    self.ctx
                        .event(
                            self.drill,
                            EventType::Warning,
                            "DrillFinding",
                            "Validate",
                            finding,
                        )
                        .await
                }
                Effect::Annotate {
                    unavailable,
                    active_region,
                } => {
                    self.annotate(unavailable.as_deref(), active_region.as_deref())
                        .await?
                }
                Effect::Taint(region) => self.taint_region(&region).await?,
                Effect::DeletePods(names) => self.delete_pods(&names).await?,
                Effect::Failover { unavailable, to } => {
                    if let Err(e) = self.annotate(unavailable.as_deref(), Some(&to)).await {
                        acted = Acted::FailoverRefused(e.to_string());
                    }
                }
                Effect::Untaint => self.untaint().await?,
                Effect::Unlock { active_region } => self.unlock(active_region.as_deref()).await?,
            }
        }
        Ok(acted)
    }

    async fn maybe_start(&mut self) -> Result<Action> {
        let last = self.status.last_run_time.as_ref().map(|t| t.0);
        // A run asked for on demand (`drills.somastack.io/run`) starts now, once.
        let requested = logic::run_requested(self.drill.annotations(), self.status.run_request.as_deref())
            .filter(|_| !self.drill.spec.suspend)
            .map(str::to_string);
        let start = match requested {
            Some(_) => Ok(logic::Start::Now { scheduled_for: None }),
            None => logic::should_start(
                &self.drill.spec,
                self.created,
                last,
                !self.status.history.is_empty(),
                self.now,
            ),
        };
        match start {
            Err(e) => {
                self.set_phase(DrillPhase::Failed, Status::False, "InvalidSchedule", e);
                Ok(Action::await_change())
            }
            Ok(logic::Start::Never) => {
                if self.drill.spec.suspend {
                    self.set_phase(
                        DrillPhase::Suspended,
                        Status::Unknown,
                        "Suspended",
                        "suspended: no run starts until spec.suspend is false".into(),
                    );
                    self.status.next_run_time = None;
                }
                Ok(Action::await_change())
            }
            Ok(logic::Start::At(next)) => {
                self.status.next_run_time = Some(logic::time(next));
                if self.status.history.is_empty() {
                    self.set_phase(
                        DrillPhase::Scheduled,
                        Status::Unknown,
                        "Scheduled",
                        format!("first run at {next}"),
                    );
                } else {
                    self.status.phase = Some(DrillPhase::Scheduled);
                }
                let wait = logic::seconds(self.now, next).clamp(1.0, 3600.0);
                Ok(Action::requeue(Duration::from_secs_f64(wait)))
            }
            Ok(logic::Start::Now { scheduled_for }) => match self.authorized().await? {
                Ok(()) => {
                    let action = self.start(scheduled_for).await;
                    if self.status.run.is_some() && requested.is_some() {
                        self.status.run_request = requested;
                    }
                    action
                }
                Err(why) => {
                    self.not_authorized(why).await;
                    // A change of the spec records a new requester.
                    Ok(Action::await_change())
                }
            },
        }
    }

    /// Says why no run starts (with an Event the first time).
    async fn not_authorized(&mut self, why: String) {
        if self
            .drill
            .conditions()
            .iter()
            .all(|c| c.reason != "NotAuthorized")
        {
            self.ctx
                .event(
                    self.drill,
                    EventType::Warning,
                    "NotAuthorized",
                    "Start",
                    why.clone(),
                )
                .await;
        }
        self.set_phase(DrillPhase::Failed, Status::False, "NotAuthorized", why);
        self.status.next_run_time = None;
    }

    /// Whether the user who asked for this drill (stamped at admission) may
    /// run it as it stands: within the tenant bounds anyone who may create
    /// the drill may; beyond them only a user with the verb `disrupt` on
    /// drdrills in this namespace, asked again before every run (rights
    /// revoked since stop a schedule).
    async fn authorized(&self) -> Result<std::result::Result<(), String>> {
        let reasons = crate::domain::drills::beyond_tenant_bounds(&self.drill.spec, self.now);
        if reasons.is_empty() {
            return Ok(Ok(()));
        }
        let needs = format!(
            "{}; that needs the RBAC verb '{DISRUPT_VERB}' on drdrills.somastack.io in namespace {}",
            reasons.join("; "),
            self.namespace
        );
        let Some(requester) = Requester::parse(self.drill.annotations().get(REQUESTER_ANNOTATION)) else {
            return Ok(Err(format!(
                "nothing runs: no requester is recorded on the drill (it was not admitted by the operator's webhook), and {needs}"
            )));
        };
        let action = access::Action {
            verb: DISRUPT_VERB,
            plural: "drdrills",
            namespace: Some(&self.namespace),
            name: self.drill.metadata.name.as_deref(),
        };
        let groups = Some(requester.groups.clone());
        if access::may(&self.ctx.client, &requester.user, groups, None, None, action).await? {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "nothing runs: {} asked for this drill, and {needs}",
                requester.user
            )))
        }
    }

    /// Takes the Installation's lock and opens a run.
    async fn start(&mut self, scheduled_for: Option<Timestamp>) -> Result<Action> {
        let target = &self.drill.spec.installation_ref.name;
        let installation = self.installations.get_opt(target).await?;
        if installation.is_none()
            && let Some(wait) = logic::settling(&self.drill.spec, None, self.created, self.now)
        {
            self.set_phase(DrillPhase::Waiting, Status::Unknown, "WaitingForTarget", wait);
            return Ok(Action::requeue(steps::SETTLE_TICK));
        }
        let lock = self.lock_state(installation.as_ref()).await?;
        if let Lock::Held(holder) = &lock {
            self.set_phase(
                DrillPhase::Waiting,
                Status::Unknown,
                "WaitingForInstallation",
                format!("DrDrill {holder} is acting on Installation {target}; this run starts when it ends"),
            );
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        // The finalizer comes before anything can be injected.
        self.finalizer(true).await?;
        if !self.lock(installation.as_ref(), &lock).await? {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        if let Lock::Stale(holder, _) = &lock {
            self.ctx
                .event(
                    self.drill,
                    EventType::Normal,
                    "StaleLockTaken",
                    "Start",
                    format!(
                        "Installation {target} named {holder:?} as its drill, which is not running a drill on it (missing or finished); the lock was taken over"
                    ),
                )
                .await;
        }
        steps::open(&mut self.status, target, scheduled_for, self.now);
        self.set_phase(
            DrillPhase::Running,
            Status::Unknown,
            "Running",
            format!(
                "{:?} drill of Installation {target} running",
                self.drill.spec.scenario
            ),
        );
        self.ctx
            .event(
                self.drill,
                EventType::Normal,
                "DrillStarted",
                "Start",
                format!(
                    "{:?} drill of Installation {target} started",
                    self.drill.spec.scenario
                ),
            )
            .await;
        Ok(Action::requeue(Duration::ZERO))
    }

    /// Records a finished run: its history entry, verdict and RTO, the
    /// drill's condition, a metric and an Event.
    async fn conclude(&mut self, run: &ActiveRun, finished: Finished) {
        let Finished {
            verdict,
            message,
            rto_seconds: rto,
        } = finished;
        logic::push_history(
            &mut self.status.history,
            DrillRun {
                start: run.start.clone(),
                end: Some(logic::time(self.now)),
                verdict: Some(verdict),
                measured_rto_seconds: rto,
                message: message.clone(),
            },
            self.drill.spec.history_limit,
        );
        self.status.verdict = Some(verdict);
        self.status.measured_rto_seconds = rto;
        self.status.run = None;
        self.status.current_step = None;
        let (phase, st, reason, event) = match verdict {
            Verdict::Pass => (
                DrillPhase::Succeeded,
                Status::True,
                "DrillPassed",
                EventType::Normal,
            ),
            Verdict::Fail => (
                DrillPhase::Failed,
                Status::False,
                "DrillFailed",
                EventType::Warning,
            ),
        };
        self.set_phase(phase, st, reason, message.clone());
        self.ctx.metrics.drill_finished(
            &self.namespace,
            &self.drill.name_any(),
            verdict == Verdict::Pass,
            rto,
        );
        self.ctx.event(self.drill, event, reason, "Report", message).await;
    }

    fn set_phase(&mut self, phase: DrillPhase, st: Status, reason: &'static str, message: String) {
        self.status.phase = Some(phase);
        let (ready, health) = logic::readiness(phase, reason, &message);
        let desired = [Desired::new("Succeeded", st, reason, message), ready];
        self.status.conditions = conditions::merge_with_health(
            self.drill.conditions(),
            &desired,
            health,
            self.drill.metadata.generation,
            &logic::time(self.now),
        );
    }

    async fn write_status(&mut self) -> Result<()> {
        self.status.observed_generation = self.drill.metadata.generation;
        if self.status.conditions.is_empty() {
            self.status.conditions = self.drill.conditions().to_vec();
        }
        if let Some(r) = &self.status.run {
            self.status.current_step = Some(r.step);
        }
        let api: Api<DrDrill> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let body = serde_json::to_value(&self.status)?;
        status::apply_if_changed(&api, self.drill, self.drill.status.as_ref(), body).await
    }

    /// Who holds the Installation's lock. A lock is held only by a drill of
    /// this namespace that exists, targets this Installation and has a run
    /// (its restore finalizer, set before it locks, or `status.run`); one
    /// naming a missing or finished drill, or written by someone else, is
    /// stale and never blocks a drill.
    async fn lock_state(&self, installation: Option<&Installation>) -> Result<Lock> {
        let target = &self.drill.spec.installation_ref.name;
        let Some(inst) = installation else {
            return Ok(Lock::Free);
        };
        let Some(holder) = inst.annotations().get(DRILL_LOCK_ANNOTATION).cloned() else {
            return Ok(Lock::Free);
        };
        if holder == self.drill.name_any() {
            return Ok(Lock::Ours);
        }
        let drills: Api<DrDrill> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let live = match drills.get_opt(&holder).await {
            Ok(Some(d)) => {
                &d.spec.installation_ref.name == target
                    && (d.finalizers().iter().any(|f| f == FINALIZER)
                        || d.status.as_ref().is_some_and(|s| s.run.is_some()))
            }
            Ok(None) => false,
            // A name that is not a valid object name cannot be a drill.
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        Ok(if live {
            Lock::Held(holder)
        } else {
            let version = inst
                .resource_version()
                .ok_or(Error::MissingField("metadata.resourceVersion"))?;
            Lock::Stale(holder, version)
        })
    }

    /// Takes the lock: the annotation, applied without force, so another
    /// drill's manager holding it makes this a conflict. Over a stale lock
    /// ([`DrillReconcile::lock_state`]) it is forced, but only on the
    /// Installation as it was seen: of two drills taking over at once, one
    /// gets a conflict.
    async fn lock(&self, installation: Option<&Installation>, state: &Lock) -> Result<bool> {
        let name = &self.drill.spec.installation_ref.name;
        if installation.is_none() {
            // Nothing to lock: validation reports the missing target.
            return Ok(true);
        }
        let mut patch = json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": name, "annotations": { DRILL_LOCK_ANNOTATION: self.drill.name_any() } },
        });
        let mut params = PatchParams::apply(&manager(self.drill));
        if let Lock::Stale(_, version) = state {
            patch["metadata"]["resourceVersion"] = json!(version);
            params.force = true;
        }
        Ok(self
            .installations
            .patch(name, &params, &Patch::Apply(&patch))
            .await
            .ok_if_conflict()?
            .is_some())
    }

    /// Releases the lock, leaving only the active region the run ends with
    /// (the snapshot's, or the failover region with `restore: false`).
    async fn unlock(&self, active_region: Option<&str>) -> Result<()> {
        self.annotate_all(None, active_region, false).await
    }

    /// Sets the drill's annotations on the Installation (keeping the lock).
    async fn annotate(&self, unavailable: Option<&str>, active_region: Option<&str>) -> Result<()> {
        self.annotate_all(unavailable, active_region, true).await
    }

    async fn annotate_all(
        &self,
        unavailable: Option<&str>,
        active: Option<&str>,
        locked: bool,
    ) -> Result<()> {
        let name = &self.drill.spec.installation_ref.name;
        if self.installations.get_opt(name).await?.is_none() {
            return Ok(());
        }
        let mut annotations = serde_json::Map::new();
        if locked {
            annotations.insert(DRILL_LOCK_ANNOTATION.into(), json!(self.drill.name_any()));
        }
        if let Some(u) = unavailable {
            annotations.insert(UNAVAILABLE_REGIONS_ANNOTATION.into(), json!(u));
        }
        if let Some(a) = active {
            annotations.insert(ACTIVE_REGION_ANNOTATION.into(), json!(a));
        }
        self.installations
            .patch(
                name,
                &PatchParams::apply(&manager(self.drill)).force(),
                &Patch::Apply(&annotations_patch(name, annotations)),
            )
            .await?;
        Ok(())
    }

    /// Adds or removes the restore finalizer (JSON patch guarded by a
    /// `test`, so it needs no resourceVersion: status writes bump it).
    async fn finalizer(&self, add: bool) -> Result<()> {
        let api: Api<DrDrill> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        // Fresh: the cached object may predate the last write.
        let Some(fresh) = api.get_opt(&self.drill.name_any()).await? else {
            return Ok(());
        };
        let current = fresh.finalizers();
        let at = current.iter().position(|f| f == FINALIZER);
        let ops = match (add, at) {
            (true, Some(_)) | (false, None) => return Ok(()),
            (true, None) if current.is_empty() => json!([
                { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
            ]),
            (true, None) => json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }]),
            (false, Some(i)) => json!([
                { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER },
                { "op": "remove", "path": format!("/metadata/finalizers/{i}") }
            ]),
        };
        let patch: json_patch::Patch = serde_json::from_value(ops)?;
        api.patch(
            &self.drill.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        Ok(())
    }

    async fn taint_region(&self, region: &str) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let lp = ListParams::default().labels(&format!("{REGION_LABEL}={region}"));
        for node in nodes.list(&lp).await? {
            let mut taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if taints.iter().any(|t| t.key == TAINT_KEY) {
                continue;
            }
            taints.push(k8s_openapi::api::core::v1::Taint {
                key: TAINT_KEY.into(),
                value: Some(self.uid.clone()),
                effect: "NoExecute".into(),
                time_added: None,
            });
            self.set_taints(&nodes, &node, taints).await?;
        }
        Ok(())
    }

    /// Removes this drill's taint from every node that carries it.
    async fn untaint(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        for node in nodes.list(&ListParams::default()).await? {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let kept: Vec<_> = taints
                .iter()
                .filter(|t| !(t.key == TAINT_KEY && t.value.as_deref() == Some(self.uid.as_str())))
                .cloned()
                .collect();
            if kept.len() != taints.len() {
                self.set_taints(&nodes, &node, kept).await?;
            }
        }
        Ok(())
    }

    /// Writes a node's taints at the resourceVersion read (the node
    /// lifecycle controller writes taints too).
    async fn set_taints(
        &self,
        nodes: &Api<Node>,
        node: &Node,
        taints: Vec<k8s_openapi::api::core::v1::Taint>,
    ) -> Result<()> {
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": taints },
        });
        nodes
            .patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Deletes the named pods of the Installation (idempotent: gone is fine).
    async fn delete_pods(&self, names: &[String]) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for name in names {
            // An outage does not honour disruption budgets: delete, not evict.
            pods.delete(name, &DeleteParams::default().grace_period(0))
                .await
                .ok_if_not_found()?;
        }
        Ok(())
    }

    /// The Installation's pods, with the region of their node.
    async fn pods(&self) -> Result<Vec<PodView>> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let lp = ListParams::default().labels(&format!(
            "{INSTALLATION_LABEL}={}",
            self.drill.spec.installation_ref.name
        ));
        let regions: BTreeMap<String, String> = nodes
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter_map(|n| {
                let region = n.labels().get(REGION_LABEL).cloned()?;
                Some((n.name_any(), region))
            })
            .collect();
        pods.list(&lp)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                let ready_since = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                    .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
                let created = p
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .ok_or(Error::MissingField("metadata.creationTimestamp"))?;
                Ok(PodView {
                    name: p.name_any(),
                    region: node.and_then(|n| regions.get(&n).cloned()),
                    created: created.0,
                    ready_since,
                })
            })
            .collect()
    }
}

/// The drill's apply configuration of an Installation's annotations. With
/// none, the map itself is left out: applying `annotations: {}` would make
/// this manager own the (empty) map and conflict with the next drill.
fn annotations_patch(
    name: &str,
    annotations: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut metadata = json!({ "name": name });
    if !annotations.is_empty() {
        metadata["annotations"] = serde_json::Value::Object(annotations);
    }
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Installation", "metadata": metadata })
}
