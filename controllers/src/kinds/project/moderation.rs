//! Moderation of a KamachiqProject, as pure functions: which moderators
//! apply, the moderation Job each text needs, how a finished one is judged,
//! and what the decisions say about a stage.
//!
//! A moderator is a capsule run as a Job per text it checks: the goal before
//! it is planned (and before any task with `spec.tasks`), each task's input
//! before its first Job, each output before it is reviewed or accepted. The
//! Job's name is derived from a digest of the stage, the subject, the text
//! and the moderator (package, version, config), so a restart cannot
//! duplicate a decision (a second create is refused), the same text is
//! never moderated twice, and changed text (a new generation) is. The
//! decision is written on the Job as annotations once it ended, like a
//! task's verdict: the Jobs are the record.
//!
//! Every moderator must allow. Anything but an answer `Allow` for the right
//! stage refuses (fail closed): a `Refuse`, a failed or timed-out Job, an
//! empty or unreadable termination message.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::json;
use somastack_crds::common::CapsuleRef;
use somastack_crds::kamachiq::{
    DECISION_ANNOTATION, MAX_LISTED_MODERATORS, MODERATOR_ANNOTATION, Moderation, REASON_ANNOTATION,
    ROLE_LABEL, STAGE_LABEL, Task,
};

use super::plan::JobState;
use super::render::bounded_name;
use crate::domain::policy::{self, Bundle};
use crate::domain::sha256_hex;

/// `kamachiq.somastack.io/role` of a moderation Job.
pub const ROLE: &str = "moderation";
/// Most bytes of a moderator's reason kept in annotations, status and Events.
const MAX_REASON: usize = 400;

/// What is moderated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The project's goal, before it is planned.
    Goal,
    /// A task's input, before its first Job.
    Input,
    /// A task attempt's output, before it is reviewed or accepted.
    Output,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Goal => "goal",
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        match s {
            "goal" => Some(Stage::Goal),
            "input" => Some(Stage::Input),
            "output" => Some(Stage::Output),
            _ => None,
        }
    }

    /// The `Succeeded` reason of a project refused at this stage.
    pub fn refused_reason(self) -> &'static str {
        match self {
            Stage::Goal => "GoalRefused",
            Stage::Input => "InputRefused",
            Stage::Output => "OutputRefused",
        }
    }
}

/// One moderator that applies to a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moderator {
    pub capsule: CapsuleRef,
    pub config: BTreeMap<String, String>,
    pub timeout_seconds: i32,
    /// Who requires it: `PolicyBundle <name>` or `spec.moderation`.
    pub source: String,
}

impl Moderator {
    fn of(m: &Moderation, source: String) -> Moderator {
        Moderator {
            capsule: m.capsule.clone(),
            config: m.config.clone(),
            timeout_seconds: m.timeout_seconds,
            source,
        }
    }

    /// `<package> <version> (<source>)`.
    pub fn shown(&self) -> String {
        format!(
            "{} {} ({})",
            self.capsule.package, self.capsule.version, self.source
        )
    }

    fn same(&self, m: &Moderation) -> bool {
        self.capsule == m.capsule && self.config == m.config
    }
}

/// The moderators of a project: those the enforced governing bundles
/// require (sorted by bundle name, one per package, version and config),
/// then the project's own `spec.moderation` unless a bundle runs the same.
pub fn effective(own: Option<&Moderation>, bundles: &[Bundle<'_>]) -> Vec<Moderator> {
    let mut out: Vec<Moderator> = policy::required_moderation(bundles)
        .into_iter()
        .map(|(bundle, m)| Moderator::of(m, format!("PolicyBundle {bundle}")))
        .collect();
    if let Some(m) = own
        && !out.iter().any(|o| o.same(m))
    {
        out.push(Moderator::of(m, "spec.moderation".into()));
    }
    out
}

/// What status lists (`status.moderators`): at most [`MAX_LISTED_MODERATORS`].
pub fn listed(moderators: &[Moderator]) -> Vec<String> {
    moderators
        .iter()
        .take(MAX_LISTED_MODERATORS)
        .map(Moderator::shown)
        .collect()
}

/// One text to moderate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub stage: Stage,
    /// The project's name (goal) or the task's.
    pub name: &'a str,
    /// The attempt whose output it is (output only).
    pub attempt: Option<u32>,
    pub text: &'a str,
}

