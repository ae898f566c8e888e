//! `somastack-operator drills`: the disaster-drill summary, from the runs
//! the DrDrills keep in their status.

use kube::Api;
use kube::api::ListParams;
use somastack_controllers::kinds::drill::plan::{SummaryRow, summary};
use somastack_crds::DrDrill;

use crate::cli::{Output, SummaryArgs};
use crate::error::{Error, Result};

pub fn summary_command(args: SummaryArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(async {
        let client = crate::cluster::client(&args.cluster).await?;
        let api: Api<DrDrill> = match &args.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        Ok::<_, Error>(summary(&api.list(&ListParams::default()).await?.items))
    })?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Error::Render(e.to_string()))?
        ),
        Output::Table => print!("{}", table(&rows)),
    }
    Ok(())
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into())
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
            r.pass_rate
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_else(|| "-".into()),
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
