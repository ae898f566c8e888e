//! `kubectl soma installation history|rollback|diff|gate`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use somastack_controllers::INSTALLATION_LABEL;
use somastack_controllers::kinds::installation::gate::{GATE_ANNOTATION, GATE_REASON_ANNOTATION};
use somastack_controllers::kinds::installation::revisions::Revision;
use somastack_controllers::kinds::installation::{self, ObjectKey};
use somastack_crds::Installation;
use somastack_crds::installation::{GATE_OVERRIDE_ANNOTATION, GatePhase, GateStatus};

use crate::cli::{DiffArgs, GateArgs, Global, InstallationCommand, NameArgs, RollbackArgs};
use crate::cluster::{Cluster, FIELD_MANAGER, with_cluster};
use crate::error::{Context, Error, Result};

/// Why a person overrode the gate (beside [`GATE_OVERRIDE_ANNOTATION`]).
pub use somastack_crds::installation::GATE_OVERRIDE_REASON_ANNOTATION;

pub fn command(global: &Global, command: InstallationCommand) -> Result<()> {
    match command {
        InstallationCommand::History(args) => history(global, &args),
        InstallationCommand::Rollback(args) => rollback(global, &args),
        InstallationCommand::Diff(args) => diff(global, &args),
        InstallationCommand::Gate(args) => match (args.override_revision, args.reason.as_deref()) {
            (Some(revision), Some(reason)) => override_gate(global, &args.name, revision, reason),
            _ => gate(global, &args),
        },
    }
}

/// A revision and what its regression gate decided (the revision's
/// `somastack.io/gate` and `somastack.io/gate-reason` annotations).
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub revision: Revision,
    /// `Passed`, `Rejected` or `Overridden`; absent: not gated (or not yet).
    pub gate: Option<String>,
    pub gate_reason: Option<String>,
}

/// Pure: the revisions among `crs` that the Installation with `uid` owns,
/// with their gate's outcome, oldest first.
pub fn recorded(crs: &[ControllerRevision], uid: &str) -> Vec<Recorded> {
    let mut out: Vec<Recorded> = crs
        .iter()
        .filter(|cr| cr.owner_references().iter().any(|o| o.uid == uid))
        .map(|cr| Recorded {
            revision: Revision::from_object(cr),
            gate: cr.annotations().get(GATE_ANNOTATION).cloned(),
            gate_reason: cr.annotations().get(GATE_REASON_ANNOTATION).cloned(),
        })
        .collect();
    out.sort_by_key(|r| r.revision.number);
    out
}

/// The Installation `name` and its revisions, oldest first.
async fn revisions_of(cluster: &Cluster, name: &str) -> Result<(Installation, Vec<Recorded>)> {
    let what = cluster.name("installation", name);
    let inst = cluster
        .namespaced::<Installation>()
        .get(name)
        .await
        .context(&what)?;
    let key = ObjectKey::of(&inst)?;
    let crs = cluster
        .namespaced::<ControllerRevision>()
        .list(&ListParams::default().labels(&format!("{INSTALLATION_LABEL}={name}")))
        .await
        .context(format!("list the revisions of {what}"))?;
    Ok((inst, recorded(&crs.items, &key.uid)))
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
    /// What its regression gate decided: `Passed`, `Rejected`,
    /// `Overridden`, or `Evaluating` while the gate record says so;
    /// absent: not gated.
    pub gate: Option<String>,
    /// Why, as the operator wrote it on the revision.
    pub gate_reason: Option<String>,
}

