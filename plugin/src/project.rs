//! `kubectl soma project summary|retry-failed|approve|moderation`: the
//! KAMACHIQ summary, from the projects' status and their task Jobs; running
//! a project's failed tasks again; approving its plan; what its moderators
//! decided.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use somastack_controllers::domain::review::{
    DECISION_ANNOTATION, DIGEST_ANNOTATION, REASON_ANNOTATION, REVIEWER_ANNOTATION,
};
use somastack_controllers::kinds::project::moderation::{self, Stage};
use somastack_controllers::kinds::project::plan::JobState;
use somastack_controllers::kinds::project::summary::{Summary, summary};
use somastack_crds::KamachiqProject;
use somastack_crds::kamachiq::{
    MODERATOR_ANNOTATION, PROJECT_UID_LABEL, RETRY_FAILED_ANNOTATION, ROLE_LABEL, TASK_LABEL,
};

use crate::cli::{Global, Listing, NameArgs, ProjectApproveArgs, ProjectCommand};
use crate::cluster::{FIELD_MANAGER, with_cluster};
use crate::error::{Context, Error, Result};
use crate::output::{percent, secs};

pub fn command(global: &Global, command: ProjectCommand) -> Result<()> {
    match command {
        ProjectCommand::Summary(listing) => summary_command(global, listing),
        ProjectCommand::RetryFailed(args) => retry_failed(global, &args),
        ProjectCommand::Approve(args) => approve(global, &args),
        ProjectCommand::Moderation(args) => moderation_command(global, &args),
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn summary_command(global: &Global, listing: Listing) -> Result<()> {
    let found = with_cluster(global, async |cluster| {
        let projects = cluster
            .listed::<KamachiqProject>(listing.all_namespaces)
            .list(&ListParams::default())
            .await
            .context("list kamachiqprojects")?
            .items;
        let jobs = cluster
            .listed::<Job>(listing.all_namespaces)
            .list(&ListParams::default().labels(PROJECT_UID_LABEL))
            .await
            .context("list the projects' jobs")?
            .items;
        Ok(summary(&projects, &jobs))
    })?;
    crate::output::print(global.output, &found, table)
}

/// What `retry-failed` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retry {
    pub project: String,
    pub namespace: String,
    /// The retry round (the annotation's value).
    pub round: String,
}

fn retry_failed(global: &Global, args: &NameArgs) -> Result<()> {
    let round = Timestamp::now().to_string();
    let done = with_cluster(global, async |cluster| {
        let api: Api<KamachiqProject> = cluster.namespaced();
        api.patch(&args.name, &params(), &Patch::Merge(retry_patch(&round)))
            .await
            .context(cluster.name("kamachiqproject", &args.name))?;
        Ok(Retry {
            project: args.name.clone(),
            namespace: cluster.namespace.clone(),
            round: round.clone(),
        })
    })?;
    crate::output::print(global.output, &done, |r| {
        format!(
            "kamachiqproject {}/{}: failed tasks will run again (round {})\n",
            r.namespace, r.project, r.round
        )
    })
}

/// The JSON merge patch that asks for retry round `round`.
fn retry_patch(round: &str) -> serde_json::Value {
    json!({ "metadata": { "annotations": { RETRY_FAILED_ANNOTATION: round } } })
}

/// What `approve` wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanApproval {
    pub project: String,
    pub namespace: String,
    pub plan_digest: String,
    /// As the operator's admission webhook stamped it (the authenticated user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
}

/// The merge patch approving the plan with `digest`.
pub fn approve_patch(digest: &str, reason: Option<&str>) -> serde_json::Value {
    json!({ "metadata": { "annotations": {
        DECISION_ANNOTATION: "approve",
        DIGEST_ANNOTATION: digest,
        REASON_ANNOTATION: reason,
    } } })
}

