//! The /metrics server and the probes: `/metrics` (Prometheus text format),
//! `/healthz` (the process serves) and `/readyz` (caches synced and, with
//! webhooks on, a serving certificate loaded: only then may a Service send
//! it traffic).
//!
//! Without `--metrics-secure` all three are plain HTTP on `--metrics-addr`
//! (and the probes also on `--health-probe-addr` when given). With it,
//! `--metrics-addr` serves only `/metrics`, over HTTPS, to callers the API
//! server authenticates and authorizes ([`crate::metrics_auth`]), and the
//! probes are plain HTTP on `--health-probe-addr` (kubelet sends no token).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Client;
use prometheus_client::registry::Registry;
use somastack_controllers::Caches;

use crate::cli::{DEFAULT_HEALTH_PROBE_ADDR, MetricsArgs};
use crate::error::{Error, Result};
use crate::webhook::certs;

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

/// Binds the /metrics server (and the probes' server, when there is one)
/// and returns the bound /metrics address and a future serving both (which
/// ends when `shutdown` resolves). `client` asks the API server about
/// callers with `--metrics-secure`.
pub async fn serve<S>(
    args: &MetricsArgs,
    client: Client,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: S,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)>
where
    S: std::future::Future<Output = ()> + Clone + Send + 'static,
{
    let state = AppState { registry, readiness };
    let mut servers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let probe_addr = match (args.metrics_secure, args.health_probe_addr) {
        (_, Some(addr)) => Some(addr),
        (true, None) => Some(DEFAULT_HEALTH_PROBE_ADDR),
        (false, None) => None,
    };
    if let Some(addr) = probe_addr {
        let (bound, fut) = plain(
            addr,
            probes(state.clone()),
            "/healthz and /readyz",
            shutdown.clone(),
        )
        .await?;
        tracing::info!(address = %bound, "serving /healthz and /readyz");
        servers.push(fut.boxed());
    }
    let bound = if args.metrics_secure {
        let guard = crate::metrics_auth::Guard::new(client);
        let app = Router::new()
            .route("/metrics", get(metrics))
            // Every path is checked first: no answer says what exists.
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
            .with_state(state)
            .layer(axum::middleware::from_fn_with_state(
                guard,
                crate::metrics_auth::authorize,
            ));
        let (bound, fut) = secure(args, app, shutdown).await?;
        tracing::info!(address = %bound, "serving /metrics over HTTPS to authorized callers (--metrics-secure)");
        servers.push(fut.boxed());
        bound
    } else {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(state.clone())
            .merge(probes(state));
        let (bound, fut) = plain(args.metrics_addr, app, "/metrics", shutdown).await?;
        tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
        servers.push(fut.boxed());
        bound
    };
    Ok((bound, futures::future::join_all(servers).map(|_| ())))
}

/// `/healthz` and `/readyz`: on their own port, or beside plain `/metrics`.
fn probes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// A plain-HTTP server of `app` on `addr`.
async fn plain<S>(
    addr: SocketAddr,
    app: Router,
    what: &'static str,
    shutdown: S,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let fut = async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %err, server = what, "HTTP server failed");
        }
    };
    Ok((bound, fut))
}

/// How often a certificate from `--metrics-cert-dir` is read again.
const CERT_RELOAD: Duration = Duration::from_secs(60);

/// The HTTPS server of `app` on `--metrics-addr`, with the certificate of
/// `--metrics-cert-dir` (re-read every [`CERT_RELOAD`]) or a self-signed one.
async fn secure<S>(
    args: &MetricsArgs,
    app: Router,
    shutdown: S,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind(args.metrics_addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let (tls, files) = match &args.metrics_cert_dir {
        Some(dir) => {
            let (cert, key) = (dir.join(certs::TLS_CERT), dir.join(certs::TLS_KEY));
            let tls = RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|e| cert_error(&cert, &key, &e))?;
            tracing::info!(cert = %cert.display(), "metrics serving certificate loaded");
            (tls, Some((cert, key)))
        }
        None => {
            let m = self_signed(bound)?;
            let tls = RustlsConfig::from_pem(m.tls_cert.into_bytes(), m.tls_key.into_bytes())
                .await
                .map_err(|e| Error::Certificate(format!("metrics: {e}")))?;
            tracing::info!("metrics served with a self-signed certificate (no --metrics-cert-dir)");
            (tls, None)
        }
    };
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls.clone())?
        .handle(handle.clone())
        .serve(app.into_make_service());
    let fut = async move {
        let reload = async move {
            let Some((cert, key)) = files else {
                return futures::future::pending().await;
            };
            loop {
                tokio::time::sleep(CERT_RELOAD).await;
                if let Err(e) = tls.reload_from_pem_file(&cert, &key).await {
                    tracing::warn!(error = %cert_error(&cert, &key, &e), "keeping the metrics certificate served so far");
                }
            }
        };
        let stop = async move {
            shutdown.await;
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
            futures::future::pending::<()>().await;
        };
        tokio::select! {
            res = server => if let Err(e) = res {
                tracing::error!(error = %e, "metrics HTTPS server failed");
            },
            () = reload => {},
            () = stop => {},
        }
    };
    Ok((bound, fut))
}

fn cert_error(cert: &Path, key: &Path, e: &std::io::Error) -> Error {
    Error::Certificate(format!(
        "metrics certificate {} / {}: {e}",
        cert.display(),
        key.display()
    ))
}

/// A certificate for `bound` (its address, or 127.0.0.1 when it listens on
/// every address) and `localhost`, from a CA made for it and then forgotten:
/// clients can only skip verification (Prometheus' `insecure_skip_verify`);
/// give --metrics-cert-dir for a certificate they can verify.
fn self_signed(bound: SocketAddr) -> Result<certs::Material> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        && !host.trim().is_empty()
    {
        names.push(host.trim().to_string());
    }
    names.sort();
    names.dedup();
    let now = jiff::Timestamp::now().as_second();
    let life = certs::Lifetimes {
        validity_secs: 365 * 86_400,
        renew_before_secs: 0,
    };
    certs::issue(
        &certs::Plan::NewCa("metrics certificate at start".into()),
        None,
        &names,
        now,
        life,
    )
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
