//! Revision history: each distinct rendered workload is a ControllerRevision
//! owned by the Installation, numbered, and pruned to `revisionHistoryLimit`.
//! A rollback restores the spec a revision recorded, which then becomes a new
//! revision (as Helm does).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use somastack_crds::Installation;
use somastack_crds::installation::InstallationSpec;

use super::ObjectKey;
use crate::apply::ApiResultExt;
use crate::{INSTALLATION_LABEL, MANAGED_BY, Result};

pub const REVISION_HASH_LABEL: &str = "somastack.io/revision-hash";

/// What a revision records: the spec that produced it and the image it ran.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionData {
    pub spec: InstallationSpec,
    pub image: String,
}

/// A revision as read back from the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    pub name: String,
    pub number: i64,
    pub hash: String,
    pub data: Option<RevisionData>,
}

impl Revision {
    pub fn from_object(cr: &ControllerRevision) -> Self {
        Revision {
            name: cr.name_any(),
            number: cr.revision.unwrap_or(0),
            hash: cr.labels().get(REVISION_HASH_LABEL).cloned().unwrap_or_default(),
            data: serde_json::from_value(cr.data.0.clone()).ok(),
        }
    }
}

/// What to do with the history for the workload with `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Number of the revision the workload is (existing or to create).
    pub current: i64,
    /// Create this revision number.
    pub create: Option<i64>,
    /// Names of revisions beyond the history limit.
    pub prune: Vec<String>,
}

/// Pure: the newest revision is current if it has the same hash, otherwise
/// a new one is numbered after it. Keeps the current one and `limit` older.
pub fn plan(existing: &[Revision], hash: &str, limit: i32) -> Plan {
    let mut sorted: Vec<&Revision> = existing.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.number));
    let newest = sorted.first();
    let (current, create) = match newest {
        Some(r) if r.hash == hash => (r.number, None),
        Some(r) => (r.number + 1, Some(r.number + 1)),
        None => (1, Some(1)),
    };
    let keep_old = usize::try_from(limit.max(0)).unwrap_or(0);
    let older: Vec<&&Revision> = sorted.iter().filter(|r| r.number != current).collect();
    let prune = older.iter().skip(keep_old).map(|r| r.name.clone()).collect();
    Plan {
        current,
        create,
        prune,
    }
}

pub fn revision_name(key: &ObjectKey, number: i64) -> String {
    format!("{}-{number}", key.name)
}

/// The ControllerRevision object for revision `number` of the Installation
/// `key` with `spec`.
pub fn manifest(
    key: &ObjectKey,
    spec: &InstallationSpec,
    owner: &OwnerReference,
    number: i64,
    hash: &str,
    image: &str,
) -> Result<ControllerRevision> {
    let data = RevisionData {
        spec: spec.clone(),
        image: image.to_string(),
    };
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(key, number)),
            namespace: Some(key.namespace.clone()),
            labels: Some(BTreeMap::from([
                (INSTALLATION_LABEL.to_string(), key.name.clone()),
                (REVISION_HASH_LABEL.to_string(), hash.to_string()),
                ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
            ])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        revision: Some(number),
        data: RawExtension(serde_json::to_value(data)?),
    })
}

/// The revisions of the Installation `key`, read from the cluster.
pub async fn list(client: &kube::Client, key: &ObjectKey) -> Result<Vec<Revision>> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &key.namespace);
    let crs = api
        .list(&ListParams::default().labels(&format!("{INSTALLATION_LABEL}={}", key.name)))
        .await?;
    Ok(crs
        .iter()
        .filter(|cr| cr.owner_references().iter().any(|o| o.uid == key.uid))
        .map(Revision::from_object)
        .collect())
}

/// Records the workload with `hash` of `inst` (whose key is `key`) in the
/// history and prunes it; returns the current revision number and whether
/// it was created now.
pub async fn record(
    client: &kube::Client,
    inst: &Installation,
    key: &ObjectKey,
    owner: &OwnerReference,
    hash: &str,
    image: &str,
) -> Result<(i64, bool)> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &key.namespace);
    let existing = list(client, key).await?;
    let plan = plan(&existing, hash, inst.spec.revision_history_limit);
    if let Some(number) = plan.create {
        let cr = manifest(key, &inst.spec, owner, number, hash, image)?;
        // Already there: created by an earlier, interrupted reconcile (the same revision).
        api.create(&PostParams::default(), &cr).await.ok_if_conflict()?;
    }
    for name in &plan.prune {
        api.delete(name, &DeleteParams::background())
            .await
            .ok_if_not_found()?;
    }
    Ok((plan.current, plan.create.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(number: i64, hash: &str) -> Revision {
        Revision {
            name: format!("x-{number}"),
            number,
            hash: hash.into(),
            data: None,
        }
    }

    #[test]
    fn first_revision_is_one() {
        assert_eq!(
            plan(&[], "a", 10),
            Plan {
                current: 1,
                create: Some(1),
                prune: vec![]
            }
        );
    }

    #[test]
    fn same_workload_is_the_same_revision() {
        assert_eq!(
            plan(&[rev(1, "a"), rev(2, "b")], "b", 10),
            Plan {
                current: 2,
                create: None,
                prune: vec![]
            }
        );
    }

    #[test]
    fn a_changed_workload_is_numbered_after_the_newest_even_if_seen_before() {
        // Rolling back to the content of revision 1 makes revision 3.
        assert_eq!(
            plan(&[rev(1, "a"), rev(2, "b")], "a", 10),
            Plan {
                current: 3,
                create: Some(3),
                prune: vec![]
            }
        );
    }

    #[test]
    fn history_is_pruned_oldest_first_and_never_the_current() {
        let existing = [rev(1, "a"), rev(2, "b"), rev(3, "c"), rev(4, "d")];
        let p = plan(&existing, "e", 2);
        assert_eq!(p.current, 5);
        assert_eq!(p.prune, vec!["x-2".to_string(), "x-1".to_string()]);
        let p = plan(&existing, "d", 0);
        assert_eq!(
            p.prune,
            vec!["x-3".to_string(), "x-2".to_string(), "x-1".to_string()]
        );
    }
}
