//! `kubectl soma killswitch engage|release`: a PolicyBundle's kill switch.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use somastack_crds::PolicyBundle;

use crate::cli::{Global, KillswitchCommand};
use crate::cluster::{FIELD_MANAGER, with_cluster};
use crate::error::{Context, Result};

pub fn command(global: &Global, command: KillswitchCommand) -> Result<()> {
    let (bundle, engaged, reason) = match command {
        KillswitchCommand::Engage(a) => (a.bundle, true, Some(a.reason)),
        KillswitchCommand::Release(a) => (a.bundle, false, a.reason),
    };
    let done = with_cluster(global, async |cluster| {
        let api: Api<PolicyBundle> = Api::all(cluster.client.clone());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patched = api
            .patch(&bundle, &params, &Patch::Merge(patch(engaged, reason.as_deref())))
            .await
            .context(format!("policybundle {bundle}"))?;
        let ks = patched.spec.kill_switch.unwrap_or_default();
        Ok(KillSwitch {
            bundle: bundle.clone(),
            engaged: ks.engaged,
            reason: ks.reason,
        })
    })?;
    crate::output::print(global.output, &done, |k| {
        let state = if k.engaged { "engaged" } else { "released" };
        format!(
            "policybundle.somastack.io/{} kill switch {state}{}\n",
            k.bundle,
            k.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        )
    })
}

/// The kill switch as the bundle holds it after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KillSwitch {
    pub bundle: String,
    pub engaged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The merge patch of `spec.killSwitch`: engaged or not, and why. A release
/// without a reason keeps the engagement's reason (it says why it was engaged).
pub fn patch(engaged: bool, reason: Option<&str>) -> serde_json::Value {
    match reason {
        Some(r) => json!({ "spec": { "killSwitch": { "engaged": engaged, "reason": r } } }),
        None => json!({ "spec": { "killSwitch": { "engaged": engaged } } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_touch_only_the_kill_switch() {
        assert_eq!(
            patch(true, Some("incident 42")),
            json!({ "spec": { "killSwitch": { "engaged": true, "reason": "incident 42" } } })
        );
        assert_eq!(
            patch(false, None),
            json!({ "spec": { "killSwitch": { "engaged": false } } })
        );
    }
}
