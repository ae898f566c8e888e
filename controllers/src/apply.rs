//! Applying children with server-side apply, and pruning those no longer wanted.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FIELD_MANAGER, Result};

/// The owner reference a child of `owner` carries (controller, blocking deletion).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))
}

/// Server-side applies a typed child `obj` (its `metadata.name` set) in
/// `namespace`, forcing ownership of the fields it sets. k8s-openapi structs
/// serialize `apiVersion` and `kind` and omit what is unset, so the patch is
/// exactly the fields the operator owns. A refusal for good is
/// [`Error::ChildRefused`], naming the object.
pub async fn apply_object<K>(client: &kube::Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::refusing(e, &K::kind(&()), name))
}

/// The API answers a request may get that are not failures for its caller.
pub trait ApiResultExt<T> {
    /// `Ok(None)` for a 404: the object is already gone (or never was).
    fn ok_if_not_found(self) -> Result<Option<T>, kube::Error>;
    /// `Ok(None)` for a 409: someone else created it first, or changed it
    /// since it was read (an optimistic-concurrency conflict).
    fn ok_if_conflict(self) -> Result<Option<T>, kube::Error>;
}

impl<T> ApiResultExt<T> for Result<T, kube::Error> {
    fn ok_if_not_found(self) -> Result<Option<T>, kube::Error> {
        ok_if(self, 404)
    }

    fn ok_if_conflict(self) -> Result<Option<T>, kube::Error> {
        ok_if(self, 409)
    }
}

fn ok_if<T>(result: Result<T, kube::Error>, code: u16) -> Result<Option<T>, kube::Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == code => Ok(None),
        Err(e) => Err(e),
    }
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
    Ok(api
        .delete(name, &DeleteParams::background())
        .await
        .ok_if_not_found()?
        .is_some())
}
