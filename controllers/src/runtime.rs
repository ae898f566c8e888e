//! The controller loop shared by every kind, and what every reconcile gets.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use somastack_crds::PolicyBundle;
use tracing::Instrument;

use crate::Error;
use crate::caches::Caches;
use crate::metrics::Metrics;

/// What every reconcile gets: a client, an Event recorder, metrics, and
/// read-only caches of the objects reconciles look up (kept by watches, so a
/// lookup costs no API call). State only one kind needs lives in that kind
/// (e.g. the KamachiqProject controller's Jobs cache and planner calls).
pub struct Context {
    pub client: kube::Client,
    /// Records Warnings, aggregating repeats into a series (it keeps each
    /// Event it sent for 6 minutes to do so).
    pub recorder: Recorder,
    /// Whom Normal Events name as their reporter ([`Context::event`]).
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub caches: Caches,
    /// The drills and projects this operator acts on.
    pub shards: crate::Shards,
    pub tuning: crate::Tuning,
    backoff: Backoff,
}

impl Context {
    pub fn new(
        client: kube::Client,
        caches: Caches,
        metrics: Arc<Metrics>,
        shards: crate::Shards,
        tuning: crate::Tuning,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self {
            client,
            recorder,
            reporter,
            metrics,
            caches,
            shards,
            tuning,
            backoff: Backoff::default(),
        }
    }

    /// A controller of `K` fed by the caches' one watch of `K`: it reconciles
    /// every object once the caches are filled (a leader that took over
    /// missed the events before it subscribed), then on each object of
    /// `events` that `keep` lets through. `events` is the cache's
    /// [`changes`](crate::caches::Cache::changes) of the objects'
    /// [`intent`](crate::triggers::intent) for a kind whose reconcile
    /// converges in one pass (its own status writes trigger nothing), or
    /// every change ([`applied`](crate::caches::Cache::applied)) for a kind
    /// whose reconcile moves a state machine one step per pass (drills,
    /// projects).
    pub fn controller<K: crate::caches::Cached>(
        &self,
        events: impl futures::Stream<Item = Arc<K>> + Send + 'static,
        cache: &crate::caches::Cache<K>,
        keep: impl Fn(&K) -> bool + Send + 'static,
    ) -> Controller<K> {
        let events = events.filter(move |obj| futures::future::ready(keep(obj)));
        Controller::for_shared_stream(events, cache.store())
            .reconcile_all_on(futures::stream::once(self.caches.filled()))
    }

    /// Waits until every cache has had its first full list, so a reconcile
    /// never mistakes a cold cache for a missing object. Bounded: a reconcile
    /// that waited forever would hold one of the controller's slots.
    pub async fn caches_ready(&self) -> Result<(), Error> {
        self.caches.wait_ready(CACHE_WAIT).await
    }

    /// The PolicyBundles (from the cache) that govern `namespace`, by its labels.
    pub fn governing_bundles(&self, namespace: &str) -> Vec<Arc<PolicyBundle>> {
        let labels = self
            .caches
            .namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default();
        self.caches
            .bundles
            .state()
            .into_iter()
            .filter(|b| crate::domain::policy::governs(&b.spec, &labels))
            .collect()
    }

    /// Records a Kubernetes Event on `obj` (best effort: a failed Event is
    /// logged, never fails the reconcile).
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(&obj.object_ref(&()), type_, reason, action, note)
            .await;
    }

    /// [`Context::event`] on the object `reference` names.
    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::text::bounded(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        // Normal Events mark one-off steps (a revision created, Ready
        // reached) that do not repeat in a loop, so they need no series: a
        // recorder of their own, dropped at once, keeps kube's Recorder
        // from holding two Events per Installation for 6 minutes (about
        // 7 MiB of heap at 1,000 Installations created together,
        // hack/bench-memory.sh --count 1000).
        let sent = match event.type_ {
            EventType::Normal => {
                Recorder::new(self.client.clone(), self.reporter.clone())
                    .publish(&event, reference)
                    .await
            }
            EventType::Warning => self.recorder.publish(&event, reference).await,
        };
        if let Err(err) = sent {
            tracing::warn!(%reason, error = %err, "could not record an Event");
        }
    }
}

/// Longest a reconcile waits for the caches before giving up (and retrying).
pub const CACHE_WAIT: Duration = Duration::from_secs(30);

/// The context a controller's reconciles get: the shared [`Context`], or a
/// kind's own context that holds it (and derefs to it).
pub trait KindContext: Send + Sync + 'static {
    fn shared(&self) -> &Context;
}

impl KindContext for Context {
    fn shared(&self) -> &Context {
        self
    }
}

/// Makes a kind's own context (a struct holding the shared [`Context`] in
/// a field `shared: Arc<Context>`) deref to the shared one and a
/// [`KindContext`].
macro_rules! kind_context {
    ($own:ty) => {
        impl std::ops::Deref for $own {
            type Target = $crate::runtime::Context;
            fn deref(&self) -> &$crate::runtime::Context {
                &self.shared
            }
        }

        impl $crate::runtime::KindContext for $own {
            fn shared(&self) -> &$crate::runtime::Context {
                &self.shared
            }
        }
    };
}
pub(crate) use kind_context;

