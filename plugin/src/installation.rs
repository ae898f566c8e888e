//! `kubectl soma installation history|rollback|diff`.

use std::collections::BTreeMap;

use kube::Api;
use serde::Serialize;
use serde_json::Value;
use somastack_controllers::kinds::installation::revisions::{self, Revision};
use somastack_controllers::kinds::installation::{self, ObjectKey};
use somastack_crds::Installation;

use crate::cli::{DiffArgs, Global, InstallationCommand, NameArgs, RollbackArgs};
use crate::cluster::{Cluster, with_cluster};
use crate::error::{Context, Error, Result};

pub fn command(global: &Global, command: InstallationCommand) -> Result<()> {
    match command {
        InstallationCommand::History(args) => history(global, &args),
        InstallationCommand::Rollback(args) => rollback(global, &args),
        InstallationCommand::Diff(args) => diff(global, &args),
    }
}

/// The Installation `name` and its revisions, oldest first.
async fn revisions_of(cluster: &Cluster, name: &str) -> Result<(Installation, Vec<Revision>)> {
    let inst = cluster
        .namespaced::<Installation>()
        .get(name)
        .await
        .context(cluster.name("installation", name))?;
    let key = ObjectKey::of(&inst)?;
    let mut history = revisions::list(&cluster.client, &key).await?;
    history.sort_by_key(|r| r.number);
    Ok((inst, history))
}

/// One revision, as `history` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    pub revision: i64,
    pub current: bool,
    pub package: Option<String>,
    pub version: Option<String>,
    /// Absent: left to the autoscaler (or unreadable).
    pub replicas: Option<i32>,
    pub image: Option<String>,
}

pub fn history_rows(history: &[Revision], current: Option<i64>) -> Vec<HistoryRow> {
    history
        .iter()
        .map(|r| HistoryRow {
            revision: r.number,
            current: Some(r.number) == current,
            package: r.data.as_ref().map(|d| d.spec.capsule.package.clone()),
            version: r.data.as_ref().map(|d| d.spec.capsule.version.clone()),
            replicas: r.data.as_ref().and_then(|d| d.spec.replicas),
            image: r.data.as_ref().map(|d| d.image.clone()),
        })
        .collect()
}

pub fn history_table(rows: &[HistoryRow]) -> String {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                if r.current { "*".into() } else { String::new() },
                format!("{} {}", or(&r.package), or(&r.version)),
                r.replicas.map(|n| n.to_string()).unwrap_or_else(|| "auto".into()),
                or(&r.image),
            ]
        })
        .collect();
    crate::output::table(&["REVISION", "CURRENT", "CAPSULE", "REPLICAS", "IMAGE"], &cells)
}

fn history(global: &Global, args: &NameArgs) -> Result<()> {
    let rows = with_cluster(global, async |cluster| {
        let (inst, history) = revisions_of(&cluster, &args.name).await?;
        let current = inst.status.as_ref().and_then(|s| s.current_revision);
        Ok(history_rows(&history, current))
    })?;
    crate::output::print(global.output, &rows, |r| history_table(r))
}

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    pub installation: String,
    pub namespace: String,
    pub from_revision: i64,
    pub to_revision: i64,
}

fn rollback(global: &Global, args: &RollbackArgs) -> Result<()> {
    let done = with_cluster(global, async |cluster| {
        let api: Api<Installation> = cluster.namespaced();
        let what = cluster.name("installation", &args.name);
        let reason = format!("manual rollback to revision {}", args.to);
        // The rollback writes at the resourceVersion it read; the operator may
        // write the Installation in between (a finalizer, an annotation), so a
        // conflict means: read again and retry.
        let mut attempt = 0;
        let record = loop {
            let inst = api.get(&args.name).await.context(&what)?;
            match installation::rollback(&cluster.client, &inst, args.to, "Manual", &reason).await {
                Err(somastack_controllers::Error::Kube(kube::Error::Api(e)))
                    if e.code == 409 && attempt < 5 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(somastack_controllers::Error::RevisionNotFound(n)) => {
                    return Err(Error::NotFound(format!("revision {n} of {what}")));
                }
                other => break other?,
            }
        };
        Ok(RolledBack {
            installation: args.name.clone(),
            namespace: cluster.namespace.clone(),
            from_revision: record.from_revision,
            to_revision: record.to_revision,
        })
    })?;
    crate::output::print(global.output, &done, |d| {
        format!(
            "installation.somastack.io/{} rolled back from revision {} to revision {}; the operator records it as a new revision\n",
            d.installation, d.from_revision, d.to_revision
        )
    })
}

