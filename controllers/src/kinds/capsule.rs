//! `Capsule` controller: signature verification, review, readiness, and
//! protection against deleting a Capsule that is still installed.
//!
//! [`decide`] is pure: from the Capsule, the PolicyBundles and a count of
//! Installations it computes the status. The reconcile only reads caches,
//! calls it and applies the result.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::capsule::{CapsuleSpec, CapsuleStatus, ReviewRecord};
use somastack_crds::common::CapsuleRef;
use somastack_crds::{Capsule, Installation, PolicyBundle};

use crate::conditions::{self, Desired, Health, Status};
use crate::domain::capsules::{self as capsule_refs, Resolved};
use crate::domain::review::{DECISION_ANNOTATION, DIGEST_ANNOTATION, review_record};
use crate::domain::signing;
use crate::runtime::Context;
use crate::status::HasConditions;
use crate::triggers;
use crate::{Error, Result, status};

/// Keeps a Capsule that Installations still use from disappearing under them.
pub const FINALIZER: &str = "somastack.io/capsule-protection";

/// The Capsule controller: reconciled on changes to its own spec, labels
/// and annotations (not to the status it writes), all of them on a change of
/// any PolicyBundle's spec (trust), and those an Installation names when it
/// appears, goes or names another (the count in status). Installations come
/// in bursts (a GitOps sync of hundreds): their triggers are taken a
/// [`triggers::WINDOW`] at a time, one count per Capsule per window.
pub fn controller(ctx: &Arc<Context>) -> Controller<Capsule> {
    let capsules = ctx.caches.capsules.clone();
    let events = &ctx.caches;
    let bundles_changed = events.bundles.changes(triggers::intent).map(|_| ());
    let named = events
        .installations
        .changes(|i| (i.spec.capsule.package.clone(), i.spec.capsule.version.clone()))
        .flat_map(move |inst| {
            futures::stream::iter(capsules.refs(|c| {
                c.spec.package == inst.spec.capsule.package && c.spec.version == inst.spec.capsule.version
            }))
        });
    ctx.controller(
        events.capsules.changes(triggers::intent),
        &events.capsules,
        |_| true,
    )
    .reconcile_all_on(triggers::coalesced(bundles_changed, triggers::WINDOW))
    .reconcile_on(triggers::coalesced(named, triggers::WINDOW))
}

/// The status a Capsule should have.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    pub conditions: Vec<Desired>,
    pub payload_digest: String,
    pub review: Option<ReviewRecord>,
}