fn approve(global: &Global, args: &ProjectApproveArgs) -> Result<()> {
    let done = with_cluster(global, async |cluster| {
        let api: Api<KamachiqProject> = cluster.namespaced();
        let what = cluster.name("kamachiqproject", &args.name);
        let project = api.get(&args.name).await.context(&what)?;
        // Bound to the plan the reviewer can read now, not whatever comes later.
        let Some(digest) = project.status.as_ref().and_then(|s| s.plan_digest.clone()) else {
            return Err(Error::Input(format!(
                "{what} has no validated plan to approve yet (status.planDigest is empty)"
            )));
        };
        let patched = api
            .patch(
                &args.name,
                &params(),
                &Patch::Merge(approve_patch(&digest, args.reason.as_deref())),
            )
            .await
            .context(format!("approve the plan of {what}"))?;
        Ok(PlanApproval {
            project: args.name.clone(),
            namespace: cluster.namespace.clone(),
            plan_digest: digest,
            reviewer: patched.annotations().get(REVIEWER_ANNOTATION).cloned(),
        })
    })?;
    crate::output::print(global.output, &done, |a| {
        format!(
            "kamachiqproject {}/{}: plan {} approved{}\n",
            a.namespace,
            a.project,
            a.plan_digest,
            a.reviewer
                .as_ref()
                .map(|u| format!(" by {u}"))
                .unwrap_or_default()
        )
    })
}

/// The `Succeeded` reasons of a project its moderation stopped.
pub const REFUSED_REASONS: [&str; 4] = ["GoalRefused", "InputRefused", "OutputRefused", "ModerationFailed"];

/// What `moderation` shows of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModerationView {
    pub project: String,
    pub namespace: String,
    /// `status.moderators`: `<package> <version> (<PolicyBundle NAME | spec.moderation>)`.
    pub moderators: Vec<String>,
    /// The refusal that stopped the project (its `Succeeded` condition).
    pub refusal: Option<Refusal>,
    /// One per moderation Job: goal first, then inputs, then outputs.
    pub decisions: Vec<ModerationRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `GoalRefused`, `InputRefused`, `OutputRefused` or `ModerationFailed`.
    pub reason: String,
    pub message: String,
}

/// One moderation Job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModerationRow {
    pub job: String,
    /// `goal`, `input` or `output`.
    pub stage: String,
    /// The task whose input or output it checks; absent for the goal.
    pub task: Option<String>,
    pub moderator: Option<String>,
    /// `Allow`, `Refuse` or `Failed` (no answer: a refusal) once the
    /// operator judged it; before, `Running`, `Suspended` or `Judging`.
    pub decision: String,
    pub reason: Option<String>,
}