/// A kind's controller wired with a context of its own, and the future that
/// keeps the kind's own caches (run it as long as the controller).
pub struct Wired<K: crate::caches::Cached, C, F> {
    pub controller: Controller<K>,
    pub ctx: Arc<C>,
    pub caches: F,
}

impl<K: crate::caches::Cached, C, F> Wired<K, C, F> {
    pub fn new(controller: Controller<K>, ctx: Arc<C>, caches: F) -> Self {
        Self {
            controller,
            ctx,
            caches,
        }
    }

    /// The controller, its context and the future of its caches, apart.
    pub fn parts(self) -> (Controller<K>, Arc<C>, F) {
        (self.controller, self.ctx, self.caches)
    }
}

/// First retry after a transient error; doubled with each failure in a row.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries of a transient error.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Failures in a row per object, so transient errors back off per object
/// (exponentially, with jitter) and a success starts over.
#[derive(Debug, Default)]
struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    fn failed(&self, key: String) -> u32 {
        let Ok(mut m) = self.0.lock() else { return 1 };
        let n = m.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

/// Pure: the wait before retry `failures` (1 for the first) of a transient
/// error, `jitter` in [0, 1) spreading it over its upper half, so objects
/// that failed together do not retry together.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let exp = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_RETRY);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the process's random hash keys and the clock.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Runs `controller` until `shutdown` resolves.
///
/// Concurrency is bounded (kube's default is unbounded, a footgun at scale).
pub async fn run<K, C, R, Fut, S>(controller: Controller<K>, ctx: Arc<C>, shutdown: S, reconcile: R)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    C: KindContext,
    R: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    S: Future<Output = ()> + Send + Sync + 'static,
{
    let kind = K::kind(&());
    tracing::info!(%kind, "starting controller");
    let concurrency = ctx.shared().tuning.concurrency;
    controller
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(traced(reconcile), error_policy::<K, C>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::trace!(name = %obj.name, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(err, obj)) => {
                    tracing::warn!(name = %obj.name, category = err.category(), error = %err, "reconcile failed")
                }
                Err(err) => tracing::warn!(error = %err, "controller error"),
            }
        })
        .await;
    tracing::info!(%kind, "controller stopped");
}

/// Wraps a reconcile in a `reconcile` span naming the object, so every log
/// line of one reconcile carries kind, namespace and name; counts it in the
/// metrics, and starts the object's backoff over when it succeeds.
fn traced<K, C, R, Fut>(
    mut reconcile: R,
) -> impl FnMut(Arc<K>, Arc<C>) -> tracing::instrument::Instrumented<BoxFuture<'static, Result<Action, Error>>>
where
    K: Resource<DynamicType = ()>,
    C: KindContext,
    R: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let kind = K::kind(&());
        let span = tracing::info_span!(
            "reconcile",
            %kind,
            namespace = obj.namespace().unwrap_or_default(),
            name = %obj.name_any(),
        );
        let key = key(obj.as_ref());
        let reference = obj.object_ref(&());
        let started = std::time::Instant::now();
        let run = reconcile(obj, ctx.clone());
        async move {
            let result = run.await;
            let shared = ctx.shared();
            let error = result.as_ref().err().map(Error::category);
            shared.metrics.reconciled(&kind, started.elapsed(), error);
            match &result {
                Ok(_) => shared.backoff.succeeded(&key),
                // Never silent: the object's Events say why it is stuck.
                Err(err) if err.worth_an_event() => {
                    shared
                        .publish(
                            &reference,
                            EventType::Warning,
                            "ReconcileFailed",
                            "Reconcile",
                            err.to_string(),
                        )
                        .await;
                }
                Err(_) => {}
            }
            result
        }
        .boxed()
        .instrument(span)
    }
}

/// A permanent error waits for a change of the object (retrying the same
/// input cannot help); a transient one is retried with per-object
/// exponential backoff and jitter.
fn error_policy<K: Resource<DynamicType = ()>, C: KindContext>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<C>,
) -> Action {
    if err.is_permanent() {
        tracing::debug!(name = %obj.name_any(), category = err.category(), "waiting for a change after a permanent error");
        return Action::await_change();
    }
    let failures = ctx.shared().backoff.failed(key(obj.as_ref()));
    let delay = retry_delay(failures, jitter());
    tracing::debug!(name = %obj.name_any(), category = err.category(), failures, ?delay, "retrying after an error");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_within_bounds_with_jitter() {
        assert_eq!(retry_delay(1, 0.99), Duration::from_millis(995));
        assert_eq!(retry_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(4, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(30, 0.0), MAX_RETRY / 2);
        assert!(retry_delay(30, 0.99) <= MAX_RETRY);
        assert!(retry_delay(3, 0.25) < retry_delay(3, 0.75));
        let spread: std::collections::HashSet<u128> =
            (0..20).map(|_| retry_delay(5, jitter()).as_millis()).collect();
        assert!(spread.len() > 1, "jitter spreads retries: {spread:?}");
    }
}
