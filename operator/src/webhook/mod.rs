//! Admission webhooks, served over TLS by every replica:
//!
//! - `POST /validate/installations`: Installation create/update against the
//!   PolicyBundles governing its namespace ([`admission::installation`]).
//! - `POST /mutate/capsules`: Capsule review decisions only by users allowed
//!   the verb `approve` (a SubjectAccessReview), never by the submitter;
//!   submitter and reviewer stamped from the authenticated user
//!   ([`admission::review`]).
//! - `POST /validate/capsules`: a package version is published once
//!   ([`admission::capsule_duplicate`]).
//! - `POST /mutate/kamachiqprojects`: the same review rules for a project's
//!   plan approval (verb `approve` on `kamachiqprojects`, in the project's
//!   namespace).
//! - `POST /validate/kamachiqprojects`: planner URLs only where policy
//!   allows them, inline plans that fit their ConfigMap ([`admission::project`]).
//! - `POST /mutate/drdrills`: the requester stamped ([`admission::drill_requester`]).
//! - `POST /validate/drdrills`: drills beyond the tenant bounds (region-wide,
//!   long, frequent) only by users allowed the verb `disrupt` ([`admission::drill`]).
//! - `POST /validate/policybundles`: keys, selectors and ceilings the
//!   operator can use ([`admission::bundle`]).
//!
//! Checks that judge content run in validating webhooks, after the CRD
//! schema: a manifest the schema refuses gets the schema's message first.
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
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use somastack_controllers::Caches;
use somastack_controllers::access::{self, Requester};
use somastack_controllers::admission::{self, APPROVE_VERB, Verdict};
use somastack_controllers::domain::capsules::find as find_capsule;
use somastack_controllers::domain::policy;
use somastack_controllers::metrics::{Metrics, WebhookDecision};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};
use tracing::Instrument;

pub use tls::serve;

/// Webhook names, as in the webhook configurations and the metrics (the
/// review webhooks are named `<plural>.somastack.io`, see [`review_webhook`]).
pub const INSTALLATIONS_WEBHOOK: &str = "installations.somastack.io";
/// The mutating webhook stamping a drill's requester.
pub const DRDRILLS_WEBHOOK: &str = "drdrills.somastack.io";
/// Validating webhooks, named after what they check (kubectl shows the name).
pub const DRILL_AUTHORITY_WEBHOOK: &str = "drill-authority.somastack.io";
pub const CAPSULE_VERSIONS_WEBHOOK: &str = "capsule-versions.somastack.io";
pub const PROJECT_POLICY_WEBHOOK: &str = "project-policy.somastack.io";
pub const POLICYBUNDLES_WEBHOOK: &str = "policybundles.somastack.io";

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
        .route("/validate/capsules", post(capsules))
        .route("/mutate/kamachiqprojects", post(reviews::<KamachiqProject>))
        .route("/validate/kamachiqprojects", post(projects))
        .route("/mutate/drdrills", post(drill_requesters))
        .route("/validate/drdrills", post(drills))
        .route("/validate/policybundles", post(bundles))
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

type Reply = axum::Json<AdmissionReview<kube::core::DynamicObject>>;

/// Parses the request, runs `judge` on it inside an `admission` span and
/// answers: a verdict, or (`Err`) a request that could not be judged.
async fn respond<K>(
    state: &AppState,
    body: Bytes,
    unreadable: Unreadable,
    webhook: &str,
    judge: impl AsyncFnOnce(&AdmissionRequest<K>) -> Result<Verdict, String>,
) -> Reply
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let req = match parse::<K>(&body, unreadable) {
        Ok(r) => r,
        Err(res) => {
            state.metrics.webhook(webhook, WebhookDecision::Error);
            return reply(*res);
        }
    };
    let span = span(webhook, &req);
    let res = async {
        match judge(&req).await {
            Ok(verdict) => answer(&req, verdict, &state.metrics, webhook),
            Err(why) => error(&req, &state.metrics, webhook, why),
        }
    }
    .instrument(span)
    .await;
    reply(res)
}

/// The object of a create or update, and the object it replaces.
fn written<K: Resource>(req: &AdmissionRequest<K>) -> Option<(&K, Option<&K>)> {
    match (&req.operation, req.object.as_ref()) {
        (Operation::Create | Operation::Update, Some(new)) => Some((new, req.old_object.as_ref())),
        _ => None,
    }
}

async fn installations(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Deny,
        INSTALLATIONS_WEBHOOK,
        async |req| judge_installation(&state, req).await,
    )
    .await
}

async fn judge_installation(
    state: &AppState,
    req: &AdmissionRequest<Installation>,
) -> Result<Verdict, String> {
    let Some((new, old)) = written(req) else {
        return Ok(Verdict::default());
    };
    if !admission::installation_needs_check(new, old) {
        return Ok(Verdict::default());
    }
    state
        .caches
        .wait_ready(CACHE_WAIT)
        .await
        .map_err(|e| format!("{e}; retry shortly"))?;
    let bundles = governing_bundles(state, req.namespace.as_deref().unwrap_or_default()).await?;
    // Capsules come from the cache, or from the API server when the one
    // named was published a moment ago.
    let mut capsules = state.caches.capsules.state();
    if find_capsule(&capsules, &new.spec.capsule).is_none() {
        capsules = list_capsules(state).await?;
    }
    Ok(admission::installation(new, old, &capsules, &bundles))
}

