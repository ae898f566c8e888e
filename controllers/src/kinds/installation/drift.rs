//! Children someone else changed or deleted. Each kind of child besides the
//! Deployment (whose cache [`super::InstallationContext`] keeps anyway) has
//! one metadata-only watch, of the objects the operator manages, as
//! controller-runtime's `Owns` has: an event about a child that is newer
//! than what the operator's last apply left is news, and the Installation
//! is reconciled and applies its children again. Before, every Ready
//! Installation applied all its children again every 5 minutes, whether
//! anything had changed or not: 8 requests per Installation, so a steady
//! state far from idle (4,356 requests a minute with 3,000 Installations).
//!
//! The watches keep no store: an event is judged against the versions the
//! last apply answered with ([`is_news`], pure) and then dropped.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use somastack_crds::Installation;
use tokio::sync::mpsc;

use super::InstallationContext;

/// The kinds of child watched for changes made by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildKind {
    ServiceAccount,
    ConfigMap,
    NetworkPolicy,
    Service,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
}

/// One version of a child: what an apply answered with, or a watch event shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub resource_version: String,
    /// Kinds with a spec and a status (NetworkPolicy, HorizontalPodAutoscaler,
    /// PodDisruptionBudget) count spec changes here; a status write (the
    /// autoscaler's, every 15 s) leaves it as it was.
    pub generation: Option<i64>,
}

impl Version {
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        Some(Version {
            resource_version: meta.resource_version.clone()?,
            generation: meta.generation,
        })
    }
}

/// What a watch told of a child since it was last applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Changed (or, `deleted`, removed) at `version`.
    Event { version: Version, deleted: bool },
    /// Absent from a full list the watch made again (after a gap in which
    /// the delete itself was missed); any later apply settles it.
    Missing,
}

/// Pure: whether `seen` tells of a change made after the apply that left the
/// child at `applied`: not the apply's own write (the same version), nor
/// anything older (a watch that is behind), nor, for kinds with a
/// generation, a write that left the spec as it was.
///
/// Resource versions are compared as numbers when both are (as etcd's are);
/// otherwise any other version is news, which costs at most one apply more.
pub fn is_news(applied: &Version, version: &Version, deleted: bool) -> bool {
    if version.resource_version == applied.resource_version {
        return false;
    }
    if let (Ok(a), Ok(s)) = (
        applied.resource_version.parse::<u64>(),
        version.resource_version.parse::<u64>(),
    ) && s < a
    {
        return false;
    }
    deleted
        || match (applied.generation, version.generation) {
            (Some(a), Some(s)) => a != s,
            _ => true,
        }
}

/// A child as the last apply left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedChild {
    pub name: String,
    pub version: Version,
}

/// Pure: of what was seen of children since an earlier apply (`drift`),
/// what is still news after the apply that left them as `applied`: events
/// newer than it about a child it applied. What it did not apply (a child
/// it pruned) and what it settles ([`Seen::Missing`]) are forgotten.
pub fn still_news(
    drift: BTreeMap<ChildKind, Seen>,
    applied: &BTreeMap<ChildKind, AppliedChild>,
) -> BTreeMap<ChildKind, Seen> {
    drift
        .into_iter()
        .filter(|(kind, seen)| {
            let Seen::Event { version, deleted } = seen else {
                return false;
            };
            applied
                .get(kind)
                .is_some_and(|child| is_news(&child.version, version, *deleted))
        })
        .collect()
}

/// Pure: whether a child the last apply left (`applied`, in `namespace`) is
/// missing from a full list of its kind (`listed`: namespace and name of
/// each child found): deleted while the watch was down.
pub fn missing_from(
    listed: &HashSet<(String, String)>,
    namespace: &str,
    applied: Option<&AppliedChild>,
) -> bool {
    applied.is_some_and(|child| !listed.contains(&(namespace.to_string(), child.name.clone())))
}

/// The Installation that controls a child, as its namespace, name and uid.
fn controller_of(meta: &ObjectMeta) -> Option<(String, String, String)> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Installation")?;
    Some((meta.namespace.clone()?, owner.name.clone(), owner.uid.clone()))
}

/// The futures that keep one metadata-only watch per [`ChildKind`] (of the
/// objects labelled as managed by the operator), each sending `drifted` the
/// Installation whose child it finds changed or gone ([`InstallationContext::observe`]).
pub fn watch(
    client: &Client,
    wc: &watcher::Config,
    ctx: &Arc<InstallationContext>,
    drifted: mpsc::UnboundedSender<ObjectRef<Installation>>,
) -> impl Future<Output = ()> + Send + use<> {
    let w = |kind| (client.clone(), wc.clone(), ctx.clone(), drifted.clone(), kind);
    let accounts = watch_kind::<ServiceAccount>(w(ChildKind::ServiceAccount));
    let maps = watch_kind::<ConfigMap>(w(ChildKind::ConfigMap));
    let policies = watch_kind::<NetworkPolicy>(w(ChildKind::NetworkPolicy));
    let services = watch_kind::<Service>(w(ChildKind::Service));
    let autoscalers = watch_kind::<HorizontalPodAutoscaler>(w(ChildKind::HorizontalPodAutoscaler));
    let budgets = watch_kind::<PodDisruptionBudget>(w(ChildKind::PodDisruptionBudget));
    async move {
        futures::join!(accounts, maps, policies, services, autoscalers, budgets);
    }
}

