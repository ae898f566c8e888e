//! Writing `.status` with server-side apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Error, FIELD_MANAGER, Result};

/// Kinds whose status carries `metav1.Condition`s.
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
}

macro_rules! has_conditions {
    ($($kind:ty),*) => {$(
        impl HasConditions for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
            }
        }
    )*};
}

has_conditions!(
    somastack_crds::Capsule,
    somastack_crds::PolicyBundle,
    somastack_crds::Installation,
    somastack_crds::DrDrill,
    somastack_crds::KamachiqProject
);

/// The current time as the API's `Time`.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Drops the top-level fields of `status` that are null (absent, for us).
fn without_nulls(status: Value) -> Value {
    match status {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// Applies `status` unless the object already has exactly that status.
/// `current` is the object's status as its typed struct serializes it.
pub async fn apply_if_changed<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, status: Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let status = without_nulls(status);
    let current = current
        .and_then(|c| serde_json::to_value(c).ok())
        .map(without_nulls);
    if current.as_ref() == Some(&status) {
        return Ok(());
    }
    apply(api, obj, status).await
}

/// Applies `status` (a JSON object with the fields this operator owns) to
/// the object's status subresource. Forced: the operator is the only writer
/// of status, so a conflict means a stale manager to take over from.
pub async fn apply<K>(api: &Api<K>, obj: &K, status: Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let status = without_nulls(status);
    let name = obj
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::debug!(name = %obj.name_any(), "status applied");
    Ok(())
}
