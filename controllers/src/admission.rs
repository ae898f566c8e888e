//! Admission decisions (pure). The operator's webhook server feeds them the
//! request, its caches and, for Capsule reviews, the answer of a
//! SubjectAccessReview; they make no API call themselves.
//!
//! The CRD schemas and CEL rules are the first line of validation; these
//! cover only what needs other objects (PolicyBundles, Capsules) or the
//! requesting user's identity.

use std::collections::BTreeMap;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::ResourceExt;
use somastack_crds::drill::{DISRUPT_VERB, REQUESTER_ANNOTATION, RUN_ANNOTATION};
use somastack_crds::installation::MAX_CONFIG_BYTES;
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

use crate::domain::capsules::{self, CapsuleUse, may_install};
use crate::domain::regions::active_region;
use crate::domain::review::{DECISION_ANNOTATION, DIGEST_ANNOTATION, REASON_ANNOTATION, REVIEWER_ANNOTATION};

/// Annotation naming the user who created a Capsule, stamped at admission.
pub const SUBMITTER_ANNOTATION: &str = "review.somastack.io/submitted-by";

/// The RBAC verb a reviewer needs on `capsules.somastack.io`.
pub const APPROVE_VERB: &str = "approve";

/// What a webhook answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// `Some(message)` denies the request with that message.
    pub denied: Option<String>,
    /// Shown by kubectl as `Warning: ...` on an admitted request.
    pub warnings: Vec<String>,
    /// JSON patch to apply to the admitted object (mutating webhooks only).
    pub patch: Option<Patch>,
}

impl Answer {
    fn deny(message: String) -> Self {
        Answer {
            denied: Some(message),
            ..Answer::default()
        }
    }
}

/// Whether an Installation update changes anything policy judges: its spec
/// or the region it is told to run in. Metadata-only and status writes (the
/// operator's own among them) are never refused for a policy that tightened
/// after the Installation was admitted; the controller reports those.
pub fn installation_needs_check(new: &Installation, old: Option<&Installation>) -> bool {
    match old {
        None => true,
        Some(old) => old.spec != new.spec || active_region(old) != active_region(new),
    }
}

/// Judges an Installation create or update against the Capsule it names and
/// the PolicyBundles governing its namespace (`bundles`, already selected).
///
/// Enforced violations deny, naming rule and bundle; Audit findings, an
/// engaged kill switch and a Capsule not yet published admit with warnings.
pub fn installation(
    new: &Installation,
    old: Option<&Installation>,
    capsules: &[Arc<Capsule>],
    bundles: &[Arc<PolicyBundle>],
) -> Answer {
    if !installation_needs_check(new, old) {
        return Answer::default();
    }
    let config_bytes: usize = new.spec.config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if config_bytes > MAX_CONFIG_BYTES {
        return Answer::deny(format!(
            "Installation {}: spec.config holds {} KiB; at most {} KiB fit the ConfigMap it becomes",
            new.name_any(),
            config_bytes.div_ceil(1024),
            MAX_CONFIG_BYTES / 1024
        ));
    }
    let region = active_region(new);
    match may_install(
        new,
        &capsules::resolve(capsules, &new.spec.capsule),
        bundles,
        &region,
    ) {
        CapsuleUse::CapsuleNotFound => Answer {
            warnings: vec![format!(
                "Capsule {} version {} is not published yet; the Installation waits for it",
                new.spec.capsule.package, new.spec.capsule.version
            )],
            ..Answer::default()
        },
        CapsuleUse::CapsuleUnusable(why) => Answer {
            warnings: vec![format!("{why}; the Installation will not run until that changes")],
            ..Answer::default()
        },
        CapsuleUse::Blocked(eval) => {
            let problems: Vec<&str> = eval.blocking.iter().map(|v| v.message.as_str()).collect();
            Answer::deny(format!(
                "Installation {} violates enforced policy: {}",
                new.name_any(),
                problems.join("; ")
            ))
        }
        CapsuleUse::Allowed(eval) => {
            let mut warnings: Vec<String> = eval
                .warnings
                .iter()
                .map(|v| format!("audit: {}", v.message))
                .collect();
            warnings.extend(eval.kill_switch.iter().map(|(bundle, reason)| {
                format!("kill switch engaged by PolicyBundle {bundle} ({reason}): the Installation is kept at zero replicas")
            }));
            Answer {
                warnings,
                ..Answer::default()
            }
        }
    }
}