/// The keys PolicyBundles trust under `(publisher, key_id)`: each distinct
/// PEM with the bundles that hold it.
fn trusted_keys<'a>(
    bundles: &'a [Arc<PolicyBundle>],
    publisher: &str,
    key_id: &str,
) -> Vec<(&'a str, Vec<String>)> {
    let mut found: Vec<(&'a str, Vec<String>)> = Vec::new();
    for b in bundles {
        let Some(trust) = &b.spec.trust else { continue };
        for p in trust.publishers.iter().filter(|p| p.name == publisher) {
            if let Some(k) = p.keys.iter().find(|k| k.id == key_id) {
                match found
                    .iter_mut()
                    .find(|(pem, _)| pem.trim() == k.public_key.trim())
                {
                    Some((_, names)) => names.push(b.name_any()),
                    None => found.push((k.public_key.as_str(), vec![b.name_any()])),
                }
            }
        }
    }
    found
}

/// `Verified`: the signature against every key any PolicyBundle trusts
/// under its key id; with two bundles naming the id with different keys,
/// it must verify with both (most restrictive).
pub fn verification(spec: &CapsuleSpec, bundles: &[Arc<PolicyBundle>]) -> Desired {
    let requiring: Vec<String> = bundles
        .iter()
        .filter(|b| b.spec.trust.as_ref().is_some_and(|t| t.require_signature))
        .map(|b| b.name_any())
        .collect();
    let Some(sig) = &spec.signature else {
        return if requiring.is_empty() {
            Desired::new(
                "Verified",
                Status::True,
                "NotRequired",
                "unsigned; no PolicyBundle requires a signature",
            )
        } else {
            Desired::new(
                "Verified",
                Status::False,
                "Unsigned",
                format!(
                    "the capsule is not signed and PolicyBundle {} requires signatures",
                    requiring.join(", ")
                ),
            )
        };
    };
    let keys = trusted_keys(bundles, &spec.publisher, &sig.key_id);
    if keys.is_empty() {
        return Desired::new(
            "Verified",
            Status::False,
            "UnknownKey",
            format!(
                "key {} of publisher {} is not trusted by any PolicyBundle",
                sig.key_id, spec.publisher
            ),
        );
    }
    let payload = signing::canonical_payload(spec);
    let mut trusted_by = Vec::new();
    for (pem, names) in keys {
        if let Err(e) = signing::verify(sig.algorithm, pem, &sig.key_id, &payload, &sig.value) {
            return Desired::new(
                "Verified",
                Status::False,
                "SignatureInvalid",
                format!(
                    "key {} as PolicyBundle {} trusts it: {e}",
                    sig.key_id,
                    names.join(", ")
                ),
            );
        }
        trusted_by.extend(names);
    }
    trusted_by.sort();
    Desired::new(
        "Verified",
        Status::True,
        "SignatureValid",
        format!(
            "signed by key {} of publisher {}, trusted by PolicyBundle {}",
            sig.key_id,
            spec.publisher,
            trusted_by.join(", ")
        ),
    )
}

/// `Approved`, from the review record and what the bundles require.
pub fn approval(
    review: Option<&ReviewRecord>,
    current_digest: &str,
    approval_required_by: &[String],
) -> Desired {
    let by = |r: &ReviewRecord| {
        let who = r.reviewer.as_deref().unwrap_or("an unnamed reviewer");
        match r.reason.as_deref().filter(|s| !s.is_empty()) {
            Some(why) => format!("{who}: {why}"),
            None => who.to_string(),
        }
    };
    match review {
        None if approval_required_by.is_empty() => Desired::new(
            "Approved",
            Status::True,
            "NotRequired",
            "no PolicyBundle requires a review",
        ),
        None => Desired::new(
            "Approved",
            Status::False,
            "AwaitingReview",
            format!(
                "PolicyBundle {} requires a review; a reviewer sets the annotation {DECISION_ANNOTATION}=approve",
                approval_required_by.join(", ")
            ),
        ),
        Some(r) if r.decision == "approve" && r.payload_digest.as_deref() == Some(current_digest) => {
            Desired::new(
                "Approved",
                Status::True,
                "Approved",
                format!("approved by {}", by(r)),
            )
        }
        Some(r) if r.decision == "approve" => Desired::new(
            "Approved",
            Status::False,
            "ApprovalOutdated",
            format!(
                "the approval by {} was for {}, but the capsule changed to {current_digest}; approve again with {DIGEST_ANNOTATION}={current_digest}",
                by(r),
                r.payload_digest.as_deref().unwrap_or("an unknown payload")
            ),
        ),
        Some(r) if r.decision == "reject" => Desired::new(
            "Approved",
            Status::False,
            "Rejected",
            format!("rejected by {}", by(r)),
        ),
        Some(r) => Desired::new(
            "Approved",
            Status::False,
            "UnknownDecision",
            format!("{DECISION_ANNOTATION} is {:?}; use approve or reject", r.decision),
        ),
    }
}

/// The whole status, from the Capsule, all PolicyBundles and `now`.
pub fn desired_status(capsule: &Capsule, bundles: &[Arc<PolicyBundle>], now: &Time) -> DesiredStatus {
    let digest = signing::payload_digest(&capsule.spec);
    let previous = capsule.status.as_ref().and_then(|s| s.review.as_ref());
    let review = review_record(capsule.annotations(), previous, &digest, now);
    let requiring: Vec<String> = bundles
        .iter()
        .filter(|b| b.spec.trust.as_ref().is_some_and(|t| t.require_approval))
        .map(|b| b.name_any())
        .collect();
    let verified = verification(&capsule.spec, bundles);
    let approved = approval(review.as_ref(), &digest, &requiring);
    let ready = match (&verified.status, &approved.status) {
        (Status::True, Status::True) => Desired::new(
            "Ready",
            Status::True,
            "Installable",
            "verified and approved as the PolicyBundles require",
        ),
        (Status::True, _) => Desired::new("Ready", Status::False, approved.reason, approved.message.clone()),
        _ => Desired::new("Ready", Status::False, verified.reason, verified.message.clone()),
    };
    DesiredStatus {
        conditions: vec![verified, approved, ready],
        payload_digest: digest,
        review,
    }
}

/// Pure: how GitOps tools read a Capsule, from its `Ready`: one waiting for
/// a review (or for its users to go, when deleted) waits for a person; any
/// other reason not to be installable (unsigned, an unknown key, a bad
/// signature, rejected, a duplicate version) stays until the Capsule or
/// the bundles change: Stalled.
pub fn health(desired: &[Desired]) -> Health {
    match desired.iter().find(|d| d.type_ == "Ready") {
        Some(r) if r.status == Status::True => Health::Current,
        Some(r)
            if matches!(
                r.reason,
                "AwaitingReview" | "ApprovalOutdated" | "DeletionBlocked"
            ) =>
        {
            Health::Waiting
        }
        Some(_) => Health::Stalled,
        None => Health::Progressing,
    }
}

/// Why this Capsule can never be installed although its own checks pass,
/// if so: another Capsule publishes the same package version first (or at
/// the same moment), or its resources are not sane quantities.
pub fn unusable(capsule: &Capsule, capsules: &[Arc<Capsule>]) -> Option<Desired> {
    let wanted = CapsuleRef {
        package: capsule.spec.package.clone(),
        version: capsule.spec.version.clone(),
    };
    match capsule_refs::resolve(capsules, &wanted) {
        Resolved::Found(first) if first.name_any() != capsule.name_any() => {
            return Some(Desired::new(
                "Ready",
                Status::False,
                "DuplicateVersion",
                format!(
                    "{} {} is already published as Capsule {} by publisher {}; this Capsule is never installed: delete it and publish a new version",
                    wanted.package,
                    wanted.version,
                    first.name_any(),
                    first.spec.publisher
                ),
            ));
        }
        Resolved::Ambiguous(why) => {
            return Some(Desired::new("Ready", Status::False, "DuplicateVersion", why));
        }
        _ => {}
    }
    let problems = resource_problems(&capsule.spec);
    (!problems.is_empty()).then(|| {
        Desired::new(
            "Ready",
            Status::False,
            "InvalidResources",
            format!("resources cannot be used: {}", problems.join("; ")),
        )
    })
}

/// What is wrong with a capsule's resources (the CRD schema refuses these
/// today; a Capsule stored before it did is reported, never installed).
pub fn resource_problems(spec: &CapsuleSpec) -> Vec<String> {
    use crate::domain::bundle_checks::quantity_problem;
    use somastack_crds::common::{MAX_CPU, MAX_MEMORY};
    let Some(res) = &spec.resources else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (side, amounts) in [("requests", &res.requests), ("limits", &res.limits)] {
        let Some(a) = amounts else { continue };
        for (q, max, what) in [(&a.cpu, MAX_CPU, "cpu"), (&a.memory, MAX_MEMORY, "memory")] {
            if let Some(q) = q
                && let Some(why) = quantity_problem(q, max)
            {
                out.push(format!("{side}.{what} {why}"));
            }
        }
    }
    if let (Some(req), Some(lim)) = (&res.requests, &res.limits) {
        for (r, l, what) in [(&req.cpu, &lim.cpu, "cpu"), (&req.memory, &lim.memory, "memory")] {
            let parse = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                q.as_ref()
                    .and_then(|q| kube_quantity::ParsedQuantity::try_from(q).ok())
            };
            if let (Some(r), Some(l)) = (parse(r), parse(l))
                && r > l
            {
                out.push(format!("requests.{what} is greater than limits.{what}"));
            }
        }
    }
    out
}

