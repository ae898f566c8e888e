//! Admission requests (operator/src/webhook, controllers/src/admission.rs):
//! the bytes are the body the API server POSTs to a webhook.
//!
//! The body is read for each kind as the operator's webhook reads it
//! (`parse` in operator/src/webhook/mod.rs: an AdmissionReview, then its
//! request), and each create or update is judged by the pure admission
//! functions the webhook calls, against the example Capsule and
//! PolicyBundle. Never a panic; a denial says why; a patch applies to the
//! object as sent and stamps the authenticated user, whatever the client
//! wrote: submitter and reviewer of a Capsule or project, requester of a
//! drill; a user who submitted an object never approves it.

#![no_main]

use std::collections::BTreeMap;

use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::{Resource, ResourceExt};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use somastack_controllers::access::Requester;
use somastack_controllers::admission::{self, Answer, SUBMITTER_ANNOTATION};
use somastack_controllers::bundle_writes;
use somastack_controllers::domain::drills::schedule_problem;
use somastack_controllers::domain::review::{DECISION_ANNOTATION, REVIEWER_ANNOTATION};
use somastack_crds::drill::REQUESTER_ANNOTATION;
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};
use somastack_fuzz::{BUNDLE, CAPSULE};

fuzz_target!(|data: &[u8]| {
    if let Some(req) = parse::<Installation>(data)
        && let Some((new, old)) = written(&req)
    {
        let capsules = [CAPSULE.clone()];
        let bundles = [BUNDLE.clone()];
        denial(&admission::installation(new, old, &capsules, &bundles));
    }
    if let Some(req) = parse::<Capsule>(data)
        && let Some((new, old)) = written(&req)
    {
        if let Some(why) = admission::capsule_duplicate(new, old, std::slice::from_ref(&*CAPSULE)) {
            assert!(!why.is_empty());
        }
        reviews(&req, new, old);
    }
    if let Some(req) = parse::<KamachiqProject>(data)
        && let Some((new, old)) = written(&req)
    {
        denial(&admission::project(new, old, std::slice::from_ref(&*BUNDLE)));
        reviews(&req, new, old);
    }
    if let Some(req) = parse::<DrDrill>(data)
        && let Some((new, old)) = written(&req)
    {
        drills(&req, new, old);
    }
    if let Some(req) = parse::<PolicyBundle>(data)
        && let Some((new, old)) = written(&req)
    {
        denial(&admission::bundle(new, old));
        let digest = bundle_writes::digest(&new.spec);
        assert_eq!(digest, bundle_writes::digest(&new.spec.clone()));
    }
});

/// The request in `body`, read as the webhook reads it; `None` where the
/// webhook answers with an error instead.
fn parse<K>(body: &[u8]) -> Option<AdmissionRequest<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let review = serde_json::from_slice::<AdmissionReview<K>>(body).ok()?;
    review.try_into().ok()
}

/// The object a create or update writes, and the one it replaces.
fn written<K: Resource>(req: &AdmissionRequest<K>) -> Option<(&K, Option<&K>)> {
    match (&req.operation, req.object.as_ref()) {
        (Operation::Create | Operation::Update, Some(new)) => Some((new, req.old_object.as_ref())),
        _ => None,
    }
}

fn denial(answer: &Answer) {
    if let Some(why) = &answer.denied {
        assert!(!why.is_empty(), "denied without a reason");
        assert!(answer.patch.is_none(), "denied, with a patch");
    }
}

/// `obj` as the API server stores it once `answer`'s patch is applied: the
/// annotations.
fn patched<K: Serialize + DeserializeOwned + ResourceExt>(
    obj: &K,
    answer: &Answer,
) -> BTreeMap<String, String> {
    let Some(patch) = &answer.patch else {
        return obj.annotations().clone();
    };
    let Ok(mut doc) = serde_json::to_value(obj) else {
        panic!("an object that was read cannot be written back")
    };
    if let Err(e) = json_patch::patch(&mut doc, patch) {
        panic!("the webhook's patch {patch:?} does not apply: {e}");
    }
    match serde_json::from_value::<K>(doc) {
        Ok(k) => k.annotations().clone(),
        Err(e) => panic!("the patched object is no longer one: {e}"),
    }
}

