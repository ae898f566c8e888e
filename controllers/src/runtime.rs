//! The controller loop shared by every kind.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::Error;

/// What every reconcile gets.
pub struct Context {
    pub client: kube::Client,
}

/// How long after an error a reconcile is retried.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// Runs one controller for `K` until `shutdown` resolves.
///
/// Concurrency is bounded (kube's default is unbounded, a footgun at scale).
pub async fn run<K, R, Fut, S>(api: Api<K>, ctx: Arc<Context>, shutdown: S, reconcile: R)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    S: Future<Output = ()> + Send + Sync + 'static,
{
    let kind = K::kind(&());
    tracing::info!(%kind, "starting controller");
    Controller::new(api, watcher::Config::default().any_semantic())
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
) -> impl FnMut(Arc<K>, Arc<Context>) -> tracing::instrument::Instrumented<Fut>
where
    K: Resource<DynamicType = ()>,
    R: FnMut(Arc<K>, Arc<Context>) -> Fut,
{
    move |obj, ctx| {
        let span = tracing::info_span!(
            "reconcile",
            kind = %K::kind(&()),
            namespace = obj.namespace().unwrap_or_default(),
            name = %obj.name_any(),
        );
        reconcile(obj, ctx).instrument(span)
    }
}

fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(name = %obj.name_any(), category = err.category(), "requeue after error");
    Action::requeue(ERROR_REQUEUE)
}
