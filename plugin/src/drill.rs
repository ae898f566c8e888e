//! `kubectl soma drill run|summary`: ask for a run now; the disaster-drill
//! summary, from the runs the DrDrills keep in their status.

use jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use somastack_controllers::kinds::drill::logic::{SummaryRow, summary};
use somastack_crds::DrDrill;
use somastack_crds::drill::RUN_ANNOTATION;

use crate::cli::{DrillCommand, Global, Listing, NameArgs};
use crate::cluster::{FIELD_MANAGER, with_cluster};
use crate::error::{Context, Result};
use crate::output::{percent, secs};

pub fn command(global: &Global, command: DrillCommand) -> Result<()> {
    match command {
        DrillCommand::Run(args) => run(global, &args),
        DrillCommand::Summary(listing) => summary_command(global, listing),
    }
}

/// What `run` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunRequested {
    pub drill: String,
    pub namespace: String,
    /// The value of the run annotation; `status.runRequest` shows it once a run started for it.
    pub request: String,
}

/// The merge patch that asks for a run, named `request`.
pub fn run_patch(request: &str) -> serde_json::Value {
    json!({ "metadata": { "annotations": { RUN_ANNOTATION: request } } })
}

fn run(global: &Global, args: &NameArgs) -> Result<()> {
    let request = Timestamp::now().to_string();
    let done = with_cluster(global, async |cluster| {
        let api: Api<DrDrill> = cluster.namespaced();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(&args.name, &params, &Patch::Merge(run_patch(&request)))
            .await
            .context(cluster.name("drdrill", &args.name))?;
        Ok(RunRequested {
            drill: args.name.clone(),
            namespace: cluster.namespace.clone(),
            request: request.clone(),
        })
    })?;
    crate::output::print(global.output, &done, |d| {
        format!(
            "drdrill.somastack.io/{} run requested ({}); follow it with `kubectl -n {} get drill {} -w`\n",
            d.drill, d.request, d.namespace, d.drill
        )
    })
}

fn summary_command(global: &Global, listing: Listing) -> Result<()> {
    let rows = with_cluster(global, async |cluster| {
        let drills = cluster
            .listed::<DrDrill>(listing.all_namespaces)
            .list(&ListParams::default())
            .await
            .context("list drdrills")?;
        Ok(summary(&drills.items))
    })?;
    crate::output::print(global.output, &rows, |rows| table(rows))
}

/// The summary as a table, one Installation per line.
pub fn table(rows: &[SummaryRow]) -> String {
    let mut out = format!(
        "{:<16} {:<20} {:>6} {:>5} {:>9} {:<20} {:>10} {:>9}  FAILING\n",
        "NAMESPACE", "INSTALLATION", "DRILLS", "RUNS", "PASS-RATE", "LAST-RUN", "MEDIAN-RTO", "WORST-RTO"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:<20} {:>6} {:>5} {:>9} {:<20} {:>10} {:>9}  {}\n",
            r.namespace,
            r.installation,
            r.drills,
            r.runs,
            percent(r.pass_rate),
            r.last_run
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| "-".into()),
            secs(r.median_rto_seconds),
            secs(r.worst_rto_seconds),
            if r.failing.is_empty() {
                "-".to_string()
            } else {
                r.failing.join(",")
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_request_sets_only_the_annotation() {
        assert_eq!(
            run_patch("2026-11-26T17:00:00Z"),
            json!({ "metadata": { "annotations": { "drills.somastack.io/run": "2026-11-26T17:00:00Z" } } })
        );
    }

    #[test]
    fn drills_table_has_one_line_per_installation() {
        let rows = vec![SummaryRow {
            namespace: "t1".into(),
            installation: "app".into(),
            drills: 2,
            runs: 3,
            passed: 2,
            pass_rate: Some(2.0 / 3.0),
            last_run: Some("2026-11-23T10:00:00Z".parse().unwrap()),
            median_rto_seconds: Some(4.0),
            worst_rto_seconds: Some(9.0),
            failing: vec!["outage".into()],
        }];
        let out = table(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE") && lines[0].contains("MEDIAN-RTO"));
        assert_eq!(
            lines[1],
            "t1               app                       2     3       67% 2026-11-23T10:00:00Z       4.0s      9.0s  outage"
        );
    }
}
