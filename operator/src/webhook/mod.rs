//! Admission webhooks, served over TLS by every replica:
//!
//! - `POST /validate/installations`: Installation create/update against the
//!   PolicyBundles governing its namespace ([`admission::installation`]).
//! - `POST /mutate/capsules`: Capsule review decisions only by users allowed
//!   the verb `approve` (a SubjectAccessReview), never by the submitter;
//!   submitter and reviewer stamped from the authenticated user
//!   ([`admission::review`]).
//! - `POST /mutate/kamachiqprojects`: the same for a project's plan approval
//!   (verb `approve` on `kamachiqprojects`, in the project's namespace).
//!
//! The decisions are pure functions of the controllers crate; this module
//! parses the AdmissionReview, looks things up and answers.

pub mod certs;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use somastack_controllers::admission::{self, APPROVE_VERB, Verdict};
use somastack_controllers::kinds::installation::find_capsule;
use somastack_controllers::metrics::{Metrics, WebhookDecision};
use somastack_controllers::{Caches, policy};
use somastack_crds::{Capsule, Installation, KamachiqProject, PolicyBundle};
use tracing::Instrument;

pub use tls::serve;

/// Webhook names, as in the webhook configurations and the metrics (the
/// review webhooks are named `<plural>.somastack.io`, see [`review_webhook`]).
pub const INSTALLATIONS_WEBHOOK: &str = "installations.somastack.io";

/// How long a request waits for the caches of a replica that just started.
const CACHE_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct AppState {
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate/installations", post(installations))
        .route("/mutate/capsules", post(reviews::<Capsule>))
        .route("/mutate/kamachiqprojects", post(reviews::<KamachiqProject>))
        .with_state(state)
}

/// What to answer when the object in a request cannot be read as `K`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    /// Refuse it (validating webhooks run after the schema: a real error).
    Deny,
    /// Let it through untouched: mutating webhooks run before the CRD schema
    /// is checked, and the schema then refuses it with its own, clearer
    /// message (e.g. an unknown enum value).
    Allow,
}

/// Parses an AdmissionReview of `K`; on failure, the response to send (with
/// the request's uid when there is one, as the API server requires).
fn parse<K>(body: &Bytes, unreadable: Unreadable) -> Result<AdmissionRequest<K>, Box<AdmissionResponse>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    serde_json::from_slice::<AdmissionReview<K>>(body)
        .map_err(|e| e.to_string())
        .and_then(|review| {
            review
                .try_into()
                .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "could not read an AdmissionReview");
            let mut res = AdmissionResponse::invalid(format!("not a valid {}: {e}", K::kind(&())));
            if unreadable == Unreadable::Allow {
                res.allowed = true;
                res.result = Default::default();
            }
            res.uid = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["request"]["uid"].as_str().map(str::to_string))
                .unwrap_or_default();
            Box::new(res)
        })
}

/// Turns a verdict into the response, counting it.
fn answer<K: Resource>(
    req: &AdmissionRequest<K>,
    verdict: Verdict,
    metrics: &Metrics,
    webhook: &str,
) -> AdmissionResponse {
    let mut res = AdmissionResponse::from(req);
    let decision = if let Some(msg) = verdict.denied {
        tracing::info!(user = %req.user_info.username.clone().unwrap_or_default(), reason = %msg, "denied");
        res = forbidden(res, msg);
        WebhookDecision::Denied
    } else if verdict.warnings.is_empty() {
        WebhookDecision::Allowed
    } else {
        res.warnings = Some(verdict.warnings);
        WebhookDecision::Warned
    };
    if let Some(patch) = verdict.patch {
        res = match res.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => return error(req, metrics, webhook, format!("could not encode the patch: {e}")),
        };
    }
    metrics.webhook(webhook, decision);
    res
}

/// A request that could not be judged. Denied: under the `Fail` policy this
/// is what the API server would do anyway, and the message says why.
fn error<K: Resource>(
    req: &AdmissionRequest<K>,
    metrics: &Metrics,
    webhook: &str,
    why: String,
) -> AdmissionResponse {
    tracing::warn!(reason = %why, "could not judge an admission request");
    metrics.webhook(webhook, WebhookDecision::Error);
    forbidden(
        AdmissionResponse::from(req),
        format!("the somastack operator could not check this request: {why}"),
    )
}

/// Denies with HTTP 403 Forbidden (the API server's default would be 400,
/// which reads as a malformed request rather than a refusal).
fn forbidden(res: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut res = res.deny(message);
    res.result.code = 403;
    res.result.reason = "Forbidden".into();
    res
}

fn reply(res: AdmissionResponse) -> axum::Json<AdmissionReview<kube::core::DynamicObject>> {
    axum::Json(res.into_review())
}

fn span<K: Resource>(webhook: &str, req: &AdmissionRequest<K>) -> tracing::Span {
    tracing::info_span!(
        "admission",
        webhook,
        operation = ?req.operation,
        namespace = req.namespace.as_deref().unwrap_or_default(),
        name = %req.name,
    )
}

async fn installations(
    State(state): State<AppState>,
    body: Bytes,
) -> axum::Json<AdmissionReview<kube::core::DynamicObject>> {
    let req = match parse::<Installation>(&body, Unreadable::Deny) {
        Ok(r) => r,
        Err(res) => {
            state
                .metrics
                .webhook(INSTALLATIONS_WEBHOOK, WebhookDecision::Error);
            return reply(*res);
        }
    };
    let span = span(INSTALLATIONS_WEBHOOK, &req);
    reply(judge_installation(&state, &req).instrument(span).await)
}