impl Subject<'_> {
    /// How messages name it: `the goal`, `the input of task t`, `the output
    /// of task t (attempt 2)`.
    pub fn described(&self) -> String {
        match (self.stage, self.attempt) {
            (Stage::Goal, _) => "the goal".into(),
            (Stage::Input, _) => format!("the input of task {}", self.name),
            (Stage::Output, Some(a)) => format!("the output of task {} (attempt {a})", self.name),
            (Stage::Output, None) => format!("the output of task {}", self.name),
        }
    }
}

/// Hex digest of what a decision is about: the stage, the subject, the
/// text and the moderator (package, version, config). Neither the attempt
/// nor the timeout: the same text is not moderated twice.
pub fn key(subject: &Subject<'_>, moderator: &Moderator) -> String {
    let identity = json!({
        "stage": subject.stage.as_str(),
        "subject": subject.name,
        "text": subject.text,
        "package": moderator.capsule.package,
        "version": moderator.capsule.version,
        "config": moderator.config,
    });
    sha256_hex(identity.to_string().as_bytes())
}

/// The deterministic name of the moderation Job of `subject` by `moderator`:
/// `<project>[-<task>]-<stage>-<10 hex of the key>`, hashed to fit 63.
pub fn job_name(project: &str, subject: &Subject<'_>, moderator: &Moderator) -> String {
    let base = match subject.stage {
        Stage::Goal => project.to_string(),
        Stage::Input | Stage::Output => format!("{project}-{}", subject.name),
    };
    let key = key(subject, moderator);
    bounded_name(&base, &format!("-{}-{}", subject.stage.as_str(), &key[..10]), 63)
}

/// A moderator's decision, as the Job's annotations record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Refuse(String),
    /// The moderator did not answer (failed, timed out, unreadable answer):
    /// counts as a refusal.
    Failed(String),
}

impl Decision {
    /// The annotation's value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "Allow",
            Decision::Refuse(_) => "Refuse",
            Decision::Failed(_) => "Failed",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow(r) | Decision::Refuse(r) | Decision::Failed(r) => r,
        }
    }

    /// From the annotations (`decision`, `reason`).
    pub fn parse(decision: Option<&str>, reason: Option<&str>) -> Option<Decision> {
        let reason = reason.unwrap_or_default().to_string();
        match decision? {
            "Allow" => Some(Decision::Allow(reason)),
            "Refuse" => Some(Decision::Refuse(reason)),
            "Failed" => Some(Decision::Failed(reason)),
            _ => None,
        }
    }
}

/// The moderator's answer (docs/moderation.schema.json).
#[derive(Deserialize)]
struct Answer {
    decision: String,
    stage: String,
    #[serde(default)]
    reason: String,
}

/// Judges a finished moderation Job of `stage` from its state and its pod's
/// termination message; `None` while it has not ended. Fail closed:
/// anything but `Allow` for this stage refuses.
pub fn judge(stage: Stage, state: &JobState, message: Option<&str>) -> Option<Decision> {
    let said = |m: &str| crate::text::bounded(m.trim(), MAX_REASON);
    match state {
        JobState::Active | JobState::Suspended => None,
        JobState::Failed(why) => Some(Decision::Failed(match message {
            Some(m) if !m.trim().is_empty() => format!("the moderator failed ({why}): {}", said(m)),
            _ => format!("the moderator failed ({why})"),
        })),
        JobState::Succeeded => {
            let Some(m) = message.filter(|m| !m.trim().is_empty()) else {
                return Some(Decision::Failed(
                    "the moderator wrote no decision (termination message empty)".into(),
                ));
            };
            let Ok(answer) = serde_json::from_str::<Answer>(m.trim()) else {
                return Some(Decision::Failed(format!(
                    "the moderator's answer is not a decision: {}",
                    said(m)
                )));
            };
            if answer.stage != stage.as_str() {
                return Some(Decision::Failed(format!(
                    "the moderator answered for stage {:?}, not {}",
                    said(&answer.stage),
                    stage.as_str()
                )));
            }
            let reason = if answer.reason.trim().is_empty() {
                "no reason given".to_string()
            } else {
                said(&answer.reason)
            };
            Some(match answer.decision.as_str() {
                "Allow" => Decision::Allow(reason),
                "Refuse" => Decision::Refuse(reason),
                other => Decision::Failed(format!(
                    "the moderator's decision {:?} is neither Allow nor Refuse",
                    said(other)
                )),
            })
        }
    }
}