/// A second Capsule of a package version that is already published: its
/// refusal. A version is published once (by one publisher), so a Capsule
/// can never shadow another's image ([`crate::domain::capsules::resolve`]).
/// `existing` is every Capsule; only a create or a change of package or
/// version is judged.
pub fn capsule_duplicate(new: &Capsule, old: Option<&Capsule>, existing: &[Arc<Capsule>]) -> Option<String> {
    if old.is_some_and(|o| o.spec.package == new.spec.package && o.spec.version == new.spec.version) {
        return None;
    }
    let other = existing.iter().find(|c| {
        c.spec.package == new.spec.package
            && c.spec.version == new.spec.version
            && c.name_any() != new.name_any()
    })?;
    Some(format!(
        "{} {} is already published as Capsule {} by publisher {}; a package version is published once: publish a new version instead",
        new.spec.package,
        new.spec.version,
        other.name_any(),
        other.spec.publisher
    ))
}

/// Why a DrDrill create or update needs the verb `disrupt` from the user
/// making it (empty: it does not): its spec is new or changed and goes
/// beyond the tenant bounds ([`crate::domain::drills::beyond_tenant_bounds`]).
pub fn drill_needs_authority(new: &DrDrill, old: Option<&DrDrill>, now: jiff::Timestamp) -> Vec<String> {
    if !asks_for_drill(new, old) {
        return Vec::new();
    }
    crate::domain::drills::beyond_tenant_bounds(&new.spec, now)
}

/// Whether a DrDrill write asks for the drill: a create, a changed spec, or
/// a new on-demand run request ([`RUN_ANNOTATION`]), which runs the drill
/// under the authority of whoever made it.
fn asks_for_drill(new: &DrDrill, old: Option<&DrDrill>) -> bool {
    old.is_none_or(|o| {
        o.spec != new.spec || o.annotations().get(RUN_ANNOTATION) != new.annotations().get(RUN_ANNOTATION)
    })
}

/// Judges a DrDrill create or update by `requester`: beyond the tenant
/// bounds, `may_disrupt` (the SubjectAccessReview's answer for the verb
/// `disrupt`) must be `Some(true)`.
pub fn drill(
    new: &DrDrill,
    old: Option<&DrDrill>,
    requester: &crate::access::Requester,
    may_disrupt: Option<bool>,
    now: jiff::Timestamp,
) -> Answer {
    // A schedule the CRD's rule let through (it checks the shape only) but
    // that cannot run is refused when written, not found by the controller.
    if let Some(schedule) = &new.spec.schedule
        && old.is_none_or(|o| o.spec.schedule.as_ref() != Some(schedule))
        && let Some(why) = crate::domain::drills::schedule_problem(schedule, now)
    {
        return Answer::deny(format!("DrDrill {}: {why}", new.name_any()));
    }
    let reasons = drill_needs_authority(new, old, now);
    if reasons.is_empty() || may_disrupt == Some(true) {
        return Answer::default();
    }
    Answer::deny(format!(
        "user {} may not run DrDrill {} as written: {}; that needs the RBAC verb '{DISRUPT_VERB}' on drdrills.somastack.io in namespace {} (a platform admin grants it; within the tenant bounds, scope Installation, timeoutSeconds up to {}, at most hourly, no extra right is needed)",
        requester.user,
        new.name_any(),
        reasons.join("; "),
        new.namespace().unwrap_or_default(),
        somastack_crds::drill::TENANT_MAX_TIMEOUT_SECONDS,
    ))
}

/// Stamps who asked for a drill: the requester whenever the spec is created
/// or changed or a run is requested, the earlier one otherwise, so the client cannot set it. The
/// controller acts within that user's authority.
pub fn drill_requester(new: &DrDrill, old: Option<&DrDrill>, requester: &crate::access::Requester) -> Answer {
    let stamp = if asks_for_drill(new, old) {
        Some(requester.annotation())
    } else {
        old.and_then(|o| o.annotations().get(REQUESTER_ANNOTATION).cloned())
    };
    annotations_patch(new, &[(REQUESTER_ANNOTATION, stamp)])
}

