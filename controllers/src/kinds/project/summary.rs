//! The KAMACHIQ summary: per project, its phase, task counts, success rate
//! and mean task duration, and the totals across projects. Pure: the
//! projects and their Jobs are arguments.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use somastack_crds::KamachiqProject;
use somastack_crds::kamachiq::{PROJECT_UID_LABEL, ProjectPhase, ROLE_LABEL};

/// One project's record.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRow {
    /// The project's namespace.
    pub namespace: String,
    /// The project's name.
    pub name: String,
    /// The status phase (`Pending` for a project without one).
    pub phase: String,
    /// Tasks in its plan.
    pub tasks: i32,
    /// Tasks whose result was accepted.
    pub succeeded: i32,
    /// Tasks that failed for good.
    pub failed: i32,
    /// Task Jobs (`role=task`) the project has run or runs.
    pub attempts: usize,
    /// Succeeded tasks / (succeeded + failed), 0..1 (absent when neither).
    pub success_rate: Option<f64>,
    /// Mean seconds of the project's finished task Jobs (absent when none).
    pub mean_task_seconds: Option<f64>,
    /// The project's `status.startTime`: when its run (or retry) began.
    pub started: Option<Timestamp>,
    /// The project's `status.completionTime`: when it succeeded or failed.
    pub finished: Option<Timestamp>,
}

/// Across every listed project.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub projects: usize,
    /// Projects per phase, for every phase present.
    pub phases: BTreeMap<String, usize>,
    pub tasks: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Succeeded tasks / (succeeded + failed), 0..1 (absent when neither).
    pub success_rate: Option<f64>,
    /// Mean seconds over every finished task Job (absent when none).
    pub mean_task_seconds: Option<f64>,
}

/// The KAMACHIQ summary.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Sorted by namespace, then name.
    pub projects: Vec<ProjectRow>,
    pub totals: Totals,
}

/// The name of a phase, as the status spells it.
fn phase_name(phase: ProjectPhase) -> String {
    match serde_json::to_value(phase) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{phase:?}"),
    }
}