/// A moderation Job, as the decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub stage: Stage,
    pub state: JobState,
    pub decision: Option<Decision>,
}

/// The moderation Jobs of a project, by name.
pub type Records = BTreeMap<String, Record>;

/// A Job as a moderation record (`None` for a Job of another role).
pub fn record(job: &Job) -> Option<(String, Record)> {
    let labels = job.labels();
    if labels.get(ROLE_LABEL).map(String::as_str) != Some(ROLE) {
        return None;
    }
    let stage = Stage::parse(labels.get(STAGE_LABEL)?)?;
    let annotations = job.annotations();
    Some((
        job.name_any(),
        Record {
            stage,
            state: super::job_state(job),
            decision: Decision::parse(
                annotations.get(DECISION_ANNOTATION).map(String::as_str),
                annotations.get(REASON_ANNOTATION).map(String::as_str),
            ),
        },
    ))
}

/// The moderation Jobs that ended and have no decision yet: to judge.
pub fn to_judge(records: &Records) -> Vec<(&str, Stage, &JobState)> {
    records
        .iter()
        .filter(|(_, r)| r.decision.is_none())
        .filter(|(_, r)| matches!(r.state, JobState::Succeeded | JobState::Failed(_)))
        .map(|(name, r)| (name.as_str(), r.stage, &r.state))
        .collect()
}

/// A text a moderator refused (or could not moderate): the project stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub stage: Stage,
    /// The project (goal) or the task.
    pub subject: String,
    pub attempt: Option<u32>,
    /// [`Moderator::shown`].
    pub moderator: String,
    pub reason: String,
    /// The moderator failed rather than refused.
    pub failed: bool,
}

impl Refusal {
    /// The `Succeeded` condition's reason.
    pub fn condition_reason(&self) -> &'static str {
        if self.failed {
            "ModerationFailed"
        } else {
            self.stage.refused_reason()
        }
    }

    /// The condition's (and the Event's) message: what was refused, by
    /// whom, why, and what that stopped.
    pub fn message(&self) -> String {
        let subject = Subject {
            stage: self.stage,
            name: &self.subject,
            attempt: self.attempt,
            text: "",
        };
        let what = subject.described();
        let head = if self.failed {
            format!(
                "moderator {} failed on {what}, which counts as a refusal: {}",
                self.moderator, self.reason
            )
        } else {
            format!(
                "{what} was refused by moderator {}: {}",
                self.moderator, self.reason
            )
        };
        let after = match self.stage {
            Stage::Goal => "nothing was planned and no task ran".to_string(),
            Stage::Input => format!(
                "task {} did not run; nothing new starts and running Jobs were stopped",
                self.subject
            ),
            Stage::Output => format!(
                "the output is not in the results and no dependant received it; nothing new starts and running Jobs were stopped (task {})",
                self.subject
            ),
        };
        format!("{head}; {after}")
    }
}

/// What the moderators decided about one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Every moderator allowed it (or none applies).
    Allowed,
    /// A decision is missing: its Job is to be created, runs, or is to be judged.
    Pending,
    /// A moderator refused it (the first, in moderator order).
    Refused(Refusal),
}