/// Capsule and project reviews: the webhook stamps submitter and reviewer.
fn reviews<K>(req: &AdmissionRequest<K>, new: &K, old: Option<&K>)
where
    K: Resource<DynamicType = ()> + ResourceExt + Serialize + DeserializeOwned + Clone,
{
    let user = req.user_info.username.clone().unwrap_or_default();
    let changed = admission::review_changed(new, old);
    for may_review in [Some(true), Some(false)] {
        let may_review = if changed { may_review } else { None };
        let answer = admission::review(new, old, &user, may_review);
        denial(&answer);
        if answer.denied.is_some() {
            assert!(changed, "denied a write that changes no review: {answer:?}");
            continue;
        }
        let after = patched(new, &answer);
        let submitter = after.get(SUBMITTER_ANNOTATION);
        match old {
            None => assert_eq!(submitter, Some(&user), "a create not stamped with its user"),
            Some(o) => assert_eq!(
                submitter,
                o.annotations().get(SUBMITTER_ANNOTATION),
                "the submitter changed on an update"
            ),
        }
        let reviewer = after.get(REVIEWER_ANNOTATION);
        if changed {
            assert_eq!(may_review, Some(true), "a review admitted without the verb");
            assert_ne!(submitter, Some(&user), "{user:?} reviewed what they submitted");
            let decided = new.annotations().contains_key(DECISION_ANNOTATION);
            assert_eq!(reviewer, decided.then_some(&user), "the reviewer is not the user");
        } else {
            assert_eq!(
                reviewer,
                old.and_then(|o| o.annotations().get(REVIEWER_ANNOTATION)),
                "a reviewer claimed without a review"
            );
        }
    }
}

/// DrDrills: the requester is stamped from the user; authority judged.
fn drills(req: &AdmissionRequest<DrDrill>, new: &DrDrill, old: Option<&DrDrill>) {
    let requester = Requester {
        user: req.user_info.username.clone().unwrap_or_default(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
    };
    let answer = admission::drill_requester(new, old, &requester);
    assert!(answer.denied.is_none(), "the requester stamp denied: {answer:?}");
    let after = patched(new, &answer);
    let stamped = Requester::parse(after.get(REQUESTER_ANNOTATION));
    let asks = old.is_none_or(|o| {
        o.spec != new.spec
            || o.annotations().get(somastack_crds::drill::RUN_ANNOTATION)
                != new.annotations().get(somastack_crds::drill::RUN_ANNOTATION)
    });
    if asks && !requester.user.is_empty() {
        assert_eq!(
            stamped.as_ref(),
            Some(&requester),
            "the drill's requester is not the user"
        );
    }

    let now = jiff::Timestamp::constant(1_795_734_000, 0);
    let reasons = admission::drill_needs_authority(new, old, now);
    assert!(reasons.iter().all(|r| !r.is_empty()));
    // A new schedule that cannot run is refused whoever writes it.
    let unusable = new.spec.schedule.as_ref().filter(|s| {
        old.is_none_or(|o| o.spec.schedule.as_ref() != Some(*s)) && schedule_problem(s, now).is_some()
    });
    let allowed = admission::drill(new, old, &requester, Some(true), now);
    assert_eq!(
        allowed.denied.is_some(),
        unusable.is_some(),
        "{unusable:?} vs {allowed:?}"
    );
    let without = admission::drill(new, old, &requester, Some(false), now);
    assert_eq!(
        without.denied.is_some(),
        unusable.is_some() || !reasons.is_empty(),
        "{unusable:?}, {reasons:?} vs {without:?}"
    );
}
