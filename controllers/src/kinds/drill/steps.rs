//! The drill's state machine as one pure function, [`next`]: from the run
//! in progress and what the shell observed, the step that comes next, what
//! the timeline records, the effects the shell performs, how long it waits,
//! and, at the end, the verdict. No API calls; time is an argument.
//!
//! A step that changes the cluster (Inject, Failover, Restore) asks for its
//! effects with [`Then::Recheck`]; the shell performs them, observes again
//! and calls [`next`] once more with [`Acted`] saying what happened, in the
//! same reconcile.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use somastack_crds::Installation;
use somastack_crds::drill::{
    ActiveRun, DrDrillSpec, DrDrillStatus, DrillStep, Scenario, Scope, StepOutcome, TimelineEntry, Verdict,
};

use super::TAINT_KEY;
use super::logic::{self, PodView};
use crate::domain::capsules::CapsuleUse;

/// How often a run in progress is looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a run waits for its target to exist or roll out before looking again.
pub const SETTLE_TICK: Duration = Duration::from_secs(2);
/// Longest a restore waits for the workload to be back home.
pub const RESTORE_WAIT_SECS: f64 = 120.0;

/// What the shell did for the current step in this reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Acted {
    /// Nothing yet.
    #[default]
    Nothing,
    /// The step's effects were performed.
    Done,
    /// The API server refused the failover (its message).
    FailoverRefused(String),
}

/// Everything [`next`] decides on.
pub struct Observations<'a> {
    pub spec: &'a DrDrillSpec,
    /// When the drill was created (a run waits for a target younger than its timeout).
    pub drill_created: Timestamp,
    /// The drill is being deleted.
    pub deleting: bool,
    /// The timeline so far.
    pub timeline: &'a [TimelineEntry],
    /// The target Installation (read when [`reads`] asks for it).
    pub installation: Option<&'a Installation>,
    /// The policy decision on running the Installation in a region.
    pub judge: &'a dyn Fn(&str) -> CapsuleUse,
    /// The Installation's live pods (read when [`reads`] asks for them).
    pub pods: &'a [PodView],
    pub acted: Acted,
}

/// What the shell reads before calling [`next`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub installation: bool,
    pub pods: bool,
}

/// Something the shell does to the cluster (or tells the user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A Warning Event: validation found the drill cannot run as asked.
    Finding(String),
    /// Set the drill's annotations on the Installation, keeping its lock.
    Annotate {
        unavailable: Option<String>,
        active_region: Option<String>,
    },
    /// Taint every node of the region `NoExecute`.
    Taint(String),
    /// Delete these pods of the Installation.
    DeletePods(Vec<String>),
    /// Point the Installation at `to`; a refusal is a finding ([`Acted::FailoverRefused`]).
    Failover { unavailable: Option<String>, to: String },
    /// Remove this drill's taint from every node.
    Untaint,
    /// Release the Installation's lock, leaving this active region.
    Unlock { active_region: Option<String> },
}

/// What the shell does once the effects are performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Write the status and look again after this long (zero: at once).
    Requeue(Duration),
    /// Observe again and call [`next`] with what was done, in this reconcile.
    Recheck,
}

/// A run that is over.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub verdict: Verdict,
    pub message: String,
    pub rto_seconds: Option<f64>,
}

/// The outcome of [`next`].
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The run as it goes on (its step, what it recorded); kept in
    /// `status.run` unless `finished`.
    pub run: ActiveRun,
    pub timeline: Vec<TimelineEntry>,
    /// Performed in order, before the status is written.
    pub effects: Vec<Effect>,
    /// Why the run waits in its step (the drill's condition says so).
    pub waiting: Option<String>,
    /// The RTO, once measured.
    pub measured_rto_seconds: Option<f64>,
    pub finished: Option<Finished>,
    pub then: Then,
}

impl Transition {
    fn stay(run: &ActiveRun, timeline: &[TimelineEntry]) -> Self {
        Transition {
            run: run.clone(),
            timeline: timeline.to_vec(),
            effects: vec![],
            waiting: None,
            measured_rto_seconds: None,
            finished: None,
            then: Then::Requeue(Duration::ZERO),
        }
    }

    fn go(&mut self, step: DrillStep) {
        self.run.step = step;
        self.then = Then::Requeue(Duration::ZERO);
    }

    fn wait(&mut self, after: Duration) {
        self.then = Then::Requeue(after);
    }

    fn act(&mut self, effects: Vec<Effect>) {
        self.effects = effects;
        self.then = Then::Recheck;
    }
}