/// Pure: the moderation of `project` from its status and its Jobs (those
/// that are not moderation Jobs are left out).
pub fn moderation_view(project: &KamachiqProject, jobs: &[Job]) -> ModerationView {
    let status = project.status.as_ref();
    let refusal = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Succeeded"))
        .filter(|c| c.status != "True" && REFUSED_REASONS.contains(&c.reason.as_str()))
        .map(|c| Refusal {
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
    let mut decisions: Vec<(Stage, ModerationRow)> = jobs
        .iter()
        .filter_map(|job| {
            let (name, record) = moderation::record(job)?;
            let decision = match (&record.decision, &record.state) {
                (Some(d), _) => d.as_str().to_string(),
                (None, JobState::Active) => "Running".into(),
                (None, JobState::Suspended) => "Suspended".into(),
                (None, JobState::Succeeded | JobState::Failed(_)) => "Judging".into(),
            };
            let row = ModerationRow {
                job: name,
                stage: record.stage.as_str().into(),
                task: job.labels().get(TASK_LABEL).cloned(),
                moderator: job.annotations().get(MODERATOR_ANNOTATION).cloned(),
                decision,
                reason: record.decision.as_ref().map(|d| d.reason().to_string()),
            };
            Some((record.stage, row))
        })
        .collect();
    decisions.sort_by(|(a, x), (b, y)| (a, &x.task, &x.job).cmp(&(b, &y.task, &y.job)));
    ModerationView {
        project: project.name_any(),
        namespace: project.namespace().unwrap_or_default(),
        moderators: status.map(|s| s.moderators.clone()).unwrap_or_default(),
        refusal,
        decisions: decisions.into_iter().map(|(_, r)| r).collect(),
    }
}

/// Pure: the moderation as people read it.
pub fn moderation_table(v: &ModerationView) -> String {
    let moderators = if v.moderators.is_empty() {
        "none (no spec.moderation, no PolicyBundle requires one)".to_string()
    } else {
        v.moderators.join(", ")
    };
    let mut out = format!(
        "Project:     {}/{}\nModerators:  {moderators}\n",
        v.namespace, v.project
    );
    if let Some(r) = &v.refusal {
        out.push_str(&format!("Refused:     {}: {}\n", r.reason, r.message));
    }
    out.push('\n');
    if v.decisions.is_empty() {
        out.push_str("No moderation Jobs.\n");
        return out;
    }
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let cells: Vec<Vec<String>> = v
        .decisions
        .iter()
        .map(|d| {
            vec![
                d.stage.clone(),
                or(&d.task),
                d.decision.clone(),
                or(&d.moderator),
                d.job.clone(),
                or(&d.reason),
            ]
        })
        .collect();
    out.push_str(&crate::output::table(
        &["STAGE", "TASK", "DECISION", "MODERATOR", "JOB", "REASON"],
        &cells,
    ));
    out
}

/// `moderation`: exit 3 when moderation refused the project.
fn moderation_command(global: &Global, args: &NameArgs) -> Result<()> {
    let view = with_cluster(global, async |cluster| {
        let what = cluster.name("kamachiqproject", &args.name);
        let project = cluster
            .namespaced::<KamachiqProject>()
            .get(&args.name)
            .await
            .context(&what)?;
        let uid = project
            .uid()
            .ok_or_else(|| Error::Input(format!("{what} has no uid")))?;
        let selector = format!("{PROJECT_UID_LABEL}={uid},{ROLE_LABEL}={}", moderation::ROLE);
        let jobs = cluster
            .namespaced::<Job>()
            .list(&ListParams::default().labels(&selector))
            .await
            .context(format!("list the moderation jobs of {what}"))?
            .items;
        Ok(moderation_view(&project, &jobs))
    })?;
    crate::output::print(global.output, &view, moderation_table)?;
    match &view.refusal {
        Some(r) => Err(Error::CheckFailed(format!(
            "kamachiqproject {}/{} was refused by moderation ({})",
            view.namespace, view.project, r.reason
        ))),
        None => Ok(()),
    }
}

/// The summary as a table, one project per line, then the totals.
pub fn table(summary: &Summary) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<16} {:>5} {:>9} {:>6} {:>12} {:>9}\n",
        "NAMESPACE", "NAME", "PHASE", "TASKS", "SUCCEEDED", "FAILED", "SUCCESS-RATE", "MEAN-TASK"
    );
    for r in &summary.projects {
        out.push_str(&format!(
            "{:<16} {:<24} {:<16} {:>5} {:>9} {:>6} {:>12} {:>9}\n",
            r.namespace,
            r.name,
            r.phase,
            r.tasks,
            r.succeeded,
            r.failed,
            percent(r.success_rate),
            secs(r.mean_task_seconds),
        ));
    }
    let t = &summary.totals;
    out.push('\n');
    if t.phases.is_empty() {
        out.push_str(&format!("projects: {}\n", t.projects));
    } else {
        let phases: Vec<String> = t.phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
        out.push_str(&format!("projects: {} ({})\n", t.projects, phases.join(", ")));
    }
    out.push_str(&format!(
        "tasks: {}, succeeded {}, failed {}, success rate {}\n",
        t.tasks,
        t.succeeded,
        t.failed,
        percent(t.success_rate)
    ));
    out.push_str(&format!("mean task duration: {}\n", secs(t.mean_task_seconds)));
    out
}

#[cfg(test)]
mod tests {
    use somastack_controllers::kinds::project::summary::{ProjectRow, Summary, Totals};

    use super::*;

    fn row(
        ns: &str,
        name: &str,
        phase: &str,
        counts: (i32, i32, i32),
        rate: Option<f64>,
        mean: Option<f64>,
    ) -> ProjectRow {
        ProjectRow {
            namespace: ns.into(),
            name: name.into(),
            phase: phase.into(),
            tasks: counts.0,
            succeeded: counts.1,
            failed: counts.2,
            attempts: 0,
            success_rate: rate,
            mean_task_seconds: mean,
            started: None,
            finished: None,
        }
    }

