//! `somastack-operator drills`: the disaster-drill summary, from the runs
//! the DrDrills keep in their status.

use kube::api::ListParams;
use somastack_controllers::kinds::drill::logic::{SummaryRow, summary};
use somastack_crds::DrDrill;

use crate::cli::SummaryArgs;
use crate::cluster::scoped;
use crate::error::Result;
use crate::summary::{percent, secs};

pub fn summary_command(args: SummaryArgs) -> Result<()> {
    crate::summary::print(
        &args,
        async |client, namespace| {
            let drills = scoped::<DrDrill>(client, namespace)
                .list(&ListParams::default())
                .await?;
            Ok(summary(&drills.items))
        },
        |rows| table(rows),
    )
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