/// Pure: the rows of `history`; `current` is `status.currentRevision`,
/// `record` is `status.gate` (it marks the revision under evaluation, which
/// carries no outcome yet).
pub fn history_rows(
    history: &[Recorded],
    current: Option<i64>,
    record: Option<&GateStatus>,
) -> Vec<HistoryRow> {
    history
        .iter()
        .map(|h| {
            let r = &h.revision;
            let evaluating = record
                .filter(|g| g.revision == r.number && g.phase == GatePhase::Evaluating)
                .map(|_| "Evaluating".to_string());
            HistoryRow {
                revision: r.number,
                current: Some(r.number) == current,
                package: r.data.as_ref().map(|d| d.spec.capsule.package.clone()),
                version: r.data.as_ref().map(|d| d.spec.capsule.version.clone()),
                replicas: r.data.as_ref().and_then(|d| d.spec.replicas),
                image: r.data.as_ref().map(|d| d.image.clone()),
                gate: h.gate.clone().or(evaluating),
                gate_reason: h.gate_reason.clone(),
            }
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
                r.gate.clone().unwrap_or_else(|| "-".into()),
                or(&r.image),
            ]
        })
        .collect();
    crate::output::table(
        &["REVISION", "CURRENT", "CAPSULE", "REPLICAS", "GATE", "IMAGE"],
        &cells,
    )
}

