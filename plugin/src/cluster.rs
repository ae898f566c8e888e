//! Connecting to a cluster as kubectl does: `--kubeconfig`, `--context`,
//! `$KUBECONFIG`, in-cluster; the namespace from `-n` or the context.

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Config, Resource};

use crate::cli::Global;
use crate::error::{Error, Result};

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-soma";

/// A client as `global` names it, and the namespace commands act in.
pub struct Cluster {
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

impl Cluster {
    /// The objects of the namespace, or of every namespace when `all`.
    pub fn listed<K>(&self, all: bool) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        if all {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        }
    }

    /// The objects of the namespace.
    pub fn namespaced<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `kind ns/name`, as messages name an object of the namespace.
    pub fn name(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }
}

async fn config(global: &Global) -> Result<Config> {
    let mut config =
        somastack_controllers::kubeconfig::load(global.kubeconfig.as_deref(), global.context.clone())
            .await
            .map_err(Error::Config)?;
    if let Some(user) = &global.as_user {
        config.auth_info.impersonate = Some(user.clone());
        if !global.as_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(global.as_groups.clone());
        }
    }
    Ok(config)
}

/// Runs a command's API calls on a single-threaded runtime, with the
/// cluster `global` names.
pub fn with_cluster<T>(global: &Global, command: impl AsyncFnOnce(Cluster) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("could not start the runtime"))?;
    runtime.block_on(async {
        let config = config(global).await?;
        let namespace = global
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|source| Error::Kube {
            what: "could not build the client".into(),
            source,
        })?;
        command(Cluster { client, namespace }).await
    })
}
