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

mod bundles;
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
use somastack_controllers::admission::{self, APPROVE_VERB, Answer};
use somastack_controllers::domain::capsules::find as find_capsule;
use somastack_controllers::metrics::{Metrics, WebhookDecision};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject};
use tracing::Instrument;

pub use tls::serve;

/// Webhooks, named as in the webhook configurations and the metrics (the
/// review webhooks are named `<plural>.somastack.io`, see [`review_webhook`]).
const INSTALLATIONS_WEBHOOK: Hook = Hook::validating("installations.somastack.io");
/// The mutating webhook stamping a drill's requester.
const DRDRILLS_WEBHOOK: Hook = Hook::mutating("drdrills.somastack.io");
/// Validating webhooks, named after what they check (kubectl shows the name).
const DRILL_AUTHORITY_WEBHOOK: Hook = Hook::validating("drill-authority.somastack.io");
const CAPSULE_VERSIONS_WEBHOOK: Hook = Hook::validating("capsule-versions.somastack.io");
const PROJECT_POLICY_WEBHOOK: Hook = Hook::validating("project-policy.somastack.io");
/// Sees deletes too: it records every bundle write it lets through.
const POLICYBUNDLES_WEBHOOK: Hook = Hook::validating("policybundles.somastack.io").with_deletes();

/// How long a request waits for the caches of a replica that just started.
const CACHE_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct AppState {
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    /// The record of PolicyBundle writes ([`bundles`]).
    record: bundles::Record,
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

/// A webhook: its name, what it answers to an object it cannot read, and
/// whether its judge sees deletes.
#[derive(Clone, Copy)]
struct Hook<'a> {
    name: &'a str,
    unreadable: Unreadable,
    deletes: bool,
}

impl<'a> Hook<'a> {
    const fn validating(name: &'a str) -> Self {
        Hook {
            name,
            unreadable: Unreadable::Deny,
            deletes: false,
        }
    }

    /// Its judge also sees deletes (as a [`Write`] with `deleted` set).
    const fn with_deletes(self) -> Self {
        Hook {
            deletes: true,
            ..self
        }
    }

    const fn mutating(name: &'a str) -> Self {
        Hook {
            name,
            unreadable: Unreadable::Allow,
            deletes: false,
        }
    }
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
            // Before the schema (mutating webhooks), an object that is not
            // a `K` is the user's mistake, which the schema then names: not
            // worth a warning each time a user makes it.
            if unreadable == Unreadable::Allow {
                tracing::debug!(error = %e, "an object the schema will refuse; let through to it");
            } else {
                tracing::warn!(error = %e, "could not read an AdmissionReview");
            }
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
    verdict: Answer,
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

/// Parses the request and answers it, inside an `admission` span: creates
/// and updates with `judge`'s verdict on the object written (and the one it
/// replaces), or (`Err`) as a request that could not be judged; anything
/// else is allowed.
async fn respond<K>(
    state: &AppState,
    body: Bytes,
    hook: Hook<'_>,
    judge: impl AsyncFnOnce(&AppState, Write<'_, K>) -> Result<Answer, String>,
) -> Reply
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let webhook = hook.name;
    let started = std::time::Instant::now();
    let req = match parse::<K>(&body, hook.unreadable) {
        Ok(r) => r,
        Err(res) => {
            // Let through to the schema (see `Unreadable::Allow`) is a
            // decision, not a failure of the webhook: counted as an error, a
            // tenant applying malformed manifests would page the platform
            // team (SomastackOperatorWebhookErrors).
            let decision = if res.allowed {
                WebhookDecision::Allowed
            } else {
                WebhookDecision::Error
            };
            state.metrics.webhook(webhook, decision);
            return reply(*res);
        }
    };
    let span = span(webhook, &req);
    let res = async {
        let verdict = match written(&req, hook.deletes) {
            Some(write) => judge(state, write).await,
            None => Ok(Answer::default()),
        };
        match verdict {
            Ok(verdict) => answer(&req, verdict, &state.metrics, webhook),
            Err(why) => error(&req, &state.metrics, webhook, why),
        }
    }
    .instrument(span)
    .await;
    state.metrics.webhook_took(webhook, started.elapsed());
    reply(res)
}

/// A create or update to judge (or, for hooks that see them, a delete).
struct Write<'a, K: Resource> {
    req: &'a AdmissionRequest<K>,
    /// The object written (a delete: the object deleted).
    new: &'a K,
    /// The object it replaces (updates).
    old: Option<&'a K>,
    /// A delete of `new`.
    deleted: bool,
}

