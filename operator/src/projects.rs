//! `somastack-operator projects`: the KAMACHIQ summary, from the projects'
//! status and their task Jobs; and `retry-failed`: run a project's failed
//! tasks again.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use somastack_controllers::kinds::project::summary::{Summary, summary};
use somastack_crds::KamachiqProject;
use somastack_crds::kamachiq::{PROJECT_UID_LABEL, RETRY_FAILED_ANNOTATION};

use crate::cli::{RetryFailedArgs, SummaryArgs};
use crate::cluster::scoped;
use crate::error::{Error, Result};
use crate::summary::{percent, secs};

pub fn summary_command(args: SummaryArgs) -> Result<()> {
    crate::summary::print(
        &args,
        async |client, namespace| {
            let projects = scoped::<KamachiqProject>(client.clone(), namespace)
                .list(&ListParams::default())
                .await?
                .items;
            let jobs = scoped::<Job>(client, namespace)
                .list(&ListParams::default().labels(PROJECT_UID_LABEL))
                .await?
                .items;
            Ok(summary(&projects, &jobs))
        },
        table,
    )
}

pub fn retry_failed_command(args: RetryFailedArgs) -> Result<()> {
    let round = Timestamp::now().to_string();
    crate::cluster::with_client(&args.cluster, async |client| {
        let api: Api<KamachiqProject> = Api::namespaced(client, &args.namespace);
        match api
            .patch(
                &args.name,
                &PatchParams::default(),
                &Patch::Merge(retry_patch(&round)),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NotFound(format!(
                "kamachiqproject {}/{}",
                args.namespace, args.name
            ))),
            Err(e) => Err(e.into()),
        }
    })?;
    println!(
        "kamachiqproject {}/{}: failed tasks will run again (round {round})",
        args.namespace, args.name
    );
    Ok(())
}

/// The JSON merge patch that asks for retry round `round`.
fn retry_patch(round: &str) -> serde_json::Value {
    json!({ "metadata": { "annotations": { RETRY_FAILED_ANNOTATION: round } } })
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
    fn projects_retry_patch_sets_only_the_annotation() {
        assert_eq!(
            retry_patch("2026-01-02T03:04:05Z"),
            json!({ "metadata": { "annotations": { "kamachiq.somastack.io/retry-failed": "2026-01-02T03:04:05Z" } } })
        );
    }
}
