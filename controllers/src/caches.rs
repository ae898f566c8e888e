//! The one watch per kind: every replica keeps a cache of each kind the
//! operator reads; the admission webhooks (on every replica) read the caches,
//! and the controllers (on the leader) read them and are triggered by their
//! events, so no kind is watched twice.
//!
//! As in kube's `shared_stream_controllers` example, one watcher per kind
//! fills one store, and every controller that reacts to that kind subscribes
//! to its events ([`Cache::applied`], [`Cache::touched`]) instead of opening
//! a watch of its own (`Controller::for_shared_stream`,
//! `watches_shared_stream`).

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};
use tokio::sync::mpsc;

use crate::Error;

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
    ready: Filled,
}

/// The one watch of `K`: its store (what it derefs to) and its events.
pub struct Cache<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    events: Subscribers<K>,
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

    /// From now on, every object the watch applies (created, changed, or
    /// listed again), as the store has it: what triggers a controller of `K`.
    pub fn applied(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.events
            .subscribe()
            .filter_map(|(obj, deleted)| futures::future::ready((!deleted).then_some(obj)))
    }

    /// [`Cache::applied`] and the objects the watch deletes: what triggers a
    /// controller that depends on objects of `K` (a deleted PolicyBundle
    /// changes what its namespaces may run).
    pub fn touched(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.events.subscribe().map(|(obj, _)| obj)
    }

    /// From now on, the objects that appear, go, or change in what `read`
    /// returns: what triggers a controller that reads only part of `K`. A
    /// write that leaves that part as it was (most often a status write of
    /// the object's own controller) triggers nothing, so N objects that
    /// depend on one object are not all requeued by each write to it.
    pub fn changes<T: Hash + 'static>(
        &self,
        read: impl Fn(&K) -> T + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        crate::triggers::changed(self.events.subscribe(), read)
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").field("ready", &self.is_ready()).finish()
    }
}

/// What client-side `kubectl apply` keeps on an object: a copy of the whole
/// manifest it applied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Forgets what no decision of the operator reads before an object is
/// cached: `metadata.managedFields` is often the largest part of an object
/// (one entry per field manager), client-side `kubectl apply` keeps a second
/// copy of the object in an annotation, and every replica keeps every object.
pub fn drop_unread<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// The subscribers of one watch: each gets every change from the moment it
/// subscribes, on a channel of its own, so a subscriber never holds up the
/// watch nor the others, and a replica with no controller (a follower) has
/// no subscriber at all. A controller started late (on becoming leader)
/// reconciles everything once (`reconcile_all_on`) for what came before.
///
/// Not kube's shared reflector (`store_shared`/`ReflectHandle`): its handle
/// returns `Pending` without a waker when an event's object was deleted
/// before the handle read it, and a subscriber stalled that way holds up
/// the watch of every other one once the buffer is full.
struct Subscribers<K>(Arc<Mutex<Vec<Subscriber<K>>>>);

/// Where one subscriber's changes go: each object as the store has it, and
/// whether the watch deleted it.
type Subscriber<K> = mpsc::UnboundedSender<(Arc<K>, bool)>;

impl<K> Clone for Subscribers<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Send + Sync + 'static> Subscribers<K> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }

    fn subscribe(&self) -> impl Stream<Item = (Arc<K>, bool)> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut subs) = self.0.lock() {
            subs.push(tx);
        }
        crate::triggers::received(rx)
    }

    /// Sends `obj`, applied or `deleted` (after the store applied it), to
    /// every subscriber; forgets those gone.
    fn publish(&self, obj: K, deleted: bool) {
        let obj = Arc::new(obj);
        if let Ok(mut subs) = self.0.lock() {
            subs.retain(|tx| tx.send((obj.clone(), deleted)).is_ok());
        }
    }
}

/// What a cached kind is: an API object the operator reads, shared between tasks.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static> Cached for K {}

/// The cache of `K` and the future that keeps it filled and tells its
/// subscribers: the one watch of `K`.
pub fn cache<K: Cached>(
    api: Api<K>,
    wc: watcher::Config,
) -> (Cache<K>, impl Future<Output = ()> + Send + 'static) {
    cache_with(api, wc, |_| {})
}

