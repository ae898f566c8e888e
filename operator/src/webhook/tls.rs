//! Serving the webhooks over TLS, and keeping the certificate current: the
//! Secret (issued here in self-managed mode, read in external mode), the
//! certificate the server presents (reloaded in place), and the CA bundle in
//! the webhook configurations (self-managed mode).

use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use somastack_controllers::Caches;
use somastack_controllers::metrics::Metrics;

use super::certs::{self, Facts, Lifetimes, Material, Plan};
use super::{AppState, router};
use crate::cli::{CertMode, WebhookArgs};
use crate::error::{Error, Result};

/// How often the certificate is looked at even when nothing changed.
const RECHECK_MAX: Duration = Duration::from_secs(600);
/// Retry delay after a failed certificate step.
const RETRY: Duration = Duration::from_secs(5);

/// Everything the webhook server needs.
pub struct Setup {
    pub client: Client,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub args: WebhookArgs,
    /// Raised once a certificate is loaded (for `/readyz`).
    pub loaded: tokio::sync::watch::Sender<bool>,
}

/// Keeps the certificate current and serves the webhooks until `shutdown`.
pub async fn serve<S>(setup: Setup, shutdown: S)
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let keeper = Keeper::new(&setup);
    // No server before there is a certificate to present.
    let (material, _) = loop {
        match keeper.ensure().await {
            Ok(found) => break found,
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate not available yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let tls = match RustlsConfig::from_pem(material.tls_cert.clone().into(), material.tls_key.clone().into())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the webhook certificate cannot be loaded; not serving webhooks");
            return;
        }
    };
    keeper.loaded(&material);
    let _ = setup.loaded.send(true);

    let app = router(AppState {
        client: setup.client.clone(),
        caches: setup.caches.clone(),
        metrics: setup.metrics.clone(),
        record: super::bundles::Record::new(
            setup.client.clone(),
            &setup.namespace,
            &setup.args.bundle_record,
        ),
    });
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(setup.args.webhook_addr, tls.clone())
        .handle(handle.clone())
        .serve(app.into_make_service());
    tracing::info!(address = %setup.args.webhook_addr, "serving admission webhooks");
    let stop = {
        let handle = handle.clone();
        async move {
            shutdown.await;
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
    };
    tokio::select! {
        res = server => if let Err(e) = res {
            tracing::error!(error = %e, address = %setup.args.webhook_addr, "webhook server failed");
        },
        () = keeper.keep(material, tls) => {},
        () = stop => {},
    }
}

struct Keeper {
    secrets: Api<Secret>,
    client: Client,
    metrics: Arc<Metrics>,
    args: WebhookArgs,
    names: Vec<String>,
    life: Lifetimes,
}