fn history(global: &Global, args: &NameArgs) -> Result<()> {
    let rows = with_cluster(global, async |cluster| {
        let (inst, history) = revisions_of(&cluster, &args.name).await?;
        let status = inst.status.as_ref();
        let current = status.and_then(|s| s.current_revision);
        Ok(history_rows(
            &history,
            current,
            status.and_then(|s| s.gate.as_ref()),
        ))
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

/// Pure: the candidate of `record` was rejected by its gate (the
/// evaluation failed, timed out or could not run). A record ended as
/// `Superseded` was never judged: the spec moved on before.
pub fn rejected(record: &GateStatus) -> bool {
    record.phase == GatePhase::Failed && record.reason != "Superseded"
}

/// Pure: `record` (the Installation's `status.gate`) as `gate` shows it;
/// `namespace`/`name` name the Installation.
pub fn gate_table(namespace: &str, name: &str, record: Option<&GateStatus>) -> String {
    let Some(g) = record else {
        return format!(
            "installation {namespace}/{name} has no regression gate record (spec.upgrade.gate is not set, \
             or no new revision was gated yet)\n"
        );
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("Installation", format!("{namespace}/{name}")),
        (
            "Revision",
            format!("{} (pod-template hash {})", g.revision, g.revision_hash),
        ),
        (
            "Baseline",
            g.baseline_revision
                .map_or("-".into(), |b| format!("revision {b}")),
        ),
        ("Phase", format!("{:?}", g.phase)),
        ("Reason", g.reason.clone()),
        ("Message", g.message.clone()),
        ("Started", g.start_time.0.to_string()),
        (
            "Completed",
            g.completion_time.as_ref().map_or("-".into(), |t| t.0.to_string()),
        ),
        ("Job", g.job.clone().unwrap_or_else(|| "-".into())),
    ];
    if let Some(by) = &g.overridden_by {
        fields.push(("Overridden by", by.clone()));
    }
    if let Some(r) = &g.report {
        fields.push(("Verdict", format!("{}: {}", r.verdict, r.summary)));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out: String = fields
        .iter()
        .map(|(k, v)| {
            format!("{:<w$}  {v}", format!("{k}:"), w = width)
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect();
    if let Some(r) = g.report.as_ref().filter(|r| !r.checks.is_empty()) {
        let cells: Vec<Vec<String>> = r
            .checks
            .iter()
            .map(|c| {
                let passed = if c.passed { "yes" } else { "no" };
                vec![c.name.clone(), passed.into(), c.detail.clone()]
            })
            .collect();
        out.push('\n');
        out.push_str(&crate::output::table(&["CHECK", "PASSED", "DETAIL"], &cells));
    }
    if rejected(g) {
        out.push_str(&format!(
            "\nRevision {} was rejected. To promote it anyway: kubectl soma -n {namespace} installation gate {name} \
             --override {} --reason TEXT\n",
            g.revision, g.revision
        ));
    }
    out
}

/// Pure: an Installation's `status.gate` as the API server holds it (JSON
/// `null` when absent), and read as a record; `what` names the
/// Installation.
pub fn read_gate(inst: &DynamicObject, what: &str) -> Result<(Value, Option<GateStatus>)> {
    let raw = inst
        .data
        .get("status")
        .and_then(|s| s.get("gate"))
        .cloned()
        .unwrap_or(Value::Null);
    let record = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Input(format!("the status.gate of {what} cannot be read: {e}")))?;
    Ok((raw, record))
}

/// `gate`: prints `status.gate` (`-o json`: exactly that object as the API
/// server holds it, or `null`); exit 3 when its candidate was rejected.
fn gate(global: &Global, args: &GateArgs) -> Result<()> {
    let (namespace, raw, record) = with_cluster(global, async |cluster| {
        let what = cluster.name("installation", &args.name);
        let api: Api<DynamicObject> = Api::namespaced_with(
            cluster.client.clone(),
            &cluster.namespace,
            &ApiResource::erase::<Installation>(&()),
        );
        let inst = api.get(&args.name).await.context(&what)?;
        let (raw, record) = read_gate(&inst, &what)?;
        Ok((cluster.namespace.clone(), raw, record))
    })?;
    crate::output::print(global.output, &raw, |_| {
        gate_table(&namespace, &args.name, record.as_ref())
    })?;
    match record.filter(rejected) {
        Some(g) => Err(Error::CheckFailed(format!(
            "revision {} of installation {namespace}/{} was rejected by its regression gate ({})",
            g.revision, args.name, g.reason
        ))),
        None => Ok(()),
    }
}

/// Pure: why `revision` cannot be overridden given the gate `record` of the
/// Installation `what`; `None`: it can (the gate rejected exactly it).
pub fn override_refusal(what: &str, record: Option<&GateStatus>, revision: i64) -> Option<String> {
    let Some(g) = record else {
        return Some(format!(
            "{what} has no regression gate record: nothing to override"
        ));
    };
    if g.revision != revision {
        return Some(format!(
            "revision {revision} of {what} is not the gate's candidate (the gate's record is of revision {}, {:?}): \
             nothing to override",
            g.revision, g.phase
        ));
    }
    match g.phase {
        GatePhase::Failed if rejected(g) => None,
        GatePhase::Failed => Some(format!(
            "revision {revision} of {what} was not judged ({}): nothing to override",
            g.reason
        )),
        GatePhase::Evaluating => Some(format!(
            "revision {revision} of {what} is still being evaluated: nothing to override (yet)"
        )),
        GatePhase::Passed => Some(format!(
            "revision {revision} of {what} passed its gate: nothing to override"
        )),
        GatePhase::Overridden => Some(format!(
            "revision {revision} of {what} was already promoted by an override{}",
            g.overridden_by
                .as_ref()
                .map(|by| format!(" (set by {by})"))
                .unwrap_or_default()
        )),
    }
}

/// The JSON merge patch overriding the gate of `revision`, at the
/// `resource_version` whose gate record was checked (a conflict: the
/// record may have changed since).
pub fn override_patch(revision: i64, reason: &str, resource_version: Option<&str>) -> Value {
    let mut patch = json!({ "metadata": { "annotations": {
        GATE_OVERRIDE_ANNOTATION: revision.to_string(),
        GATE_OVERRIDE_REASON_ANNOTATION: reason,
    } } });
    if let Some(v) = resource_version {
        patch["metadata"]["resourceVersion"] = json!(v);
    }
    patch
}

/// What `gate --override` wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub installation: String,
    pub namespace: String,
    pub revision: i64,
    pub reason: String,
}

fn override_gate(global: &Global, name: &str, revision: i64, reason: &str) -> Result<()> {
    let done = with_cluster(global, async |cluster| {
        let api: Api<Installation> = cluster.namespaced();
        let what = cluster.name("installation", name);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        // The patch is bound to the resourceVersion whose record was
        // checked: the operator writes the status meanwhile, so a conflict
        // means: read (and check) again.
        let mut attempt = 0;
        loop {
            let inst = api.get(name).await.context(&what)?;
            let record = inst.status.as_ref().and_then(|s| s.gate.as_ref());
            if let Some(why) = override_refusal(&what, record, revision) {
                return Err(Error::Input(why));
            }
            let patch = override_patch(revision, reason, inst.metadata.resource_version.as_deref());
            match api.patch(name, &params, &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => {
                    other.context(format!("override the gate of {what}"))?;
                    break;
                }
            }
        }
        Ok(Override {
            installation: name.to_string(),
            namespace: cluster.namespace.clone(),
            revision,
            reason: reason.to_string(),
        })
    })?;
    crate::output::print(global.output, &done, |o| {
        format!(
            "installation.somastack.io/{}: gate of revision {} overridden ({GATE_OVERRIDE_ANNOTATION}={}); \
             the operator promotes it, records the override in status.gate and a Warning Event GateOverridden\n",
            o.installation, o.revision, o.revision
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
                .map(|h| &h.revision)
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
        let rows = vec![
            HistoryRow {
                revision: 3,
                current: true,
                package: Some("s".into()),
                version: Some("1.0.0".into()),
                replicas: None,
                image: Some("r/s@sha256:aa".into()),
                gate: None,
                gate_reason: None,
            },
            HistoryRow {
                revision: 4,
                current: false,
                package: Some("s".into()),
                version: Some("1.1.0".into()),
                replicas: Some(2),
                image: Some("r/s@sha256:bb".into()),
                gate: Some("Rejected".into()),
                gate_reason: Some("revision 4 was rejected and removed".into()),
            },
        ];
        assert_eq!(
            history_table(&rows),
            "REVISION   CURRENT   CAPSULE   REPLICAS   GATE       IMAGE\n\
             3          *         s 1.0.0   auto       -          r/s@sha256:aa\n\
             4                    s 1.1.0   2          Rejected   r/s@sha256:bb\n"
        );
    }

    /// A gate record as the operator writes it in `status.gate` (camelCase,
    /// as the CRD), read into the typed value.
    fn record_json(phase: &str, reason: &str) -> Value {
        json!({
            "revision": 4, "revisionHash": "5d9f7c", "baselineRevision": 3,
            "phase": phase, "reason": reason,
            "message": "revision 4 was rejected and removed: the evaluation failed: agreement 0.41 below 0.80 \
                        (failed checks: agreement); revision 3 keeps serving",
            "startTime": "2026-11-26T10:00:00Z", "completionTime": "2026-11-26T10:01:10Z",
            "job": "app-gate-4",
            "report": { "verdict": "Fail", "summary": "agreement 0.41 below 0.80", "checks": [
                { "name": "agreement", "passed": false, "detail": "0.41 < 0.80" },
                { "name": "latency", "passed": true, "detail": "p95 120ms <= 500ms" } ] }
        })
    }

    fn record(phase: &str, reason: &str) -> GateStatus {
        serde_json::from_value(record_json(phase, reason)).unwrap()
    }

    fn revision(number: i64, uid: &str, gate: Option<(&str, &str)>) -> ControllerRevision {
        let mut annotations = serde_json::Map::new();
        if let Some((mark, why)) = gate {
            annotations.insert(GATE_ANNOTATION.into(), json!(mark));
            annotations.insert(GATE_REASON_ANNOTATION.into(), json!(why));
        }
        serde_json::from_value(json!({
            "metadata": { "name": format!("app-{number}"), "namespace": "t1",
                          "labels": { "somastack.io/revision-hash": format!("h{number}") },
                          "annotations": annotations,
                          "ownerReferences": [{ "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
                                                "name": "app", "uid": uid }] },
            "revision": number,
            "data": { "spec": { "capsule": { "package": "s", "version": format!("1.{number}.0") },
                                "region": "eu-west-1" },
                      "image": format!("r/s@sha256:{number}") }
        }))
        .unwrap()
    }

    #[test]
    fn the_history_marks_each_revision_with_its_gate() {
        let crs = [
            revision(5, "u1", None),
            revision(3, "u1", None),
            revision(4, "u1", Some(("Rejected", "revision 4 was rejected and removed"))),
            revision(9, "someone-else", Some(("Passed", "fine"))),
        ];
        let history = recorded(&crs, "u1");
        assert_eq!(
            history.iter().map(|h| h.revision.number).collect::<Vec<_>>(),
            [3, 4, 5],
            "oldest first, only the Installation's own"
        );
        let evaluating = GateStatus {
            revision: 5,
            phase: GatePhase::Evaluating,
            ..record("Evaluating", "Evaluating")
        };
        let rows = history_rows(&history, Some(3), Some(&evaluating));
        let gates: Vec<(i64, bool, Option<&str>)> = rows
            .iter()
            .map(|r| (r.revision, r.current, r.gate.as_deref()))
            .collect();
        assert_eq!(
            gates,
            [
                (3, true, None),
                (4, false, Some("Rejected")),
                (5, false, Some("Evaluating"))
            ]
        );
        assert_eq!(
            rows[1].gate_reason.as_deref(),
            Some("revision 4 was rejected and removed")
        );
        assert_eq!(rows[1].version.as_deref(), Some("1.4.0"));
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(
            (&json["gate"], &json["gateReason"]),
            (&json!("Rejected"), &json!("revision 4 was rejected and removed"))
        );
    }

    #[test]
    fn gate_json_is_status_gate_exactly() {
        let installation = |status: Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
                "metadata": { "name": "app", "namespace": "t1" }, "status": status
            }))
            .unwrap()
        };
        let json_of =
            |v: &Value| crate::output::render(crate::cli::Output::Json, v, |_| unreachable!()).unwrap();
        for (phase, reason) in [
            ("Failed", "EvaluationFailed"),
            ("Passed", "EvaluationPassed"),
            ("Evaluating", "Evaluating"),
        ] {
            let mut written = record_json(phase, reason);
            // As the API server holds it, even where the typed value would
            // say it otherwise (a fraction of a second).
            written["startTime"] = json!("2026-11-26T10:00:00.250Z");
            let inst = installation(json!({ "currentRevision": 3, "gate": written.clone() }));
            let (raw, record) = read_gate(&inst, "installation t1/app").unwrap();
            assert_eq!(serde_json::from_str::<Value>(&json_of(&raw)).unwrap(), written);
            assert_eq!(record.map(|r| r.reason), Some(reason.to_string()));
        }
        let (raw, record) = read_gate(&installation(json!({ "currentRevision": 3 })), "x").unwrap();
        assert_eq!((json_of(&raw).as_str(), record), ("null\n", None));
        let bad = installation(json!({ "gate": { "revision": "four" } }));
        let err = read_gate(&bad, "installation t1/app").unwrap_err().to_string();
        assert!(
            err.starts_with("the status.gate of installation t1/app cannot be read: "),
            "{err}"
        );
    }

    #[test]
    fn the_gate_table_shows_the_record_and_the_checks() {
        let failed = record("Failed", "EvaluationFailed");
        assert_eq!(
            gate_table("t1", "app", Some(&failed)),
            "Installation:  t1/app\n\
             Revision:      4 (pod-template hash 5d9f7c)\n\
             Baseline:      revision 3\n\
             Phase:         Failed\n\
             Reason:        EvaluationFailed\n\
             Message:       revision 4 was rejected and removed: the evaluation failed: agreement 0.41 below 0.80 \
             (failed checks: agreement); revision 3 keeps serving\n\
             Started:       2026-11-26T10:00:00Z\n\
             Completed:     2026-11-26T10:01:10Z\n\
             Job:           app-gate-4\n\
             Verdict:       Fail: agreement 0.41 below 0.80\n\
             \n\
             CHECK       PASSED   DETAIL\n\
             agreement   no       0.41 < 0.80\n\
             latency     yes      p95 120ms <= 500ms\n\
             \n\
             Revision 4 was rejected. To promote it anyway: kubectl soma -n t1 installation gate app \
             --override 4 --reason TEXT\n"
        );
        let overridden = GateStatus {
            phase: GatePhase::Overridden,
            reason: "Overridden".into(),
            overridden_by: Some("kubectl-soma at 2026-11-26T10:05:00Z".into()),
            report: None,
            ..failed.clone()
        };
        let out = gate_table("t1", "app", Some(&overridden));
        assert!(out.contains("Phase:          Overridden\n"), "{out}");
        assert!(
            out.contains("Overridden by:  kubectl-soma at 2026-11-26T10:05:00Z\n"),
            "{out}"
        );
        assert!(!out.contains("CHECK") && !out.contains("--override"), "{out}");
        let running = GateStatus {
            phase: GatePhase::Evaluating,
            reason: "Evaluating".into(),
            completion_time: None,
            job: None,
            report: None,
            ..failed
        };
        let out = gate_table("t1", "app", Some(&running));
        assert!(
            out.contains("Completed:     -\n") && out.contains("Job:           -\n"),
            "{out}"
        );
        assert_eq!(
            gate_table("t1", "app", None),
            "installation t1/app has no regression gate record (spec.upgrade.gate is not set, \
             or no new revision was gated yet)\n"
        );
    }

    #[test]
    fn only_a_judged_failure_is_rejected() {
        assert!(rejected(&record("Failed", "EvaluationFailed")));
        assert!(rejected(&record("Failed", "EvaluationTimedOut")));
        assert!(rejected(&record("Failed", "EvaluationNotRun")));
        assert!(!rejected(&record("Failed", "Superseded")));
        assert!(!rejected(&record("Passed", "EvaluationPassed")));
        assert!(!rejected(&record("Overridden", "Overridden")));
        assert!(!rejected(&record("Evaluating", "Evaluating")));
    }

    #[test]
    fn only_the_rejected_candidate_can_be_overridden() {
        let what = "installation t1/app";
        assert_eq!(
            override_refusal(what, Some(&record("Failed", "EvaluationFailed")), 4),
            None
        );
        let refused = |phase: &str, reason: &str, revision: i64| {
            override_refusal(what, Some(&record(phase, reason)), revision).unwrap_or_default()
        };
        assert_eq!(
            refused("Failed", "EvaluationFailed", 3),
            "revision 3 of installation t1/app is not the gate's candidate \
             (the gate's record is of revision 4, Failed): nothing to override"
        );
        assert_eq!(
            refused("Passed", "EvaluationPassed", 4),
            "revision 4 of installation t1/app passed its gate: nothing to override"
        );
        assert_eq!(
            refused("Evaluating", "Evaluating", 4),
            "revision 4 of installation t1/app is still being evaluated: nothing to override (yet)"
        );
        assert_eq!(
            refused("Failed", "Superseded", 4),
            "revision 4 of installation t1/app was not judged (Superseded): nothing to override"
        );
        let done = GateStatus {
            overridden_by: Some("kubectl-soma at 2026-11-26T10:05:00Z".into()),
            ..record("Overridden", "Overridden")
        };
        assert_eq!(
            override_refusal(what, Some(&done), 4).as_deref(),
            Some(
                "revision 4 of installation t1/app was already promoted by an override \
                 (set by kubectl-soma at 2026-11-26T10:05:00Z)"
            )
        );
        assert_eq!(
            override_refusal(what, None, 4).as_deref(),
            Some("installation t1/app has no regression gate record: nothing to override")
        );
    }

    #[test]
    fn the_override_patch_names_the_revision_and_why() {
        assert_eq!(
            override_patch(4, "the judge model was down", Some("812")),
            json!({ "metadata": { "resourceVersion": "812", "annotations": {
                "somastack.io/gate-override": "4",
                "somastack.io/gate-override-reason": "the judge model was down" } } })
        );
        assert_eq!(
            override_patch(4, "x", None),
            json!({ "metadata": { "annotations": {
                "somastack.io/gate-override": "4", "somastack.io/gate-override-reason": "x" } } })
        );
    }
}