/// Installations (namespace/name) that run this Capsule: those naming its
/// package and version, when it is the Capsule that reference resolves to.
pub fn users(
    capsule: &Capsule,
    capsules: &[Arc<Capsule>],
    installations: &[Arc<Installation>],
) -> Vec<String> {
    let wanted = CapsuleRef {
        package: capsule.spec.package.clone(),
        version: capsule.spec.version.clone(),
    };
    let is_the_one = capsule_refs::resolve(capsules, &wanted)
        .found()
        .is_some_and(|c| c.name_any() == capsule.name_any());
    if !is_the_one {
        return Vec::new();
    }
    let mut out: Vec<String> = installations
        .iter()
        .filter(|i| {
            i.spec.capsule.package == capsule.spec.package && i.spec.capsule.version == capsule.spec.version
        })
        .map(|i| format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any()))
        .collect();
    out.sort();
    out
}

pub async fn reconcile(capsule: Arc<Capsule>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await?;
    let api: Api<Capsule> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, capsule, |event| async {
        match event {
            Finalizer::Apply(capsule) => apply(&capsule, &ctx, &api).await,
            Finalizer::Cleanup(capsule) => cleanup(&capsule, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn apply(capsule: &Capsule, ctx: &Context, api: &Api<Capsule>) -> Result<Action> {
    let bundles = ctx.caches.bundles.state();
    let now = status::now();
    let mut decision = desired_status(capsule, &bundles, &now);
    let capsules = ctx.caches.capsules.state();
    if let Some(ready) = unusable(capsule, &capsules) {
        decision.conditions.retain(|c| c.type_ != "Ready");
        decision.conditions.push(ready);
    }
    let users = users(capsule, &capsules, &ctx.caches.installations.state());
    let merged = conditions::merge_with_health(
        capsule.conditions(),
        &decision.conditions,
        health(&decision.conditions),
        capsule.metadata.generation,
        &now,
    );

    if let Some((type_, reason, note)) = ready_changed(capsule.conditions(), &merged) {
        ctx.event(capsule, type_, reason, "Verify", note).await;
    }
    let status = CapsuleStatus {
        observed_generation: capsule.metadata.generation,
        conditions: merged,
        payload_digest: Some(decision.payload_digest),
        review: decision.review,
        installations: Some(i32::try_from(users.len()).unwrap_or(i32::MAX)),
    };
    let body = serde_json::to_value(&status)?;
    status::apply_if_changed(api, capsule, capsule.status.as_ref(), body).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Pure: the Event to record when `Ready` flips (`Installable`, or the
/// reason it is not), with the condition's message.
fn ready_changed<'a>(before: &[Condition], after: &'a [Condition]) -> Option<(EventType, &'a str, String)> {
    let ready = conditions::find(after, "Ready")?;
    if conditions::find(before, "Ready").map(|c| &c.status) == Some(&ready.status) {
        return None;
    }
    Some(if ready.status == "True" {
        (EventType::Normal, "Installable", ready.message.clone())
    } else {
        (EventType::Warning, ready.reason.as_str(), ready.message.clone())
    })
}

async fn cleanup(capsule: &Capsule, ctx: &Context, api: &Api<Capsule>) -> Result<Action> {
    let users = users(
        capsule,
        &ctx.caches.capsules.state(),
        &ctx.caches.installations.state(),
    );
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let shown: Vec<&str> = users.iter().take(5).map(String::as_str).collect();
    let message = format!(
        "deletion waits: still used by {} Installation(s) ({}{}); delete or upgrade them first",
        users.len(),
        shown.join(", "),
        if users.len() > shown.len() { ", ..." } else { "" }
    );
    let now = status::now();
    let desired = [Desired::new(
        "Ready",
        Status::False,
        "DeletionBlocked",
        message.clone(),
    )];
    let merged = conditions::merge_with_health(
        capsule.conditions(),
        &desired,
        Health::Waiting,
        capsule.metadata.generation,
        &now,
    );
    if merged.as_slice() != capsule.conditions() {
        status::apply(
            api,
            capsule,
            json!({ "conditions": merged, "installations": users.len() }),
        )
        .await?;
        ctx.event(
            capsule,
            EventType::Warning,
            "DeletionBlocked",
            "Delete",
            message.clone(),
        )
        .await;
    }
    Err(Error::DeletionBlocked(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::domain::review::{REASON_ANNOTATION, REVIEWER_ANNOTATION, is_approved};
    use somastack_crds::capsule::{Signature, SignatureAlgorithm};
    use somastack_crds::common::DataClassification;
    use somastack_crds::policy::{PolicyBundleSpec, PublisherKey, Trust, TrustedPublisher};

    /// How kstatus and Argo CD read a Capsule, by its `Ready`.
    #[test]
    fn gitops_tools_read_a_capsule_by_its_ready() {
        let read = |status, reason| health(&[Desired::new("Ready", status, reason, "m")]);
        assert_eq!(read(Status::True, "Installable"), Health::Current);
        assert_eq!(read(Status::False, "AwaitingReview"), Health::Waiting);
        assert_eq!(read(Status::False, "ApprovalOutdated"), Health::Waiting);
        for reason in [
            "Unsigned",
            "UnknownKey",
            "SignatureInvalid",
            "Rejected",
            "DuplicateVersion",
        ] {
            assert_eq!(read(Status::False, reason), Health::Stalled, "{reason}");
        }
        assert_eq!(health(&[]), Health::Progressing);
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
    }

    fn capsule(signature: Option<Signature>, annotations: &[(&str, &str)]) -> Capsule {
        let spec = CapsuleSpec {
            signature,
            ..crate::testing::capsule_spec(DataClassification::Internal)
        };
        let mut c = Capsule::new("agent-1.0.0", spec);
        c.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    fn bundle(name: &str, trust: Option<Trust>) -> Arc<PolicyBundle> {
        Arc::new(PolicyBundle::new(
            name,
            PolicyBundleSpec {
                trust,
                ..Default::default()
            },
        ))
    }

    fn find<'a>(d: &'a DesiredStatus, type_: &str) -> &'a Desired {
        d.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn unsigned_without_requirements_is_installable() {
        let d = desired_status(&capsule(None, &[]), &[bundle("open", None)], &now());
        assert_eq!(find(&d, "Verified").reason, "NotRequired");
        assert_eq!(find(&d, "Approved").reason, "NotRequired");
        assert_eq!(find(&d, "Ready").status, Status::True);
    }

    #[test]
    fn unsigned_with_required_signature_is_not_ready() {
        let trust = Trust {
            require_signature: true,
            ..Default::default()
        };
        let d = desired_status(&capsule(None, &[]), &[bundle("strict", Some(trust))], &now());
        let v = find(&d, "Verified");
        assert_eq!((v.status, v.reason), (Status::False, "Unsigned"));
        assert!(v.message.contains("PolicyBundle strict requires signatures"));
        assert_eq!(find(&d, "Ready").reason, "Unsigned");
    }

    #[test]
    fn unknown_key_and_invalid_signature() {
        let sig = Signature {
            key_id: "k9".into(),
            algorithm: SignatureAlgorithm::Ed25519,
            value: "AAAA".into(),
        };
        let d = desired_status(&capsule(Some(sig.clone()), &[]), &[bundle("b", None)], &now());
        assert_eq!(find(&d, "Verified").reason, "UnknownKey");

        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let trust = Trust {
            publishers: vec![TrustedPublisher {
                name: "acme".into(),
                keys: vec![PublisherKey {
                    id: "k9".into(),
                    public_key: pem.into(),
                }],
            }],
            ..Default::default()
        };
        let d = desired_status(&capsule(Some(sig), &[]), &[bundle("b", Some(trust))], &now());
        let v = find(&d, "Verified");
        assert_eq!((v.status, v.reason), (Status::False, "SignatureInvalid"));
    }

    #[test]
    fn approval_binds_to_the_digest_and_a_change_invalidates_it() {
        let trust = Trust {
            require_approval: true,
            ..Default::default()
        };
        let bundles = [bundle("review", Some(trust))];
        let waiting = desired_status(&capsule(None, &[]), &bundles, &now());
        assert_eq!(find(&waiting, "Approved").reason, "AwaitingReview");

        let mut approved = capsule(
            None,
            &[
                (DECISION_ANNOTATION, "approve"),
                (REVIEWER_ANNOTATION, "alice"),
                (REASON_ANNOTATION, "looks good"),
            ],
        );
        let d = desired_status(&approved, &bundles, &now());
        assert_eq!(find(&d, "Approved").reason, "Approved");
        assert_eq!(find(&d, "Approved").message, "approved by alice: looks good");
        assert_eq!(find(&d, "Ready").status, Status::True);
        let record = d.review.clone().unwrap();
        assert_eq!(record.payload_digest.as_deref(), Some(d.payload_digest.as_str()));

        // The operator recorded the review; then the spec changes.
        approved.status = Some(somastack_crds::CapsuleStatus {
            review: Some(record),
            ..Default::default()
        });
        approved.spec.version = "1.0.1".into();
        let d = desired_status(&approved, &bundles, &now());
        let a = find(&d, "Approved");
        assert_eq!((a.status, a.reason), (Status::False, "ApprovalOutdated"));
        assert!(a.message.contains(&d.payload_digest));
        assert!(!is_approved(&approved));
    }

    #[test]
    fn explicit_digest_annotation_must_match() {
        let digest = signing::payload_digest(&capsule(None, &[]).spec);
        let ok = capsule(
            None,
            &[(DECISION_ANNOTATION, "approve"), (DIGEST_ANNOTATION, &digest)],
        );
        assert!(is_approved(&ok));
        let stale = capsule(
            None,
            &[(DECISION_ANNOTATION, "approve"), (DIGEST_ANNOTATION, "sha256:00")],
        );
        assert!(!is_approved(&stale));
    }

    #[test]
    fn rejection_and_unknown_decisions() {
        let d = desired_status(
            &capsule(
                None,
                &[(DECISION_ANNOTATION, "reject"), (REVIEWER_ANNOTATION, "bob")],
            ),
            &[],
            &now(),
        );
        let a = find(&d, "Approved");
        assert_eq!(
            (a.status, a.reason, a.message.as_str()),
            (Status::False, "Rejected", "rejected by bob")
        );
        assert_eq!(find(&d, "Ready").reason, "Rejected");
        let d = desired_status(&capsule(None, &[(DECISION_ANNOTATION, "lgtm")]), &[], &now());
        assert_eq!(find(&d, "Approved").reason, "UnknownDecision");
    }

    #[test]
    fn review_time_is_kept_while_the_review_is_unchanged() {
        let annotations = BTreeMap::from([(DECISION_ANNOTATION.to_string(), "approve".to_string())]);
        let first = review_record(&annotations, None, "sha256:a", &now()).unwrap();
        let later = Time(jiff::Timestamp::from_second(1_900_000_000).unwrap());
        let again = review_record(&annotations, Some(&first), "sha256:b", &later).unwrap();
        assert_eq!(again.time, first.time);
        assert_eq!(
            again.payload_digest.as_deref(),
            Some("sha256:a"),
            "still bound to what was reviewed"
        );
    }
}
