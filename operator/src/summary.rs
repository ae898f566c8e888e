//! What the summary commands (`drills`, `projects`) share: fetching,
//! printing as a table or JSON, and the table's cells.

use kube::Client;
use serde::Serialize;

use crate::cli::{Output, SummaryArgs};
use crate::error::{Error, Result};

/// Runs `gather` (given the client and the namespace to summarize, `None`
/// for all) and prints what it returns as `args.output` asks: JSON, or the
/// table `table` renders.
pub fn print<T: Serialize>(
    args: &SummaryArgs,
    gather: impl AsyncFnOnce(Client, Option<&str>) -> Result<T>,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    let summary = crate::cluster::with_client(&args.cluster, async |client| {
        gather(client, args.namespace.as_deref()).await
    })?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| Error::Render(e.to_string()))?
        ),
        Output::Table => print!("{}", table(&summary)),
    }
    Ok(())
}

/// Seconds with one decimal, or `-`.
pub fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into())
}

/// A rate (0 to 1) as a whole percentage, or `-`.
pub fn percent(v: Option<f64>) -> String {
    v.map(|p| format!("{:.0}%", p * 100.0))
        .unwrap_or_else(|| "-".into())
}