/// One field that differs between two revisions (absent: not set there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Every leaf of `value` by its path (`spec.capsule.version`,
/// `spec.failoverRegions[0]`), scalars as JSON text (strings bare).
fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&path, v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The fields that differ between what two revisions recorded (their spec
/// and image), sorted by field.
pub fn changes(from: &Value, to: &Value) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves("", from, &mut a);
    leaves("", to, &mut b);
    let fields: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    fields
        .into_iter()
        .filter(|f| a.get(*f) != b.get(*f))
        .map(|f| Change {
            field: f.clone(),
            from: a.get(f).cloned(),
            to: b.get(f).cloned(),
        })
        .collect()
}

fn diff(global: &Global, args: &DiffArgs) -> Result<()> {
    let found = with_cluster(global, async |cluster| {
        let (_, history) = revisions_of(&cluster, &args.name).await?;
        let what = cluster.name("installation", &args.name);
        let data = |n: i64| -> Result<Value> {
            let r = history
                .iter()
                .find(|r| r.number == n)
                .ok_or_else(|| Error::NotFound(format!("revision {n} of {what}")))?;
            let d = r
                .data
                .as_ref()
                .ok_or_else(|| Error::Input(format!("revision {n} of {what} cannot be read")))?;
            serde_json::to_value(d).map_err(|e| Error::Input(e.to_string()))
        };
        Ok(changes(&data(args.from)?, &data(args.to)?))
    })?;
    let (from, to) = (args.from, args.to);
    crate::output::print(global.output, &found, |c| diff_table(c, from, to))
}

pub fn diff_table(changes: &[Change], from: i64, to: i64) -> String {
    if changes.is_empty() {
        return format!("revisions {from} and {to} record the same spec and image\n");
    }
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let cells: Vec<Vec<String>> = changes
        .iter()
        .map(|c| vec![c.field.clone(), or(&c.from), or(&c.to)])
        .collect();
    let (a, b) = (format!("REVISION {from}"), format!("REVISION {to}"));
    crate::output::table(&["FIELD", &a, &b], &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_name_every_differing_leaf() {
        let from = json!({ "spec": { "capsule": { "package": "s", "version": "1.0.0" }, "region": "eu-west-1",
                                     "replicas": 1, "failoverRegions": ["eu-central-1"] }, "image": "r/s@sha256:aa" });
        let to = json!({ "spec": { "capsule": { "package": "s", "version": "1.1.0" }, "region": "eu-west-1",
                                   "config": { "MODE": "fast" }, "failoverRegions": [] }, "image": "r/s@sha256:bb" });
        let c = changes(&from, &to);
        let by = |f: &str| c.iter().find(|c| c.field == f).cloned();
        assert_eq!(
            c.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
            [
                "image",
                "spec.capsule.version",
                "spec.config.MODE",
                "spec.failoverRegions",
                "spec.failoverRegions[0]",
                "spec.replicas"
            ]
        );
        assert_eq!(
            by("spec.capsule.version"),
            Some(Change {
                field: "spec.capsule.version".into(),
                from: Some("1.0.0".into()),
                to: Some("1.1.0".into())
            })
        );
        assert_eq!(by("spec.replicas").unwrap().to, None);
        assert_eq!(by("spec.config.MODE").unwrap().from, None);
        assert!(changes(&from, &from).is_empty());
    }

    #[test]
    fn diff_and_history_tables() {
        let c = vec![Change {
            field: "spec.capsule.version".into(),
            from: Some("1.0.0".into()),
            to: Some("1.1.0".into()),
        }];
        assert_eq!(
            diff_table(&c, 1, 2),
            "FIELD                  REVISION 1   REVISION 2\nspec.capsule.version   1.0.0        1.1.0\n"
        );
        assert_eq!(
            diff_table(&[], 1, 1),
            "revisions 1 and 1 record the same spec and image\n"
        );
        let rows = vec![HistoryRow {
            revision: 3,
            current: true,
            package: Some("s".into()),
            version: Some("1.0.0".into()),
            replicas: None,
            image: Some("r/s@sha256:aa".into()),
        }];
        assert_eq!(
            history_table(&rows),
            "REVISION   CURRENT   CAPSULE   REPLICAS   IMAGE\n3          *         s 1.0.0   auto       r/s@sha256:aa\n"
        );
    }
}
