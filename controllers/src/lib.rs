//! Reconcilers for the `somastack.io` kinds.
//!
//! Each kind has a module under [`kinds`]; [`run`] wires one controller per
//! kind, with the cross-kind triggers between them, and returns when all of
//! them have shut down. Pure logic lives apart from the Kubernetes plumbing:
//! [`policy`] (effective policy and violations), [`signing`] (capsule
//! signatures), [`conditions`] (condition bookkeeping) and each kind's
//! `render`/`decide` functions carry most unit tests; [`status`] and [`apply`]
//! write to the API.

pub mod admission;
pub mod apply;
pub mod caches;
pub mod conditions;
pub mod error;
pub mod kinds;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod signing;
pub mod status;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

pub use caches::Caches;
pub use error::{Error, Result};
pub use metrics::Metrics;

/// The one field manager the operator uses for every server-side apply.
pub const FIELD_MANAGER: &str = "somastack-operator";

/// Label on every object the operator creates for an Installation.
pub const INSTALLATION_LABEL: &str = "somastack.io/installation";
/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "somastack-operator";

/// The watch of DrDrills: all of them, or those `selector` selects (drills
/// sharded between operators by label, e.g. to run one on its own).
fn drill_watch(wc: &watcher::Config, selector: Option<&str>) -> watcher::Config {
    match selector {
        Some(s) if !s.is_empty() => wc.clone().labels(s),
        _ => wc.clone(),
    }
}

/// Starts a controller for every kind, reading `caches` (kept filled by the
/// caller: every replica keeps them for the admission webhooks, only the
/// leader runs controllers); resolves once `shutdown` fired and every
/// controller drained its in-flight reconciles.
pub async fn run<S>(
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    drill_selector: Option<&str>,
    shutdown: S,
) where
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
    let ctx = Arc::new(runtime::Context::new(client.clone(), caches, metrics));
    let capsule_ctl = kinds::capsule::wire(capsule_ctl, &ctx);
    let bundle_ctl = kinds::policy::wire(bundle_ctl, &ctx);
    let installation_ctl = kinds::installation::wire(installation_ctl, &ctx);
    let drill_ctl = kinds::drill::wire(
        Controller::new(
            Api::<DrDrill>::all(client.clone()),
            drill_watch(&wc, drill_selector),
        ),
        &ctx,
    );

    futures::join!(
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
        runtime::run(drill_ctl, ctx.clone(), shutdown.clone(), kinds::drill::reconcile),
        runtime::run(
            Controller::new(Api::<KamachiqProject>::all(client), wc),
            ctx,
            shutdown,
            |obj, ctx| kinds::observe(obj, ctx, "Succeeded"),
        ),
    );
}
