//! What one project step may do and what its status says, as pure
//! functions: what the reconcile observed goes in, decisions and the Events
//! to publish come out. The reconcile performs the writes and publishes the
//! Events ([`super::reconcile`]).
//!
//! Gates, in order of precedence:
//! 1. **Approval** of the plan's digest, when `spec.approval.required` or an
//!    enforced PolicyBundle asks for it: a rejected plan fails the project
//!    and nothing else is looked at; an unapproved one starts nothing.
//! 2. **Capsules** usable (published, valid, allowed by enforced policy in
//!    the project's region): looked at only once the plan is approved.
//! 3. **Kill switch** of a PolicyBundle, else **suspend**: running Jobs are
//!    stopped and nothing starts; their report replaces the ones above (the
//!    Events of the ones above are still published).
//! 4. **Deadline** (`budget.maxDurationSeconds`): once passed, running Jobs
//!    are stopped and the project fails ([`outcome`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::EventType;
use somastack_crds::common::CapsuleRef;
use somastack_crds::kamachiq::{ProjectPhase, RETRY_FAILED_ANNOTATION, Task, TaskCounts};
use somastack_crds::{Capsule, KamachiqProject, PolicyBundle};

use super::moderation::Refusal;
use super::plan::{self, Gates, Outcome};
use super::{APPROVED, SUCCEEDED};
use crate::conditions::{Desired, Health, Status};
use crate::domain::capsules::{self, CapsuleUse, may_use};
use crate::domain::review::{DECISION_ANNOTATION, DIGEST_ANNOTATION, plan_approval_required_by, plan_review};

/// How often a running (or waiting) project is looked at without an event.
pub const RUNNING_RESYNC: Duration = Duration::from_secs(60);
/// How often a finished (or refused) project is looked at without an event.
pub const SETTLED_RESYNC: Duration = Duration::from_secs(3600);
/// Region name checked when a project sets none (no residency rule allows it).
const NO_REGION: &str = "(none: spec.region is not set)";
/// Most failed tasks a message names; the rest are counted.
const MAX_NAMED_FAILURES: usize = 10;

/// The type of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    pub fn event_type(self) -> EventType {
        match self {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        }
    }
}

/// An Event to publish on the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventIntent {
    pub kind: EventKind,
    pub reason: &'static str,
    pub action: &'static str,
    pub message: String,
}

impl EventIntent {
    pub fn normal(reason: &'static str, action: &'static str, message: impl Into<String>) -> Self {
        EventIntent {
            kind: EventKind::Normal,
            reason,
            action,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, message: impl Into<String>) -> Self {
        EventIntent {
            kind: EventKind::Warning,
            reason,
            action,
            message: message.into(),
        }
    }

    /// This Event, unless it was published already: the `Succeeded`
    /// condition got its reason then, so a state that lasts is announced once.
    pub fn once(self, recorded: &Recorded<'_>) -> Option<Self> {
        (!recorded.has(self.reason)).then_some(self)
    }
}

/// The conditions the project had when the reconcile read it.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a>(pub &'a [Condition]);

impl Recorded<'_> {
    /// Whether the `Succeeded` condition already has `reason`.
    pub fn has(&self, reason: &str) -> bool {
        self.0.iter().any(|c| c.type_ == SUCCEEDED && c.reason == reason)
    }
}

/// What one reconcile decided, written to status at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub phase: ProjectPhase,
    pub succeeded: Desired,
    pub approved: Option<Desired>,
    pub requeue: Duration,
}

impl Report {
    pub fn new(
        phase: ProjectPhase,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
        requeue: Duration,
    ) -> Self {
        Report {
            phase,
            succeeded: Desired::new(SUCCEEDED, status, reason, message),
            approved: None,
            requeue,
        }
    }

    /// Pure: the project's `Ready` and how GitOps tools read it, from the
    /// phase and `Succeeded`'s reason and message. Succeeded is Current, and
    /// so is a deliberate suspension (the spec asks for it); Failed is
    /// Stalled; a plan awaiting approval or a kill switch waits for a
    /// person; pending, planning and running are Progressing.
    pub fn readiness(&self) -> (Desired, Health) {
        let (reason, message) = (self.succeeded.reason, self.succeeded.message.clone());
        let (status, health) = match self.phase {
            ProjectPhase::Succeeded | ProjectPhase::Suspended => (Status::True, Health::Current),
            ProjectPhase::Failed => (Status::False, Health::Stalled),
            ProjectPhase::AwaitingApproval | ProjectPhase::Halted => (Status::False, Health::Waiting),
            ProjectPhase::Pending | ProjectPhase::Planning | ProjectPhase::Running => {
                (Status::False, Health::Progressing)
            }
        };
        (Desired::new("Ready", status, reason, message), health)
    }

    /// The project failed for good (until it is changed).
    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Report::new(
            ProjectPhase::Failed,
            Status::False,
            reason,
            message,
            SETTLED_RESYNC,
        )
    }

    /// Whether the project is done (the phase stays until it is changed).
    pub fn finished(&self) -> bool {
        matches!(self.phase, ProjectPhase::Succeeded | ProjectPhase::Failed)
    }
}

/// A report and the Event that goes with it, if any.
pub type Reported = (Report, Option<EventIntent>);

/// A new value of the retry-failed annotation starts a retry round: the
/// Event announcing it (the reconcile starts the run's clock again).
/// `None` when `round` is empty or already acted on.
pub fn retry_round(round: &str, acted_on: Option<&str>) -> Option<EventIntent> {
    (!round.is_empty() && acted_on != Some(round)).then(|| {
        EventIntent::normal(
            "RetryingFailedTasks",
            "Retry",
            format!("retry round {round}: failed tasks run again"),
        )
    })
}

