//! The plain-HTTP server: `/metrics` (Prometheus text format), `/healthz`
//! (the process serves) and `/readyz` (caches synced and, with webhooks on,
//! a serving certificate loaded: only then may a Service send it traffic).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use somastack_controllers::Caches;

use crate::error::Result;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub caches: Caches,
    /// Raised once the webhook serves with a certificate; `None` without webhooks.
    pub webhook: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Readiness {
    /// `Ok` when ready, else what is still missing.
    pub fn check(&self) -> std::result::Result<(), &'static str> {
        if !self.caches.is_ready() {
            return Err("caches not synced yet");
        }
        if let Some(w) = &self.webhook
            && !*w.borrow()
        {
            return Err("webhook certificate not loaded yet");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Binds `addr` and returns the bound address and the serving future (which
/// ends when `shutdown` resolves).
pub async fn serve<S>(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: S,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, readiness });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    let fut = async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %err, "metrics server failed");
        }
    };
    Ok((bound, fut))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match somastack_controllers::metrics::encode(&state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "could not encode metrics\n".to_string(),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