/// The PolicyBundles governing `namespace`. Read from the API server, not
/// the cache: a bundle and the object it governs applied together (one
/// `kubectl apply`, one GitOps sync) must be judged together, and bundles
/// are few.
async fn governing_bundles(state: &AppState, namespace: &str) -> Result<Vec<Arc<PolicyBundle>>, String> {
    let labels = namespace_labels(state, namespace)
        .await
        .map_err(|e| format!("namespace {namespace}: {e}"))?;
    let list = Api::<PolicyBundle>::all(state.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing PolicyBundles: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|b| policy::governs(&b.spec, &labels))
        .map(Arc::new)
        .collect())
}

/// Every Capsule, from the API server.
async fn list_capsules(state: &AppState) -> Result<Vec<Arc<Capsule>>, String> {
    Api::<Capsule>::all(state.client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().map(Arc::new).collect())
        .map_err(|e| format!("listing Capsules: {e}"))
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
async fn reviews<K>(State(state): State<AppState>, body: Bytes) -> Reply
where
    K: Resource<DynamicType = ()> + ResourceExt + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let webhook = review_webhook::<K>();
    respond(
        &state,
        body,
        Unreadable::Allow,
        &webhook,
        async |req: &AdmissionRequest<K>| judge_review(&state, req).await,
    )
    .await
}

/// `/validate/capsules`: a package version is published once.
async fn capsules(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Deny,
        CAPSULE_VERSIONS_WEBHOOK,
        async |req: &AdmissionRequest<Capsule>| {
            let Some((new, old)) = written(req) else {
                return Ok(Verdict::default());
            };
            // Only a new package version is judged (not the operator's own
            // finalizer writes, not review annotations).
            if old.is_some_and(|o| o.spec.package == new.spec.package && o.spec.version == new.spec.version) {
                return Ok(Verdict::default());
            }
            let existing = list_capsules(&state).await?;
            Ok(Verdict {
                denied: admission::capsule_duplicate(new, old, &existing),
                ..Verdict::default()
            })
        },
    )
    .await
}

/// `/validate/kamachiqprojects`: planner URLs only where policy allows;
/// plans that fit.
async fn projects(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Deny,
        PROJECT_POLICY_WEBHOOK,
        async |req: &AdmissionRequest<KamachiqProject>| {
            let Some((new, old)) = written(req) else {
                return Ok(Verdict::default());
            };
            if old.is_some_and(|o| o.spec == new.spec) {
                return Ok(Verdict::default());
            }
            let bundles = governing_bundles(&state, req.namespace.as_deref().unwrap_or_default()).await?;
            Ok(admission::project(new, old, &bundles))
        },
    )
    .await
}

async fn judge_review<K>(state: &AppState, req: &AdmissionRequest<K>) -> Result<Verdict, String>
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone,
{
    let Some((new, old)) = written(req) else {
        return Ok(Verdict::default());
    };
    let user = req.user_info.username.clone().unwrap_or_default();
    let may_review = if admission::review_changed(new, old) {
        let allowed = may(&state.client, req, APPROVE_VERB)
            .await
            .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
        Some(allowed)
    } else {
        None
    };
    Ok(admission::review(new, old, &user, may_review))
}

fn requester<K: Resource>(req: &AdmissionRequest<K>) -> Requester {
    Requester {
        user: req.user_info.username.clone().unwrap_or_default(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
    }
}

/// `/mutate/drdrills`: the requester stamped.
async fn drill_requesters(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Allow,
        DRDRILLS_WEBHOOK,
        async |req: &AdmissionRequest<DrDrill>| {
            Ok(written(req)
                .map(|(new, old)| admission::drill_requester(new, old, &requester(req)))
                .unwrap_or_default())
        },
    )
    .await
}

/// `/validate/drdrills`: drills beyond the tenant bounds only by users
/// allowed `disrupt`.
async fn drills(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Deny,
        DRILL_AUTHORITY_WEBHOOK,
        async |req: &AdmissionRequest<DrDrill>| {
            let Some((new, old)) = written(req) else {
                return Ok(Verdict::default());
            };
            let now = jiff::Timestamp::now();
            let may_disrupt = if admission::drill_needs_authority(new, old, now).is_empty() {
                None
            } else {
                let allowed = may(&state.client, req, somastack_crds::drill::DISRUPT_VERB)
                    .await
                    .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
                Some(allowed)
            };
            Ok(admission::drill(new, old, &requester(req), may_disrupt, now))
        },
    )
    .await
}

/// `/validate/policybundles`: keys, selectors and ceilings the operator can use.
async fn bundles(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(
        &state,
        body,
        Unreadable::Deny,
        POLICYBUNDLES_WEBHOOK,
        async |req: &AdmissionRequest<PolicyBundle>| {
            Ok(written(req)
                .map(|(new, old)| admission::bundle(new, old))
                .unwrap_or_default())
        },
    )
    .await
}

/// Asks the API server whether the requesting user may `verb` this object,
/// as Kubernetes does for CertificateSigningRequest approval.
async fn may<K>(client: &Client, req: &AdmissionRequest<K>, verb: &str) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let u = &req.user_info;
    let plural = K::plural(&());
    let action = access::Action {
        verb,
        plural: &plural,
        namespace: req.namespace.as_deref(),
        name: Some(&req.name),
    };
    let user = u.username.clone().unwrap_or_default();
    access::may(
        client,
        &user,
        u.groups.clone(),
        u.uid.clone(),
        u.extra.clone(),
        action,
    )
    .await
}