/// A plan that does not validate: nothing starts.
pub fn invalid_plan(problems: &[String], recorded: &Recorded<'_>) -> Reported {
    let problems = problems.join("; ");
    let event = EventIntent::warning("InvalidPlan", "Plan", problems.clone()).once(recorded);
    let report = Report::failed(
        "InvalidPlan",
        format!("the plan is invalid, nothing was started: {problems}"),
    );
    (report, event)
}

/// The API server refused an object the project needs (`message` says
/// which and why): the project fails until it (or what conflicts with it)
/// changes, instead of retrying the same write forever.
pub fn child_rejected(message: &str, recorded: &Recorded<'_>) -> Reported {
    let event = EventIntent::warning("ChildRejected", "Apply", message).once(recorded);
    let report = Report::new(
        ProjectPhase::Failed,
        Status::False,
        "ChildRejected",
        format!("{message}; change the project (or what conflicts with it) and it is tried again"),
        Duration::from_secs(300),
    );
    (report, event)
}

/// What the approval gate says about a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// No approval is required.
    NotRequired,
    /// A reviewer approved this plan: the `Approved` condition.
    Approved(Desired),
    /// Approval is required and not given for this plan (none yet, or one
    /// of another digest): nothing starts.
    Awaiting {
        approved: Desired,
        report: Report,
        event: EventIntent,
    },
    /// A reviewer rejected this plan: the project fails.
    Rejected(Report),
}

/// The approval gate for the plan with `digest` (stored in ConfigMap
/// `plan_config_map`): required by `spec.approval.required`, else by the
/// first enforced PolicyBundle of `bundles` that asks for it.
pub fn approval(
    project: &KamachiqProject,
    bundles: &[Arc<PolicyBundle>],
    digest: &str,
    plan_config_map: &str,
) -> Approval {
    let required = project
        .spec
        .approval
        .as_ref()
        .is_some_and(|a| a.required)
        .then(|| "spec.approval.required".to_string())
        .or_else(|| plan_approval_required_by(bundles).map(|b| format!("PolicyBundle {b}")));
    let Some(why) = required else {
        return Approval::NotRequired;
    };
    match plan_review(project, digest) {
        Some(Ok(reviewer)) => Approval::Approved(Desired::new(
            APPROVED,
            Status::True,
            "PlanApproved",
            format!("{reviewer} approved plan {digest}"),
        )),
        Some(Err(message)) => Approval::Rejected(Report {
            approved: Some(Desired::new(
                APPROVED,
                Status::False,
                "PlanRejected",
                message.clone(),
            )),
            ..Report::failed("PlanRejected", message)
        }),
        None => {
            let message = format!(
                "approval required by {why}: a reviewer must approve plan {digest} (annotate the project {DECISION_ANNOTATION}=approve {DIGEST_ANNOTATION}={digest}; the plan is in ConfigMap {plan_config_map})"
            );
            Approval::Awaiting {
                approved: Desired::new(APPROVED, Status::False, "AwaitingApproval", message.clone()),
                report: Report::new(
                    ProjectPhase::AwaitingApproval,
                    Status::Unknown,
                    "AwaitingApproval",
                    message.clone(),
                    RUNNING_RESYNC,
                ),
                event: EventIntent::normal("AwaitingApproval", "Approve", message),
            }
        }
    }
}

/// Checks every capsule the plan uses, and `others` (the review and
/// moderator capsules). `Err((reason, message))` when one is missing,
/// unusable or blocked by enforced policy.
pub fn check_capsules(
    tasks: &[Task],
    others: &[&CapsuleRef],
    capsules: &[Arc<Capsule>],
    bundles: &[Arc<PolicyBundle>],
    region: Option<&str>,
) -> std::result::Result<(), (&'static str, String)> {
    let mut refs: Vec<&CapsuleRef> = tasks
        .iter()
        .map(|t| &t.capsule)
        .chain(others.iter().copied())
        .collect();
    refs.sort_by(|a, b| (&a.package, &a.version).cmp(&(&b.package, &b.version)));
    refs.dedup();
    let region = region.unwrap_or(NO_REGION);
    for r in refs {
        match may_use(&capsules::resolve(capsules, r), bundles, region, 1) {
            CapsuleUse::Allowed(_) => {}
            CapsuleUse::CapsuleNotFound => {
                return Err((
                    "CapsuleNotFound",
                    format!(
                        "Capsule {} version {} is not published; no task runs until it is",
                        r.package, r.version
                    ),
                ));
            }
            CapsuleUse::CapsuleUnusable(why) => return Err(("CapsuleUnusable", why)),
            CapsuleUse::Blocked(eval) => {
                let problems: Vec<String> = eval
                    .blocking
                    .iter()
                    .map(|v| {
                        format!(
                            "{} (rule {}, PolicyBundle {})",
                            v.message,
                            v.rule.as_str(),
                            v.bundles.join(", ")
                        )
                    })
                    .collect();
                return Err((
                    "PolicyBlocked",
                    format!("capsule {} {}: {}", r.package, r.version, problems.join("; ")),
                ));
            }
        }
    }
    Ok(())
}

/// The end of `budget.maxDurationSeconds`, counted from the run's start.
pub fn deadline(project: &KamachiqProject, start: Option<jiff::Timestamp>) -> Option<jiff::Timestamp> {
    let max = project.spec.budget.as_ref()?.max_duration_seconds?;
    start?
        .checked_add(jiff::SignedDuration::from_secs(i64::from(max)))
        .ok()
}

