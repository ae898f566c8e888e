//! `DrDrill` controller: a resumable state machine
//! Validate → Snapshot → Inject → Failover → Verify → Restore → Report.
//!
//! Every step is written to `status.run` and `status.timeline` before it
//! acts, so an operator restarted at any point resumes the run or restores.
//! The pure decisions (schedule, validation, recovery, verdict, summary) are
//! in [`plan`]; this module applies them.
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

pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::drill::{
    ActiveRun, DISRUPT_VERB, DrDrillStatus, DrillPhase, DrillRun, REQUESTER_ANNOTATION, Scenario, Scope,
    Verdict,
};
use somastack_crds::installation::{
    ACTIVE_REGION_ANNOTATION, DRILL_LOCK_ANNOTATION, UNAVAILABLE_REGIONS_ANNOTATION,
};
use somastack_crds::{DrDrill, Installation};

use crate::access::{self, Requester};
use crate::conditions::{self, Desired, Status};
use crate::domain::capsules::{self, CapsuleUse, may_install};
use crate::domain::regions::REGION_LABEL;
use crate::runtime::Context;
use crate::status::{self, HasConditions};
use crate::{Error, INSTALLATION_LABEL, Result};

/// Held while a run may have changed something that must be restored.
pub const FINALIZER: &str = "somastack.io/drill-restore";
/// Taint key of a `scope: Region` outage; the value is the drill's uid.
pub const TAINT_KEY: &str = "somastack.io/drill-outage";
/// How often a run in progress is looked at.
const TICK: Duration = Duration::from_secs(1);
/// Longest a restore waits for the workload to be back home.
const RESTORE_WAIT_SECS: f64 = 120.0;

/// Re-reconciles drills when the Installation they target changes.
pub fn wire(ctl: Controller<DrDrill>, ctx: &Arc<Context>) -> Controller<DrDrill> {
    let drills = ctx.caches.drills.clone();
    ctl.watches(
        Api::<Installation>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |inst| {
            let ns = inst.namespace();
            drills
                .state()
                .iter()
                .filter(|d| d.namespace() == ns && d.spec.installation_ref.name == inst.name_any())
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        },
    )
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

/// Everything one reconcile works with.
struct Run<'a> {
    drill: &'a DrDrill,
    ctx: &'a Context,
    namespace: String,
    installations: Api<Installation>,
    status: DrDrillStatus,
    now: Timestamp,
}

pub async fn reconcile(drill: Arc<DrDrill>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await?;
    let namespace = drill
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let mut run = Run {
        drill: drill.as_ref(),
        ctx: ctx.as_ref(),
        installations: Api::namespaced(ctx.client.clone(), &namespace),
        namespace,
        status: drill.status.clone().unwrap_or_default(),
        now: Timestamp::now(),
    };
    let action = run.step().await;
    run.write_status().await?;
    let action = action?;
    if run.status.run.is_none() && drill.finalizers().iter().any(|f| f == FINALIZER) {
        run.finalizer(false).await?;
    }
    Ok(action)
}

