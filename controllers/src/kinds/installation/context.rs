//! What Installation reconciles get beyond the shared [`Context`]: the
//! Deployments cache (what each workload reports, without a GET per
//! reconcile) and the memory of what was last applied, so a reconcile that
//! only reports a rollout's progress does not write seven unchanged children
//! again, and what the watches of its other children ([`super::drift`]) saw
//! of them since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{ObjectRef, Store};

use somastack_crds::Installation;

use super::drift::{self, AppliedChild, ChildKind, Seen, Version};
use super::{ObjectKey, Workload};
use crate::Result;
use crate::caches::Filled;
use crate::runtime::{CACHE_WAIT, Context};

pub struct InstallationContext {
    pub shared: Arc<Context>,
    /// The Deployments the operator manages, trimmed to what
    /// [`super::Workload::from_deployment`] and the triggers read.
    deployments: Store<Deployment>,
    deployments_ready: Filled,
    /// Per Installation uid: what its children were when last applied.
    provisioned: Mutex<HashMap<String, Provisioned>>,
    /// Per Installation: what the last reconcile saw of its Deployment
    /// ([`Workload::shown`], hashed).
    shown: Mutex<HashMap<ObjectRef<Installation>, u64>>,
}

fn shown_hash(workload: &Workload) -> u64 {
    let mut h = DefaultHasher::new();
    workload.shown().hash(&mut h);
    h.finish()
}

crate::runtime::kind_context!(InstallationContext);

/// What one Installation's children were when they were last applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// Digest of every rendered child.
    pub digest: String,
    /// The Deployment's `metadata.generation` our apply left it at: another
    /// one means someone else changed its spec (or it was recreated).
    pub deployment_generation: Option<i64>,
    /// The revision recorded for them.
    pub revision: i64,
    /// The Installation's namespace: its children's.
    pub namespace: String,
    /// The Installation's name.
    pub name: String,
    /// The other children as the apply left them.
    pub children: BTreeMap<ChildKind, AppliedChild>,
    /// What the watches have seen of those children since: changes and
    /// deletes by someone else ([`drift::is_news`]).
    pub drift: BTreeMap<ChildKind, Seen>,
}

/// Pure: whether applying children of `digest` can be skipped, given what
/// was last applied and the generation the Deployment has now (`None`:
/// gone). Only when the very same children were applied and nobody has
/// changed or deleted one of them since: not the Deployment, not another
/// child. There is no period after which they are applied anyway: at
/// steady state the operator writes nothing.
pub fn unchanged(last: Option<&Provisioned>, digest: &str, deployment_generation: Option<i64>) -> bool {
    last.is_some_and(|p| {
        p.digest == digest
            && deployment_generation.is_some()
            && p.deployment_generation == deployment_generation
            && p.drift.is_empty()
    })
}

impl InstallationContext {
    pub fn new(shared: Arc<Context>, deployments: Store<Deployment>, deployments_ready: Filled) -> Self {
        Self {
            shared,
            deployments,
            deployments_ready,
            provisioned: Mutex::new(HashMap::new()),
            shown: Mutex::new(HashMap::new()),
        }
    }

    /// Waits (bounded) until the Deployments cache has had its first full list.
    pub async fn deployments_ready(&self) -> Result<()> {
        self.deployments_ready.wait(CACHE_WAIT).await
    }

    /// The Installation's Deployment (of the same name) as the cache has it.
    pub fn deployment(&self, key: &ObjectKey) -> Option<Arc<Deployment>> {
        self.deployment_of(&key.name, &key.namespace)
    }