/// A webhook configuration kind, whose webhooks carry a CA bundle.
trait WebhookConfiguration:
    kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug
{
    /// Its webhooks' names and client configs.
    fn client_configs(self) -> Vec<(String, WebhookClientConfig)>;

    /// Webhook names and their current CA bundles.
    fn bundles(self) -> Vec<(String, Vec<u8>)> {
        self.client_configs()
            .into_iter()
            .map(|(name, cc)| (name, cc.ca_bundle.map(|b| b.0).unwrap_or_default()))
            .collect()
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn client_configs(self) -> Vec<(String, WebhookClientConfig)> {
        let hooks = self.webhooks.unwrap_or_default().into_iter();
        hooks.map(|h| (h.name, h.client_config)).collect()
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn client_configs(self) -> Vec<(String, WebhookClientConfig)> {
        let hooks = self.webhooks.unwrap_or_default().into_iter();
        hooks.map(|h| (h.name, h.client_config)).collect()
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Keeper {
    fn new(s: &Setup) -> Self {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4);
        Keeper {
            secrets: Api::namespaced(s.client.clone(), &s.namespace),
            client: s.client.clone(),
            metrics: s.metrics.clone(),
            names: certs::names(&s.args.webhook_service, &s.namespace, &s.args.webhook_sans),
            life: Lifetimes {
                validity_secs: secs(s.args.webhook_cert_validity),
                renew_before_secs: secs(s.args.webhook_cert_renew_before),
            },
            args: s.args.clone(),
        }
    }

    /// Reads the Secret and, in self-managed mode, issues what is due and
    /// patches the CA bundle. Returns the material and when to look again.
    async fn ensure(&self) -> Result<(Material, Duration)> {
        let secret = self.secrets.get_opt(&self.args.webhook_secret).await?;
        let current = secret
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| Material::from_data(&d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()));

        if self.args.webhook_cert_mode == CertMode::External {
            let m = current.ok_or_else(|| {
                Error::Certificate(format!(
                    "Secret {} has no tls.crt/tls.key yet (is cert-manager issuing it?)",
                    self.args.webhook_secret
                ))
            })?;
            return Ok((m, RECHECK_MAX));
        }

        let now = now();
        let material = match certs::plan(current.as_ref(), &self.names, now, self.life) {
            Plan::Keep { .. } => current.unwrap_or_default(),
            plan => {
                let why = match &plan {
                    Plan::IssueServing(w) | Plan::NewCa(w) => w.clone(),
                    Plan::Keep { .. } => String::new(),
                };
                let next = certs::issue(&plan, current.as_ref(), &self.names, now, self.life)?;
                self.store(secret, &next).await?;
                tracing::info!(reason = %why, new_ca = matches!(plan, Plan::NewCa(_)), "issued a webhook serving certificate");
                next
            }
        };
        self.patch_ca_bundle(&material.ca_bundle(now)).await?;
        let recheck = match certs::plan(Some(&material), &self.names, now, self.life) {
            Plan::Keep { recheck_at } => {
                Duration::from_secs(u64::try_from(recheck_at - now).unwrap_or(0).max(1)).min(RECHECK_MAX)
            }
            _ => RETRY,
        };
        Ok((material, recheck))
    }

    /// Writes the Secret: create, or replace at the resourceVersion read, so
    /// two replicas issuing at once cannot both win (the loser re-reads).
    async fn store(&self, existing: Option<Secret>, m: &Material) -> Result<()> {
        let data = m.to_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect();
        let pp = PostParams {
            field_manager: Some(somastack_controllers::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match existing {
            Some(mut s) => {
                s.data = Some(data);
                s.type_ = Some("kubernetes.io/tls".into());
                self.secrets.replace(&self.args.webhook_secret, &pp, &s).await?;
            }
            None => {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.args.webhook_secret.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                somastack_controllers::MANAGED_BY.to_string(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                self.secrets.create(&pp, &s).await?;
            }
        }
        Ok(())
    }

    /// Sets `caBundle` on every webhook of both configurations, when it
    /// differs (server-side apply of just that field).
    async fn patch_ca_bundle(&self, bundle: &str) -> Result<()> {
        self.set_bundle::<ValidatingWebhookConfiguration>(bundle).await?;
        self.set_bundle::<MutatingWebhookConfiguration>(bundle).await
    }

    /// Applies `bundle` to the webhooks of one configuration (none when the
    /// configuration is missing).
    async fn set_bundle<K: WebhookConfiguration>(&self, bundle: &str) -> Result<()> {
        use base64::Engine;
        let api: Api<K> = Api::all(self.client.clone());
        let name = &self.args.webhook_configuration;
        let kind = K::kind(&());
        let Some(hooks) = api.get_opt(name).await?.map(K::bundles) else {
            tracing::warn!(configuration = %name, %kind, "webhook configuration not found; the API server will not call this webhook");
            return Ok(());
        };
        if hooks.iter().all(|(_, b)| b.as_slice() == bundle.as_bytes()) {
            return Ok(());
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "metadata": { "name": name },
            "webhooks": hooks.iter().map(|(h, _)| json!({ "name": h, "clientConfig": { "caBundle": encoded } })).collect::<Vec<_>>(),
        });
        let pp = PatchParams::apply(somastack_controllers::FIELD_MANAGER).force();
        api.patch(name, &pp, &Patch::Apply(patch)).await?;
        tracing::info!(configuration = %name, %kind, "CA bundle set");
        Ok(())
    }

    fn loaded(&self, m: &Material) {
        if let Ok(f) = Facts::of(&m.tls_cert) {
            self.metrics.certificate_expiry.set(f.not_after);
        }
    }

    /// Re-checks on every change of the Secret and when renewal is due;
    /// reloads the served certificate when it changed.
    async fn keep(&self, mut served: Material, tls: RustlsConfig) {
        let wc = watcher::Config::default().fields(&format!("metadata.name={}", self.args.webhook_secret));
        // With the operator's backoff: a bare watcher yields its errors at
        // once, which during an API server outage spun this loop (and a
        // failing `ensure` call) as fast as the errors came.
        let mut changes = watcher(self.secrets.clone(), wc)
            .backoff(somastack_controllers::caches::watch_backoff())
            .boxed();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                Some(_) = changes.next() => {},
            }
            match self.ensure().await {
                Ok((m, next)) => {
                    wait = next;
                    if m.tls_cert != served.tls_cert || m.tls_key != served.tls_key {
                        match tls
                            .reload_from_pem(m.tls_cert.clone().into(), m.tls_key.clone().into())
                            .await
                        {
                            Ok(()) => {
                                tracing::info!("serving a new webhook certificate");
                                self.loaded(&m);
                                served = m;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "could not load the new webhook certificate")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate check failed; retrying");
                    wait = RETRY;
                }
            }
        }
    }
}
