//! Applying children with server-side apply, and pruning those no longer wanted.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, FIELD_MANAGER, Result};

/// The owner reference a child of `owner` carries (controller, blocking deletion).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))
}

/// Server-side applies `manifest` (a complete object with apiVersion, kind,
/// metadata.name) in `namespace`, forcing ownership of the fields it sets.
/// A refusal for good is [`Error::ChildRefused`], naming the object.
pub async fn apply<K>(client: &kube::Client, namespace: &str, manifest: &Value) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = manifest["metadata"]["name"]
        .as_str()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await
    .map_err(|e| Error::refusing(e, &K::kind(&()), name))
}

/// Deletes `name` if it exists and is controlled by the owner with `owner_uid`;
/// returns whether something was deleted. Objects of other owners are left alone.
pub async fn delete_if_owned<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !existing.owner_references().iter().any(|o| o.uid == owner_uid) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