/// What the gates look at.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub project: &'a KamachiqProject,
    /// The validated plan and its digest.
    pub tasks: &'a [Task],
    pub digest: &'a str,
    /// Name of the ConfigMap holding the plan.
    pub plan_config_map: &'a str,
    pub capsules: &'a [Arc<Capsule>],
    /// The PolicyBundles governing the project's namespace.
    pub bundles: &'a [Arc<PolicyBundle>],
    /// The moderator capsules that apply (checked like task capsules).
    pub moderators: &'a [&'a CapsuleRef],
    /// The first engaged kill switch: (PolicyBundle, reason).
    pub kill_switch: Option<(&'a str, &'a str)>,
    /// The Jobs cache shows every Job this operator created.
    pub caught_up: bool,
    /// When the run started (the duration budget counts from it).
    pub start: Option<jiff::Timestamp>,
    pub now: jiff::Timestamp,
    pub recorded: Recorded<'a>,
}

/// What the gates decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// The plan was rejected: this report, and nothing else happens.
    Rejected(Report),
    /// The step runs within these gates.
    Proceed(Gated),
}

/// A step's gates, and what they say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gated {
    pub gates: Gates,
    /// The report of a gate that holds the project (approval, capsules,
    /// kill switch, suspend); the outcome decides without one.
    pub report: Option<Report>,
    /// The `Approved` condition, when approval is required.
    pub approved: Option<Desired>,
    /// Events to publish, in order.
    pub events: Vec<EventIntent>,
    /// The end of the duration budget, once the run started.
    pub deadline: Option<jiff::Timestamp>,
}

/// Decides the gates of one step. See the module documentation.
pub fn check(o: &Observed<'_>) -> GateDecision {
    let mut gated = Gated {
        gates: Gates {
            spawn: o.caught_up,
            ..Gates::default()
        },
        report: None,
        approved: None,
        events: Vec::new(),
        deadline: deadline(o.project, o.start),
    };
    match approval(o.project, o.bundles, o.digest, o.plan_config_map) {
        Approval::NotRequired => {}
        Approval::Approved(approved) => gated.approved = Some(approved),
        Approval::Rejected(report) => return GateDecision::Rejected(report),
        Approval::Awaiting {
            approved,
            report,
            event,
        } => {
            gated.gates.spawn = false;
            gated.events.extend(event.once(&o.recorded));
            gated.approved = Some(approved);
            gated.report = Some(report);
        }
    }
    if gated.report.is_none()
        && let Some((report, event)) = capsules_gate(o)
    {
        gated.gates.spawn = false;
        gated.events.extend(event.once(&o.recorded));
        gated.report = Some(report);
    }
    if let Some((report, event)) = halt_gate(o.kill_switch, o.project.spec.suspend) {
        gated.gates.stop = true;
        gated.events.extend(event.and_then(|e| e.once(&o.recorded)));
        gated.report = Some(report);
    }
    gated.gates.deadline_passed = gated.deadline.is_some_and(|d| o.now >= d);
    GateDecision::Proceed(gated)
}

/// The capsules gate: the report (the project waits, `Pending`) and Event
/// of a plan whose capsule is missing, unusable or blocked by enforced policy.
pub fn capsules_gate(o: &Observed<'_>) -> Option<(Report, EventIntent)> {
    let spec = &o.project.spec;
    let others: Vec<&CapsuleRef> = spec.review.iter().chain(o.moderators.iter().copied()).collect();
    let checked = check_capsules(o.tasks, &others, o.capsules, o.bundles, spec.region.as_deref());
    capsules_waiting(checked, "Spawn")
}

/// Pure: the report (the project waits, `Pending`) and the Warning Event,
/// for `action`, of a [`check_capsules`] that found a capsule missing,
/// unusable or blocked; `None` when it found none.
pub fn capsules_waiting(
    checked: Result<(), (&'static str, String)>,
    action: &'static str,
) -> Option<(Report, EventIntent)> {
    let (reason, message) = checked.err()?;
    let event = EventIntent::warning(reason, action, message.clone());
    let report = Report::new(
        ProjectPhase::Pending,
        Status::Unknown,
        reason,
        message,
        RUNNING_RESYNC,
    );
    Some((report, event))
}

/// The halt gate: an engaged kill switch (PolicyBundle, reason), with its
/// Event, else `spec.suspend`, stops running Jobs and starts nothing.
pub fn halt_gate(kill_switch: Option<(&str, &str)>, suspend: bool) -> Option<(Report, Option<EventIntent>)> {
    if let Some((bundle, why)) = kill_switch {
        let message = format!(
            "kill switch engaged by PolicyBundle {bundle} ({why}): running task Jobs are stopped and nothing new starts until it is released"
        );
        let event = EventIntent::warning("KillSwitchEngaged", "Halt", message.clone());
        let report = Report::new(
            ProjectPhase::Halted,
            Status::Unknown,
            "KillSwitchEngaged",
            message,
            RUNNING_RESYNC,
        );
        return Some((report, Some(event)));
    }
    suspend.then(|| {
        let report = Report::new(
            ProjectPhase::Suspended,
            Status::Unknown,
            "Suspended",
            "spec.suspend is true: running task Jobs are suspended (their pods stopped) and nothing new starts; set it to false to resume",
            SETTLED_RESYNC,
        );
        (report, None)
    })
}

/// What the outcome report looks at, beside the gates.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    pub outcome: &'a Outcome,
    pub counts: &'a TaskCounts,
    /// Name of the (first) results ConfigMap.
    pub results: &'a str,
    pub caught_up: bool,
    pub now: jiff::Timestamp,
    pub recorded: Recorded<'a>,
}