/// The create or update a request asks for, and with `deletes` a delete
/// (`None` for anything else).
fn written<K: Resource>(req: &AdmissionRequest<K>, deletes: bool) -> Option<Write<'_, K>> {
    match (&req.operation, req.object.as_ref(), req.old_object.as_ref()) {
        (Operation::Create | Operation::Update, Some(new), old) => Some(Write {
            req,
            new,
            old,
            deleted: false,
        }),
        (Operation::Delete, _, Some(gone)) if deletes => Some(Write {
            req,
            new: gone,
            old: None,
            deleted: true,
        }),
        _ => None,
    }
}

/// `/validate/installations`: Installations against the PolicyBundles
/// governing their namespace.
async fn installations(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, INSTALLATIONS_WEBHOOK, judge_installation).await
}

async fn judge_installation(state: &AppState, w: Write<'_, Installation>) -> Result<Answer, String> {
    if !admission::installation_needs_check(w.new, w.old) {
        return Ok(Answer::default());
    }
    state
        .caches
        .wait_ready(CACHE_WAIT)
        .await
        .map_err(|e| format!("{e}; retry shortly"))?;
    let bundles = bundles::governing(state, w.req.namespace.as_deref().unwrap_or_default()).await?;
    // Capsules come from the cache, or from the API server when the one
    // named was published a moment ago.
    let mut capsules = state.caches.capsules.state();
    if find_capsule(&capsules, &w.new.spec.capsule).is_none() {
        capsules = list_capsules(state).await?;
    }
    Ok(admission::installation(w.new, w.old, &capsules, &bundles))
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
    respond(&state, body, Hook::mutating(&webhook), judge_review::<K>).await
}

async fn judge_review<K>(state: &AppState, w: Write<'_, K>) -> Result<Answer, String>
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone,
{
    let user = w.req.user_info.username.clone().unwrap_or_default();
    let may_review = if admission::review_changed(w.new, w.old) {
        Some(may(&state.client, w.req, APPROVE_VERB).await?)
    } else {
        None
    };
    Ok(admission::review(w.new, w.old, &user, may_review))
}

/// `/validate/capsules`: a package version is published once.
async fn capsules(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, CAPSULE_VERSIONS_WEBHOOK, judge_capsule).await
}

async fn judge_capsule(state: &AppState, w: Write<'_, Capsule>) -> Result<Answer, String> {
    let Write { new, old, .. } = w;
    // Only a new package version is judged (not the operator's own
    // finalizer writes, not review annotations).
    if old.is_some_and(|o| o.spec.package == new.spec.package && o.spec.version == new.spec.version) {
        return Ok(Answer::default());
    }
    let existing = list_capsules(state).await?;
    Ok(Answer {
        denied: admission::capsule_duplicate(new, old, &existing),
        ..Answer::default()
    })
}

/// `/validate/kamachiqprojects`: planner URLs only where policy allows;
/// plans that fit.
async fn projects(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, PROJECT_POLICY_WEBHOOK, judge_project).await
}

async fn judge_project(state: &AppState, w: Write<'_, KamachiqProject>) -> Result<Answer, String> {
    if w.old.is_some_and(|o| o.spec == w.new.spec) {
        return Ok(Answer::default());
    }
    let bundles = bundles::governing(state, w.req.namespace.as_deref().unwrap_or_default()).await?;
    Ok(admission::project(w.new, w.old, &bundles))
}

fn requester<K: Resource>(req: &AdmissionRequest<K>) -> Requester {
    Requester {
        user: req.user_info.username.clone().unwrap_or_default(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
    }
}

/// `/mutate/drdrills`: the requester stamped.
async fn drill_requesters(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, DRDRILLS_WEBHOOK, async |_, w| {
        Ok(admission::drill_requester(w.new, w.old, &requester(w.req)))
    })
    .await
}

/// `/validate/drdrills`: drills beyond the tenant bounds only by users
/// allowed `disrupt`.
async fn drills(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, DRILL_AUTHORITY_WEBHOOK, judge_drill).await
}

async fn judge_drill(state: &AppState, w: Write<'_, DrDrill>) -> Result<Answer, String> {
    let Write { req, new, old, .. } = w;
    let now = jiff::Timestamp::now();
    let may_disrupt = if admission::drill_needs_authority(new, old, now).is_empty() {
        None
    } else {
        Some(may(&state.client, req, somastack_crds::drill::DISRUPT_VERB).await?)
    };
    Ok(admission::drill(new, old, &requester(req), may_disrupt, now))
}

/// `/validate/policybundles`: keys, selectors and ceilings the operator can use.
async fn bundles(State(state): State<AppState>, body: Bytes) -> Reply {
    respond(&state, body, POLICYBUNDLES_WEBHOOK, bundles::judge).await
}

/// Asks the API server whether the requesting user may `verb` this object,
/// as Kubernetes does for CertificateSigningRequest approval.
async fn may<K>(client: &Client, req: &AdmissionRequest<K>, verb: &str) -> Result<bool, String>
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
    .map_err(|e| format!("SubjectAccessReview failed: {e}"))
}
