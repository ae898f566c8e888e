//! `somastack-operator run`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use somastack_controllers::{Caches, Metrics};

use crate::cli::RunArgs;
use crate::error::{Error, Result};
use crate::{http, leader};

pub fn main(args: RunArgs) -> Result<()> {
    let telemetry = crate::telemetry::init(args.log_format, args.otlp_endpoint.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(args));
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn run(args: RunArgs) -> Result<()> {
    // One TLS provider for the whole process (kube's client and the webhook server).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = crate::cluster::client(&args.cluster).await?;
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    wait_for_crds(&client, args.crd_wait).await?;

    let shutdown = shutdown_signal().shared();

    // Every replica keeps the caches, serves metrics and health, and serves
    // the webhooks; only the leader runs the controllers.
    let (caches, fill) = Caches::start(&client, &tuning(&args));
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, Some(&caches));
    crate::memory::register(&mut registry);
    let caches_task = tokio::spawn(fill);
    // Series of drills and namespaces that are gone are dropped once a minute.
    let sweeper = {
        let (metrics, caches) = (metrics.clone(), caches.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                metrics.forget_gone_from(&caches);
            }
        })
    };
    let webhook_loaded = if args.webhook.no_webhook {
        tracing::info!("admission webhooks disabled (--no-webhook)");
        None
    } else {
        let (loaded, loaded_rx) = tokio::sync::watch::channel(false);
        let setup = crate::webhook::tls::Setup {
            client: client.clone(),
            caches: caches.clone(),
            metrics: metrics.clone(),
            namespace: args.namespace.clone(),
            args: args.webhook.clone(),
            loaded,
        };
        tokio::spawn(crate::webhook::serve(setup, shutdown.clone()));
        Some(loaded_rx)
    };
    let readiness = http::Readiness {
        caches: caches.clone(),
        webhook: webhook_loaded,
    };
    let (_, server) = http::serve(
        &args.metrics,
        client.clone(),
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    )
    .await?;
    tokio::spawn(server);

    let result = lead_and_reconcile(&args, client, caches, metrics, shutdown).await;
    caches_task.abort();
    sweeper.abort();
    result
}

async fn lead_and_reconcile<S>(
    args: &RunArgs,
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    shutdown: S,
) -> Result<()>
where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    if !args.leader_elect {
        tracing::info!("controllers starting");
        metrics.leader.set(1);
        controllers(client, caches, metrics, shards(args), tuning(args), shutdown).await;
        tracing::info!("all controllers stopped; exiting");
        return Ok(());
    }

    let cfg = leader::Config {
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone()),
        name: args.lease_name.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: LEASE_DURATION,
        renew_every: RENEW_EVERY,
    };
    let leases = leader::api(client.clone(), &cfg);
    // A leader that loses the Lease (it could not renew it in time, say while
    // the API server or etcd was away) drops its controllers, which aborts
    // their reconciles, and campaigns again as a follower in the same
    // process: its caches, metrics and webhook server stay up, so admission
    // keeps working and a new term starts from warm caches.
    loop {
        tokio::select! {
            () = leader::acquire(&leases, &cfg) => {}
            () = shutdown.clone() => {
                tracing::info!("stopped while following");
                return Ok(());
            }
        }
        tracing::info!("controllers starting");
        metrics.leader.set(1);
        tokio::select! {
            () = controllers(client.clone(), caches.clone(), metrics.clone(), shards(args), tuning(args), shutdown.clone()) => {
                tracing::info!("all controllers stopped; releasing the Lease");
                leader::release(&leases, &cfg).await;
                metrics.leader.set(0);
                return Ok(());
            }
            // Dropping the controllers aborts their reconciles at once.
            () = leader::keep(&leases, &cfg) => {
                metrics.leader.set(0);
                tracing::warn!(lease = %cfg.name, "leadership lost: controllers stopped; following until the Lease is free again");
            }
        }
    }
}

fn tuning(args: &RunArgs) -> somastack_controllers::Tuning {
    somastack_controllers::Tuning {
        concurrency: args.concurrency,
        initial_list: match args.initial_list {
            crate::cli::InitialList::Stream => somastack_controllers::InitialList::Stream,
            crate::cli::InitialList::Pages => somastack_controllers::InitialList::Pages,
        },
        page_size: args.page_size,
    }
}

fn shards(args: &RunArgs) -> somastack_controllers::Shards {
    somastack_controllers::Shards {
        drills: args.drill_selector.clone(),
        projects: args.project_selector.clone(),
    }
}

/// Runs the controllers until `shutdown`, then gives in-flight reconciles up
/// to [`SHUTDOWN_GRACE`] to finish. The bound matters: kube's controller
/// waits for its store before running, and its store stops filling once
/// shutdown begins, so a signal during the first list would wait forever.
async fn controllers<S>(
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    shards: somastack_controllers::Shards,
    tuning: somastack_controllers::Tuning,
    shutdown: S,
) where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        () = somastack_controllers::run(client, caches, metrics, shards, tuning, shutdown) => {}
        () = deadline => tracing::warn!("controllers did not stop within {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
}

/// Longest a shutdown waits for in-flight reconciles.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A lease not renewed for this long may be taken over.
const LEASE_DURATION: Duration = Duration::from_secs(10);
/// The leader renews, and followers retry, this often.
const RENEW_EVERY: Duration = Duration::from_secs(2);

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Waits until every CRD of the API is `Established`, polling once a second.
async fn wait_for_crds(client: &Client, timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    for crd in somastack_crds::crdgen::all() {
        let name = crd.metadata.name.unwrap_or_default();
        loop {
            let found = api.get_opt(&name).await?;
            let established = found.as_ref().and_then(established_status);
            if established.as_deref() == Some("True") {
                tracing::info!(crd = %name, "CRD established");
                break;
            }
            if Instant::now() >= deadline {
                return Err(match found {
                    None => Error::CrdMissing { name },
                    Some(_) => Error::CrdNotEstablished {
                        name,
                        secs: timeout.as_secs(),
                        detail: format!(
                            "Established is {}",
                            established.unwrap_or_else(|| "not reported".into())
                        ),
                    },
                });
            }
            tracing::info!(crd = %name, "waiting for the CRD to be established");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

fn established_status(crd: &CustomResourceDefinition) -> Option<String> {
    crd.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Established")
        .map(|c| c.status.clone())
}

/// Resolves on SIGTERM or SIGINT. A second signal exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; the operator will stop only when killed");
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: finishing in-flight reconciles"),
        _ = int.recv() => tracing::info!("SIGINT received: finishing in-flight reconciles"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