/// What `moderators` decided about `subject`, from the project's moderation
/// Jobs: the first refusal, else pending while a decision is missing, else
/// allowed.
pub fn gate(project: &str, subject: &Subject<'_>, moderators: &[Moderator], records: &Records) -> Gate {
    let mut pending = false;
    for m in moderators {
        let decision = records
            .get(&job_name(project, subject, m))
            .and_then(|r| r.decision.as_ref());
        match decision {
            Some(Decision::Allow(_)) => {}
            Some(d @ (Decision::Refuse(_) | Decision::Failed(_))) => {
                return Gate::Refused(Refusal {
                    stage: subject.stage,
                    subject: subject.name.to_string(),
                    attempt: subject.attempt,
                    moderator: m.shown(),
                    reason: d.reason().to_string(),
                    failed: matches!(d, Decision::Failed(_)),
                });
            }
            None => pending = true,
        }
    }
    if pending { Gate::Pending } else { Gate::Allowed }
}

/// The moderation Jobs `subject` still needs: (name, moderator) of each
/// moderator without one.
pub fn missing<'m>(
    project: &str,
    subject: &Subject<'_>,
    moderators: &'m [Moderator],
    records: &Records,
) -> Vec<(String, &'m Moderator)> {
    moderators
        .iter()
        .map(|m| (job_name(project, subject, m), m))
        .filter(|(name, _)| !records.contains_key(name))
        .collect()
}

/// The moderators still deciding about `subject`, as a message names them.
pub fn undecided(
    project: &str,
    subject: &Subject<'_>,
    moderators: &[Moderator],
    records: &Records,
) -> String {
    moderators
        .iter()
        .filter(|m| {
            records
                .get(&job_name(project, subject, m))
                .and_then(|r| r.decision.as_ref())
                .is_none()
        })
        .map(Moderator::shown)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the moderators decided about the inputs and outputs a step looks
/// at: every task's input, and every output kept for moderation (a task
/// attempt that succeeded and is not judged yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gates {
    /// By task.
    pub input: BTreeMap<String, Gate>,
    /// By (task, attempt).
    pub output: BTreeMap<(String, u32), Gate>,
}

/// An output kept for moderation: (task, attempt, output).
pub type KeptOutput<'a> = (&'a str, u32, &'a str);

/// The gates of every input of `tasks` and every output of `outputs`.
pub fn gates(
    project: &str,
    tasks: &[Task],
    outputs: &[KeptOutput<'_>],
    moderators: &[Moderator],
    records: &Records,
) -> Gates {
    let input = tasks
        .iter()
        .map(|t| {
            let subject = input_subject(t);
            (t.name.clone(), gate(project, &subject, moderators, records))
        })
        .collect();
    let output = outputs
        .iter()
        .map(|&(task, attempt, text)| {
            let subject = output_subject(task, attempt, text);
            (
                (task.to_string(), attempt),
                gate(project, &subject, moderators, records),
            )
        })
        .collect();
    Gates { input, output }
}

/// The subject of a task's input: the task's own `input`. The outputs of
/// its dependencies it also receives were moderated as outputs.
pub fn input_subject(task: &Task) -> Subject<'_> {
    Subject {
        stage: Stage::Input,
        name: &task.name,
        attempt: None,
        text: &task.input,
    }
}

/// The subject of an attempt's output.
pub fn output_subject<'a>(task: &'a str, attempt: u32, text: &'a str) -> Subject<'a> {
    Subject {
        stage: Stage::Output,
        name: task,
        attempt: Some(attempt),
        text,
    }
}

/// The subject of the project's goal.
pub fn goal_subject<'a>(project: &'a str, goal: &'a str) -> Subject<'a> {
    Subject {
        stage: Stage::Goal,
        name: project,
        attempt: None,
        text: goal,
    }
}