/// [`cache`], keeping of each object only what `trim` leaves (besides
/// `managedFields`, which no cache keeps): for a kind of which the operator
/// reads a few fields of many objects.
pub fn cache_with<K: Cached>(
    api: Api<K>,
    wc: watcher::Config,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> (Cache<K>, impl Future<Output = ()> + Send + 'static) {
    let (store, writer) = reflector::store();
    let events = Subscribers::new();
    let publish = events.clone();
    let before = store.clone();
    // `reflect` applies each event to the store before passing it on; while
    // a list is under way the store keeps what it held before (kube buffers
    // the list and swaps it in at `InitDone`), so a relisted object is
    // compared with what the watch had seen of it.
    let fill = watcher(api, wc)
        .backoff(watch_backoff())
        .modify(move |obj| {
            drop_unread(obj);
            trim(obj);
        })
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::InitApply(obj)) => {
                    if listed_news(&before, &obj) {
                        publish.publish(obj, false)
                    }
                }
                Ok(watcher::Event::Apply(obj)) => publish.publish(obj, false),
                Ok(watcher::Event::Delete(obj)) => publish.publish(obj, true),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                // The watcher retries with backoff; say why the cache is not
                // filling or is behind (an API server without the WatchList
                // feature refuses `--initial-list stream` here, with 422).
                Err(error) => tracing::warn!(
                    kind = %K::kind(&()),
                    %error,
                    "watch failed; retrying with backoff"
                ),
            }
            futures::future::ready(())
        });
    (Cache { store, events }, fill)
}

/// How every watch of the operator retries after an error: from 0.5 s,
/// doubling up to 3 s, with jitter, and back to 0.5 s after the first event
/// that gets through.
///
/// kube's default is client-go's: 0.8 s doubling up to 30 s, with up to as
/// much again of jitter, and reset only 120 s after the last retry. After
/// an outage of the API server or etcd that leaves a cache up to a minute
/// behind a server that is back, and the operator not acting on anything
/// new meanwhile. A watch is one request per kind per replica: retrying it
/// every few seconds costs the server nothing worth that minute.
pub fn watch_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(3))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Whether `obj`, as a list brings it, is news to a watch whose store
/// (`before`) still holds what the watch had seen: a new object, a new
/// version, or one with no version to compare. A relist (after the watch
/// expired or the API server came back) thereby passes on only the objects
/// that changed while the watch was down, not every object again.
///
/// Without it, a relist of 2,000 Installations queued 2,000 reconciles (and
/// as many of their owners) ahead of anything new: measured from outside, a
/// new Installation waited over two minutes for its first status after the
/// control plane came back.
fn listed_news<K: Cached>(before: &Store<K>, obj: &K) -> bool {
    let version = obj.meta().resource_version.as_deref().filter(|v| !v.is_empty());
    let Some(version) = version else { return true };
    let seen = before.get(&ObjectRef::from_obj(obj));
    seen.and_then(|o| o.meta().resource_version.clone()).as_deref() != Some(version)
}

/// Raised once a cache has had its first full list; any number of tasks may
/// wait on it (kube's `Store::wait_until_ready` keeps a single waker).
#[derive(Clone)]
pub struct Filled(tokio::sync::watch::Receiver<bool>);

impl Filled {
    /// Waits (at most `limit`) until the cache has had its first full list.
    pub async fn wait(&self, limit: Duration) -> Result<(), Error> {
        let mut ready = self.0.clone();
        match tokio::time::timeout(limit, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CacheStopped),
        }
    }
}

/// A kind's own cache ([`cache_with`]), the flag raised once it is filled,
/// and the future that keeps both (run it as long as the kind's controller).
pub fn own_cache<K: Cached>(
    api: Api<K>,
    wc: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Cache<K>, Filled, impl Future<Output = ()> + Send + 'static) {
    let (cache, fill) = cache_with(api, wc, trim);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let store = cache.store();
    let readiness = async move {
        if store.wait_until_ready().await.is_ok() {
            let _ = tx.send(true);
        }
        // Keep the sender: dropping it would end the waits on readiness.
        futures::future::pending::<()>().await;
    };
    let run = async move {
        futures::join!(fill, readiness);
    };
    (cache, Filled(rx), run)
}

