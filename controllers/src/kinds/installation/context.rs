//! What Installation reconciles get beyond the shared [`Context`]: the
//! Deployments cache (what each workload reports, without a GET per
//! reconcile) and the memory of what was last applied, so a reconcile that
//! only reports a rollout's progress does not write seven unchanged children
//! again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{ObjectRef, Store};

use somastack_crds::Installation;

use super::{ObjectKey, Workload};
use crate::Result;
use crate::caches::Filled;
use crate::runtime::{CACHE_WAIT, Context};

/// However unchanged its children, an Installation's children are applied
/// again after this long: what someone changed or deleted by hand is put
/// back (as the resync did before).
pub const FULL_APPLY_EVERY: Duration = Duration::from_secs(300);

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
    pub at: Instant,
}

/// Pure: whether applying children of `digest` can be skipped, given what
/// was last applied and the generation the Deployment has now (`None`:
/// gone). Only when the very same children were applied less than
/// [`FULL_APPLY_EVERY`] ago and nobody has changed the Deployment since.
pub fn unchanged(
    last: Option<&Provisioned>,
    digest: &str,
    deployment_generation: Option<i64>,
    now: Instant,
) -> bool {
    last.is_some_and(|p| {
        p.digest == digest
            && deployment_generation.is_some()
            && p.deployment_generation == deployment_generation
            && now.saturating_duration_since(p.at) < FULL_APPLY_EVERY
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
        unchanged(Some(last), digest, generation, Instant::now()).then_some(last.revision)
    }

    /// Remembers what was applied for `key`; forgets Installations that are gone.
    pub fn remember(&self, key: &ObjectKey, applied: Provisioned) {
        let Ok(mut provisioned) = self.provisioned.lock() else {
            return;
        };
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

    fn applied(at: Instant) -> Provisioned {
        Provisioned {
            digest: "d1".into(),
            deployment_generation: Some(3),
            revision: 2,
            at,
        }
    }

    #[test]
    fn the_same_children_are_not_applied_twice_within_the_period() {
        let t = Instant::now();
        assert!(unchanged(
            Some(&applied(t)),
            "d1",
            Some(3),
            t + Duration::from_secs(10)
        ));
    }

    #[test]
    fn other_children_a_changed_or_missing_deployment_or_time_apply_again() {
        let t = Instant::now();
        let soon = t + Duration::from_secs(10);
        assert!(!unchanged(None, "d1", Some(3), soon), "nothing applied yet");
        assert!(
            !unchanged(Some(&applied(t)), "d2", Some(3), soon),
            "other children"
        );
        assert!(
            !unchanged(Some(&applied(t)), "d1", Some(4), soon),
            "someone changed the Deployment"
        );
        assert!(
            !unchanged(Some(&applied(t)), "d1", None, soon),
            "the Deployment is gone"
        );
        assert!(
            !unchanged(Some(&applied(t)), "d1", Some(3), t + FULL_APPLY_EVERY),
            "applied again after the period"
        );
    }
}