/// Seconds from a finished Job's start to its end: `completionTime`, or the
/// `Failed` condition's transition. `None` while running or without a start.
pub fn finished_seconds(job: &Job) -> Option<f64> {
    let s = job.status.as_ref()?;
    let start = s.start_time.as_ref()?.0;
    let end = s.completion_time.as_ref().map(|t| t.0).or_else(|| {
        s.conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    })?;
    let ms = end.as_millisecond() - start.as_millisecond();
    Some((ms.max(0) as f64) / 1000.0)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn rate(succeeded: i64, failed: i64) -> Option<f64> {
    let done = succeeded + failed;
    (done > 0).then(|| succeeded as f64 / done as f64)
}

/// The summary of `projects`, their task Jobs found in `jobs` by the
/// project-uid label. Jobs of projects not listed, and review Jobs, are
/// ignored.
pub fn summary(projects: &[KamachiqProject], jobs: &[Job]) -> Summary {
    // Finished-task durations and attempt counts, per project uid.
    let mut by_uid: HashMap<&str, (usize, Vec<f64>)> = HashMap::new();
    for job in jobs {
        let Some(labels) = job.metadata.labels.as_ref() else {
            continue;
        };
        if labels.get(ROLE_LABEL).map(String::as_str) != Some("task") {
            continue;
        }
        let Some(uid) = labels.get(PROJECT_UID_LABEL) else {
            continue;
        };
        let entry = by_uid.entry(uid.as_str()).or_default();
        entry.0 += 1;
        if let Some(s) = finished_seconds(job) {
            entry.1.push(s);
        }
    }

    let mut rows = Vec::with_capacity(projects.len());
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut all_seconds: Vec<f64> = Vec::new();
    let (mut tasks, mut succeeded, mut failed) = (0i64, 0i64, 0i64);
    for p in projects {
        let status = p.status.as_ref();
        let phase = phase_name(status.and_then(|s| s.phase).unwrap_or_default());
        let counts = status.and_then(|s| s.task_counts.clone()).unwrap_or_default();
        let (attempts, seconds) = p
            .metadata
            .uid
            .as_deref()
            .and_then(|uid| by_uid.get(uid))
            .map(|(n, s)| (*n, s.as_slice()))
            .unwrap_or((0, &[]));
        all_seconds.extend_from_slice(seconds);
        tasks += i64::from(counts.total);
        succeeded += i64::from(counts.succeeded);
        failed += i64::from(counts.failed);
        *phases.entry(phase.clone()).or_default() += 1;
        rows.push(ProjectRow {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            phase,
            tasks: counts.total,
            succeeded: counts.succeeded,
            failed: counts.failed,
            attempts,
            success_rate: rate(i64::from(counts.succeeded), i64::from(counts.failed)),
            mean_task_seconds: mean(seconds),
            started: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            finished: status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
        });
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Summary {
        totals: Totals {
            projects: rows.len(),
            phases,
            tasks,
            succeeded,
            failed,
            success_rate: rate(succeeded, failed),
            mean_task_seconds: mean(&all_seconds),
        },
        projects: rows,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;
    use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use somastack_crds::kamachiq::{
        ATTEMPT_LABEL, PROJECT_UID_LABEL, ProjectPhase, ROLE_LABEL, TASK_LABEL, TaskCounts,
        VERDICT_ANNOTATION,
    };
    use somastack_crds::{KamachiqProject, KamachiqProjectSpec, KamachiqProjectStatus};

    use super::{ProjectRow, summary};

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + second).unwrap()
    }

    fn project(ns: &str, name: &str, status: Option<(ProjectPhase, i32, i32, i32)>) -> KamachiqProject {
        let spec: KamachiqProjectSpec =
            serde_json::from_value(serde_json::json!({ "goal": "ship it" })).unwrap();
        let mut p = KamachiqProject::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.uid = Some(format!("uid-{ns}-{name}"));
        p.status = status.map(|(phase, total, succeeded, failed)| KamachiqProjectStatus {
            phase: Some(phase),
            task_counts: Some(TaskCounts {
                total,
                pending: total - succeeded - failed,
                running: 0,
                succeeded,
                failed,
            }),
            start_time: Some(Time(ts(0))),
            completion_time: matches!(phase, ProjectPhase::Succeeded | ProjectPhase::Failed)
                .then(|| Time(ts(100))),
            ..KamachiqProjectStatus::default()
        });
        p
    }

    enum End {
        Running,
        Complete(i64),
        Failed(i64),
    }

    fn job(uid: &str, task: &str, attempt: u32, role: &str, start: i64, end: End) -> Job {
        let labels = BTreeMap::from([
            (PROJECT_UID_LABEL.to_string(), uid.to_string()),
            (TASK_LABEL.to_string(), task.to_string()),
            (ATTEMPT_LABEL.to_string(), attempt.to_string()),
            (ROLE_LABEL.to_string(), role.to_string()),
        ]);
        let verdict = match end {
            End::Running => None,
            End::Complete(_) => Some("accepted"),
            End::Failed(_) => Some("failed"),
        };
        let (completion_time, conditions) = match end {
            End::Running => (None, None),
            End::Complete(s) => (
                Some(Time(ts(s))),
                Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(ts(s))),
                    ..JobCondition::default()
                }]),
            ),
            End::Failed(s) => (
                None,
                Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("BackoffLimitExceeded".into()),
                    last_transition_time: Some(Time(ts(s))),
                    ..JobCondition::default()
                }]),
            ),
        };
        Job {
            metadata: ObjectMeta {
                name: Some(format!("{uid}-{task}-{role}-{attempt}")),
                labels: Some(labels),
                annotations: verdict
                    .map(|v| BTreeMap::from([(VERDICT_ANNOTATION.to_string(), v.to_string())])),
                ..ObjectMeta::default()
            },
            status: Some(JobStatus {
                start_time: Some(Time(ts(start))),
                completion_time,
                conditions,
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn summary_rows_are_sorted_and_counted_from_status_and_task_jobs() {
        let projects = vec![
            project("b", "zeta", Some((ProjectPhase::Running, 4, 1, 0))),
            project("a", "beta", Some((ProjectPhase::Failed, 3, 2, 1))),
            project("a", "alpha", Some((ProjectPhase::Succeeded, 2, 2, 0))),
        ];
        let jobs = vec![
            // alpha: two accepted tasks, 10s and 20s; their reviews are not attempts.
            job("uid-a-alpha", "x", 1, "task", 0, End::Complete(10)),
            job("uid-a-alpha", "y", 1, "task", 5, End::Complete(25)),
            job("uid-a-alpha", "x", 1, "review", 10, End::Complete(1000)),
            // beta: a failed attempt (Failed condition), a retry that succeeded, one running.
            job("uid-a-beta", "x", 1, "task", 0, End::Failed(4)),
            job("uid-a-beta", "x", 2, "task", 10, End::Complete(18)),
            job("uid-a-beta", "y", 1, "task", 20, End::Running),
            // a project not listed.
            job("uid-gone", "x", 1, "task", 0, End::Complete(500)),
        ];
        let s = summary(&projects, &jobs);
        let names: Vec<(&str, &str)> = s
            .projects
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(names, vec![("a", "alpha"), ("a", "beta"), ("b", "zeta")]);

        let alpha = &s.projects[0];
        assert_eq!(alpha.phase, "Succeeded");
        assert_eq!(
            (alpha.tasks, alpha.succeeded, alpha.failed, alpha.attempts),
            (2, 2, 0, 2)
        );
        assert!(close(alpha.success_rate, 1.0));
        assert!(close(alpha.mean_task_seconds, 15.0));
        assert_eq!(alpha.started, Some(ts(0)));
        assert_eq!(alpha.finished, Some(ts(100)));

        let beta = &s.projects[1];
        assert_eq!(beta.phase, "Failed");
        assert_eq!(beta.attempts, 3);
        assert!(close(beta.success_rate, 2.0 / 3.0));
        assert!(close(beta.mean_task_seconds, 6.0), "{:?}", beta.mean_task_seconds);

        let zeta = &s.projects[2];
        assert_eq!(zeta.phase, "Running");
        assert_eq!(zeta.attempts, 0);
        assert!(close(zeta.success_rate, 1.0));
        assert_eq!(zeta.mean_task_seconds, None);
        assert_eq!(zeta.finished, None);

        let t = &s.totals;
        assert_eq!(t.projects, 3);
        assert_eq!(
            t.phases,
            BTreeMap::from([
                ("Failed".to_string(), 1),
                ("Running".to_string(), 1),
                ("Succeeded".to_string(), 1)
            ])
        );
        assert_eq!((t.tasks, t.succeeded, t.failed), (9, 5, 1));
        assert!(close(t.success_rate, 5.0 / 6.0));
        // Over every finished task Job: 10, 20, 4, 8.
        assert!(close(t.mean_task_seconds, 10.5), "{:?}", t.mean_task_seconds);
    }

    #[test]
    fn summary_of_a_project_without_status_is_pending_and_unknown() {
        let s = summary(&[project("ns", "fresh", None)], &[]);
        assert_eq!(
            s.projects,
            vec![ProjectRow {
                namespace: "ns".into(),
                name: "fresh".into(),
                phase: "Pending".into(),
                tasks: 0,
                succeeded: 0,
                failed: 0,
                attempts: 0,
                success_rate: None,
                mean_task_seconds: None,
                started: None,
                finished: None,
            }]
        );
        assert_eq!(s.totals.phases, BTreeMap::from([("Pending".to_string(), 1)]));
        assert_eq!(s.totals.success_rate, None);
        assert_eq!(s.totals.mean_task_seconds, None);
    }

    #[test]
    fn summary_of_nothing_is_empty() {
        let s = summary(&[], &[job("uid-x", "t", 1, "task", 0, End::Complete(3))]);
        assert!(s.projects.is_empty());
        assert_eq!(s.totals.projects, 0);
        assert!(s.totals.phases.is_empty());
        assert_eq!((s.totals.tasks, s.totals.succeeded, s.totals.failed), (0, 0, 0));
        assert_eq!(s.totals.mean_task_seconds, None);
    }

    #[test]
    fn summary_serializes_camel_case() {
        let projects = vec![project("a", "alpha", Some((ProjectPhase::Succeeded, 1, 1, 0)))];
        let jobs = vec![job("uid-a-alpha", "x", 1, "task", 0, End::Complete(2))];
        let v = serde_json::to_value(summary(&projects, &jobs)).unwrap();
        let row = &v["projects"][0];
        assert_eq!(row["successRate"], 1.0);
        assert_eq!(row["meanTaskSeconds"], 2.0);
        assert_eq!(row["attempts"], 1);
        assert_eq!(row["started"], ts(0).to_string());
        assert_eq!(v["totals"]["phases"]["Succeeded"], 1);
        assert_eq!(v["totals"]["successRate"], 1.0);
        assert_eq!(v["totals"]["meanTaskSeconds"], 2.0);
    }
}
