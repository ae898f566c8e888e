//! One module per kind.
//!
//! Capsule, PolicyBundle and Installation are reconciled for real. DrDrill
//! and KamachiqProject are *observed* for now: [`observe`] records which
//! generation was seen and says, in a condition, that the operator does not
//! act on the kind yet.

pub mod capsule;
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

/// Records `observedGeneration`, `phase` (when the kind has one) and an
/// `Unknown` condition of `condition_type` that says honestly what happens.
pub(crate) async fn observe<K>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    condition_type: &'static str,
    with_phase: bool,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + HasConditions + Clone + DeserializeOwned + std::fmt::Debug,
    K::Scope: ObjectApi,
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
        let mut body = json!({ "observedGeneration": generation, "conditions": merged });
        if with_phase {
            body["phase"] = json!("Pending");
        }
        let api: Api<K> = K::Scope::api(ctx.client.clone(), obj.namespace().as_deref());
        status::apply(&api, obj.as_ref(), body).await?;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// Builds the right [`Api`] for cluster-scoped and namespaced kinds.
pub trait ObjectApi {
    fn api<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = ()>,
        K: Resource<Scope = Self>;
}

impl ObjectApi for k8s_openapi::ClusterResourceScope {
    fn api<K>(client: kube::Client, _namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = Self>,
    {
        Api::all(client)
    }
}

impl ObjectApi for k8s_openapi::NamespaceResourceScope {
    fn api<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = Self>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    }
}
