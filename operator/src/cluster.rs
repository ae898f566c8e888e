//! Connecting to a cluster with the usual kubeconfig / in-cluster rules.

use kube::Client;

use crate::cli::ClusterArgs;
use crate::error::{Error, Result};

pub async fn client(args: &ClusterArgs) -> Result<Client> {
    let config = somastack_controllers::kubeconfig::load(args.kubeconfig.as_deref(), args.context.clone())
        .await
        .map_err(Error::Config)?;
    Ok(Client::try_from(config)?)
}
