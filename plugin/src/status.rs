//! `kubectl soma status`: every SomaStack resource with its health and the
//! condition that decides it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use somastack_controllers::text;
use somastack_crds::installation::{GatePhase, GateStatus};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

use crate::cli::{Global, Listing};
use crate::cluster::{Cluster, with_cluster};
use crate::error::{Context, Result};
use crate::health::{Health, Observed, health};

/// One resource's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub kind: String,
    /// Absent for cluster-scoped kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub health: Health,
    pub reason: String,
    pub message: String,
}

/// The row of `obj` (any kind: its status is read by field name).
pub fn row(kind: &str, obj: &DynamicObject) -> Row {
    let status = obj.data.get("status");
    let conditions: Vec<Condition> = status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let verdict = health(&Observed {
        generation: obj.metadata.generation,
        observed_generation: status
            .and_then(|s| s.get("observedGeneration"))
            .and_then(serde_json::Value::as_i64),
        conditions: &conditions,
        phase: status
            .and_then(|s| s.get("phase"))
            .and_then(serde_json::Value::as_str),
    });
    let gate: Option<GateStatus> = status
        .and_then(|s| s.get("gate"))
        .and_then(|g| serde_json::from_value(g.clone()).ok());
    let message = match gate.as_ref() {
        Some(g)
            if kind == "Installation"
                && verdict.reason == "UpgradeRejected"
                && g.phase == GatePhase::Failed =>
        {
            rejected_line(g, &obj.namespace().unwrap_or_default(), &obj.name_any())
        }
        _ => verdict.message,
    };
    Row {
        kind: kind.to_string(),
        namespace: obj.namespace(),
        name: obj.name_any(),
        health: verdict.health,
        reason: verdict.reason,
        message,
    }
}

/// Most characters of an evaluation's summary in a status line.
const MAX_SUMMARY: usize = 100;

/// Pure: the line of an Installation whose gate rejected its newest
/// revision: which revision, why, what serves instead, and the command
/// that shows the report (and overrides). The condition's own message
/// lists every failed check and can run to a kilobyte.
pub fn rejected_line(g: &GateStatus, namespace: &str, name: &str) -> String {
    let summary = g
        .report
        .as_ref()
        .map(|r| format!(": {}", text::bounded(&r.summary, MAX_SUMMARY)))
        .unwrap_or_default();
    let serving = g
        .baseline_revision
        .map_or("the running revision".into(), |b| format!("revision {b}"));
    format!(
        "revision {} rejected by its gate ({}{summary}); {serving} keeps serving; \
         report and override: kubectl soma -n {namespace} installation gate {name}",
        g.revision, g.reason
    )
}

async fn rows_of<K>(cluster: &Cluster, all: bool, namespaced: bool) -> Result<Vec<Row>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = if namespaced && !all {
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar)
    } else {
        Api::all_with(cluster.client.clone(), &ar)
    };
    let list = api
        .list(&ListParams::default())
        .await
        .context(format!("list {}", ar.plural))?;
    Ok(list.items.iter().map(|o| row(&ar.kind, o)).collect())
}

pub fn command(global: &Global, listing: Listing) -> Result<()> {
    let rows = with_cluster(global, async |cluster| {
        let all = listing.all_namespaces;
        let mut rows = Vec::new();
        rows.extend(rows_of::<Capsule>(&cluster, all, false).await?);
        rows.extend(rows_of::<PolicyBundle>(&cluster, all, false).await?);
        rows.extend(rows_of::<Installation>(&cluster, all, true).await?);
        rows.extend(rows_of::<DrDrill>(&cluster, all, true).await?);
        rows.extend(rows_of::<KamachiqProject>(&cluster, all, true).await?);
        Ok(rows)
    })?;
    crate::output::print(global.output, &rows, |rows| table(rows))
}

