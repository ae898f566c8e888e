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

    // Namespaces: a cache for label lookups, whose changes also re-evaluate
    // every bundle (a relabelled namespace changes what a bundle governs).
    let (namespaces, ns_writer) = reflector::store();
    let ns_changes = watcher(Api::<Namespace>::all(client.clone()), wc.clone())
        .default_backoff()
        .reflect(ns_writer)
        .touched_objects()
        .map(|_| ());

    let ctx = Arc::new(runtime::Context::new(
        client.clone(),
        capsule_ctl.store(),
        bundle_ctl.store(),
        installation_ctl.store(),
        namespaces,
    ));
    let capsule_ctl = kinds::capsule::wire(capsule_ctl, &ctx);
    let bundle_ctl = kinds::policy::wire(bundle_ctl, &ctx).reconcile_all_on(ns_changes);
    let installation_ctl = kinds::installation::wire(installation_ctl, &ctx);

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
        runtime::run(
            Controller::new(Api::<DrDrill>::all(client.clone()), wc.clone()),
            ctx.clone(),
            shutdown.clone(),
            |obj, ctx| kinds::observe(obj, ctx, "Succeeded", true),
        ),
        runtime::run(
            Controller::new(Api::<KamachiqProject>::all(client), wc),
            ctx,
            shutdown,
            |obj, ctx| kinds::observe(obj, ctx, "Succeeded", true),
        ),
    );
}