/// The report of a step, from its outcome and gates, and the Event of a
/// project that finished (once per reason).
pub fn outcome(p: &Progress<'_>, gated: &Gated) -> Reported {
    let report = match p.outcome {
        Outcome::Succeeded => Report::new(
            ProjectPhase::Succeeded,
            Status::True,
            "AllTasksSucceeded",
            format!(
                "all {} tasks succeeded; results in ConfigMap {}",
                p.counts.total, p.results
            ),
            SETTLED_RESYNC,
        ),
        Outcome::Failed(failed) => failed_report(failed, p.counts, gated.gates.deadline_passed),
        Outcome::Refused(refusal) => refused(refusal).0,
        Outcome::Running => {
            let requeue = running_requeue(p.caught_up, gated.deadline, p.now);
            match &gated.report {
                Some(r) => Report {
                    requeue: r.requeue.min(requeue),
                    ..r.clone()
                },
                None => Report::new(
                    ProjectPhase::Running,
                    Status::Unknown,
                    "Running",
                    plan::progress(p.counts),
                    requeue,
                ),
            }
        }
    };
    let event = report.finished().then(|| {
        let kind = if report.phase == ProjectPhase::Succeeded {
            EventKind::Normal
        } else {
            EventKind::Warning
        };
        EventIntent {
            kind,
            reason: report.succeeded.reason,
            action: if matches!(p.outcome, Outcome::Refused(_)) {
                "Moderate"
            } else {
                "Finish"
            },
            message: report.succeeded.message.clone(),
        }
    });
    let event = event.and_then(|e| e.once(&p.recorded));
    let report = Report {
        approved: gated.approved.clone().or(report.approved),
        ..report
    };
    (report, event)
}

/// A moderator refused (or could not moderate) a text: the project fails
/// with the stage's reason, the moderator and its reason, and a Warning
/// Event says the same.
pub fn refused(refusal: &Refusal) -> Reported {
    let message = refusal.message();
    let reason = refusal.condition_reason();
    let event = EventIntent::warning(reason, "Moderate", message.clone());
    (Report::failed(reason, message), Some(event))
}

/// The goal waits for its moderators (`undecided` names them): nothing is
/// planned or run until every one allowed it.
pub fn moderating_goal(undecided: &str) -> Report {
    Report::new(
        ProjectPhase::Pending,
        Status::Unknown,
        "ModeratingGoal",
        format!("waiting for moderator {undecided} to check the goal; nothing is planned or run before"),
        RUNNING_RESYNC,
    )
}

/// The report of a project whose tasks failed (or whose budget ran out),
/// naming the first failed tasks.
fn failed_report(failed: &[(String, String)], counts: &TaskCounts, deadline_passed: bool) -> Report {
    let (reason, head) = if deadline_passed {
        (
            "BudgetExceeded",
            "budget.maxDurationSeconds ran out; running tasks were stopped".to_string(),
        )
    } else {
        (
            "TasksFailed",
            format!("{} of {} tasks failed", failed.len(), counts.total),
        )
    };
    let named: Vec<String> = failed
        .iter()
        .take(MAX_NAMED_FAILURES)
        .map(|(t, m)| format!("{t} ({m})"))
        .collect();
    let more = if failed.len() > MAX_NAMED_FAILURES {
        format!(" and {} more", failed.len() - MAX_NAMED_FAILURES)
    } else {
        String::new()
    };
    let message = format!(
        "{head}: {}{more}; annotate {RETRY_FAILED_ANNOTATION} with a new value to run the failed tasks again",
        named.join(", ")
    );
    Report::failed(reason, message)
}