    /// Totals of projects in `phases` (phase, projects), and tasks `counts`
    /// (tasks, succeeded, failed).
    fn totals(
        phases: &[(&str, usize)],
        counts: (i64, i64, i64),
        rate: Option<f64>,
        mean: Option<f64>,
    ) -> Totals {
        Totals {
            projects: phases.iter().map(|(_, n)| n).sum(),
            phases: phases.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            tasks: counts.0,
            succeeded: counts.1,
            failed: counts.2,
            success_rate: rate,
            mean_task_seconds: mean,
        }
    }

    #[test]
    fn projects_table_has_one_line_per_project_and_totals() {
        let s = Summary {
            projects: vec![
                row("team-a", "docs", "Succeeded", (4, 4, 0), Some(1.0), Some(3.24)),
                row(
                    "team-a",
                    "migrate",
                    "Running",
                    (30, 28, 1),
                    Some(28.0 / 29.0),
                    Some(12.0),
                ),
                row("team-b", "fresh", "Pending", (0, 0, 0), None, None),
            ],
            totals: totals(
                &[("Pending", 1), ("Running", 1), ("Succeeded", 1)],
                (34, 32, 1),
                Some(32.0 / 33.0),
                Some(9.2),
            ),
        };
        let expected = "\
NAMESPACE        NAME                     PHASE            TASKS SUCCEEDED FAILED SUCCESS-RATE MEAN-TASK
team-a           docs                     Succeeded            4         4      0         100%      3.2s
team-a           migrate                  Running             30        28      1          97%     12.0s
team-b           fresh                    Pending              0         0      0            -         -

projects: 3 (Pending 1, Running 1, Succeeded 1)
tasks: 34, succeeded 32, failed 1, success rate 97%
mean task duration: 9.2s
";
        assert_eq!(table(&s), expected);
    }

    #[test]
    fn projects_table_of_nothing_says_so() {
        let s = Summary {
            projects: vec![],
            totals: totals(&[], (0, 0, 0), None, None),
        };
        let out = table(&s);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE "));
        assert_eq!(
            &lines[1..],
            &[
                "",
                "projects: 0",
                "tasks: 0, succeeded 0, failed 0, success rate -",
                "mean task duration: -",
            ]
        );
    }

