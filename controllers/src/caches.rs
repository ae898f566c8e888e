//! The one watch per kind: every replica keeps a cache of each kind the
//! operator reads; the admission webhooks (on every replica) read the caches,
//! and the controllers (on the leader) read them and are triggered by their
//! events, so no kind is watched twice.
//!
//! As in kube's `shared_stream_controllers` example: one watcher per kind
//! feeds a shared store ([`reflector::store_shared`]), and every controller
//! that reacts to that kind subscribes to the store's event stream
//! ([`Cache::subscribe`]) instead of opening a watch of its own.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Events a subscriber may lag behind before the watch waits for it.
const EVENT_BUFFER: usize = 4096;

/// Read-only caches of the objects the operator looks up, each with the
/// event stream of its watch, and a flag raised once every cache has had its
/// first full list.
#[derive(Clone)]
pub struct Caches {
    /// Every Capsule (cluster-scoped): capsule lookups, Capsule controller.
    pub capsules: Cache<Capsule>,
    /// Every PolicyBundle (cluster-scoped): the policy of each namespace.
    pub bundles: Cache<PolicyBundle>,
    /// Every Installation: the Installation controller, Capsule usage
    /// counts, bundle audits, drill targets, planner capsules.
    pub installations: Cache<Installation>,
    /// Every Namespace: their labels decide which bundles govern them.
    pub namespaces: Cache<Namespace>,
    /// Every DrDrill (each operator acts on its shard of them).
    pub drills: Cache<DrDrill>,
    /// Every KamachiqProject (each operator acts on its shard of them).
    pub projects: Cache<KamachiqProject>,
    /// Raised once every cache has had its first full list.
    ready: tokio::sync::watch::Receiver<bool>,
}

/// The one watch of `K`: its store (what it derefs to) and its events.
pub struct Cache<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    events: Subscription<K>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            events: self.events.clone(),
        }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> std::ops::Deref for Cache<K> {
    type Target = Store<K>;
    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// The store, to keep.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// References to the cached objects `keep` selects: what a controller
    /// reconciles when an object of another kind changes.
    pub fn refs(&self, keep: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>> {
        self.store
            .state()
            .iter()
            .filter(|o| keep(o))
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    }

    /// A new stream of the watch's events ([`Subscription::subscribe`]).
    pub async fn subscribe(&self) -> Result<ReflectHandle<K>, Error> {
        self.events.subscribe().await
    }
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

/// Hands out event streams of one shared watch, at any time.
///
/// A subscriber that is never read would stop the watch (the shared
/// reflector waits for its slowest subscriber), and a follower replica runs
/// no controllers: so one task always reads a subscription of its own and
/// clones it for whoever asks. A clone sees the events from then on; a
/// controller started late (on becoming leader) reconciles everything once
/// (`reconcile_all_on`) to make up for what it did not see.
pub struct Subscription<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    requests: mpsc::UnboundedSender<oneshot::Sender<ReflectHandle<K>>>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Clone for Subscription<K> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<K> Subscription<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// A new stream of the watch's events (objects as the store has them).
    pub async fn subscribe(&self) -> Result<ReflectHandle<K>, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).map_err(|_| Error::CacheStopped)?;
        rx.await.map_err(|_| Error::CacheStopped)
    }

    /// `handle`, kept read, and the task that serves subscriptions from it.
    fn serve(mut handle: ReflectHandle<K>) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (requests, mut incoming) = mpsc::unbounded_channel::<oneshot::Sender<ReflectHandle<K>>>();
        let task = async move {
            loop {
                tokio::select! {
                    event = handle.next() => if event.is_none() { break },
                    Some(reply) = incoming.recv() => { let _ = reply.send(handle.clone()); }
                }
            }
        };
        (Self { requests }, task)
    }
}

/// The shared cache of `K` and the future that keeps it filled: the one
/// watch of `K`.
fn cache<K>(
    api: Api<K>,
    wc: watcher::Config,
) -> Result<(Cache<K>, impl Future<Output = ()> + Send + 'static), Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared(EVENT_BUFFER);
    let handle = writer.subscribe().ok_or(Error::CacheStopped)?;
    let (events, serve) = Subscription::serve(handle);
    let fill = watcher(api, wc)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect_shared(writer)
        .for_each(|_| futures::future::ready(()));
    let run = async move {
        futures::join!(fill, serve);
    };
    Ok((Cache { store, events }, run))
}

impl Caches {
    /// The caches, and the future that fills them (run it until shutdown).
    ///
    /// Nothing ever waits on a [`Store`] directly: kube's
    /// `Store::wait_until_ready` keeps a single waker, so concurrent waiters
    /// (reconciles, webhook requests, a controller's own runner) can miss the
    /// wake-up and hang. One task waits on each store once and raises a
    /// `watch` flag that any number of tasks may wait on.
    pub fn start(client: &Client) -> Result<(Self, impl Future<Output = ()> + Send + 'static), Error> {
        let wc = watcher::Config::default().any_semantic();
        let (capsules, f1) = cache(Api::<Capsule>::all(client.clone()), wc.clone())?;
        let (bundles, f2) = cache(Api::<PolicyBundle>::all(client.clone()), wc.clone())?;
        let (installations, f3) = cache(Api::<Installation>::all(client.clone()), wc.clone())?;
        let (namespaces, f4) = cache(Api::<Namespace>::all(client.clone()), wc.clone())?;
        let (drills, f5) = cache(Api::<DrDrill>::all(client.clone()), wc.clone())?;
        let (projects, f6) = cache(Api::<KamachiqProject>::all(client.clone()), wc)?;
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
        Ok((caches, fill))
    }

    /// True once every cache has had its first full list.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits (at most `limit`) until every cache has had its first full list,
    /// so nobody mistakes a cold cache for a missing object.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(limit, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CacheStopped),
        }
    }

    /// Resolves once every cache has had its first full list (never, if
    /// they stop first): the trigger of a controller's first full pass.
    pub fn filled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ready = self.ready.clone();
        async move {
            if ready.wait_for(|r| *r).await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }
}