impl Run<'_> {
    /// Advances the state machine by what can be done now.
    async fn step(&mut self) -> Result<Action> {
        let deleting = self.drill.metadata.deletion_timestamp.is_some();
        let Some(mut active) = self.status.run.clone() else {
            if deleting {
                return Ok(Action::await_change());
            }
            return self.maybe_start().await;
        };

        // Abort: deleted, suspended, or out of time. Restore follows.
        if active.abort.is_none() && plan_index(&active.step) < plan_index(plan::RESTORE) {
            let elapsed = plan::seconds(active.start.0, self.now);
            let why = if deleting {
                Some("the drill was deleted".to_string())
            } else if self.drill.spec.suspend {
                Some("the drill was suspended".to_string())
            } else if elapsed > f64::from(self.drill.spec.timeout_seconds) {
                Some(format!(
                    "timed out after {}s in step {}",
                    self.drill.spec.timeout_seconds, active.step
                ))
            } else {
                None
            };
            if let Some(why) = why {
                plan::finish(&mut self.status.timeline, "Failed", self.now, Some(why.clone()));
                active.abort = Some(why);
                active.step = plan::RESTORE.into();
                self.status.run = Some(active.clone());
            }
        }

        match active.step.as_str() {
            plan::VALIDATE => self.validate(active).await,
            plan::SNAPSHOT | plan::INJECT => self.inject(active).await,
            plan::FAILOVER => self.failover(active).await,
            plan::VERIFY => self.verify(active).await,
            plan::RESTORE => self.restore(active).await,
            _ => self.report(active, None).await,
        }
    }

    fn created(&self) -> Timestamp {
        self.drill
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(self.now)
    }

    async fn maybe_start(&mut self) -> Result<Action> {
        let created = self.created();
        let last = self.status.last_run_time.as_ref().map(|t| t.0);
        let start = plan::should_start(
            &self.drill.spec,
            created,
            last,
            !self.status.history.is_empty(),
            self.now,
        );
        match start {
            Err(e) => {
                self.set_phase(DrillPhase::Failed, Status::False, "InvalidSchedule", e);
                Ok(Action::await_change())
            }
            Ok(plan::Start::Never) => {
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
            Ok(plan::Start::At(next)) => {
                self.status.next_run_time = Some(plan::time(next));
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
                let wait = plan::seconds(self.now, next).clamp(1.0, 3600.0);
                Ok(Action::requeue(Duration::from_secs_f64(wait)))
            }
            Ok(plan::Start::Now { scheduled_for }) => {
                if let Err(why) = self.authorized().await? {
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
                    // A change of the spec records a new requester.
                    return Ok(Action::await_change());
                }
                self.start(scheduled_for).await
            }
        }
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
        if self.installations.get_opt(target).await?.is_none()
            && let Some(wait) = plan::settling(&self.drill.spec, None, self.created(), self.now)
        {
            self.set_phase(DrillPhase::Waiting, Status::Unknown, "WaitingForTarget", wait);
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let lock = self.lock_state().await?;
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
        let stale = match &lock {
            Lock::Stale(holder, version) => Some((holder.clone(), version.clone())),
            _ => None,
        };
        if !self.lock(stale.as_ref().map(|(_, v)| v.as_str())).await? {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        if let Some((holder, _)) = stale {
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
        self.status.timeline.clear();
        self.status.measured_rto_seconds = None;
        self.status.verdict = None;
        self.status.last_run_time = Some(plan::time(scheduled_for.unwrap_or(self.now)));
        self.status.next_run_time = None;
        self.status.run = Some(ActiveRun {
            start: plan::time(self.now),
            scheduled_for: scheduled_for.map(plan::time),
            step: plan::VALIDATE.into(),
            target_region: String::new(),
            failover_region: None,
            home_region: String::new(),
            previous_active_region: None,
            replicas: 0,
            injected_at: None,
            recovered_at: None,
            abort: None,
            finding: None,
            lost_pods: vec![],
        });
        plan::begin(
            &mut self.status.timeline,
            plan::VALIDATE,
            self.now,
            format!("checking Installation {target}"),
        );
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

    async fn validate(&mut self, mut active: ActiveRun) -> Result<Action> {
        let inst = self
            .installations
            .get_opt(&self.drill.spec.installation_ref.name)
            .await?;
        // A target that exists but is still rolling out (the lock is held):
        // wait in Validate, bounded by timeoutSeconds. A missing one was
        // waited for before the run opened (`start`).
        let settling = inst
            .as_ref()
            .and_then(|i| plan::settling(&self.drill.spec, Some(i), self.created(), self.now));
        if let Some(wait) = settling {
            self.set_phase(DrillPhase::Running, Status::Unknown, "WaitingForTarget", wait);
            self.status.run = Some(active);
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let bundles = self.ctx.governing_bundles(&self.namespace);
        let capsules = self.ctx.capsules.state();
        let result = plan::validate(&self.drill.spec, inst.as_ref(), |region| {
            let Some(inst) = inst.as_ref() else {
                return CapsuleUse::CapsuleNotFound;
            };
            may_install(
                inst,
                &capsules::resolve(&capsules, &inst.spec.capsule),
                &bundles,
                region,
            )
        });
        match result {
            Ok(t) => {
                let msg = match &t.failover_region {
                    Some(f) => format!("outage of {} then failover to {f}: allowed", t.target_region),
                    None => format!("pods of the Installation in {} will be deleted", t.target_region),
                };
                plan::finish(&mut self.status.timeline, "Succeeded", self.now, Some(msg));
                active.target_region = t.target_region;
                active.failover_region = t.failover_region;
                active.home_region = t.home_region;
                active.previous_active_region = t.previous_active_region;
                active.replicas = t.replicas;
                plan::begin(
                    &mut self.status.timeline,
                    plan::SNAPSHOT,
                    self.now,
                    format!(
                        "home region {}, active-region annotation {}, {} replica(s)",
                        active.home_region,
                        active.previous_active_region.as_deref().unwrap_or("unset"),
                        active.replicas
                    ),
                );
                active.step = plan::SNAPSHOT.into();
                self.status.run = Some(active);
                Ok(Action::requeue(Duration::ZERO))
            }
            Err(finding) => {
                plan::finish(
                    &mut self.status.timeline,
                    "Failed",
                    self.now,
                    Some(finding.clone()),
                );
                self.ctx
                    .event(
                        self.drill,
                        EventType::Warning,
                        "DrillFinding",
                        "Validate",
                        finding.clone(),
                    )
                    .await;
                active.finding = Some(finding);
                active.step = plan::RESTORE.into();
                self.status.run = Some(active);
                Ok(Action::requeue(Duration::ZERO))
            }
        }
    }

    /// Snapshot is recorded; now inject. The injection time is written
    /// first, so a restart redoes the (idempotent) injection.
    async fn inject(&mut self, mut active: ActiveRun) -> Result<Action> {
        if active.step == plan::SNAPSHOT {
            plan::begin(
                &mut self.status.timeline,
                plan::INJECT,
                self.now,
                inject_message(&self.drill.spec.scenario, self.drill.spec.scope, &active),
            );
            active.step = plan::INJECT.into();
            active.injected_at = Some(plan::micro(self.now));
            if self.drill.spec.scenario == Scenario::PodLoss {
                active.lost_pods = self.pods().await?.into_iter().map(|p| p.name).collect();
            }
            self.status.run = Some(active);
            // Persist the intent before acting.
            return Ok(Action::requeue(Duration::ZERO));
        }
        match (self.drill.spec.scenario, self.drill.spec.scope) {
            (Scenario::RegionOutage, Scope::Installation) => {
                self.annotate(
                    Some(&active.target_region),
                    active.previous_active_region.as_deref(),
                )
                .await?;
            }
            (Scenario::RegionOutage, Scope::Region) => {
                self.annotate(None, active.previous_active_region.as_deref())
                    .await?;
                self.taint_region(&active.target_region).await?;
            }
            (Scenario::PodLoss, _) => {
                self.delete_pods(&active.lost_pods).await?;
            }
        }
        // The outage is in effect only once the Installation has no pod
        // left where it struck (the lost pods gone, for PodLoss); before
        // that, a failover could overtake it and nothing would have been
        // proven. The injection time, and so the RTO, stays where it was.
        let pods = self.pods().await?;
        let remaining = match self.drill.spec.scenario {
            Scenario::RegionOutage => pods
                .iter()
                .filter(|p| p.region.as_deref() == Some(active.target_region.as_str()))
                .count(),
            Scenario::PodLoss => pods.iter().filter(|p| active.lost_pods.contains(&p.name)).count(),
        };
        if remaining > 0 {
            return Ok(Action::requeue(TICK));
        }
        plan::finish(&mut self.status.timeline, "Succeeded", self.now, None);
        let next = match self.drill.spec.scenario {
            Scenario::RegionOutage => plan::FAILOVER,
            Scenario::PodLoss => plan::VERIFY,
        };
        if next == plan::VERIFY {
            plan::skipped(
                &mut self.status.timeline,
                plan::FAILOVER,
                self.now,
                "PodLoss recovers in place",
            );
        }
        plan::begin(&mut self.status.timeline, next, self.now, String::new());
        active.step = next.into();
        self.status.run = Some(active);
        self.status.current_step = Some(next.into());
        Ok(Action::requeue(Duration::ZERO))
    }

    async fn failover(&mut self, mut active: ActiveRun) -> Result<Action> {
        let Some(to) = active.failover_region.clone() else {
            active.step = plan::VERIFY.into();
            self.status.run = Some(active);
            return Ok(Action::requeue(Duration::ZERO));
        };
        let unavailable = match self.drill.spec.scope {
            Scope::Installation => Some(active.target_region.as_str()),
            Scope::Region => None,
        };
        if let Err(e) = self.annotate(unavailable, Some(&to)).await {
            let why = format!("failover to {to} was refused: {e}");
            plan::finish(&mut self.status.timeline, "Failed", self.now, Some(why.clone()));
            active.finding = Some(why);
            active.step = plan::RESTORE.into();
            self.status.run = Some(active);
            return Ok(Action::requeue(Duration::ZERO));
        }
        plan::finish(
            &mut self.status.timeline,
            "Succeeded",
            self.now,
            Some(format!("active region set to {to}")),
        );
        plan::begin(
            &mut self.status.timeline,
            plan::VERIFY,
            self.now,
            format!("waiting for {} ready replica(s) in {to}", active.replicas),
        );
        active.step = plan::VERIFY.into();
        self.status.run = Some(active);
        Ok(Action::requeue(Duration::ZERO))
    }

    async fn verify(&mut self, mut active: ActiveRun) -> Result<Action> {
        let injected = active.injected_at.as_ref().map(|t| t.0).unwrap_or(self.now);
        let pods = self.pods().await?;
        let region = active.failover_region.clone();
        let Some(at) = plan::recovered_at(
            &pods,
            region.as_deref(),
            active.replicas,
            injected,
            &active.lost_pods,
        ) else {
            return Ok(Action::requeue(TICK));
        };
        // Kubernetes records Ready in whole seconds (`at` is that second);
        // the operator saw it at `now`. The recovery happened in between:
        // take when it was seen, bounded by the end of the recorded second
        // (which matters when the operator was down and resumes late).
        let seen = self
            .now
            .min(at + jiff::SignedDuration::from_secs(1))
            .max(injected);
        active.recovered_at = Some(plan::micro(seen));
        let rto = plan::rto(&active).unwrap_or_default();
        self.status.measured_rto_seconds = Some(rto);
        plan::finish(
            &mut self.status.timeline,
            "Succeeded",
            self.now,
            Some(format!(
                "{} replica(s) ready{}; RTO {rto:.1}s",
                active.replicas,
                region.map(|r| format!(" in {r}")).unwrap_or_default()
            )),
        );
        active.step = plan::RESTORE.into();
        self.status.run = Some(active);
        Ok(Action::requeue(Duration::ZERO))
    }

    /// Idempotent: removes this drill's taints and annotations (keeping the
    /// failover when `restore: false` and the run was not aborted), then
    /// waits for the workload to be back.
    async fn restore(&mut self, mut active: ActiveRun) -> Result<Action> {
        let opened = self
            .status
            .timeline
            .last()
            .is_some_and(|e| e.step == plan::RESTORE && e.end.is_none());
        let go_home = self.drill.spec.restore || active.abort.is_some() || active.finding.is_some();
        if !opened {
            plan::begin(
                &mut self.status.timeline,
                plan::RESTORE,
                self.now,
                if active.injected_at.is_none() {
                    "nothing was injected; releasing the drill lock".into()
                } else if go_home {
                    format!("returning to {}", home(&active))
                } else {
                    "restore: false; removing the outage, staying failed over".into()
                },
            );
            self.status.run = Some(active);
            return Ok(Action::requeue(Duration::ZERO));
        }
        self.untaint().await?;
        let keep_failover = (!go_home).then_some(active.failover_region.clone()).flatten();
        let active_region = keep_failover.clone().or(active.previous_active_region.clone());
        self.annotate(None, active_region.as_deref()).await?;
        let final_region = active_region.clone();

        // Back when the pods run where they should again (nothing to wait
        // for when nothing was injected).
        if active.injected_at.is_some() {
            let region = active_region.unwrap_or_else(|| active.home_region.clone());
            let pods = self.pods().await?;
            let started = self.status.timeline.last().map(|e| e.start.0).unwrap_or(self.now);
            let back = plan::back_in(&pods, &region, active.replicas);
            if !back {
                if plan::seconds(started, self.now) < RESTORE_WAIT_SECS {
                    return Ok(Action::requeue(TICK));
                }
                let why = format!("the workload was not back in {region} within {RESTORE_WAIT_SECS}s");
                plan::finish(&mut self.status.timeline, "Failed", self.now, Some(why.clone()));
                self.unlock(final_region.as_deref()).await?;
                return self.report(active, Some(why)).await;
            }
        }
        plan::finish(&mut self.status.timeline, "Succeeded", self.now, None);
        self.unlock(final_region.as_deref()).await?;
        active.step = plan::REPORT.into();
        self.status.run = Some(active.clone());
        self.report(active, None).await
    }

    async fn report(&mut self, active: ActiveRun, restore_failed: Option<String>) -> Result<Action> {
        let (verdict, message) = plan::verdict(
            &active,
            self.drill.spec.objectives.rto_seconds,
            restore_failed.as_deref(),
        );
        plan::begin(&mut self.status.timeline, plan::REPORT, self.now, message.clone());
        plan::finish(&mut self.status.timeline, "Succeeded", self.now, None);
        let rto = plan::rto(&active);
        plan::push_history(
            &mut self.status.history,
            DrillRun {
                start: active.start.clone(),
                end: Some(plan::time(self.now)),
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
        // A scheduled drill waits for its next time; the next reconcile says when.
        Ok(Action::requeue(Duration::ZERO))
    }

    fn set_phase(&mut self, phase: DrillPhase, st: Status, reason: &'static str, message: String) {
        self.status.phase = Some(phase);
        let desired = [Desired::new("Succeeded", st, reason, message)];
        self.status.conditions = conditions::merge(
            self.drill.conditions(),
            &desired,
            self.drill.metadata.generation,
            &plan::time(self.now),
        );
    }

    async fn write_status(&mut self) -> Result<()> {
        self.status.observed_generation = self.drill.metadata.generation;
        if self.status.conditions.is_empty() {
            self.status.conditions = self.drill.conditions().to_vec();
        }
        if let Some(r) = &self.status.run {
            self.status.current_step = Some(r.step.clone());
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
    async fn lock_state(&self) -> Result<Lock> {
        let target = &self.drill.spec.installation_ref.name;
        let Some(inst) = self.installations.get_opt(target).await? else {
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
            Lock::Stale(holder, inst.resource_version().unwrap_or_default())
        })
    }

    /// Takes the lock: the annotation, applied without force, so another
    /// drill's manager holding it makes this a conflict. Over a stale lock
    /// ([`Run::lock_state`]) it is forced, but only on the Installation as it
    /// was seen (`stale_version`): of two drills taking over at once, one
    /// gets a conflict.
    async fn lock(&self, stale_version: Option<&str>) -> Result<bool> {
        let name = &self.drill.spec.installation_ref.name;
        if self.installations.get_opt(name).await?.is_none() {
            // Nothing to lock: validation reports the missing target.
            return Ok(true);
        }
        let mut patch = json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": name, "annotations": { DRILL_LOCK_ANNOTATION: self.drill.name_any() } },
        });
        let mut params = PatchParams::apply(&manager(self.drill));
        if let Some(version) = stale_version {
            patch["metadata"]["resourceVersion"] = json!(version);
            params.force = true;
        }
        match self
            .installations
            .patch(name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
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

    fn taint_value(&self) -> String {
        self.drill.uid().unwrap_or_default()
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
                value: Some(self.taint_value()),
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
        let value = self.taint_value();
        for node in nodes.list(&ListParams::default()).await? {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let kept: Vec<_> = taints
                .iter()
                .filter(|t| !(t.key == TAINT_KEY && t.value.as_deref() == Some(value.as_str())))
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
            match pods.delete(name, &DeleteParams::default().grace_period(0)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The Installation's pods, with the region of their node.
    async fn pods(&self) -> Result<Vec<plan::PodView>> {
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
        Ok(pods
            .list(&lp)
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
                plan::PodView {
                    name: p.name_any(),
                    region: node.and_then(|n| regions.get(&n).cloned()),
                    created: p
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or(Timestamp::UNIX_EPOCH),
                    ready_since,
                }
            })
            .collect())
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

fn home(active: &ActiveRun) -> String {
    active
        .previous_active_region
        .clone()
        .unwrap_or_else(|| active.home_region.clone())
}

fn plan_index(step: &str) -> usize {
    [
        plan::VALIDATE,
        plan::SNAPSHOT,
        plan::INJECT,
        plan::FAILOVER,
        plan::VERIFY,
        plan::RESTORE,
        plan::REPORT,
    ]
    .iter()
    .position(|s| *s == step)
    .unwrap_or(0)
}

fn inject_message(scenario: &Scenario, scope: Scope, active: &ActiveRun) -> String {
    match (scenario, scope) {
        (Scenario::RegionOutage, Scope::Installation) => format!(
            "region {} unavailable to the Installation: its pods there stop and cannot return",
            active.target_region
        ),
        (Scenario::RegionOutage, Scope::Region) => format!(
            "every node of {} tainted {TAINT_KEY}:NoExecute; the taint manager evicts their pods",
            active.target_region
        ),
        (Scenario::PodLoss, _) => "the Installation's pods are deleted".into(),
    }
}