    #[test]
    fn projects_columns_line_up() {
        let s = Summary {
            projects: vec![row(
                "ns",
                "long-wait",
                "AwaitingApproval",
                (100, 0, 0),
                None,
                None,
            )],
            totals: totals(&[("AwaitingApproval", 1)], (100, 0, 0), None, None),
        };
        let out = table(&s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].len(), lines[1].len());
        assert_eq!(
            lines[0].find("TASKS").map(|i| i + 5),
            lines[1].find("100").map(|i| i + 3)
        );
    }

    #[test]
    fn an_approval_names_the_plan_digest() {
        assert_eq!(
            approve_patch("sha256:ab", Some("looks right")),
            json!({ "metadata": { "annotations": {
                "review.somastack.io/decision": "approve",
                "review.somastack.io/digest": "sha256:ab",
                "review.somastack.io/reason": "looks right" } } })
        );
    }

    #[test]
    fn projects_retry_patch_sets_only_the_annotation() {
        assert_eq!(
            retry_patch("2026-01-02T03:04:05Z"),
            json!({ "metadata": { "annotations": { "kamachiq.somastack.io/retry-failed": "2026-01-02T03:04:05Z" } } })
        );
    }

    /// A moderation Job of `stage` (for `task`), ended (`complete`) with
    /// `decision` (`(decision, reason)`) as the operator annotates it.
    fn moderation_job(name: &str, stage: &str, task: Option<&str>, decision: Option<(&str, &str)>) -> Job {
        let mut labels = json!({ "kamachiq.somastack.io/role": "moderation", "kamachiq.somastack.io/stage": stage,
                                  "kamachiq.somastack.io/project-uid": "u1" });
        if let Some(t) = task {
            labels["kamachiq.somastack.io/task"] = json!(t);
        }
        let mut annotations =
            json!({ "kamachiq.somastack.io/moderator": "moderate 1.0.0 (PolicyBundle eu)" });
        let mut status = json!({});
        if let Some((d, why)) = decision {
            annotations["kamachiq.somastack.io/decision"] = json!(d);
            annotations["kamachiq.somastack.io/reason"] = json!(why);
            status = json!({ "conditions": [{ "type": "Complete", "status": "True" }] });
        }
        serde_json::from_value(
            json!({ "metadata": { "name": name, "namespace": "t1", "labels": labels,
                                                     "annotations": annotations }, "status": status }),
        )
        .unwrap()
    }

    fn refused_project() -> KamachiqProject {
        serde_json::from_value(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
            "metadata": { "name": "docs", "namespace": "t1", "uid": "u1" },
            "spec": { "goal": "write the release notes", "plannerRef": { "package": "p", "version": "1.0.0" } },
            "status": { "phase": "Failed", "moderators": ["moderate 1.0.0 (PolicyBundle eu)"], "conditions": [
                { "type": "Succeeded", "status": "False", "reason": "OutputRefused",
                  "message": "the output of task notes (attempt 1) was refused by moderate 1.0.0 (PolicyBundle eu): names a customer",
                  "lastTransitionTime": "2026-11-26T10:00:00Z" } ] }
        }))
        .unwrap()
    }

    #[test]
    fn moderation_lists_every_decision_goal_first_and_the_refusal() {
        let jobs = [
            moderation_job(
                "docs-notes-output-1a",
                "output",
                Some("notes"),
                Some(("Refuse", "names a customer")),
            ),
            moderation_job("docs-goal-0b", "goal", None, Some(("Allow", "no denied term"))),
            moderation_job(
                "docs-notes-input-2c",
                "input",
                Some("notes"),
                Some(("Allow", "no denied term")),
            ),
            moderation_job("docs-intro-input-3d", "input", Some("intro"), None),
        ];
        let mut other = moderation_job("docs-notes-1", "output", Some("notes"), None);
        other
            .labels_mut()
            .insert("kamachiq.somastack.io/role".into(), "task".into());
        let all: Vec<Job> = jobs.iter().cloned().chain([other]).collect();
        let v = moderation_view(&refused_project(), &all);
        assert_eq!(
            v.refusal,
            Some(Refusal {
                reason: "OutputRefused".into(),
                message:
                    "the output of task notes (attempt 1) was refused by moderate 1.0.0 (PolicyBundle eu): \
                          names a customer"
                        .into()
            })
        );
        assert_eq!(
            moderation_table(&v),
            "Project:     t1/docs\n\
             Moderators:  moderate 1.0.0 (PolicyBundle eu)\n\
             Refused:     OutputRefused: the output of task notes (attempt 1) was refused by moderate 1.0.0 \
             (PolicyBundle eu): names a customer\n\
             \n\
             STAGE    TASK    DECISION   MODERATOR                          JOB                    REASON\n\
             goal     -       Allow      moderate 1.0.0 (PolicyBundle eu)   docs-goal-0b           no denied term\n\
             input    intro   Running    moderate 1.0.0 (PolicyBundle eu)   docs-intro-input-3d    -\n\
             input    notes   Allow      moderate 1.0.0 (PolicyBundle eu)   docs-notes-input-2c    no denied term\n\
             output   notes   Refuse     moderate 1.0.0 (PolicyBundle eu)   docs-notes-output-1a   names a customer\n"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["refusal"]["reason"], "OutputRefused");
        assert_eq!(json["decisions"][3]["decision"], "Refuse");
        assert_eq!(json["decisions"][0]["task"], serde_json::Value::Null);
    }

    #[test]
    fn a_project_without_moderation_says_so() {
        let mut p = refused_project();
        if let Some(s) = p.status.as_mut() {
            s.moderators.clear();
            s.conditions[0].reason = "TaskFailed".into();
        }
        let v = moderation_view(&p, &[]);
        assert_eq!(
            v.refusal, None,
            "a failure that is not moderation's is no refusal"
        );
        assert_eq!(
            moderation_table(&v),
            "Project:     t1/docs\n\
             Moderators:  none (no spec.moderation, no PolicyBundle requires one)\n\
             \n\
             No moderation Jobs.\n"
        );
    }
}
