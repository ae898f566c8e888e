//! The review protocol: reviewers annotate a Capsule (or a KamachiqProject's
//! plan) with a decision bound to a payload digest. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use somastack_crds::capsule::ReviewRecord;
use somastack_crds::{Capsule, KamachiqProject, PolicyBundle};

use super::signing;

/// A reviewer's decision: `approve` or `reject`.
pub const DECISION_ANNOTATION: &str = "review.somastack.io/decision";
pub const REASON_ANNOTATION: &str = "review.somastack.io/reason";
pub const REVIEWER_ANNOTATION: &str = "review.somastack.io/reviewer";
pub const DIGEST_ANNOTATION: &str = "review.somastack.io/digest";

/// The review the annotations state, bound to a payload digest. Kept from
/// `previous` (with its time) while nothing about the review changed.
pub fn review_record(
    annotations: &BTreeMap<String, String>,
    previous: Option<&ReviewRecord>,
    current_digest: &str,
    now: &Time,
) -> Option<ReviewRecord> {
    let decision = annotations.get(DECISION_ANNOTATION)?.trim().to_string();
    let reviewer = annotations.get(REVIEWER_ANNOTATION).cloned();
    let reason = annotations.get(REASON_ANNOTATION).cloned();
    let same_review =
        previous.filter(|p| p.decision == decision && p.reviewer == reviewer && p.reason == reason);
    // An explicit digest annotation names what was reviewed; otherwise the
    // review binds to the payload at the time the operator first saw it.
    let payload_digest = annotations
        .get(DIGEST_ANNOTATION)
        .cloned()
        .or_else(|| same_review.and_then(|p| p.payload_digest.clone()))
        .unwrap_or_else(|| current_digest.to_string());
    let time = same_review
        .filter(|p| p.payload_digest.as_deref() == Some(payload_digest.as_str()))
        .and_then(|p| p.time.clone())
        .unwrap_or_else(|| now.clone());
    Some(ReviewRecord {
        decision,
        reviewer,
        reason,
        time: Some(time),
        payload_digest: Some(payload_digest),
    })
}

/// Whether `capsule` carries a current approval (its review, bound to its
/// payload digest, says approve). Independent of whether one is required.
pub fn is_approved(capsule: &Capsule) -> bool {
    let digest = signing::payload_digest(&capsule.spec);
    let previous = capsule.status.as_ref().and_then(|s| s.review.as_ref());
    review_record(
        capsule.annotations(),
        previous,
        &digest,
        &Time(jiff::Timestamp::now()),
    )
    .is_some_and(|r| r.decision == "approve" && r.payload_digest.as_deref() == Some(digest.as_str()))
}

/// Whether an enforced PolicyBundle requires every project's plan to be approved.
pub fn plan_approval_required_by(bundles: &[Arc<PolicyBundle>]) -> Option<String> {
    bundles
        .iter()
        .find(|b| {
            b.spec.enforcement == somastack_crds::policy::Enforcement::Enforce
                && b.spec.projects.as_ref().is_some_and(|p| p.require_approval)
        })
        .map(|b| b.name_any())
}

/// The review recorded on the project for `digest`: `Some(Ok(reviewer))`
/// when approved, `Some(Err(reason))` when rejected, `None` otherwise (no
/// review, or one of another plan).
pub fn plan_review(p: &KamachiqProject, digest: &str) -> Option<std::result::Result<String, String>> {
    let a = p.annotations();
    if a.get(DIGEST_ANNOTATION).map(|d| d.trim()) != Some(digest) {
        return None;
    }
    let reviewer = a
        .get(REVIEWER_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "an unknown reviewer".into());
    match a.get(DECISION_ANNOTATION).map(|d| d.trim()) {
        Some("approve") => Some(Ok(reviewer)),
        Some("reject") => Some(Err(format!(
            "{reviewer} rejected the plan{}",
            a.get(REASON_ANNOTATION)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
        _ => None,
    }
}
