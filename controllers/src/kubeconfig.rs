//! Which cluster a command talks to, by kubectl's rules: a kubeconfig file
//! named on the command line, else `$KUBECONFIG` or `~/.kube/config`
//! (with the context asked for, else the current one), else in-cluster.
//! The operator and `kubectl soma` share it.

use std::path::Path;

use kube::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The client configuration for `kubeconfig` and `context`; the error says
/// what could not be read, for people.
pub async fn load(kubeconfig: Option<&Path>, context: Option<String>) -> Result<Config, String> {
    let options = KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| e.to_string())
        }
        None if context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| e.to_string()),
        None => Config::infer().await.map_err(|e| e.to_string()),
    }
}
