//! Reconcilers for the `somastack.io` kinds.
//!
//! Each kind has a module; [`run`] starts one controller per kind and
//! returns when all of them have shut down. Shared plumbing lives in
//! [`conditions`] (pure condition bookkeeping), [`status`] (status writes by
//! server-side apply) and [`runtime`] (the controller loop).

pub mod conditions;
pub mod error;
pub mod kinds;
pub mod policy;
pub mod runtime;
pub mod signing;
pub mod status;

pub use error::{Error, Result};

/// The one field manager the operator uses for every server-side apply.
pub const FIELD_MANAGER: &str = "somastack-operator";

/// Starts a controller for every kind; resolves once `shutdown` fired and
/// every controller drained its in-flight reconciles.
pub async fn run<S>(client: kube::Client, shutdown: S)
where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let ctx = std::sync::Arc::new(runtime::Context { client });
    futures::join!(
        kinds::capsule::run(ctx.clone(), shutdown.clone()),
        kinds::policy::run(ctx.clone(), shutdown.clone()),
        kinds::installation::run(ctx.clone(), shutdown.clone()),
        kinds::drill::run(ctx.clone(), shutdown.clone()),
        kinds::kamachiq::run(ctx, shutdown),
    );
}