/// Judges a PolicyBundle create or update: refuses keys the operator cannot
/// verify with, selectors that select nothing as written, and ceilings that
/// are not sane quantities ([`crate::domain::bundle_checks`]).
pub fn bundle(new: &PolicyBundle, old: Option<&PolicyBundle>) -> Answer {
    if old.is_some_and(|o| o.spec == new.spec) {
        return Answer::default();
    }
    let problems = crate::domain::bundle_checks::check(&new.spec);
    if problems.is_empty() {
        return Answer::default();
    }
    Answer::deny(format!(
        "PolicyBundle {} cannot be used: {}",
        new.name_any(),
        problems.all().join("; ")
    ))
}

/// Judges a KamachiqProject create or update against the PolicyBundles
/// governing its namespace (`bundles`): a planner URL must be one they
/// allow (the operator calls no address a tenant picks on its own), and an
/// inline plan must fit the ConfigMap it is stored in.
pub fn project(
    new: &KamachiqProject,
    old: Option<&KamachiqProject>,
    bundles: &[Arc<PolicyBundle>],
) -> Answer {
    if old.is_some_and(|o| o.spec == new.spec) {
        return Answer::default();
    }
    let bytes = crate::domain::plans::plan_bytes(&new.spec.tasks);
    if !new.spec.tasks.is_empty() && bytes > somastack_crds::kamachiq::MAX_PLAN_BYTES {
        return Answer::deny(format!(
            "KamachiqProject {}: spec.tasks is {} KiB as stored; at most {} KiB fit the plan ConfigMap: split the project or shorten the inputs",
            new.name_any(),
            bytes.div_ceil(1024),
            somastack_crds::kamachiq::MAX_PLAN_BYTES / 1024
        ));
    }
    // Listed tasks are the plan: what the schema's rules cannot see (a
    // cycle, more tasks than the default budget) is refused here, before
    // the project is stored, rather than found by the controller.
    if !new.spec.tasks.is_empty() {
        let max_tasks = new
            .spec
            .budget
            .as_ref()
            .and_then(|b| b.max_tasks)
            .unwrap_or(somastack_crds::kamachiq::DEFAULT_MAX_TASKS);
        if let Err(problems) = crate::kinds::project::plan::validate(&new.spec.tasks, max_tasks) {
            return Answer::deny(format!(
                "KamachiqProject {}: spec.tasks is not a plan that can run: {}",
                new.name_any(),
                problems.join("; ")
            ));
        }
    }
    // A planner naming both a URL and a capsule is the schema's to refuse.
    let Some(url) = new
        .spec
        .planner
        .as_ref()
        .filter(|p| p.capsule.is_none())
        .and_then(|p| p.url.as_deref())
    else {
        return Answer::default();
    };
    if !new.spec.tasks.is_empty() {
        // Listed tasks are the plan: the planner is never called.
        return Answer::default();
    }
    let names: Vec<String> = bundles.iter().map(|b| b.name_any()).collect();
    match crate::domain::policy::planner_url_allowed(&crate::domain::policy::views(bundles, &names), url) {
        Ok(warnings) => Answer {
            warnings,
            ..Answer::default()
        },
        Err(why) => Answer::deny(format!("KamachiqProject {}: {why}", new.name_any())),
    }
}

/// A patch setting (or, for `None`, removing) the given annotations,
/// leaving the others as the client sent them; no patch when nothing
/// changes.
fn annotations_patch<K: ResourceExt>(obj: &K, set: &[(&str, Option<String>)]) -> Answer {
    let mut desired: BTreeMap<String, String> = obj.annotations().clone();
    for (key, value) in set {
        match value {
            Some(v) => desired.insert(key.to_string(), v.clone()),
            None => desired.remove(*key),
        };
    }
    if &desired == obj.annotations() {
        return Answer::default();
    }
    // One operation replacing the whole map: `add` on an existing member
    // replaces it, and it needs no escaping of the `/` in annotation keys.
    let op = PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["metadata", "annotations"]),
        value: serde_json::to_value(&desired).unwrap_or_default(),
    });
    Answer {
        patch: Some(Patch(vec![op])),
        ..Answer::default()
    }
}

/// The review as the annotations state it: decision, reason, digest.
fn plan_review(a: &BTreeMap<String, String>) -> [Option<&String>; 3] {
    [
        a.get(DECISION_ANNOTATION),
        a.get(REASON_ANNOTATION),
        a.get(DIGEST_ANNOTATION),
    ]
}