/// The table: KIND NAMESPACE NAME HEALTH REASON MESSAGE.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "No SomaStack resources found.\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.kind.clone(),
                r.namespace.clone().unwrap_or_else(|| "-".into()),
                r.name.clone(),
                format!("{:?}", r.health),
                r.reason.clone(),
                r.message.clone(),
            ]
        })
        .collect();
    crate::output::table(
        &["KIND", "NAMESPACE", "NAME", "HEALTH", "REASON", "MESSAGE"],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_row_reads_any_kind_by_field_name() {
        let inst = object(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": "app", "namespace": "t1", "generation": 4 },
            "status": { "observedGeneration": 4, "phase": "Ready", "conditions": [
                { "type": "Ready", "status": "True", "reason": "Available", "message": "2/2 replicas ready",
                  "lastTransitionTime": "2026-11-26T10:00:00Z" } ] }
        }));
        assert_eq!(
            row("Installation", &inst),
            Row {
                kind: "Installation".into(),
                namespace: Some("t1".into()),
                name: "app".into(),
                health: Health::Current,
                reason: "Available".into(),
                message: "2/2 replicas ready".into(),
            }
        );
        let fresh = object(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule",
            "metadata": { "name": "c", "generation": 1 }
        }));
        let r = row("Capsule", &fresh);
        assert_eq!((r.namespace, r.health), (None, Health::InProgress));
    }

    #[test]
    fn the_table_names_cluster_scoped_rows_with_a_dash() {
        let rows = vec![Row {
            kind: "PolicyBundle".into(),
            namespace: None,
            name: "eu".into(),
            health: Health::Current,
            reason: "Valid".into(),
            message: "governs 2 namespaces".into(),
        }];
        assert_eq!(
            table(&rows),
            "KIND           NAMESPACE   NAME   HEALTH    REASON   MESSAGE\n\
             PolicyBundle   -           eu     Current   Valid    governs 2 namespaces\n"
        );
        assert_eq!(table(&[]), "No SomaStack resources found.\n");
    }

    #[test]
    fn an_installation_held_by_its_gate_says_why_in_one_line() {
        let long = "agreement 0.41 below 0.80 on the corpus; ".repeat(20);
        let rejected = |gate: serde_json::Value| {
            object(json!({
                "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
                "metadata": { "name": "app", "namespace": "t1", "generation": 5 },
                "status": { "observedGeneration": 5, "phase": "Blocked", "gate": gate, "conditions": [
                    { "type": "Ready", "status": "False", "reason": "UpgradeRejected",
                      "message": "revision 4 was rejected and removed: ...; change the spec to try again, or override",
                      "lastTransitionTime": "2026-11-26T10:00:00Z" },
                    { "type": "Stalled", "status": "True", "reason": "UpgradeRejected",
                      "message": "revision 4 was rejected and removed: ...; change the spec to try again, or override",
                      "lastTransitionTime": "2026-11-26T10:00:00Z" } ] }
            }))
        };
        let gate = json!({ "revision": 4, "revisionHash": "5d9f", "baselineRevision": 3, "phase": "Failed",
                           "reason": "EvaluationFailed", "message": "m", "startTime": "2026-11-26T10:00:00Z",
                           "report": { "verdict": "Fail", "summary": long, "checks": [] } });
        let r = row("Installation", &rejected(gate));
        assert_eq!((r.health, r.reason.as_str()), (Health::Failed, "UpgradeRejected"));
        assert_eq!(
            r.message,
            format!(
                "revision 4 rejected by its gate (EvaluationFailed: {}...); revision 3 keeps serving; \
                 report and override: kubectl soma -n t1 installation gate app",
                &long[..97]
            )
        );
        let timed_out = json!({ "revision": 4, "revisionHash": "5d9f", "phase": "Failed",
                                "reason": "EvaluationTimedOut", "message": "m", "startTime": "2026-11-26T10:00:00Z" });
        assert_eq!(
            row("Installation", &rejected(timed_out)).message,
            "revision 4 rejected by its gate (EvaluationTimedOut); the running revision keeps serving; \
             report and override: kubectl soma -n t1 installation gate app"
        );
    }

    #[test]
    fn an_installation_being_evaluated_keeps_the_conditions_message() {
        let inst = object(json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": "app", "namespace": "t1", "generation": 5 },
            "status": { "observedGeneration": 5, "phase": "Progressing",
                "gate": { "revision": 4, "revisionHash": "5d9f", "phase": "Evaluating", "reason": "Evaluating",
                          "message": "revision 4: evaluation Job app-gate-4 running", "startTime": "2026-11-26T10:00:00Z" },
                "conditions": [
                    { "type": "Ready", "status": "False", "reason": "EvaluatingUpgrade",
                      "message": "revision 4: evaluation Job app-gate-4 running", "lastTransitionTime": "2026-11-26T10:00:00Z" },
                    { "type": "Reconciling", "status": "True", "reason": "EvaluatingUpgrade",
                      "message": "revision 4: evaluation Job app-gate-4 running", "lastTransitionTime": "2026-11-26T10:00:00Z" } ] }
        }));
        let r = row("Installation", &inst);
        assert_eq!(
            (r.health, r.reason.as_str(), r.message.as_str()),
            (
                Health::InProgress,
                "EvaluatingUpgrade",
                "revision 4: evaluation Job app-gate-4 running"
            )
        );
    }
}
