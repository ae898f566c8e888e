//! One module per kind.
//!
//! Capsule, PolicyBundle and Installation are reconciled for real. DrDrill
//! and KamachiqProject are *observed* for now: [`observe`] records which
//! generation was seen and says, in a condition, that the operator does not
//! act on the kind yet.

pub mod capsule;
pub mod drill;
pub mod installation;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Result;
use crate::conditions::{self, Desired, Status};
use crate::runtime::Context;
use crate::status::{self, HasConditions};

/// Reason of the condition an observed-only kind carries.
pub const REASON_NOT_ACTED_ON: &str = "AwaitingSupport";

/// Records `observedGeneration`, `phase: Pending` and an
/// `Unknown` condition of `condition_type` that says honestly what happens.
pub(crate) async fn observe<K>(obj: Arc<K>, ctx: Arc<Context>, condition_type: &'static str) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + HasConditions
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let generation = obj.meta().generation;
    let desired = [Desired::new(
        condition_type,
        Status::Unknown,
        REASON_NOT_ACTED_ON,
        format!(
            "somastack-operator {} records this {} but does not act on it yet",
            env!("CARGO_PKG_VERSION"),
            K::kind(&())
        ),
    )];
    let merged = conditions::merge(obj.conditions(), &desired, generation, &status::now());
    let already = obj.conditions() == merged.as_slice();
    if !already {
        let body = json!({ "observedGeneration": generation, "conditions": merged, "phase": "Pending" });
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        status::apply(&api, obj.as_ref(), body).await?;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}