/// Opens a run: the status of a drill whose run starts at `now` on
/// Installation `target`, with Validate in progress.
pub fn open(status: &mut DrDrillStatus, target: &str, scheduled_for: Option<Timestamp>, now: Timestamp) {
    status.timeline.clear();
    status.measured_rto_seconds = None;
    status.verdict = None;
    status.last_run_time = Some(logic::time(scheduled_for.unwrap_or(now)));
    status.next_run_time = None;
    status.run = Some(ActiveRun {
        start: logic::time(now),
        scheduled_for: scheduled_for.map(logic::time),
        step: DrillStep::Validate,
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
    logic::begin(
        &mut status.timeline,
        DrillStep::Validate,
        now,
        format!("checking Installation {target}"),
    );
}

/// Why a run that has not reached Restore must end now: the drill was
/// deleted or suspended, or the run is out of time.
pub fn abort_reason(run: &ActiveRun, spec: &DrDrillSpec, deleting: bool, now: Timestamp) -> Option<String> {
    if run.abort.is_some() || run.step >= DrillStep::Restore {
        return None;
    }
    if deleting {
        Some("the drill was deleted".into())
    } else if spec.suspend {
        Some("the drill was suspended".into())
    } else if logic::seconds(run.start.0, now) > f64::from(spec.timeout_seconds) {
        Some(format!(
            "timed out after {}s in step {}",
            spec.timeout_seconds, run.step
        ))
    } else {
        None
    }
}

/// What [`next`] will look at for `run` in this reconcile.
pub fn reads(run: &ActiveRun, spec: &DrDrillSpec, deleting: bool, acted: &Acted, now: Timestamp) -> Reads {
    if abort_reason(run, spec, deleting, now).is_some() {
        return Reads::default();
    }
    let acted = *acted != Acted::Nothing;
    match run.step {
        DrillStep::Validate => Reads {
            installation: true,
            pods: false,
        },
        DrillStep::Snapshot => Reads {
            installation: false,
            pods: spec.scenario == Scenario::PodLoss,
        },
        DrillStep::Inject => Reads {
            installation: false,
            pods: acted,
        },
        DrillStep::Verify => Reads {
            installation: false,
            pods: true,
        },
        DrillStep::Restore => Reads {
            installation: false,
            pods: acted && run.injected_at.is_some(),
        },
        DrillStep::Failover | DrillStep::Report => Reads::default(),
    }
}

/// The next transition of a run in progress. An abort (deleted, suspended,
/// timed out) fails the open step and goes to Restore, as does a finding;
/// Restore undoes what was done (keeping the failover only with `restore:
/// false` on a run that neither aborted nor found anything), and Report
/// gives the verdict.
pub fn next(run: &ActiveRun, seen: &Observations<'_>, now: Timestamp) -> Transition {
    let mut t = Transition::stay(run, seen.timeline);
    if let Some(why) = abort_reason(run, seen.spec, seen.deleting, now) {
        logic::finish(&mut t.timeline, StepOutcome::Failed, now, Some(why.clone()));
        t.run.abort = Some(why);
        t.go(DrillStep::Restore);
    }
    match t.run.step {
        DrillStep::Validate => validate(&mut t, seen, now),
        DrillStep::Snapshot => snapshot(&mut t, seen, now),
        DrillStep::Inject => inject(&mut t, seen, now),
        DrillStep::Failover => failover(&mut t, seen, now),
        DrillStep::Verify => verify(&mut t, seen, now),
        DrillStep::Restore => restore(&mut t, seen, now),
        DrillStep::Report => report(&mut t, seen.spec, None, now),
    }
    t
}

/// Waits for a target still rolling out, then checks it: a finding goes
/// to Restore (nothing was injected), else the snapshot is recorded.
fn validate(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    // A target that exists but is still rolling out: wait in Validate,
    // bounded by timeoutSeconds. A missing one was waited for before the
    // run opened.
    let settling = seen
        .installation
        .and_then(|i| logic::settling(seen.spec, Some(i), seen.drill_created, now));
    if let Some(wait) = settling {
        t.waiting = Some(wait);
        t.wait(SETTLE_TICK);
        return;
    }
    match logic::validate(seen.spec, seen.installation, seen.judge) {
        Ok(targets) => {
            let msg = match &targets.failover_region {
                Some(f) => format!(
                    "outage of {} then failover to {f}: allowed",
                    targets.target_region
                ),
                None => format!(
                    "pods of the Installation in {} will be deleted",
                    targets.target_region
                ),
            };
            logic::finish(&mut t.timeline, StepOutcome::Succeeded, now, Some(msg));
            let run = &mut t.run;
            run.target_region = targets.target_region;
            run.failover_region = targets.failover_region;
            run.home_region = targets.home_region;
            run.previous_active_region = targets.previous_active_region;
            run.replicas = targets.replicas;
            let snapshot = format!(
                "home region {}, active-region annotation {}, {} replica(s)",
                run.home_region,
                run.previous_active_region.as_deref().unwrap_or("unset"),
                run.replicas
            );
            logic::begin(&mut t.timeline, DrillStep::Snapshot, now, snapshot);
            t.go(DrillStep::Snapshot);
        }
        Err(finding) => {
            logic::finish(&mut t.timeline, StepOutcome::Failed, now, Some(finding.clone()));
            t.effects = vec![Effect::Finding(finding.clone())];
            t.run.finding = Some(finding);
            t.go(DrillStep::Restore);
        }
    }
}

/// The snapshot is recorded; the injection's time (and, for PodLoss, the
/// pods it deletes) is written before anything is injected, so a restart
/// redoes the (idempotent) injection.
fn snapshot(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    let message = inject_message(seen.spec.scenario, seen.spec.scope, &t.run.target_region);
    logic::begin(&mut t.timeline, DrillStep::Inject, now, message);
    t.run.injected_at = Some(logic::micro(now));
    if seen.spec.scenario == Scenario::PodLoss {
        t.run.lost_pods = seen.pods.iter().map(|p| p.name.clone()).collect();
    }
    t.go(DrillStep::Inject);
}

/// Makes the outage (again, after a restart), then waits until it is in
/// effect: no pod left where it struck (the lost pods gone, for PodLoss).
/// Before that a failover could overtake it and nothing would be proven;
/// the injection time, and so the RTO, stays where it was.
fn inject(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    let run = &t.run;
    if seen.acted == Acted::Nothing {
        let keep_active = run.previous_active_region.clone();
        let effects = match (seen.spec.scenario, seen.spec.scope) {
            (Scenario::RegionOutage, Scope::Installation) => vec![Effect::Annotate {
                unavailable: Some(run.target_region.clone()),
                active_region: keep_active,
            }],
            (Scenario::RegionOutage, Scope::Region) => vec![
                Effect::Annotate {
                    unavailable: None,
                    active_region: keep_active,
                },
                Effect::Taint(run.target_region.clone()),
            ],
            (Scenario::PodLoss, _) => vec![Effect::DeletePods(run.lost_pods.clone())],
        };
        t.act(effects);
        return;
    }
    let remaining = match seen.spec.scenario {
        Scenario::RegionOutage => seen
            .pods
            .iter()
            .filter(|p| p.region.as_deref() == Some(run.target_region.as_str()))
            .count(),
        Scenario::PodLoss => seen
            .pods
            .iter()
            .filter(|p| run.lost_pods.contains(&p.name))
            .count(),
    };
    if remaining > 0 {
        t.wait(TICK);
        return;
    }
    logic::finish(&mut t.timeline, StepOutcome::Succeeded, now, None);
    let next = match seen.spec.scenario {
        Scenario::RegionOutage => DrillStep::Failover,
        Scenario::PodLoss => {
            logic::skipped(
                &mut t.timeline,
                DrillStep::Failover,
                now,
                "PodLoss recovers in place",
            );
            DrillStep::Verify
        }
    };
    logic::begin(&mut t.timeline, next, now, String::new());
    t.go(next);
}

/// Points the Installation at the failover region; a refusal (e.g. by the
/// admission webhook, on residency) is a finding.
fn failover(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    let Some(to) = t.run.failover_region.clone() else {
        t.go(DrillStep::Verify);
        return;
    };
    match &seen.acted {
        Acted::Nothing => {
            let unavailable = match seen.spec.scope {
                Scope::Installation => Some(t.run.target_region.clone()),
                Scope::Region => None,
            };
            t.act(vec![Effect::Failover { unavailable, to }]);
        }
        Acted::FailoverRefused(e) => {
            let why = format!("failover to {to} was refused: {e}");
            logic::finish(&mut t.timeline, StepOutcome::Failed, now, Some(why.clone()));
            t.run.finding = Some(why);
            t.go(DrillStep::Restore);
        }
        Acted::Done => {
            logic::finish(
                &mut t.timeline,
                StepOutcome::Succeeded,
                now,
                Some(format!("active region set to {to}")),
            );
            let waiting = format!("waiting for {} ready replica(s) in {to}", t.run.replicas);
            logic::begin(&mut t.timeline, DrillStep::Verify, now, waiting);
            t.go(DrillStep::Verify);
        }
    }
}

/// Waits for the workload to be Available again; that ends the RTO.
fn verify(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    let run = &mut t.run;
    let injected = run.injected_at.as_ref().map(|t| t.0).unwrap_or(now);
    let region = run.failover_region.clone();
    let Some(at) = logic::recovered_at(
        seen.pods,
        region.as_deref(),
        run.replicas,
        injected,
        &run.lost_pods,
    ) else {
        t.wait(TICK);
        return;
    };
    // Kubernetes records Ready in whole seconds (`at` is that second); the
    // operator saw it at `now`. The recovery happened in between: take when
    // it was seen, bounded by the end of the recorded second (which matters
    // when the operator was down and resumes late).
    let seen_at = now.min(at + SignedDuration::from_secs(1)).max(injected);
    run.recovered_at = Some(logic::micro(seen_at));
    let rto = logic::rto(run).unwrap_or_default();
    let message = format!(
        "{} replica(s) ready{}; RTO {rto:.1}s",
        run.replicas,
        region.map(|r| format!(" in {r}")).unwrap_or_default()
    );
    t.measured_rto_seconds = Some(rto);
    logic::finish(&mut t.timeline, StepOutcome::Succeeded, now, Some(message));
    t.go(DrillStep::Restore);
}

/// Idempotent: removes this drill's taints and annotations (keeping the
/// failover when `restore: false` and the run neither aborted nor found
/// anything), waits for the workload to be back, releases the lock and
/// reports.
fn restore(t: &mut Transition, seen: &Observations<'_>, now: Timestamp) {
    let run = &t.run;
    let opened = t
        .timeline
        .last()
        .is_some_and(|e| e.step == DrillStep::Restore && e.end.is_none());
    let go_home = goes_home(seen.spec, run);
    if !opened {
        let message = if run.injected_at.is_none() {
            "nothing was injected; releasing the drill lock".into()
        } else if go_home {
            format!("returning to {}", home(run))
        } else {
            "restore: false; removing the outage, staying failed over".into()
        };
        logic::begin(&mut t.timeline, DrillStep::Restore, now, message);
        t.wait(Duration::ZERO);
        return;
    }
    let keep_failover = if go_home {
        None
    } else {
        run.failover_region.clone()
    };
    let active_region = keep_failover.or_else(|| run.previous_active_region.clone());
    if seen.acted == Acted::Nothing {
        t.act(vec![
            Effect::Untaint,
            Effect::Annotate {
                unavailable: None,
                active_region,
            },
        ]);
        return;
    }
    // Back when the pods run where they should again (nothing to wait for
    // when nothing was injected).
    let mut restore_failed = None;
    if run.injected_at.is_some() {
        let region = active_region.clone().unwrap_or_else(|| run.home_region.clone());
        let started = t.timeline.last().map(|e| e.start.0).unwrap_or(now);
        if !logic::back_in(seen.pods, &region, run.replicas) {
            if logic::seconds(started, now) < RESTORE_WAIT_SECS {
                t.wait(TICK);
                return;
            }
            restore_failed = Some(format!(
                "the workload was not back in {region} within {RESTORE_WAIT_SECS}s"
            ));
        }
    }
    let outcome = match &restore_failed {
        Some(_) => StepOutcome::Failed,
        None => StepOutcome::Succeeded,
    };
    logic::finish(&mut t.timeline, outcome, now, restore_failed.clone());
    t.effects = vec![Effect::Unlock { active_region }];
    if restore_failed.is_none() {
        t.run.step = DrillStep::Report;
    }
    report(t, seen.spec, restore_failed, now);
}

/// Ends the run with its verdict and RTO.
fn report(t: &mut Transition, spec: &DrDrillSpec, restore_failed: Option<String>, now: Timestamp) {
    let (verdict, message) = logic::verdict(&t.run, spec.objectives.rto_seconds, restore_failed.as_deref());
    logic::begin(&mut t.timeline, DrillStep::Report, now, message.clone());
    logic::finish(&mut t.timeline, StepOutcome::Succeeded, now, None);
    t.finished = Some(Finished {
        verdict,
        message,
        rto_seconds: logic::rto(&t.run),
    });
    // A scheduled drill waits for its next time; the next reconcile says when.
    t.wait(Duration::ZERO);
}

/// Whether a restore undoes the failover too: unless `restore: false` on a
/// run that neither aborted nor found anything.
fn goes_home(spec: &DrDrillSpec, run: &ActiveRun) -> bool {
    spec.restore || run.abort.is_some() || run.finding.is_some()
}

/// Where a restore returns the workload: the active region before the drill, else home.
fn home(run: &ActiveRun) -> String {
    run.previous_active_region
        .clone()
        .unwrap_or_else(|| run.home_region.clone())
}

fn inject_message(scenario: Scenario, scope: Scope, target_region: &str) -> String {
    match (scenario, scope) {
        (Scenario::RegionOutage, Scope::Installation) => format!(
            "region {target_region} unavailable to the Installation: its pods there stop and cannot return"
        ),
        (Scenario::RegionOutage, Scope::Region) => format!(
            "every node of {target_region} tainted {TAINT_KEY}:NoExecute; the taint manager evicts their pods"
        ),
        (Scenario::PodLoss, _) => "the Installation's pods are deleted".into(),
    }
}
