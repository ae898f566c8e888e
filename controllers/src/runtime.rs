//! The controller loop shared by every kind, and what every reconcile gets.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use somastack_crds::{Capsule, Installation, PolicyBundle};
use tracing::Instrument;

use crate::Error;
use crate::caches::Caches;
use crate::metrics::Metrics;

/// What every reconcile gets: a client, an Event recorder, metrics, and
/// read-only caches of the objects reconciles look up (kept by watches, so a
/// lookup costs no API call).
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub capsules: Store<Capsule>,
    pub bundles: Store<PolicyBundle>,
    pub installations: Store<Installation>,
    pub namespaces: Store<Namespace>,
    pub caches: Caches,
    /// KamachiqProject Jobs (labelled with their project's uid), kept by the
    /// leader only: see [`crate::run`].
    pub jobs: Store<Job>,
    jobs_ready: tokio::sync::watch::Receiver<bool>,
    /// Jobs created and not yet seen in the cache, per KamachiqProject.
    pub expectations: crate::kinds::project::Expectations,
    /// KamachiqProject planner calls, made beside the reconciles.
    pub planner: crate::kinds::project::planning::Calls,
    /// The capsules each KamachiqProject's plan uses (Capsule events wake only those).
    pub project_uses: crate::kinds::project::CapsuleUses,
}

impl Context {
    pub fn new(
        client: kube::Client,
        caches: Caches,
        metrics: Arc<Metrics>,
        jobs: Store<Job>,
        jobs_ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            recorder,
            metrics,
            capsules: caches.capsules.clone(),
            bundles: caches.bundles.clone(),
            installations: caches.installations.clone(),
            namespaces: caches.namespaces.clone(),
            caches,
            jobs,
            jobs_ready,
            expectations: Default::default(),
            planner: Default::default(),
            project_uses: Default::default(),
        }
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
            .namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default();
        self.bundles
            .state()
            .into_iter()
            .filter(|b| crate::domain::policy::governs(&b.spec, &labels))
            .collect()
    }

    /// Waits (bounded) until the Jobs cache has had its first full list.
    pub async fn jobs_ready(&self) -> Result<(), Error> {
        let mut ready = self.jobs_ready.clone();
        match tokio::time::timeout(CACHE_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CacheStopped),
        }
    }

    /// Records a Kubernetes Event on `obj` (best effort: a failed Event is
    /// logged, never fails the reconcile).
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::text::bounded(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%reason, error = %err, "could not record an Event");
        }
    }
}

/// Longest a reconcile waits for the caches before giving up (and retrying).
pub const CACHE_WAIT: Duration = Duration::from_secs(30);

/// How long after an error a reconcile is retried.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// Runs `controller` until `shutdown` resolves.
///
/// Concurrency is bounded (kube's default is unbounded, a footgun at scale).
pub async fn run<K, R, Fut, S>(controller: Controller<K>, ctx: Arc<Context>, shutdown: S, reconcile: R)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    S: Future<Output = ()> + Send + Sync + 'static,
{
    let kind = K::kind(&());
    tracing::info!(%kind, "starting controller");
    controller
        .with_config(Config::default().concurrency(8))
        .graceful_shutdown_on(shutdown)
        .run(traced(reconcile), error_policy::<K>, ctx)
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
/// line of one reconcile carries kind, namespace and name.
fn traced<K, R, Fut>(
    mut reconcile: R,
) -> impl FnMut(Arc<K>, Arc<Context>) -> tracing::instrument::Instrumented<BoxFuture<'static, Result<Action, Error>>>
where
    K: Resource<DynamicType = ()>,
    R: FnMut(Arc<K>, Arc<Context>) -> Fut,
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
        let metrics = ctx.metrics.clone();
        let started = std::time::Instant::now();
        let run = reconcile(obj, ctx);
        async move {
            let result = run.await;
            let error = result.as_ref().err().map(Error::category);
            metrics.reconciled(&kind, started.elapsed(), error);
            result
        }
        .boxed()
        .instrument(span)
    }
}

fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(name = %obj.name_any(), category = err.category(), "requeue after error");
    Action::requeue(ERROR_REQUEUE)
}
