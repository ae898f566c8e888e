//! `Capsule` controller.

use std::sync::Arc;

use kube::Api;
use somastack_crds::Capsule;

use crate::runtime::{self, Context};

/// Runs the Capsule controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Capsule> = Api::all(ctx.client.clone());
    runtime::run(api, ctx, shutdown, |obj, ctx| {
        super::observe(obj, ctx, "Ready", false)
    })
    .await;
}