/// The annotations a moderation Job is created with: who moderates.
pub fn created_annotations(moderator: &Moderator) -> [(&'static str, String); 1] {
    [(MODERATOR_ANNOTATION, moderator.shown())]
}

#[cfg(test)]
mod tests {
    use somastack_crds::policy::{Enforcement, PolicyBundleSpec, ProjectRules};

    use super::*;
    use crate::kinds::project::fixtures::task;

    fn moderation(package: &str, deny: &str) -> Moderation {
        Moderation {
            capsule: CapsuleRef {
                package: package.into(),
                version: "1.0.0".into(),
            },
            config: BTreeMap::from([("MODERATION_DENY".to_string(), deny.to_string())]),
            timeout_seconds: 120,
        }
    }

    fn requiring(m: Moderation, enforcement: Enforcement) -> PolicyBundleSpec {
        PolicyBundleSpec {
            projects: Some(ProjectRules {
                moderation: Some(m),
                ..ProjectRules::default()
            }),
            enforcement,
            ..PolicyBundleSpec::default()
        }
    }

    fn moderators() -> Vec<Moderator> {
        let (a, b) = (
            requiring(moderation("mod", "secret"), Enforcement::Enforce),
            requiring(moderation("mod", "weapon"), Enforcement::Enforce),
        );
        effective(
            None,
            &[
                Bundle {
                    name: "b-second",
                    spec: &b,
                },
                Bundle {
                    name: "a-first",
                    spec: &a,
                },
            ],
        )
    }

    fn decided(stage: Stage, decision: Decision) -> Record {
        Record {
            stage,
            state: JobState::Succeeded,
            decision: Some(decision),
        }
    }

    #[test]
    fn bundles_moderators_come_first_sorted_and_the_projects_own_is_not_run_twice() {
        let bundle = requiring(moderation("mod", "secret"), Enforcement::Enforce);
        let audit = requiring(moderation("audit-mod", "x"), Enforcement::Audit);
        let bundles = [
            Bundle {
                name: "strict",
                spec: &bundle,
            },
            Bundle {
                name: "watching",
                spec: &audit,
            },
        ];
        // The project asks for the bundle's moderator: it runs once, named by the bundle.
        let same = effective(Some(&moderation("mod", "secret")), &bundles);
        assert_eq!(listed(&same), vec!["mod 1.0.0 (PolicyBundle strict)".to_string()]);
        // Another config is another moderator; both must allow.
        let both = effective(Some(&moderation("mod", "other")), &bundles);
        assert_eq!(
            listed(&both),
            vec![
                "mod 1.0.0 (PolicyBundle strict)".to_string(),
                "mod 1.0.0 (spec.moderation)".to_string()
            ]
        );
        // No bundle, no own: no moderation.
        assert!(effective(None, &[]).is_empty());
        assert_eq!(
            listed(&moderators()),
            vec![
                "mod 1.0.0 (PolicyBundle a-first)".to_string(),
                "mod 1.0.0 (PolicyBundle b-second)".to_string()
            ]
        );
    }

    #[test]
    fn job_names_are_deterministic_per_text_and_moderator_and_fit_63() {
        let mods = moderators();
        let goal = goal_subject("brief", "a brief on transfers");
        let name = job_name("brief", &goal, &mods[0]);
        assert!(
            name.starts_with("brief-goal-") && name.len() == "brief-goal-".len() + 10,
            "{name}"
        );
        assert_eq!(
            job_name("brief", &goal, &mods[0]),
            name,
            "the same text: the same Job"
        );
        assert_ne!(
            job_name("brief", &goal, &mods[1]),
            name,
            "each moderator has its own"
        );
        let changed = goal_subject("brief", "a brief on something else");
        assert_ne!(
            job_name("brief", &changed, &mods[0]),
            name,
            "changed text is moderated again"
        );
        // The attempt plays no part: the same output is not moderated twice.
        assert_eq!(
            job_name("brief", &output_subject("t", 1, "out"), &mods[0]),
            job_name("brief", &output_subject("t", 2, "out"), &mods[0])
        );
        let t = task("regulation", &[]);
        let input = job_name("brief", &input_subject(&t), &mods[0]);
        assert!(input.starts_with("brief-regulation-input-"), "{input}");
        let long = "p".repeat(60);
        assert!(job_name(&long, &input_subject(&t), &mods[0]).len() <= 63);
    }

    #[test]
    fn which_moderation_jobs_to_create() {
        let mods = moderators();
        let goal = goal_subject("brief", "g");
        let mut records = Records::new();
        let names: Vec<String> = missing("brief", &goal, &mods, &records)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 2, "one Job per moderator");
        records.insert(
            names[0].clone(),
            Record {
                stage: Stage::Goal,
                state: JobState::Active,
                decision: None,
            },
        );
        let left: Vec<&str> = missing("brief", &goal, &mods, &records)
            .iter()
            .map(|(_, m)| m.source.as_str())
            .collect();
        assert_eq!(left, vec!["PolicyBundle b-second"], "only the one without a Job");
        assert_eq!(gate("brief", &goal, &mods, &records), Gate::Pending);
        assert_eq!(
            undecided("brief", &goal, &mods, &records),
            "mod 1.0.0 (PolicyBundle a-first), mod 1.0.0 (PolicyBundle b-second)"
        );
        // Without moderators, nothing to create and everything allowed.
        assert!(missing("brief", &goal, &[], &records).is_empty());
        assert_eq!(gate("brief", &goal, &[], &records), Gate::Allowed);
    }

    #[test]
    fn every_moderator_must_allow_and_the_first_refusal_is_named() {
        let mods = moderators();
        let goal = goal_subject("brief", "g");
        let names: Vec<String> = mods.iter().map(|m| job_name("brief", &goal, m)).collect();
        let mut records = Records::from([(
            names[0].clone(),
            decided(Stage::Goal, Decision::Allow("no rule matched".into())),
        )]);
        assert_eq!(gate("brief", &goal, &mods, &records), Gate::Pending);
        records.insert(
            names[1].clone(),
            decided(Stage::Goal, Decision::Allow("no rule matched".into())),
        );
        assert_eq!(gate("brief", &goal, &mods, &records), Gate::Allowed);
        records.insert(
            names[1].clone(),
            decided(
                Stage::Goal,
                Decision::Refuse("goal contains the denied term \"weapon\"".into()),
            ),
        );
        let Gate::Refused(r) = gate("brief", &goal, &mods, &records) else {
            panic!("refused");
        };
        assert_eq!(r.condition_reason(), "GoalRefused");
        assert_eq!(
            r.message(),
            "the goal was refused by moderator mod 1.0.0 (PolicyBundle b-second): goal contains the denied term \"weapon\"; nothing was planned and no task ran"
        );
        // A failed moderator refuses, as ModerationFailed.
        records.insert(
            names[0].clone(),
            decided(
                Stage::Goal,
                Decision::Failed("the moderator failed (DeadlineExceeded)".into()),
            ),
        );
        let Gate::Refused(r) = gate("brief", &goal, &mods, &records) else {
            panic!("refused");
        };
        assert_eq!(r.condition_reason(), "ModerationFailed");
        assert!(
            r.message().starts_with(
                "moderator mod 1.0.0 (PolicyBundle a-first) failed on the goal, which counts as a refusal: the moderator failed (DeadlineExceeded)"
            ),
            "{}",
            r.message()
        );
    }

    #[test]
    fn judging_a_finished_moderation_job_fails_closed() {
        let allow = r#"{"decision":"Allow","stage":"input","reason":"no rule matched"}"#;
        let refuse =
            r#"{"decision":"Refuse","stage":"input","reason":"input contains the denied term \"x\""}"#;
        assert_eq!(judge(Stage::Input, &JobState::Active, None), None);
        assert_eq!(judge(Stage::Input, &JobState::Suspended, Some(allow)), None);
        assert_eq!(
            judge(Stage::Input, &JobState::Succeeded, Some(allow)),
            Some(Decision::Allow("no rule matched".into()))
        );
        assert_eq!(
            judge(Stage::Input, &JobState::Succeeded, Some(refuse)),
            Some(Decision::Refuse("input contains the denied term \"x\"".into()))
        );
        // Allow for another stage is no Allow for this one.
        assert_eq!(
            judge(Stage::Output, &JobState::Succeeded, Some(allow)),
            Some(Decision::Failed(
                "the moderator answered for stage \"input\", not output".into()
            ))
        );
        assert_eq!(
            judge(Stage::Input, &JobState::Succeeded, None),
            Some(Decision::Failed(
                "the moderator wrote no decision (termination message empty)".into()
            ))
        );
        assert_eq!(
            judge(Stage::Input, &JobState::Succeeded, Some("looks fine to me")),
            Some(Decision::Failed(
                "the moderator's answer is not a decision: looks fine to me".into()
            ))
        );
        assert_eq!(
            judge(
                Stage::Input,
                &JobState::Succeeded,
                Some(r#"{"decision":"Maybe","stage":"input"}"#)
            ),
            Some(Decision::Failed(
                "the moderator's decision \"Maybe\" is neither Allow nor Refuse".into()
            ))
        );
        // A failed or timed-out Job refuses, with Kubernetes' reason and the pod's words.
        assert_eq!(
            judge(
                Stage::Goal,
                &JobState::Failed("DeadlineExceeded: Job was active longer than specified deadline".into()),
                None
            ),
            Some(Decision::Failed(
                "the moderator failed (DeadlineExceeded: Job was active longer than specified deadline)"
                    .into()
            ))
        );
        assert_eq!(
            judge(
                Stage::Goal,
                &JobState::Failed("BackoffLimitExceeded".into()),
                Some("MODERATION_MAX_BYTES is not a number\n")
            ),
            Some(Decision::Failed(
                "the moderator failed (BackoffLimitExceeded): MODERATION_MAX_BYTES is not a number".into()
            ))
        );
        // The annotation round-trips.
        for d in [
            Decision::Allow("a".into()),
            Decision::Refuse("b".into()),
            Decision::Failed("c".into()),
        ] {
            assert_eq!(
                Decision::parse(Some(d.as_str()), Some(d.reason())),
                Some(d.clone())
            );
        }
        assert_eq!(Decision::parse(Some("allow"), None), None);
    }

    #[test]
    fn gates_cover_every_input_and_every_kept_output() {
        let mods = moderators();
        let tasks = vec![task("a", &[]), task("b", &["a"])];
        let a_input = input_subject(&tasks[0]);
        let out = output_subject("a", 1, "a's output");
        let mut records = Records::new();
        for m in &mods {
            records.insert(
                job_name("p", &a_input, m),
                decided(Stage::Input, Decision::Allow(String::new())),
            );
            records.insert(
                job_name("p", &out, m),
                decided(Stage::Output, Decision::Refuse("too long".into())),
            );
        }
        let g = gates("p", &tasks, &[("a", 1, "a's output")], &mods, &records);
        assert_eq!(g.input["a"], Gate::Allowed);
        assert_eq!(g.input["b"], Gate::Pending);
        let Gate::Refused(r) = &g.output[&("a".to_string(), 1)] else {
            panic!("refused output");
        };
        assert_eq!(r.condition_reason(), "OutputRefused");
        assert!(
            r.message().starts_with(
                "the output of task a (attempt 1) was refused by moderator mod 1.0.0 (PolicyBundle a-first): too long; the output is not in the results"
            ),
            "{}",
            r.message()
        );
        // Finished Jobs without a decision are to be judged; decided or running ones are not.
        records.insert(
            "p-b-input-0123456789".into(),
            Record {
                stage: Stage::Input,
                state: JobState::Failed("DeadlineExceeded".into()),
                decision: None,
            },
        );
        records.insert(
            "p-c-input-0123456789".into(),
            Record {
                stage: Stage::Input,
                state: JobState::Active,
                decision: None,
            },
        );
        let judged: Vec<&str> = to_judge(&records).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(judged, vec!["p-b-input-0123456789"]);
    }
}