type WatchOf = (
    Client,
    watcher::Config,
    Arc<InstallationContext>,
    mpsc::UnboundedSender<ObjectRef<Installation>>,
    ChildKind,
);

async fn watch_kind<K>((client, wc, ctx, drifted, kind): WatchOf)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    // Children seen by a full list under way: the recorded ones it lacks
    // were deleted while the watch was down.
    let mut listed: Option<HashSet<(String, String)>> = None;
    let api: Api<PartialObjectMeta<K>> = Api::all(client);
    watcher(api, wc)
        .backoff(crate::caches::watch_backoff())
        .for_each(|event| {
            let observe = |meta: &ObjectMeta, deleted: bool| {
                let Some((namespace, name, uid)) = controller_of(meta) else {
                    return;
                };
                let (Some(child), Some(version)) = (meta.name.as_deref(), Version::of(meta)) else {
                    return;
                };
                if ctx.observe(&uid, kind, child, version, deleted) {
                    let _ = drifted.send(ObjectRef::new(&name).within(&namespace));
                }
            };
            match event {
                Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(obj)) => {
                    if let (Some(set), Some(ns), Some(name)) = (
                        listed.as_mut(),
                        obj.metadata.namespace.clone(),
                        obj.metadata.name.clone(),
                    ) {
                        set.insert((ns, name));
                    }
                    observe(&obj.metadata, false);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(set) = listed.take() {
                        for inst in ctx.vanished(kind, &set) {
                            let _ = drifted.send(inst);
                        }
                    }
                }
                Ok(watcher::Event::Apply(obj)) => observe(&obj.metadata, false),
                Ok(watcher::Event::Delete(obj)) => observe(&obj.metadata, true),
                Err(error) => tracing::warn!(
                    kind = ?kind,
                    %error,
                    "watch of children failed; retrying with backoff"
                ),
            }
            futures::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rv: &str, generation: Option<i64>) -> Version {
        Version {
            resource_version: rv.into(),
            generation,
        }
    }

    fn changed(rv: &str, generation: Option<i64>) -> Seen {
        Seen::Event {
            version: v(rv, generation),
            deleted: false,
        }
    }

    fn deleted(rv: &str) -> Seen {
        Seen::Event {
            version: v(rv, None),
            deleted: true,
        }
    }

    fn news(applied: &Version, seen: &Seen) -> bool {
        match seen {
            Seen::Event { version, deleted } => is_news(applied, version, *deleted),
            Seen::Missing => panic!("judged by still_news"),
        }
    }

    #[test]
    fn the_applys_own_write_and_older_events_are_no_news() {
        let applied = v("120", None);
        assert!(!news(&applied, &changed("120", None)), "our own write");
        assert!(!news(&applied, &changed("99", None)), "a watch that is behind");
        assert!(
            !news(&applied, &deleted("100")),
            "deleted before the apply recreated it"
        );
    }

    #[test]
    fn a_later_change_or_delete_is_news() {
        assert!(news(&v("120", None), &changed("121", None)), "a ConfigMap edited");
        assert!(news(&v("120", None), &deleted("130")), "deleted by hand");
        assert!(
            news(&v("120", Some(1)), &changed("130", Some(2))),
            "a NetworkPolicy's spec edited"
        );
        assert!(news(&v("120", Some(1)), &deleted("130")), "an autoscaler deleted");
    }

    #[test]
    fn a_status_write_is_no_news_for_kinds_with_a_generation() {
        // The autoscaler controller writes status every 15 s.
        assert!(!news(&v("120", Some(1)), &changed("180", Some(1))));
    }

    #[test]
    fn versions_that_are_not_numbers_are_news_unless_equal() {
        assert!(news(&v("a", None), &changed("b", None)));
        assert!(!news(&v("a", None), &changed("a", None)));
    }

    #[test]
    fn a_child_applied_but_not_listed_again_is_missing() {
        let child = AppliedChild {
            name: "app-config".into(),
            version: v("120", None),
        };
        let listed = HashSet::from([("team".to_string(), "app-config".to_string())]);
        assert!(!missing_from(&listed, "team", Some(&child)), "listed");
        assert!(
            missing_from(&listed, "other", Some(&child)),
            "same name, other namespace"
        );
        assert!(
            missing_from(&HashSet::new(), "team", Some(&child)),
            "deleted in the gap"
        );
        assert!(
            !missing_from(&HashSet::new(), "team", None),
            "never applied (pruned)"
        );
    }

    #[test]
    fn an_apply_settles_what_it_overwrote_but_not_what_came_after_it() {
        let applied = |rv: &str| AppliedChild {
            name: "app".into(),
            version: v(rv, None),
        };
        let drift = BTreeMap::from([
            (ChildKind::ConfigMap, changed("125", None)),
            (ChildKind::Service, deleted("140")),
            (ChildKind::ServiceAccount, Seen::Missing),
            (ChildKind::HorizontalPodAutoscaler, deleted("135")),
        ]);
        let now = BTreeMap::from([
            (ChildKind::ConfigMap, applied("130")),
            (ChildKind::Service, applied("131")),
            (ChildKind::ServiceAccount, applied("132")),
        ]);
        assert_eq!(
            still_news(drift, &now),
            BTreeMap::from([(ChildKind::Service, deleted("140"))]),
            "the ConfigMap edit and the missing ServiceAccount were overwritten by the \
             apply; the Service deleted after it is still news; the autoscaler it pruned is not"
        );
    }
}
