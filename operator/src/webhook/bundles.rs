//! PolicyBundles for admission: the bundle webhook records each write it
//! lets through, and the webhooks that judge against bundles read them from
//! the cache when that record shows the cache complete, from the API server
//! when not. Why, and the pure rules: `somastack_controllers::bundle_writes`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use somastack_controllers::FIELD_MANAGER;
use somastack_controllers::admission::{self, Answer};
use somastack_controllers::bundle_writes::{self, Written};
use somastack_controllers::domain::policy;
use somastack_controllers::metrics::BundleSource;
use somastack_crds::PolicyBundle;

use super::{AppState, Write, namespace_labels};

/// The ConfigMap holding the record, in the operator's namespace.
#[derive(Clone)]
pub(super) struct Record {
    api: Api<ConfigMap>,
    name: String,
}

/// Merge patches of the record, by the operator's field manager.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Record {
    pub(super) fn new(client: Client, namespace: &str, name: &str) -> Self {
        Record {
            api: Api::namespaced(client, namespace),
            name: name.into(),
        }
    }

    /// The record as stored (empty when nothing was recorded yet), and the
    /// ConfigMap's resourceVersion. A GET: read from etcd, not from the API
    /// server's cache.
    async fn read(&self) -> Result<(BTreeMap<String, String>, Option<String>), kube::Error> {
        let cm = self.api.get_opt(&self.name).await?;
        let rv = cm.as_ref().and_then(|c| c.resource_version());
        Ok((cm.and_then(|c| c.data).unwrap_or_default(), rv))
    }

    /// Records that `bundle` is about to be written as `written`.
    async fn write(&self, bundle: &str, written: &Written) -> Result<(), kube::Error> {
        let params = patch_params();
        loop {
            let (data, rv) = self.read().await?;
            let patch = bundle_writes::record(&data, bundle, written, now());
            if rv.is_some() {
                self.api.patch(&self.name, &params, &Patch::Merge(&patch)).await?;
                return Ok(());
            }
            let data = patch["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match self.api.create(&post, &cm).await {
                Ok(_) => return Ok(()),
                // Another replica created it a moment ago: patch it.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `fixed` over the record as it was at `rv` (a conflict means
    /// someone recorded since: nothing to do).
    async fn repair(&self, fixed: BTreeMap<String, String>, rv: Option<String>) {
        let patch = json!({ "metadata": { "resourceVersion": rv }, "data": fixed });
        let params = patch_params();
        match self.api.patch(&self.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(bundles = ?patch["data"], "repaired the record of PolicyBundle writes never stored")
            }
            Err(e) => tracing::debug!(error = %e, "the record of PolicyBundle writes was not repaired"),
        }
    }
}

/// `/validate/policybundles`: keys, selectors and ceilings the operator can
/// use; every create, change of spec and delete it lets through (not dry
/// runs) recorded first. A write that cannot be recorded is refused, to be
/// retried: letting it through would let Installations applied with it be
/// judged without it.
pub(super) async fn judge(state: &AppState, w: Write<'_, PolicyBundle>) -> Result<Answer, String> {
    let answer = if w.deleted {
        Answer::default()
    } else {
        admission::bundle(w.new, w.old)
    };
    let changed = w.deleted || w.old.is_none_or(|o| o.spec != w.new.spec);
    if answer.denied.is_none() && changed && !w.req.dry_run {
        let written = if w.deleted {
            Written::Gone
        } else {
            Written::Spec(bundle_writes::digest(&w.new.spec))
        };
        state
            .record
            .write(&w.new.name_any(), &written)
            .await
            .map_err(|e| {
                format!(
                    "recording the write of PolicyBundle {}: {e}; retry shortly",
                    w.new.name_any()
                )
            })?;
    }
    Ok(answer)
}

/// The PolicyBundles governing `namespace`, including any whose write
/// returned before this request began.
pub(super) async fn governing(state: &AppState, namespace: &str) -> Result<Vec<Arc<PolicyBundle>>, String> {
    let labels = namespace_labels(state, namespace)
        .await
        .map_err(|e| format!("namespace {namespace}: {e}"))?;
    Ok(every(state)
        .await?
        .into_iter()
        .filter(|b| policy::governs(&b.spec, &labels))
        .collect())
}

/// Every PolicyBundle: from the cache when it shows every recorded write,
/// else from the API server (and old records it contradicts repaired).
async fn every(state: &AppState) -> Result<Vec<Arc<PolicyBundle>>, String> {
    let (data, rv) = state
        .record
        .read()
        .await
        .map_err(|e| format!("reading the record of PolicyBundle writes: {e}"))?;
    let record = bundle_writes::read(&data);
    let cache = &state.caches.bundles;
    let lagging = bundle_writes::lagging(&record, |name| {
        cache
            .get(&ObjectRef::new(name))
            .map(|b| bundle_writes::digest(&b.spec))
    });
    if lagging.is_empty() {
        state.metrics.bundles_read(BundleSource::Cache);
        return Ok(cache.state());
    }
    state.metrics.bundles_read(BundleSource::List);
    tracing::debug!(
        ?lagging,
        "the cache does not show every PolicyBundle write yet; listing"
    );
    let listed: Vec<Arc<PolicyBundle>> = Api::<PolicyBundle>::all(state.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing PolicyBundles: {e}"))?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let digests = listed
        .iter()
        .map(|b| (b.name_any(), bundle_writes::digest(&b.spec)))
        .collect();
    let fixed = bundle_writes::repairs(&record, &digests, now());
    if !fixed.is_empty() {
        state.record.repair(fixed, rv).await;
    }
    Ok(listed)
}
