//! The watch caches every replica keeps: reconciles (on the leader) and the
//! admission webhooks (on every replica) read them instead of calling the API.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

use crate::Error;

/// Read-only caches of the objects the operator looks up, and a flag raised
/// once every one of them has had its first full list.
#[derive(Clone)]
pub struct Caches {
    pub capsules: Store<Capsule>,
    pub bundles: Store<PolicyBundle>,
    pub installations: Store<Installation>,
    pub namespaces: Store<Namespace>,
    pub drills: Store<DrDrill>,
    pub projects: Store<KamachiqProject>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").field("ready", &self.is_ready()).finish()
    }
}

/// Forgets what no decision of the operator reads before an object is
/// cached: `metadata.managedFields` is often the largest part of an object
/// (one entry per field manager), and every replica keeps every object.
pub fn drop_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A cache of `K` and the future that keeps it filled.
fn cache<K>(
    api: Api<K>,
    wc: watcher::Config,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let fill = watcher(api, wc)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    (store, fill)
}

impl Caches {
    /// The caches, and the future that fills them (run it until shutdown).
    ///
    /// Nothing ever waits on a [`Store`] directly: kube's
    /// `Store::wait_until_ready` keeps a single waker, so concurrent waiters
    /// (reconciles, webhook requests, a controller's own runner) can miss the
    /// wake-up and hang. One task waits on each store once and raises a
    /// `watch` flag that any number of tasks may wait on.
    pub fn start(client: &Client) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let wc = watcher::Config::default().any_semantic();
        let (capsules, f1) = cache(Api::<Capsule>::all(client.clone()), wc.clone());
        let (bundles, f2) = cache(Api::<PolicyBundle>::all(client.clone()), wc.clone());
        let (installations, f3) = cache(Api::<Installation>::all(client.clone()), wc.clone());
        let (namespaces, f4) = cache(Api::<Namespace>::all(client.clone()), wc.clone());
        let (drills, f5) = cache(Api::<DrDrill>::all(client.clone()), wc.clone());
        let (projects, f6) = cache(Api::<KamachiqProject>::all(client.clone()), wc.clone());
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let caches = Caches {
            capsules,
            bundles,
            installations,
            namespaces,
            drills,
            projects,
            ready,
        };
        let readiness = {
            let c = caches.clone();
            async move {
                let filled = c.capsules.wait_until_ready().await.is_ok()
                    && c.bundles.wait_until_ready().await.is_ok()
                    && c.installations.wait_until_ready().await.is_ok()
                    && c.namespaces.wait_until_ready().await.is_ok()
                    && c.drills.wait_until_ready().await.is_ok()
                    && c.projects.wait_until_ready().await.is_ok();
                if filled {
                    tracing::info!("caches filled");
                    let _ = ready_tx.send(true);
                }
            }
        };
        let fill = async move {
            futures::join!(f1, f2, f3, f4, f5, f6, readiness);
        };
        (caches, fill)
    }

    /// True once every cache has had its first full list.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits (at most `limit`) until every cache has had its first full list,
    /// so nobody mistakes a cold cache for a missing object.
    pub async fn wait_ready(&self, limit: std::time::Duration) -> Result<(), Error> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(limit, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CacheStopped),
        }
    }
}
