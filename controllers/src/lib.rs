//! Reconcilers for the `somastack.io` kinds.
//!
//! Each kind has a module under [`kinds`]; [`run`] wires one controller per
//! kind, with the cross-kind triggers between them, and returns when all of
//! them have shut down. Pure logic lives apart from the Kubernetes plumbing:
//! [`policy`] (effective policy and violations), [`signing`] (capsule
//! signatures), [`conditions`] (condition bookkeeping) and each kind's
//! `render`/`decide` functions carry most unit tests; [`status`] and [`apply`]
//! write to the API.

pub mod access;
pub mod admission;
pub mod apply;
pub mod caches;
pub mod conditions;
pub mod domain;
pub mod error;
pub mod kinds;
pub mod metrics;
pub mod planner;
pub mod runtime;
pub mod status;
#[cfg(test)]
mod testing;
pub mod text;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
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

/// The watch of a sharded kind (DrDrills, KamachiqProjects): all of them, or
/// those `selector` selects (objects sharded between operators by label,
/// e.g. to run one on its own).
fn sharded_watch(wc: &watcher::Config, selector: Option<&str>) -> watcher::Config {
    match selector {
        Some(s) if !s.is_empty() => wc.clone().labels(s),
        _ => wc.clone(),
    }
}

/// A controller of `K` whose own cache of `K` (the objects it reconciles)
/// keeps no `managedFields`, like every other cache of the operator
/// ([`caches::drop_managed_fields`]).
fn controller<K>(api: Api<K>, wc: watcher::Config) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = watcher(api, wc)
        .modify(caches::drop_managed_fields)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, reader)
}

/// Label selectors that shard kinds between operators (`None`: act on all).
#[derive(Clone, Debug, Default)]
pub struct Shards {
    pub drills: Option<String>,
    pub projects: Option<String>,
}

/// Starts a controller for every kind, reading `caches` (kept filled by the
/// caller: every replica keeps them for the admission webhooks, only the
/// leader runs controllers); resolves once `shutdown` fired and every
/// controller drained its in-flight reconciles.
pub async fn run<S>(client: Client, caches: Caches, metrics: Arc<Metrics>, shards: &Shards, shutdown: S)
where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let wc = watcher::Config::default().any_semantic();
    let capsule_ctl = controller(Api::<Capsule>::all(client.clone()), wc.clone());
    let bundle_ctl = controller(Api::<PolicyBundle>::all(client.clone()), wc.clone());
    let installation_ctl = controller(Api::<Installation>::all(client.clone()), wc.clone()).owns(
        Api::<Deployment>::all(client.clone()),
        wc.clone()
            .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")),
    );
    // KamachiqProject Jobs: a cache only the leader needs, whose reflector
    // also feeds the project controller's Job events (after the store has
    // applied them, so a reconcile never reads an older Job than its trigger).
    let (jobs, writer) = reflector::store_shared::<Job>(JOB_EVENTS_BUFFER);
    let Some(job_events) = writer.subscribe() else {
        tracing::error!("the Jobs reflector has no event stream; KamachiqProjects cannot be reconciled");
        return;
    };
    let jobs_fill = watcher(
        Api::<Job>::all(client.clone()),
        wc.clone().labels(somastack_crds::kamachiq::PROJECT_UID_LABEL),
    )
    .default_backoff()
    .modify(caches::drop_managed_fields)
    .reflect_shared(writer)
    .for_each(|_| futures::future::ready(()));
    let (jobs_ready_tx, jobs_ready) = tokio::sync::watch::channel(false);
    let jobs_readiness = {
        let jobs = jobs.clone();
        async move {
            if jobs.wait_until_ready().await.is_ok() {
                let _ = jobs_ready_tx.send(true);
            }
            // Keep the sender: dropping it would end the waits on readiness.
            futures::future::pending::<()>().await;
        }
    };
    let ctx = Arc::new(runtime::Context::new(
        client.clone(),
        caches,
        metrics,
        jobs,
        jobs_ready,
    ));
    let capsule_ctl = kinds::capsule::wire(capsule_ctl, &ctx);
    let bundle_ctl = kinds::policy::wire(bundle_ctl, &ctx);
    let installation_ctl = kinds::installation::wire(installation_ctl, &ctx);
    let drill_ctl = kinds::drill::wire(
        controller(
            Api::<DrDrill>::all(client.clone()),
            sharded_watch(&wc, shards.drills.as_deref()),
        ),
        &ctx,
    );

    let project_ctl = kinds::project::wire(
        controller(
            Api::<KamachiqProject>::all(client),
            sharded_watch(&wc, shards.projects.as_deref()),
        ),
        &ctx,
        job_events,
    );

    let controllers = async move {
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
            runtime::run(project_ctl, ctx, shutdown, kinds::project::reconcile),
        );
    };
    // The Jobs cache lives as long as the controllers (it never ends itself).
    tokio::select! {
        _ = controllers => {}
        _ = async { futures::join!(jobs_fill, jobs_readiness) } => {}
    }
}

/// Job events the project controller may lag behind before the Jobs
/// reflector waits for it.
const JOB_EVENTS_BUFFER: usize = 1024;