    fn deployment_of(&self, name: &str, namespace: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(namespace))
    }

    /// The revision of the children last applied for `key`, if applying
    /// children of `digest` again can be skipped ([`unchanged`]).
    pub fn unchanged(&self, key: &ObjectKey, digest: &str) -> Option<i64> {
        let generation = self.deployment(key).and_then(|d| d.metadata.generation);
        let provisioned = self.provisioned.lock().ok()?;
        let last = provisioned.get(&key.uid)?;
        unchanged(Some(last), digest, generation).then_some(last.revision)
    }

    /// Remembers what was applied for `key`, with what its watches saw
    /// before that is still news ([`drift::still_news`]: an event may come
    /// in while the apply is under way); forgets Installations that are gone.
    pub fn remember(&self, key: &ObjectKey, mut applied: Provisioned) {
        let Ok(mut provisioned) = self.provisioned.lock() else {
            return;
        };
        if let Some(earlier) = provisioned.remove(&key.uid) {
            applied.drift = drift::still_news(earlier.drift, &applied.children);
        }
        provisioned.insert(key.uid.clone(), applied);
        let live = self.shared.caches.installations.state();
        if provisioned.len() > 2 * live.len() + 16 {
            let uids: std::collections::HashSet<_> =
                live.iter().filter_map(|i| i.metadata.uid.clone()).collect();
            provisioned.retain(|uid, _| uids.contains(uid));
            if let Ok(mut shown) = self.shown.lock() {
                let refs: std::collections::HashSet<_> =
                    live.iter().map(|i| ObjectRef::from_obj(i.as_ref())).collect();
                shown.retain(|r, _| refs.contains(r));
            }
        }
    }

    /// Remembers what the reconcile of `key` saw of its Deployment.
    pub fn seen(&self, key: &ObjectKey, workload: &Workload) {
        if let Ok(mut shown) = self.shown.lock() {
            let inst = ObjectRef::new(&key.name).within(&key.namespace);
            shown.insert(inst, shown_hash(workload));
        }
    }

    /// Takes in what a watch saw of the child `name` of kind `kind` of the
    /// Installation with `uid` (changed, or `deleted`, at `version`);
    /// whether that is news (the Installation's children are to be applied
    /// again).
    pub fn observe(&self, uid: &str, kind: ChildKind, name: &str, version: Version, deleted: bool) -> bool {
        let Ok(mut provisioned) = self.provisioned.lock() else {
            return false;
        };
        let Some(record) = provisioned.get_mut(uid) else {
            // Never applied by this process: its first reconcile applies all.
            return false;
        };
        let news = record
            .children
            .get(&kind)
            .is_some_and(|child| child.name == name && drift::is_news(&child.version, &version, deleted));
        if news {
            record.drift.insert(kind, Seen::Event { version, deleted });
        }
        news
    }

    /// The Installations one of whose children of `kind` was applied but is
    /// not among the children a full list found (`listed`: namespace and
    /// name): deleted while the watch was down. Each is marked to apply again.
    pub fn vanished(
        &self,
        kind: ChildKind,
        listed: &HashSet<(String, String)>,
    ) -> Vec<ObjectRef<Installation>> {
        let Ok(mut provisioned) = self.provisioned.lock() else {
            return vec![];
        };
        let mut gone = vec![];
        for record in provisioned.values_mut() {
            if drift::missing_from(listed, &record.namespace, record.children.get(&kind)) {
                record.drift.insert(kind, Seen::Missing);
                gone.push(ObjectRef::new(&record.name).within(&record.namespace));
            }
        }
        gone
    }

    /// Whether `inst` (still there, not being deleted) has a child that
    /// someone else changed or deleted since it was last applied.
    pub fn drifted(&self, inst: &ObjectRef<Installation>) -> bool {
        let Some(uid) = self
            .shared
            .caches
            .installations
            .get(inst)
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .and_then(|i| i.metadata.uid.clone())
        else {
            return false;
        };
        self.provisioned
            .lock()
            .is_ok_and(|p| p.get(&uid).is_some_and(|r| !r.drift.is_empty()))
    }

    /// Whether the last reconcile of `inst` saw its Deployment as the cache
    /// has it now (a Deployment that is gone is news).
    pub fn saw(&self, inst: &ObjectRef<Installation>) -> bool {
        let Some(d) = inst
            .namespace
            .as_deref()
            .and_then(|ns| self.deployment_of(&inst.name, ns))
        else {
            return false;
        };
        let now = shown_hash(&Workload::from_deployment(Some(&d)));
        self.shown.lock().is_ok_and(|shown| shown.get(inst) == Some(&now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied() -> Provisioned {
        Provisioned {
            digest: "d1".into(),
            deployment_generation: Some(3),
            revision: 2,
            namespace: "team".into(),
            name: "app".into(),
            children: BTreeMap::from([(
                ChildKind::ConfigMap,
                AppliedChild {
                    name: "app-config".into(),
                    version: Version {
                        resource_version: "120".into(),
                        generation: None,
                    },
                },
            )]),
            drift: BTreeMap::new(),
        }
    }

    #[test]
    fn the_same_children_are_not_applied_twice() {
        assert!(unchanged(Some(&applied()), "d1", Some(3)));
    }

    #[test]
    fn other_children_or_a_changed_or_missing_deployment_apply_again() {
        assert!(!unchanged(None, "d1", Some(3)), "nothing applied yet");
        assert!(!unchanged(Some(&applied()), "d2", Some(3)), "other children");
        assert!(
            !unchanged(Some(&applied()), "d1", Some(4)),
            "someone changed the Deployment"
        );
        assert!(!unchanged(Some(&applied()), "d1", None), "the Deployment is gone");
    }

    #[test]
    fn a_child_someone_else_changed_or_deleted_applies_again() {
        let mut edited = applied();
        edited.drift.insert(
            ChildKind::ConfigMap,
            Seen::Event {
                version: Version {
                    resource_version: "150".into(),
                    generation: None,
                },
                deleted: true,
            },
        );
        assert!(!unchanged(Some(&edited), "d1", Some(3)));
        let mut missing = applied();
        missing.drift.insert(ChildKind::ServiceAccount, Seen::Missing);
        assert!(!unchanged(Some(&missing), "d1", Some(3)));
    }
}
