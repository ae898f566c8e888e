//! Reconcilers for the `somastack.io` kinds.
//!
//! Layers, from the bottom:
//! - [`domain`]: the rules more than one kind (or the webhooks) applies,
//!   pure (capsule lookup and use, review protocol, policy, signing,
//!   regions, pod security).
//! - [`kinds`]: one module per kind, each a short reconcile driver
//!   (dereference, decide, build, apply, report) over pure functions of its
//!   own; kinds depend on the domain layer, never on each other.
//! - The plumbing they share: [`caches`] (one watch per kind, shared by
//!   every controller and the webhooks), [`runtime`] (the controller loop,
//!   backoff, Events), [`apply`] and [`status`] (server-side apply),
//!   [`conditions`], [`error`].
//!
//! [`run`] starts one controller per kind and returns when all of them
//! have shut down.

pub mod access;
pub mod admission;
pub mod apply;
pub mod bundle_writes;
pub mod caches;
pub mod conditions;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod kinds;
pub mod kubeconfig;
pub mod metrics;
pub mod planner;
pub mod runtime;
pub mod shards;
pub mod status;
#[cfg(test)]
mod testing;
pub mod text;
pub mod triggers;

use std::sync::Arc;

use kube::Client;

pub use caches::Caches;
pub use error::{Error, Result};
pub use metrics::Metrics;

/// The one field manager the operator uses for every server-side apply.
pub const FIELD_MANAGER: &str = "somastack-operator";

/// Label on every object the operator creates for an Installation.
pub const INSTALLATION_LABEL: &str = "somastack.io/installation";
/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "somastack-operator";

/// How hard the operator works the API server: settings of `run`, chosen
/// from measurements (docs/performance.md).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Reconciles one controller runs at once (each kind has its own).
    pub concurrency: u16,
    /// How a cache gets its first full list (at start and after a watch
    /// expired).
    pub initial_list: InitialList,
    /// Objects per page when a cache lists a kind in pages
    /// ([`InitialList::Pages`]).
    pub page_size: u32,
}

/// How a cache gets its first full list of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitialList {
    /// A watch that starts with every object, one event each
    /// (`sendInitialEvents`, Kubernetes' streaming lists): no response
    /// holds the whole list, so the operator never decodes all of a kind at
    /// once. Needs the API server's `WatchList` feature (on by default from
    /// Kubernetes 1.34; off in 1.33).
    #[default]
    Stream,
    /// A list, then a watch from its resourceVersion: any API server. Read
    /// from the API server's watch cache, which answers with every object in
    /// one response whatever the page size (measured: docs/performance.md).
    Pages,
}

impl Tuning {
    /// The watch settings every cache starts from (each adds its selector).
    pub fn watcher_config(&self) -> kube::runtime::watcher::Config {
        let wc = kube::runtime::watcher::Config::default();
        match self.initial_list {
            InitialList::Stream => wc.streaming_lists(),
            InitialList::Pages => wc.any_semantic().page_size(self.page_size),
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            concurrency: 8,
            initial_list: InitialList::default(),
            page_size: 500,
        }
    }
}

/// Label selectors that shard kinds between operators (`None`: act on all).
#[derive(Clone, Debug, Default)]
pub struct Shards {
    pub drills: Option<shards::LabelSelector>,
    pub projects: Option<shards::LabelSelector>,
}

/// Starts a controller for every kind, reading `caches` (kept filled by the
/// caller: every replica keeps them for the admission webhooks, only the
/// leader runs controllers) and subscribing to their events: the operator
/// watches each kind once. Resolves once `shutdown` fired and every
/// controller drained its in-flight reconciles.
pub async fn run<S>(
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    shards: Shards,
    tuning: Tuning,
    shutdown: S,
) where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let ctx = Arc::new(runtime::Context::new(client, caches, metrics, shards, tuning));
    let capsule = kinds::capsule::controller(&ctx);
    let bundle = kinds::policy::controller(&ctx);
    let (installation, installation_ctx, deployments) = kinds::installation::controller(&ctx).parts();
    let drill = kinds::drill::controller(&ctx);
    let (project, project_ctx, project_caches) = kinds::project::controller(&ctx).parts();
    let controllers = async move {
        futures::join!(
            runtime::run(capsule, ctx.clone(), shutdown.clone(), kinds::capsule::reconcile),
            runtime::run(bundle, ctx.clone(), shutdown.clone(), kinds::policy::reconcile),
            runtime::run(
                installation,
                installation_ctx,
                shutdown.clone(),
                kinds::installation::reconcile
            ),
            runtime::run(drill, ctx.clone(), shutdown.clone(), kinds::drill::reconcile),
            runtime::run(project, project_ctx, shutdown, kinds::project::reconcile),
        );
    };
    // The kinds' own caches (Jobs, Deployments) live as long as the controllers.
    tokio::select! {
        _ = controllers => {}
        _ = futures::future::join(project_caches, deployments) => {}
    }
}