/// When a running project is looked at again: soon while the cache lags
/// behind the Jobs created, by its deadline, and at least every
/// [`RUNNING_RESYNC`].
fn running_requeue(caught_up: bool, deadline: Option<jiff::Timestamp>, now: jiff::Timestamp) -> Duration {
    match (caught_up, deadline) {
        (false, _) => Duration::from_secs(1),
        (true, Some(d)) => Duration::try_from(d.duration_since(now))
            .unwrap_or_default()
            .clamp(Duration::from_secs(1), RUNNING_RESYNC),
        _ => RUNNING_RESYNC,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::{SignedDuration, Timestamp};
    use somastack_crds::PolicyBundleSpec;
    use somastack_crds::kamachiq::{Approval as ApprovalSpec, Budget, KamachiqProjectSpec};
    use somastack_crds::policy::ProjectRules;

    use super::*;
    use crate::domain::review::{REASON_ANNOTATION, REVIEWER_ANNOTATION};
    use crate::kinds::project::fixtures::{bundle, capsules, eu_only, task};

    const DIGEST: &str = "sha256:aaaa";
    const PLAN_CM: &str = "market-brief-plan";

    /// How kstatus and Argo CD read a project in each phase.
    #[test]
    fn gitops_tools_read_each_phase_of_a_project() {
        let read = |phase| {
            let r = Report::new(phase, Status::Unknown, "Why", "because", SETTLED_RESYNC);
            let (ready, health) = r.readiness();
            (ready.status, ready.reason, ready.message, health)
        };
        use ProjectPhase as P;
        assert_eq!(
            read(P::Running),
            (Status::False, "Why", "because".to_string(), Health::Progressing)
        );
        assert_eq!(read(P::Planning).3, Health::Progressing);
        assert_eq!(read(P::Pending).3, Health::Progressing);
        assert_eq!(read(P::AwaitingApproval).3, Health::Waiting);
        assert_eq!(read(P::Halted).3, Health::Waiting);
        assert_eq!(read(P::Succeeded).0, Status::True);
        assert_eq!(read(P::Succeeded).3, Health::Current);
        assert_eq!(read(P::Suspended).3, Health::Current);
        assert_eq!(
            (read(P::Failed).0, read(P::Failed).3),
            (Status::False, Health::Stalled)
        );
    }

    fn project() -> KamachiqProject {
        let mut p = KamachiqProject::new(
            "market-brief",
            KamachiqProjectSpec {
                goal: "g".into(),
                planner: None,
                tasks: vec![task("a", &[])],
                parallelism: 4,
                budget: None,
                approval: None,
                review: None,
                suspend: false,
                region: Some("eu-central-1".into()),
                placement: None,
                moderation: None,
            },
        );
        p.metadata.namespace = Some("tenant-acme".into());
        p
    }

    fn needing_approval() -> KamachiqProject {
        let mut p = project();
        p.spec.approval = Some(ApprovalSpec { required: true });
        p
    }

    fn reviewed(mut p: KamachiqProject, decision: &str, digest: &str) -> KamachiqProject {
        p.metadata.annotations = Some(BTreeMap::from([
            (DECISION_ANNOTATION.to_string(), decision.to_string()),
            (DIGEST_ANNOTATION.to_string(), digest.to_string()),
            (REVIEWER_ANNOTATION.to_string(), "alice".to_string()),
            (REASON_ANNOTATION.to_string(), "too costly".to_string()),
        ]));
        p
    }

    fn condition(reason: &str) -> Condition {
        Condition {
            type_: SUCCEEDED.into(),
            status: "Unknown".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: crate::status::now(),
            observed_generation: None,
        }
    }

    /// What a reconcile observes, for `p` with its plan `[a]`.
    struct World {
        project: KamachiqProject,
        tasks: Vec<Task>,
        capsules: Vec<Arc<Capsule>>,
        bundles: Vec<Arc<PolicyBundle>>,
        kill_switch: Option<(&'static str, &'static str)>,
        caught_up: bool,
        start: Option<Timestamp>,
        now: Timestamp,
        recorded: Vec<Condition>,
    }

    impl World {
        fn of(project: KamachiqProject) -> Self {
            World {
                project,
                tasks: vec![task("a", &[])],
                capsules: capsules(),
                bundles: vec![eu_only()],
                kill_switch: None,
                caught_up: true,
                start: None,
                now: Timestamp::UNIX_EPOCH,
                recorded: vec![],
            }
        }

        /// The world of `project` in which no Capsule is published.
        fn without_capsules(project: KamachiqProject) -> Self {
            World {
                capsules: vec![],
                ..World::of(project)
            }
        }

        fn check(&self) -> GateDecision {
            check(&Observed {
                project: &self.project,
                tasks: &self.tasks,
                digest: DIGEST,
                plan_config_map: PLAN_CM,
                capsules: &self.capsules,
                bundles: &self.bundles,
                moderators: &[],
                kill_switch: self.kill_switch,
                caught_up: self.caught_up,
                start: self.start,
                now: self.now,
                recorded: Recorded(&self.recorded),
            })
        }

        fn gated(&self) -> Gated {
            match self.check() {
                GateDecision::Proceed(g) => g,
                GateDecision::Rejected(r) => panic!("expected the step to proceed, got {r:?}"),
            }
        }
    }

    fn reason(report: &Option<Report>) -> Option<&'static str> {
        report.as_ref().map(|r| r.succeeded.reason)
    }

    fn reasons(events: &[EventIntent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    /// The report of a gate holding the project in `phase` with `reason` and
    /// `message`, after checking it and that `events` are what is published.
    fn held(g: &Gated, phase: ProjectPhase, reason: &str, message: &str, events: Vec<EventIntent>) -> Report {
        let report = g.report.clone().unwrap_or_else(|| panic!("a report"));
        assert_eq!(report.phase, phase);
        assert_eq!(report.succeeded.reason, reason);
        assert_eq!(report.succeeded.message, message);
        assert_eq!(g.events, events);
        report
    }

    #[test]
    fn without_any_gate_the_step_spawns_and_reports_nothing_itself() {
        let g = World::of(project()).gated();
        assert_eq!(
            g.gates,
            Gates {
                spawn: true,
                stop: false,
                deadline_passed: false
            }
        );
        assert_eq!((g.report, g.approved, g.events), (None, None, vec![]));
        // A cache that lags behind the Jobs created spawns nothing more.
        let lagging = World {
            caught_up: false,
            ..World::of(project())
        };
        assert!(!lagging.gated().gates.spawn);
    }

    #[test]
    fn a_plan_awaiting_approval_starts_nothing_and_says_how_to_approve() {
        let g = World::of(needing_approval()).gated();
        assert!(!g.gates.spawn && !g.gates.stop);
        let message = format!(
            "approval required by spec.approval.required: a reviewer must approve plan {DIGEST} (annotate the project {DECISION_ANNOTATION}=approve {DIGEST_ANNOTATION}={DIGEST}; the plan is in ConfigMap {PLAN_CM})"
        );
        let report = held(
            &g,
            ProjectPhase::AwaitingApproval,
            "AwaitingApproval",
            &message,
            vec![EventIntent::normal(
                "AwaitingApproval",
                "Approve",
                message.clone(),
            )],
        );
        assert_eq!(report.succeeded.status, Status::Unknown);
        assert_eq!(report.requeue, RUNNING_RESYNC);
        assert_eq!(
            g.approved,
            Some(Desired::new(APPROVED, Status::False, "AwaitingApproval", message))
        );
        // The Event is published once: the condition remembers it.
        let again = World {
            recorded: vec![condition("AwaitingApproval")],
            ..World::of(needing_approval())
        };
        assert!(again.gated().events.is_empty());
    }

    #[test]
    fn an_enforced_bundle_can_require_approval() {
        let mut w = World::of(project());
        w.bundles.push(bundle(
            "approvals",
            PolicyBundleSpec {
                projects: Some(ProjectRules {
                    require_approval: true,
                    ..ProjectRules::default()
                }),
                ..PolicyBundleSpec::default()
            },
        ));
        let g = w.gated();
        assert!(!g.gates.spawn);
        let message = g.report.map(|r| r.succeeded.message).unwrap_or_default();
        assert!(
            message.starts_with("approval required by PolicyBundle approvals:"),
            "{message}"
        );
    }

    #[test]
    fn an_approved_plan_runs_with_the_approved_condition() {
        let g = World::of(reviewed(needing_approval(), "approve", DIGEST)).gated();
        assert!(g.gates.spawn);
        assert_eq!(g.report, None);
        assert_eq!(
            g.approved,
            Some(Desired::new(
                APPROVED,
                Status::True,
                "PlanApproved",
                format!("alice approved plan {DIGEST}")
            ))
        );
        assert!(g.events.is_empty());
    }

    #[test]
    fn an_approval_of_another_digest_does_not_count() {
        let g = World::of(reviewed(needing_approval(), "approve", "sha256:bbbb")).gated();
        assert!(!g.gates.spawn);
        assert_eq!(reason(&g.report), Some("AwaitingApproval"));
        // Nor does a rejection of another plan.
        let g = World::of(reviewed(needing_approval(), "reject", "sha256:bbbb")).gated();
        assert_eq!(reason(&g.report), Some("AwaitingApproval"));
    }

    #[test]
    fn a_rejected_plan_fails_the_project_before_any_other_gate() {
        let mut w = World::of(reviewed(needing_approval(), "reject", DIGEST));
        w.kill_switch = Some(("halt", "incident"));
        w.capsules.clear();
        let GateDecision::Rejected(report) = w.check() else {
            panic!("expected a rejection");
        };
        let message = "alice rejected the plan: too costly";
        assert_eq!(
            report,
            Report {
                phase: ProjectPhase::Failed,
                succeeded: Desired::new(SUCCEEDED, Status::False, "PlanRejected", message),
                approved: Some(Desired::new(APPROVED, Status::False, "PlanRejected", message)),
                requeue: SETTLED_RESYNC,
            }
        );
    }

    #[test]
    fn a_missing_capsule_holds_the_project_pending() {
        let g = World::without_capsules(project()).gated();
        assert!(!g.gates.spawn && !g.gates.stop);
        let message = "Capsule summarizer version 1.4.2 is not published; no task runs until it is";
        let report = held(
            &g,
            ProjectPhase::Pending,
            "CapsuleNotFound",
            message,
            vec![EventIntent::warning("CapsuleNotFound", "Spawn", message)],
        );
        assert_eq!(report.requeue, RUNNING_RESYNC);
    }

    #[test]
    fn an_unusable_capsule_holds_the_project_pending() {
        let mut w = World::of(project());
        let mut rejected = (*w.capsules[0]).clone();
        rejected.metadata.annotations = Some(BTreeMap::from([(
            DECISION_ANNOTATION.to_string(),
            "reject".to_string(),
        )]));
        w.capsules = vec![Arc::new(rejected)];
        let g = w.gated();
        assert!(!g.gates.spawn);
        assert_eq!(reason(&g.report), Some("CapsuleUnusable"));
        assert_eq!(
            g.report.map(|r| r.succeeded.message),
            Some("Capsule summarizer-1-4-2 was rejected by its reviewer".to_string())
        );
        assert_eq!(reasons(&g.events), vec!["CapsuleUnusable"]);
    }

    #[test]
    fn a_capsule_blocked_by_policy_holds_the_project_pending() {
        let mut p = project();
        p.spec.region = Some("us-east-1".into());
        let g = World::of(p).gated();
        assert!(!g.gates.spawn);
        let report = g.report.unwrap_or_else(|| panic!("a report"));
        assert_eq!(report.phase, ProjectPhase::Pending);
        assert_eq!(report.succeeded.reason, "PolicyBlocked");
        assert!(
            report.succeeded.message.starts_with("capsule summarizer 1.4.2: ")
                && report
                    .succeeded
                    .message
                    .contains("confidential data may not be processed in region us-east-1")
                && report.succeeded.message.contains("PolicyBundle eu-only"),
            "{}",
            report.succeeded.message
        );
        assert_eq!(reasons(&g.events), vec!["PolicyBlocked"]);
    }

    #[test]
    fn capsules_are_not_looked_at_before_the_plan_is_approved() {
        let g = World::without_capsules(needing_approval()).gated();
        assert_eq!(reason(&g.report), Some("AwaitingApproval"));
        assert_eq!(reasons(&g.events), vec!["AwaitingApproval"]);
    }

    #[test]
    fn an_engaged_kill_switch_stops_everything_and_names_the_bundle() {
        let w = World {
            kill_switch: Some(("halt", "incident 42")),
            ..World::of(project())
        };
        let g = w.gated();
        assert!(g.gates.stop);
        let message = "kill switch engaged by PolicyBundle halt (incident 42): running task Jobs are stopped and nothing new starts until it is released";
        held(
            &g,
            ProjectPhase::Halted,
            "KillSwitchEngaged",
            message,
            vec![EventIntent::warning("KillSwitchEngaged", "Halt", message)],
        );
        // Running Jobs are suspended.
        let step = plan::step(&plan::Input {
            tasks: &w.tasks,
            jobs: &[plan::JobView {
                name: "market-brief-a-1".into(),
                task: "a".into(),
                role: plan::Role::Task,
                attempt: 1,
                round: String::new(),
                state: plan::JobState::Active,
                verdict: None,
                has_output: false,
            }],
            round: "",
            parallelism: 4,
            review: false,
            gates: g.gates.clone(),
            moderation: None,
        });
        assert_eq!(step.suspend, vec!["market-brief-a-1".to_string()]);
        assert!(step.spawn.is_empty());
    }

    #[test]
    fn a_suspended_project_stops_without_an_event() {
        let mut p = project();
        p.spec.suspend = true;
        let g = World::of(p).gated();
        assert!(g.gates.stop);
        let report = held(
            &g,
            ProjectPhase::Suspended,
            "Suspended",
            "spec.suspend is true: running task Jobs are suspended (their pods stopped) and nothing new starts; set it to false to resume",
            vec![],
        );
        assert_eq!(report.requeue, SETTLED_RESYNC);
    }

    #[test]
    fn the_kill_switch_wins_over_suspend_approval_and_capsules_whose_events_still_go_out() {
        let mut p = needing_approval();
        p.spec.suspend = true;
        let w = World {
            kill_switch: Some(("halt", "incident")),
            ..World::of(p)
        };
        let g = w.gated();
        assert_eq!(reason(&g.report), Some("KillSwitchEngaged"));
        assert!(g.gates.stop && !g.gates.spawn);
        assert_eq!(reasons(&g.events), vec!["AwaitingApproval", "KillSwitchEngaged"]);
        // The approval condition stays.
        assert_eq!(g.approved.map(|a| a.reason), Some("AwaitingApproval"));
        // Suspend wins over a blocked capsule.
        let mut p = project();
        p.spec.suspend = true;
        let g = World::without_capsules(p).gated();
        assert_eq!(reason(&g.report), Some("Suspended"));
        assert_eq!(reasons(&g.events), vec!["CapsuleNotFound"]);
    }

    #[test]
    fn the_deadline_passes_max_duration_seconds_after_the_start() {
        let mut p = project();
        p.spec.budget = Some(Budget {
            max_tasks: None,
            max_duration_seconds: Some(60),
        });
        let start = Timestamp::UNIX_EPOCH;
        let at = |secs: i64| World {
            start: Some(start),
            now: start + SignedDuration::from_secs(secs),
            ..World::of(p.clone())
        };
        assert!(!at(59).gated().gates.deadline_passed);
        let g = at(60).gated();
        assert!(g.gates.deadline_passed);
        assert_eq!(g.deadline, Some(start + SignedDuration::from_secs(60)));
        // Before the run starts there is no deadline.
        let unstarted = World {
            now: start + SignedDuration::from_secs(3600),
            ..World::of(p.clone())
        };
        assert!(!unstarted.gated().gates.deadline_passed);
        // The project fails, naming the budget.
        let (report, event) = outcome(
            &Progress {
                outcome: &Outcome::Failed(vec![(
                    "a".into(),
                    "not finished when budget.maxDurationSeconds ran out".into(),
                )]),
                counts: &TaskCounts {
                    total: 1,
                    running: 1,
                    ..TaskCounts::default()
                },
                results: "market-brief-results",
                caught_up: true,
                now: at(60).now,
                recorded: Recorded(&[]),
            },
            &g,
        );
        assert_eq!(report.phase, ProjectPhase::Failed);
        assert_eq!(report.succeeded.reason, "BudgetExceeded");
        assert_eq!(
            report.succeeded.message,
            format!(
                "budget.maxDurationSeconds ran out; running tasks were stopped: a (not finished when budget.maxDurationSeconds ran out); annotate {RETRY_FAILED_ANNOTATION} with a new value to run the failed tasks again"
            )
        );
        assert_eq!(
            event.map(|e| (e.kind, e.reason, e.action)),
            Some((EventKind::Warning, "BudgetExceeded", "Finish"))
        );
    }

    fn progress<'a>(outcome: &'a Outcome, counts: &'a TaskCounts, recorded: &'a [Condition]) -> Progress<'a> {
        Progress {
            outcome,
            counts,
            results: "market-brief-results",
            caught_up: true,
            now: Timestamp::UNIX_EPOCH,
            recorded: Recorded(recorded),
        }
    }

    #[test]
    fn a_finished_project_reports_its_outcome_once() {
        let g = World::of(project()).gated();
        let counts = TaskCounts {
            total: 3,
            succeeded: 3,
            ..TaskCounts::default()
        };
        let (report, event) = outcome(&progress(&Outcome::Succeeded, &counts, &[]), &g);
        assert_eq!(report.phase, ProjectPhase::Succeeded);
        assert_eq!(report.succeeded.status, Status::True);
        let message = "all 3 tasks succeeded; results in ConfigMap market-brief-results";
        assert_eq!(report.succeeded.message, message);
        assert_eq!(
            event,
            Some(EventIntent::normal("AllTasksSucceeded", "Finish", message))
        );
        let recorded = [condition("AllTasksSucceeded")];
        let (_, again) = outcome(&progress(&Outcome::Succeeded, &counts, &recorded), &g);
        assert_eq!(again, None);

        // Failed tasks: the first ten are named, the rest counted.
        let failed: Vec<(String, String)> =
            (0..12).map(|i| (format!("t{i}"), "exit 1".to_string())).collect();
        let counts = TaskCounts {
            total: 12,
            failed: 12,
            ..TaskCounts::default()
        };
        let (report, event) = outcome(&progress(&Outcome::Failed(failed), &counts, &[]), &g);
        assert_eq!(report.succeeded.reason, "TasksFailed");
        assert!(
            report
                .succeeded
                .message
                .starts_with("12 of 12 tasks failed: t0 (exit 1), ")
                && report
                    .succeeded
                    .message
                    .contains("t9 (exit 1) and 2 more; annotate"),
            "{}",
            report.succeeded.message
        );
        assert_eq!(event.map(|e| e.kind), Some(EventKind::Warning));
    }

    #[test]
    fn a_running_project_reports_progress_or_the_gate_that_holds_it() {
        let counts = TaskCounts {
            total: 4,
            succeeded: 1,
            running: 2,
            pending: 1,
            failed: 0,
        };
        let g = World::of(project()).gated();
        let (report, event) = outcome(&progress(&Outcome::Running, &counts, &[]), &g);
        assert_eq!(report.phase, ProjectPhase::Running);
        assert_eq!(
            report.succeeded.message,
            "1 of 4 tasks succeeded, 2 running, 1 pending, 0 failed"
        );
        assert_eq!(report.requeue, RUNNING_RESYNC);
        assert_eq!(event, None);
        // A gate's report stands, requeued by the sooner of the two.
        let mut p = needing_approval();
        p.spec.suspend = true;
        let g = World::of(reviewed(p, "approve", DIGEST)).gated();
        let (report, _) = outcome(&progress(&Outcome::Running, &counts, &[]), &g);
        assert_eq!(report.phase, ProjectPhase::Suspended);
        assert_eq!(report.requeue, RUNNING_RESYNC);
        assert_eq!(report.approved.map(|a| a.reason), Some("PlanApproved"));
        // A lagging cache, or a deadline near, brings the next look closer.
        let lagging = Progress {
            caught_up: false,
            ..progress(&Outcome::Running, &counts, &[])
        };
        assert_eq!(outcome(&lagging, &g).0.requeue, Duration::from_secs(1));
        let near = Gated {
            deadline: Some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(5)),
            ..World::of(project()).gated()
        };
        let (report, _) = outcome(&progress(&Outcome::Running, &counts, &[]), &near);
        assert_eq!(report.requeue, Duration::from_secs(5));
    }

    #[test]
    fn a_refusal_fails_the_project_stalled_with_the_stage_and_the_moderators_reason() {
        use crate::kinds::project::moderation::{Refusal, Stage};
        let refusal = Refusal {
            stage: Stage::Output,
            subject: "a".into(),
            attempt: Some(1),
            moderator: "mod 1.0.0 (PolicyBundle strict)".into(),
            reason: "output contains the denied term \"secret\"".into(),
            failed: false,
        };
        let g = World::of(project()).gated();
        let counts = TaskCounts {
            total: 2,
            failed: 1,
            pending: 1,
            ..TaskCounts::default()
        };
        let refused_outcome = Outcome::Refused(refusal.clone());
        let (report, event) = outcome(&progress(&refused_outcome, &counts, &[]), &g);
        assert_eq!(report.phase, ProjectPhase::Failed);
        assert_eq!(report.succeeded.status, Status::False);
        assert_eq!(report.succeeded.reason, "OutputRefused");
        let message = "the output of task a (attempt 1) was refused by moderator mod 1.0.0 (PolicyBundle strict): output contains the denied term \"secret\"; the output is not in the results and no dependant received it; nothing new starts and running Jobs were stopped (task a)";
        assert_eq!(report.succeeded.message, message);
        assert_eq!(
            event,
            Some(EventIntent::warning("OutputRefused", "Moderate", message))
        );
        assert_eq!(report.readiness().1, Health::Stalled);
        // Announced once.
        let recorded = [condition("OutputRefused")];
        assert_eq!(
            outcome(&progress(&refused_outcome, &counts, &recorded), &g).1,
            None
        );
        // The goal's report names the stage; a goal waiting says for whom.
        let goal = Refusal {
            stage: Stage::Goal,
            subject: "market-brief".into(),
            attempt: None,
            ..refusal
        };
        let (report, event) = refused(&goal);
        assert_eq!(report.succeeded.reason, "GoalRefused");
        assert_eq!(event.map(|e| e.kind), Some(EventKind::Warning));
        let waiting = moderating_goal("mod 1.0.0 (spec.moderation)");
        assert_eq!(waiting.phase, ProjectPhase::Pending);
        assert_eq!(
            waiting.succeeded.message,
            "waiting for moderator mod 1.0.0 (spec.moderation) to check the goal; nothing is planned or run before"
        );
    }

    #[test]
    fn a_new_retry_round_is_announced_once() {
        assert_eq!(
            retry_round("r2", Some("r1")),
            Some(EventIntent::normal(
                "RetryingFailedTasks",
                "Retry",
                "retry round r2: failed tasks run again"
            ))
        );
        assert_eq!(retry_round("r2", Some("r2")), None);
        assert_eq!(retry_round("", None), None);
    }

    #[test]
    fn an_invalid_plan_or_a_refused_child_fails_the_project() {
        let problems = vec!["task a depends on zz, which is not in the plan".to_string()];
        let (report, event) = invalid_plan(&problems, &Recorded(&[]));
        assert_eq!(report.phase, ProjectPhase::Failed);
        assert_eq!(
            report.succeeded.message,
            "the plan is invalid, nothing was started: task a depends on zz, which is not in the plan"
        );
        assert_eq!(
            event.map(|e| (e.reason, e.message)),
            Some(("InvalidPlan", problems[0].clone()))
        );
        assert_eq!(
            invalid_plan(&problems, &Recorded(&[condition("InvalidPlan")])).1,
            None
        );

        let (report, event) = child_rejected("the API server refused Job j: quota", &Recorded(&[]));
        assert_eq!(report.succeeded.reason, "ChildRejected");
        assert_eq!(
            report.succeeded.message,
            "the API server refused Job j: quota; change the project (or what conflicts with it) and it is tried again"
        );
        assert_eq!(report.requeue, Duration::from_secs(300));
        assert_eq!(event.map(|e| e.kind), Some(EventKind::Warning));
    }
}
