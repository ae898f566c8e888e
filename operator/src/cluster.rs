//! Connecting to a cluster with the usual kubeconfig / in-cluster rules.

use k8s_openapi::NamespaceResourceScope;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};

use crate::cli::ClusterArgs;
use crate::error::{Error, Result};

pub async fn client(args: &ClusterArgs) -> Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        None => Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// Runs a one-shot command's API calls: a single-threaded runtime, and the
/// client `args` name.
pub fn with_client<T>(args: &ClusterArgs, command: impl AsyncFnOnce(Client) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { command(client(args).await?).await })
}

/// The objects of one namespace, or of every namespace (`None`).
pub fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}