/// Whether a create or update of a reviewed object (Capsule,
/// KamachiqProject) sets or changes its review decision (decision, reason or
/// reviewed digest): only then is the user's right to review checked.
pub fn review_changed<K: ResourceExt>(new: &K, old: Option<&K>) -> bool {
    match old {
        None => plan_review(new.annotations()).iter().any(Option::is_some),
        Some(old) => plan_review(new.annotations()) != plan_review(old.annotations()),
    }
}

/// Judges a create or update of a reviewed object (a Capsule, whose review
/// decides whether it may be installed; a KamachiqProject, whose review
/// approves its plan) made by `user`.
///
/// `may_review` is the SubjectAccessReview's answer for the verb `approve`
/// on this object; it is only consulted when [`review_changed`]. The
/// submitter is stamped at create and kept on every update; the reviewer is
/// stamped from the authenticated user when the review changes and kept
/// otherwise, so neither can be set by the client. A submitter may not
/// review their own object.
pub fn review<K>(new: &K, old: Option<&K>, user: &str, may_review: Option<bool>) -> Answer
where
    K: kube::Resource<DynamicType = ()> + ResourceExt,
{
    let kind = K::kind(&());
    let plural = K::plural(&());
    let old_annotations = old.map(|o| o.annotations());
    let submitter = match old_annotations {
        None => Some(user.to_string()),
        Some(a) => a.get(SUBMITTER_ANNOTATION).cloned(),
    };
    let reviewer = if review_changed(new, old) {
        if let Some(decision) = new.annotations().get(DECISION_ANNOTATION)
            && !matches!(decision.trim(), "approve" | "reject")
        {
            return Answer::deny(format!(
                "{DECISION_ANNOTATION} is {decision:?}; use approve or reject"
            ));
        }
        if may_review != Some(true) {
            return Answer::deny(format!(
                "user {user} may not review {kind}s: setting {DECISION_ANNOTATION} needs the RBAC verb \
                 '{APPROVE_VERB}' on {plural}.somastack.io"
            ));
        }
        if submitter.as_deref() == Some(user) {
            return Answer::deny(format!(
                "user {user} submitted {kind} {} and may not review it; another reviewer must",
                new.name_any()
            ));
        }
        new.annotations()
            .get(DECISION_ANNOTATION)
            .map(|_| user.to_string())
    } else {
        old_annotations.and_then(|a| a.get(REVIEWER_ANNOTATION).cloned())
    };

    annotations_patch(
        new,
        &[(SUBMITTER_ANNOTATION, submitter), (REVIEWER_ANNOTATION, reviewer)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::capsule_spec;
    use somastack_crds::common::DataClassification;

    fn capsule_with(annotations: &[(&str, &str)]) -> Capsule {
        let mut c = Capsule::new("summarizer-1-4-2", capsule_spec(DataClassification::Internal));
        c.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    fn patched(c: &Capsule, v: &Answer) -> BTreeMap<String, String> {
        let mut doc = serde_json::to_value(c).unwrap();
        if let Some(p) = &v.patch {
            json_patch::patch(&mut doc, p).unwrap();
        }
        serde_json::from_value(doc["metadata"]["annotations"].clone()).unwrap_or_default()
    }

    #[test]
    fn create_stamps_the_submitter_over_what_the_client_sent() {
        let new = capsule_with(&[
            (SUBMITTER_ANNOTATION, "someone-else"),
            (REVIEWER_ANNOTATION, "me"),
        ]);
        let v = review(&new, None, "alice", None);
        assert_eq!(v.denied, None);
        let a = patched(&new, &v);
        assert_eq!(a.get(SUBMITTER_ANNOTATION).map(String::as_str), Some("alice"));
        assert_eq!(a.get(REVIEWER_ANNOTATION), None, "a reviewer cannot be claimed");
    }

    #[test]
    fn creating_an_approved_capsule_is_self_approval() {
        let new = capsule_with(&[(DECISION_ANNOTATION, "approve")]);
        let v = review(&new, None, "alice", Some(true));
        assert!(
            v.denied
                .unwrap()
                .contains("alice submitted Capsule summarizer-1-4-2")
        );
    }

    #[test]
    fn review_needs_the_approve_verb() {
        let old = capsule_with(&[(SUBMITTER_ANNOTATION, "alice")]);
        let new = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (DECISION_ANNOTATION, "approve")]);
        assert!(review_changed(&new, Some(&old)));
        let v = review(&new, Some(&old), "bob", Some(false));
        let msg = v.denied.unwrap();
        assert!(msg.contains("user bob may not review Capsules"), "{msg}");
        assert!(msg.contains("'approve' on capsules.somastack.io"), "{msg}");
    }

    #[test]
    fn an_authorized_reviewer_is_stamped() {
        let old = capsule_with(&[(SUBMITTER_ANNOTATION, "alice")]);
        let new = capsule_with(&[
            (SUBMITTER_ANNOTATION, "alice"),
            (DECISION_ANNOTATION, "approve"),
            (REVIEWER_ANNOTATION, "the-ceo"),
        ]);
        let v = review(&new, Some(&old), "bob", Some(true));
        assert_eq!(v.denied, None);
        let a = patched(&new, &v);
        assert_eq!(a.get(REVIEWER_ANNOTATION).map(String::as_str), Some("bob"));
        assert_eq!(a.get(SUBMITTER_ANNOTATION).map(String::as_str), Some("alice"));
    }

    #[test]
    fn the_submitter_cannot_review_even_with_the_verb() {
        let old = capsule_with(&[(SUBMITTER_ANNOTATION, "alice")]);
        let new = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (DECISION_ANNOTATION, "approve")]);
        let v = review(&new, Some(&old), "alice", Some(true));
        assert!(v.denied.unwrap().contains("may not review it"));
    }

    #[test]
    fn unrelated_updates_keep_stamps_and_need_no_permission() {
        let old = capsule_with(&[
            (SUBMITTER_ANNOTATION, "alice"),
            (DECISION_ANNOTATION, "approve"),
            (REVIEWER_ANNOTATION, "bob"),
        ]);
        // The publisher tries to take over the submitter and reviewer stamps.
        let new = capsule_with(&[
            (SUBMITTER_ANNOTATION, "mallory"),
            (DECISION_ANNOTATION, "approve"),
            (REVIEWER_ANNOTATION, "mallory"),
            ("team", "agents"),
        ]);
        assert!(!review_changed(&new, Some(&old)));
        let v = review(&new, Some(&old), "mallory", None);
        assert_eq!(v.denied, None);
        let a = patched(&new, &v);
        assert_eq!(a.get(SUBMITTER_ANNOTATION).map(String::as_str), Some("alice"));
        assert_eq!(a.get(REVIEWER_ANNOTATION).map(String::as_str), Some("bob"));
        assert_eq!(a.get("team").map(String::as_str), Some("agents"));
        // Nothing to correct: no patch.
        let same = review(&old, Some(&old), "operator", None);
        assert_eq!(same, Answer::default());
    }

    #[test]
    fn withdrawing_a_review_is_a_review_and_clears_the_reviewer() {
        let old = capsule_with(&[
            (SUBMITTER_ANNOTATION, "alice"),
            (DECISION_ANNOTATION, "approve"),
            (REVIEWER_ANNOTATION, "bob"),
        ]);
        let new = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (REVIEWER_ANNOTATION, "bob")]);
        assert!(review_changed(&new, Some(&old)));
        assert!(review(&new, Some(&old), "alice", Some(false)).denied.is_some());
        let v = review(&new, Some(&old), "carol", Some(true));
        assert_eq!(patched(&new, &v).get(REVIEWER_ANNOTATION), None);
    }

    #[test]
    fn a_second_capsule_of_a_published_version_is_refused() {
        let first = Arc::new(capsule_with(&[]));
        let mut second = capsule_with(&[]);
        second.metadata.name = Some("impostor".into());
        second.spec.publisher = "mallory".into();
        let why = capsule_duplicate(&second, None, std::slice::from_ref(&first)).unwrap_or_default();
        assert!(
            why.contains("is already published as Capsule summarizer-1-4-2 by publisher"),
            "{why}"
        );
        // The Capsule itself, updated without a new version, is fine.
        assert_eq!(
            capsule_duplicate(&first, Some(&first), std::slice::from_ref(&first)),
            None
        );
        // A change of version onto a published one is refused too.
        let mut moved = second.clone();
        moved.spec.version = "9.9.9".into();
        assert!(capsule_duplicate(&second, Some(&moved), std::slice::from_ref(&first)).is_some());
    }

    fn drill_spec(scope: somastack_crds::drill::Scope) -> somastack_crds::drill::DrDrillSpec {
        serde_json::from_value(serde_json::json!({
            "installationRef": { "name": "app" }, "scenario": "RegionOutage",
            "scope": scope, "objectives": { "rtoSeconds": 60 },
        }))
        .unwrap()
    }

    #[test]
    fn drills_beyond_the_tenant_bounds_need_the_verb_and_the_requester_is_stamped() {
        use crate::access::Requester;
        use somastack_crds::drill::Scope;
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let alice = Requester {
            user: "alice".into(),
            groups: vec!["tenants".into()],
        };
        let mut region = DrDrill::new("region", drill_spec(Scope::Region));
        region.metadata.namespace = Some("t1".into());
        let denied = drill(&region, None, &alice, Some(false), now).denied.unwrap();
        assert!(
            denied.starts_with("user alice may not run DrDrill region as written: scope: Region"),
            "{denied}"
        );
        assert!(
            denied.contains("'disrupt' on drdrills.somastack.io in namespace t1"),
            "{denied}"
        );
        assert_eq!(drill(&region, None, &alice, Some(true), now), Answer::default());
        // A metadata-only update of such a drill needs no right.
        assert_eq!(
            drill(&region, Some(&region), &alice, None, now),
            Answer::default()
        );
        let within = DrDrill::new("own", drill_spec(Scope::Installation));
        assert_eq!(drill(&within, None, &alice, None, now), Answer::default());

        // The requester: stamped on create and spec change, kept otherwise.
        let stamped = |v: &Answer, d: &DrDrill| {
            let mut doc = serde_json::to_value(d).unwrap();
            if let Some(p) = &v.patch {
                json_patch::patch(&mut doc, p).unwrap();
            }
            doc["metadata"]["annotations"][REQUESTER_ANNOTATION]
                .as_str()
                .map(str::to_string)
        };
        let created = drill_requester(&within, None, &alice);
        assert_eq!(stamped(&created, &within), Some(alice.annotation()));
        let mut old = within.clone();
        old.metadata.annotations = Some([(REQUESTER_ANNOTATION.to_string(), alice.annotation())].into());
        let mut forged = old.clone();
        let admin = Requester {
            user: "kubernetes-admin".into(),
            groups: vec!["system:masters".into()],
        };
        forged.metadata.annotations = Some([(REQUESTER_ANNOTATION.to_string(), admin.annotation())].into());
        let mallory = Requester {
            user: "mallory".into(),
            groups: vec![],
        };
        let kept = drill_requester(&forged, Some(&old), &mallory);
        assert_eq!(stamped(&kept, &forged), Some(alice.annotation()));
        let mut changed = forged.clone();
        changed.spec.timeout_seconds = 60;
        let restamped = drill_requester(&changed, Some(&old), &mallory);
        assert_eq!(stamped(&restamped, &changed), Some(mallory.annotation()));

        // Asking for a run on demand is asking for the drill: the requester
        // is stamped, and beyond the bounds the verb is needed.
        let mut asked = old.clone();
        asked
            .annotations_mut()
            .insert(RUN_ANNOTATION.into(), "2026-11-26T17:00:00Z".into());
        let restamped = drill_requester(&asked, Some(&old), &mallory);
        assert_eq!(stamped(&restamped, &asked), Some(mallory.annotation()));
        let mut region_asked = region.clone();
        region_asked
            .annotations_mut()
            .insert(RUN_ANNOTATION.into(), "2026-11-26T17:00:00Z".into());
        let denied = drill(&region_asked, Some(&region), &mallory, Some(false), now);
        assert!(
            denied
                .denied
                .is_some_and(|d| d.starts_with("user mallory may not run DrDrill region"))
        );
        assert_eq!(
            drill(&region_asked, Some(&region), &mallory, Some(true), now),
            Answer::default()
        );
    }

    #[test]
    fn bundles_and_projects_are_judged_on_what_they_say() {
        use somastack_crds::policy::{PolicyBundleSpec, ProjectRules};
        let spec = PolicyBundleSpec {
            namespace_selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("team".to_string(), "a b".to_string())].into()),
                match_expressions: None,
            }),
            ..Default::default()
        };
        let bad = PolicyBundle::new("bad", spec);
        assert!(
            bundle(&bad, None)
                .denied
                .unwrap()
                .starts_with("PolicyBundle bad cannot be used: namespaceSelector")
        );
        // Unchanged specs are not judged again (status writes, labels).
        assert_eq!(bundle(&bad, Some(&bad)), Answer::default());

        let project: KamachiqProject = serde_json::from_value(serde_json::json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
            "metadata": { "name": "p", "namespace": "t1" },
            "spec": { "goal": "g", "planner": { "url": "http://10.0.0.1/plan",
                      "agent": { "package": "a", "version": "1.0.0" } } },
        }))
        .unwrap();
        let refused = super::project(&project, None, &[]).denied.unwrap();
        assert!(
            refused.contains("no PolicyBundle governing this namespace lists planner URLs"),
            "{refused}"
        );
        let allowing = Arc::new(PolicyBundle::new(
            "planners",
            PolicyBundleSpec {
                projects: Some(ProjectRules {
                    require_approval: false,
                    allowed_planner_urls: vec!["http://10.0.0.1/".into()],
                    ..ProjectRules::default()
                }),
                ..Default::default()
            },
        ));
        assert_eq!(super::project(&project, None, &[allowing]), Answer::default());
    }

    #[test]
    fn a_review_decision_other_than_approve_or_reject_is_refused_when_written() {
        let old = capsule_with(&[(SUBMITTER_ANNOTATION, "alice")]);
        for decision in ["maybe", "APPROVE", "approved", ""] {
            let new = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (DECISION_ANNOTATION, decision)]);
            let msg = review(&new, Some(&old), "bob", Some(true)).denied.unwrap();
            assert_eq!(
                msg,
                format!("{DECISION_ANNOTATION} is {decision:?}; use approve or reject")
            );
        }
        // Padding is forgiven, as the controller trims it.
        let new = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (DECISION_ANNOTATION, " reject ")]);
        assert_eq!(review(&new, Some(&old), "bob", Some(true)).denied, None);
        // An old object holding one is not refused for an unrelated change.
        let legacy = capsule_with(&[(SUBMITTER_ANNOTATION, "alice"), (DECISION_ANNOTATION, "maybe")]);
        assert_eq!(review(&legacy, Some(&legacy), "carol", None).denied, None);
    }

    #[test]
    fn drill_schedules_that_cannot_run_are_refused_when_written() {
        use crate::access::Requester;
        use somastack_crds::drill::Scope;
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let alice = Requester {
            user: "alice".into(),
            groups: vec![],
        };
        let mut spec = drill_spec(Scope::Installation);
        spec.schedule = Some("99 99 99 99 99".into());
        let bad = DrDrill::new("bad", spec);
        let msg = drill(&bad, None, &alice, Some(true), now).denied.unwrap();
        assert!(
            msg.starts_with("DrDrill bad: spec.schedule \"99 99 99 99 99\" is not a schedule: "),
            "{msg}"
        );
        let mut never = bad.clone();
        never.spec.schedule = Some("0 0 31 2 *".into());
        let msg = drill(&never, None, &alice, Some(true), now).denied.unwrap();
        assert!(msg.contains("never runs"), "{msg}");
        // Written before the check existed: other changes still go through.
        let mut later = bad.clone();
        later.spec.suspend = true;
        assert_eq!(
            drill(&later, Some(&bad), &alice, Some(true), now),
            Answer::default()
        );
    }

    #[test]
    fn listed_tasks_that_cannot_run_are_refused_when_written() {
        let project = |tasks: serde_json::Value, budget: serde_json::Value| -> KamachiqProject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                "metadata": { "name": "p", "namespace": "t1" },
                "spec": { "goal": "g", "tasks": tasks, "budget": budget },
            }))
            .unwrap()
        };
        let task = |name: &str, deps: &[&str]| serde_json::json!({ "name": name, "capsule": { "package": "a", "version": "1.0.0" }, "dependsOn": deps });
        let cycle = project(
            serde_json::json!([
                task("a", &["c"]),
                task("b", &["a"]),
                task("c", &["b"]),
                task("d", &[])
            ]),
            serde_json::json!({}),
        );
        assert_eq!(
            super::project(&cycle, None, &[]).denied.unwrap(),
            "KamachiqProject p: spec.tasks is not a plan that can run: the tasks form a cycle: a -> b -> c -> a"
        );
        let many: Vec<_> = (0..101).map(|i| task(&format!("t{i}"), &[])).collect();
        let over = project(serde_json::json!(many), serde_json::json!({}));
        assert!(
            super::project(&over, None, &[])
                .denied
                .unwrap()
                .contains("the plan has 101 tasks; budget.maxTasks allows at most 100")
        );
        let allowed = project(serde_json::json!(many), serde_json::json!({ "maxTasks": 101 }));
        assert_eq!(super::project(&allowed, None, &[]), Answer::default());
    }
}