impl Caches {
    /// The caches, and the future that fills them (run it until shutdown).
    ///
    /// Nothing ever waits on a [`Store`] directly: kube's
    /// `Store::wait_until_ready` keeps a single waker, so concurrent waiters
    /// (reconciles, webhook requests, a controller's own runner) can miss the
    /// wake-up and hang. One task waits on each store once and raises a
    /// `watch` flag that any number of tasks may wait on.
    pub fn start(
        client: &Client,
        tuning: &crate::Tuning,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let wc = tuning.watcher_config();
        let (capsules, f1) = cache(Api::<Capsule>::all(client.clone()), wc.clone());
        let (bundles, f2) = cache(Api::<PolicyBundle>::all(client.clone()), wc.clone());
        let (installations, f3) = cache(Api::<Installation>::all(client.clone()), wc.clone());
        let (namespaces, f4) = cache(Api::<Namespace>::all(client.clone()), wc.clone());
        let (drills, f5) = cache(Api::<DrDrill>::all(client.clone()), wc.clone());
        let (projects, f6) = cache(Api::<KamachiqProject>::all(client.clone()), wc);
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let caches = Caches {
            capsules,
            bundles,
            installations,
            namespaces,
            drills,
            projects,
            ready: Filled(ready),
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
        *self.ready.0.borrow()
    }

    /// Waits (at most `limit`) until every cache has had its first full list,
    /// so nobody mistakes a cold cache for a missing object.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        self.ready.wait(limit).await
    }

    /// Resolves once every cache has had its first full list (never, if
    /// they stop first): the trigger of a controller's first full pass.
    pub fn filled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ready = self.ready.0.clone();
        async move {
            if ready.wait_for(|r| *r).await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    /// A store fed as `cache_with` feeds it: each event applied first, then
    /// judged; true when the cache would pass it on.
    struct Watch {
        store: Store<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
    }

    impl Watch {
        fn new() -> Self {
            let (store, writer) = reflector::store();
            Self { store, writer }
        }

        fn event(&mut self, event: watcher::Event<ConfigMap>) -> bool {
            self.writer.apply_watcher_event(&event);
            match &event {
                watcher::Event::InitApply(obj) => listed_news(&self.store, obj),
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => true,
                watcher::Event::Init | watcher::Event::InitDone => false,
            }
        }

        fn begin(&mut self) {
            self.event(watcher::Event::Init);
        }

        fn done(&mut self) {
            self.event(watcher::Event::InitDone);
        }

        fn listed(&mut self, name: &str, version: &str) -> bool {
            self.event(watcher::Event::InitApply(map(name, version)))
        }

        fn applied(&mut self, name: &str, version: &str) -> bool {
            self.event(watcher::Event::Apply(map(name, version)))
        }

        fn deleted(&mut self, name: &str, version: &str) -> bool {
            self.event(watcher::Event::Delete(map(name, version)))
        }
    }

    fn map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("a".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_passes_on_only_what_changed_while_the_watch_was_down() {
        let mut w = Watch::new();
        w.begin();
        assert!(w.listed("x", "1"), "first list: everything is news");
        assert!(w.listed("y", "2"));
        w.done();
        assert!(w.applied("x", "3"), "a change while watching");
        // The watch expires; the relist brings x unchanged, y changed, z new.
        w.begin();
        assert!(!w.listed("x", "3"), "unchanged since the watch saw it");
        assert!(w.listed("y", "4"), "changed while the watch was down");
        assert!(w.listed("z", "5"), "created while the watch was down");
        w.done();
        w.begin();
        assert!(!w.listed("y", "4"));
    }

    #[test]
    fn an_object_deleted_and_created_again_is_news() {
        let mut w = Watch::new();
        w.begin();
        assert!(w.listed("x", "1"));
        assert!(w.listed("gone", "2"));
        w.done();
        // Deleted while the watch was down: the relist does not bring it.
        w.begin();
        assert!(!w.listed("x", "1"));
        w.done();
        w.begin();
        assert!(w.listed("gone", "2"), "forgotten by the relist, so news again");
        w.done();
        assert!(w.deleted("x", "1"));
        w.begin();
        assert!(w.listed("x", "1"), "deleted, then back");
    }

    #[test]
    fn an_object_without_a_version_is_always_news() {
        let mut w = Watch::new();
        w.begin();
        assert!(w.listed("x", ""));
        w.done();
        w.begin();
        assert!(w.listed("x", ""));
    }

    #[test]
    fn watches_retry_within_seconds_and_never_give_up() {
        let delays: Vec<Duration> = watch_backoff().take(20).collect();
        assert_eq!(delays.len(), 20, "retries forever");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(6)), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(1), "{delays:?}");
    }
}
