//! Reconcilers for the `somastack.io` kinds.
//!
//! Each kind has a module under [`kinds`]; [`run`] wires one controller per
//! kind, with the cross-kind triggers between them, and returns when all of
//! them have shut down. Pure logic lives apart from the Kubernetes plumbing:
//! [`policy`] (effective policy and violations), [`signing`] (capsule
//! signatures), [`conditions`] (condition bookkeeping) and each kind's
//! `render`/`decide` functions carry most unit tests; [`status`] and [`apply`]
//! write to the API.

pub mod apply;
pub mod conditions;
pub mod error;
pub mod kinds;
pub mod policy;
pub mod runtime;
pub mod signing;
pub mod status;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

pub use error::{Error, Result};

/// The one field manager the operator uses for every server-side apply.
pub const FIELD_MANAGER: &str = "somastack-operator";

/// Label on every object the operator creates for an Installation.
pub const INSTALLATION_LABEL: &str = "somastack.io/installation";
/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "somastack-operator";

/// A cache of `K` and the future that keeps it filled.
fn cache<K>(
    api: Api<K>,
    wc: &watcher::Config,
) -> (
    kube::runtime::reflector::Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
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
    let fill = watcher(api, wc.clone())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    (store, fill)
}

/// Starts a controller for every kind; resolves once `shutdown` fired and
/// every controller drained its in-flight reconciles.
pub async fn run<S>(client: Client, shutdown: S)
where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let wc = watcher::Config::default().any_semantic();
    let capsule_ctl = Controller::new(Api::<Capsule>::all(client.clone()), wc.clone());
    let bundle_ctl = Controller::new(Api::<PolicyBundle>::all(client.clone()), wc.clone());
    let installation_ctl = Controller::new(Api::<Installation>::all(client.clone()), wc.clone()).owns(
        Api::<Deployment>::all(client.clone()),
        wc.clone()
            .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")),
    );

    // The caches reconciles read, each filled by its own watch and task, and
    // one readiness flag. Reconciles never wait on a Store directly: kube's
    // `Store::wait_until_ready` keeps a single waker, so concurrent waiters
    // (reconciles, and a controller's own runner) can miss the wake-up and
    // hang. One task waits on each store once and raises the flag.
    let (capsules, capsules_fill) = cache(Api::<Capsule>::all(client.clone()), &wc);
    let (bundles, bundles_fill) = cache(Api::<PolicyBundle>::all(client.clone()), &wc);
    let (installations, installations_fill) = cache(Api::<Installation>::all(client.clone()), &wc);
    let (namespaces, namespaces_fill) = cache(Api::<Namespace>::all(client.clone()), &wc);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let readiness = {
        let (c, b, i, n) = (
            capsules.clone(),
            bundles.clone(),
            installations.clone(),
            namespaces.clone(),
        );
        async move {
            let ready = c.wait_until_ready().await.is_ok()
                && b.wait_until_ready().await.is_ok()
                && i.wait_until_ready().await.is_ok()
                && n.wait_until_ready().await.is_ok();
            if ready {
                tracing::info!("caches filled");
                let _ = ready_tx.send(true);
            }
        }
    };
    let caches = futures::future::select(
        Box::pin(futures::future::join5(
            capsules_fill,
            bundles_fill,
            installations_fill,
            namespaces_fill,
            readiness,
        )),
        Box::pin(shutdown.clone()),
    );

    let ctx = Arc::new(runtime::Context::new(
        client.clone(),
        capsules,
        bundles,
        installations,
        namespaces,
        ready_rx,
    ));
    let capsule_ctl = kinds::capsule::wire(capsule_ctl, &ctx);
    let bundle_ctl = kinds::policy::wire(bundle_ctl, &ctx);
    let installation_ctl = kinds::installation::wire(installation_ctl, &ctx);

    futures::join!(
        caches,
        runtime::run(
            capsule_ctl,
            ctx.clone(),
            shutdown.clone(),
            kinds::capsule::reconcile
        ),
        runtime::run(
            bundle_ctl,
            ctx.clone(),
            shutdown.clone(),
            kinds::policy::reconcile
        ),
        runtime::run(
            installation_ctl,
            ctx.clone(),
            shutdown.clone(),
            kinds::installation::reconcile
        ),
        runtime::run(
            Controller::new(Api::<DrDrill>::all(client.clone()), wc.clone()),
            ctx.clone(),
            shutdown.clone(),
            |obj, ctx| kinds::observe(obj, ctx, "Succeeded"),
        ),
        runtime::run(
            Controller::new(Api::<KamachiqProject>::all(client), wc),
            ctx,
            shutdown,
            |obj, ctx| kinds::observe(obj, ctx, "Succeeded"),
        ),
    );
}