async fn judge_installation(state: &AppState, req: &AdmissionRequest<Installation>) -> AdmissionResponse {
    let m = &state.metrics;
    let (Operation::Create | Operation::Update, Some(new)) = (&req.operation, req.object.as_ref()) else {
        return answer(req, Verdict::default(), m, INSTALLATIONS_WEBHOOK);
    };
    if !admission::installation_needs_check(new, req.old_object.as_ref()) {
        return answer(req, Verdict::default(), m, INSTALLATIONS_WEBHOOK);
    }
    if let Err(e) = state.caches.wait_ready(CACHE_WAIT).await {
        return error(req, m, INSTALLATIONS_WEBHOOK, format!("{e}; retry shortly"));
    }
    let namespace = req.namespace.clone().unwrap_or_default();
    let labels = match namespace_labels(state, &namespace).await {
        Ok(l) => l,
        Err(e) => {
            return error(
                req,
                m,
                INSTALLATIONS_WEBHOOK,
                format!("namespace {namespace}: {e}"),
            );
        }
    };
    // PolicyBundles are read from the API server, not the cache: a bundle
    // and an Installation applied together (one `kubectl apply`, one GitOps
    // sync) must be judged together, and bundles are few.
    let bundles: Vec<Arc<PolicyBundle>> = match Api::<PolicyBundle>::all(state.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|b| policy::governs(&b.spec, &labels))
            .map(Arc::new)
            .collect(),
        Err(e) => {
            return error(
                req,
                m,
                INSTALLATIONS_WEBHOOK,
                format!("listing PolicyBundles: {e}"),
            );
        }
    };
    // Capsules come from the cache, or from the API server when the one
    // named was published a moment ago.
    let mut capsules = state.caches.capsules.state();
    if find_capsule(&capsules, &new.spec.capsule).is_none() {
        match Api::<Capsule>::all(state.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => capsules = list.items.into_iter().map(Arc::new).collect(),
            Err(e) => return error(req, m, INSTALLATIONS_WEBHOOK, format!("listing Capsules: {e}")),
        }
    }
    let verdict = admission::installation(new, req.old_object.as_ref(), &capsules, &bundles);
    answer(req, verdict, m, INSTALLATIONS_WEBHOOK)
}

/// Labels of a namespace: from the cache, or (created a moment ago, e.g. in
/// the same `kubectl apply`) from the API server.
async fn namespace_labels(state: &AppState, name: &str) -> Result<BTreeMap<String, String>, kube::Error> {
    if let Some(ns) = state.caches.namespaces.get(&ObjectRef::new(name)) {
        return Ok(ns.labels().clone());
    }
    let api: Api<Namespace> = Api::all(state.client.clone());
    Ok(api.get(name).await?.labels().clone())
}

/// The webhook name of a reviewed kind.
fn review_webhook<K: Resource<DynamicType = ()>>() -> String {
    format!("{}.{}", K::plural(&()), somastack_crds::GROUP)
}

/// `/mutate/capsules` and `/mutate/kamachiqprojects`: reviews (Capsule
/// approval, project plan approval) only by users allowed `approve`.
async fn reviews<K>(
    State(state): State<AppState>,
    body: Bytes,
) -> axum::Json<AdmissionReview<kube::core::DynamicObject>>
where
    K: Resource<DynamicType = ()> + ResourceExt + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let webhook = review_webhook::<K>();
    let req = match parse::<K>(&body, Unreadable::Allow) {
        Ok(r) => r,
        Err(res) => {
            state.metrics.webhook(&webhook, WebhookDecision::Error);
            return reply(*res);
        }
    };
    let span = span(&webhook, &req);
    reply(judge_review(&state, &req, &webhook).instrument(span).await)
}

async fn judge_review<K>(state: &AppState, req: &AdmissionRequest<K>, webhook: &str) -> AdmissionResponse
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone,
{
    let m = &state.metrics;
    let (Operation::Create | Operation::Update, Some(new)) = (&req.operation, req.object.as_ref()) else {
        return answer(req, Verdict::default(), m, webhook);
    };
    let old = req.old_object.as_ref();
    let user = req.user_info.username.clone().unwrap_or_default();
    let may_review = if admission::review_changed(new, old) {
        match may_approve(&state.client, req).await {
            Ok(allowed) => Some(allowed),
            Err(e) => return error(req, m, webhook, format!("SubjectAccessReview failed: {e}")),
        }
    } else {
        None
    };
    answer(req, admission::review(new, old, &user, may_review), m, webhook)
}

/// Asks the API server whether the requesting user may `approve` this
/// object, as Kubernetes does for CertificateSigningRequest approval.
async fn may_approve<K>(client: &Client, req: &AdmissionRequest<K>) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let u = &req.user_info;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: u.username.clone(),
            groups: u.groups.clone(),
            uid: u.uid.clone(),
            extra: u.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(somastack_crds::GROUP.into()),
                resource: Some(K::plural(&()).into_owned()),
                verb: Some(APPROVE_VERB.into()),
                name: Some(req.name.clone()),
                namespace: req.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
