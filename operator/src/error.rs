//! The binary's error type: what went wrong, said so an operator can act.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not load the Kubernetes client configuration: {0}")]
    Config(String),
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "CustomResourceDefinition {name} is not installed in the cluster; install the CRDs first: \
         `kubectl apply --server-side -f charts/somastack-operator/crds/` (or `somastack-operator crd | kubectl apply --server-side -f -`)"
    )]
    CrdMissing { name: String },
    #[error("CustomResourceDefinition {name} was not established within {secs}s: {detail}")]
    CrdNotEstablished { name: String, secs: u64, detail: String },
    #[error("could not render the CRDs: {0}")]
    Render(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("webhook certificate: {0}")]
    Certificate(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
