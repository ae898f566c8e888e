//! `PolicyBundle` controller: what the bundle governs, and an audit of the
//! Installations already running against it (as Gatekeeper's audit does).
//!
//! Enforcement itself happens where Installations are reconciled (and at
//! admission); this controller reports.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use somastack_crds::policy::{
    Enforcement, MAX_LISTED_VIOLATIONS, PolicyBundleSpec, PolicyBundleStatus, Violation,
};
use somastack_crds::{Capsule, Installation, PolicyBundle};

use crate::Result;
use crate::conditions::{self, Desired, Health, Status};
use crate::domain::capsules::{self, requested_replicas};
use crate::domain::policy::{self, Bundle, Request};
use crate::domain::review::is_approved;
use crate::runtime::Context;
use crate::status::{self, HasConditions};
use crate::triggers;

/// The PolicyBundle controller: reconciled on changes to its own spec,
/// labels and annotations, and every bundle is re-audited when what the
/// audit reads of Installations (spec, active region), Capsules or
/// Namespaces (labels: a relabelled namespace changes what a bundle
/// governs) changes. An audit reads every Installation, so those triggers
/// are taken a [`triggers::WINDOW`] at a time: one audit per window, not
/// one per Installation of a burst.
pub fn controller(ctx: &Arc<Context>) -> Controller<PolicyBundle> {
    let events = &ctx.caches;
    let installations = events
        .installations
        .changes(|i| {
            let region = i.status.as_ref().and_then(|s| s.active_region.clone());
            (serde_json::to_string(&i.spec).unwrap_or_default(), region)
        })
        .map(|_| ());
    let capsules = events.capsules.changes(capsules::as_used).map(|_| ());
    let namespaces = events
        .namespaces
        .changes(|n| n.metadata.labels.clone())
        .map(|_| ());
    let any = futures::stream::select(installations, futures::stream::select(capsules, namespaces));
    ctx.controller(events.bundles.changes(triggers::intent), &events.bundles, |_| {
        true
    })
    .reconcile_all_on(triggers::coalesced(any, triggers::WINDOW))
}

/// What one bundle governs and which running Installations break it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub governed_namespaces: usize,
    /// Every violation, sorted (status lists the first [`MAX_LISTED_VIOLATIONS`]).
    pub violations: Vec<Violation>,
}

impl Audit {
    /// How many violations were found (as status counts them).
    pub fn count(&self) -> i32 {
        i32::try_from(self.violations.len()).unwrap_or(i32::MAX)
    }
}

/// Audits `bundle` against the given cluster state. Pure.
pub fn audit(
    bundle: &PolicyBundle,
    namespaces: &[Arc<Namespace>],
    installations: &[Arc<Installation>],
    capsules: &[Arc<Capsule>],
) -> Audit {
    let governed: Vec<String> = namespaces
        .iter()
        .filter(|ns| policy::governs(&bundle.spec, ns.labels()))
        .map(|ns| ns.name_any())
        .collect();
    let name = bundle.name_any();
    // Judge as if enforced: the audit shows what Enforce would block.
    let mut as_enforced = bundle.spec.clone();
    as_enforced.enforcement = Enforcement::Enforce;
    let bundles = [Bundle {
        name: &name,
        spec: &as_enforced,
    }];
    let mut violations = Vec::new();
    for inst in installations {
        let Some(namespace) = inst.namespace() else {
            continue;
        };
        if !governed.contains(&namespace) {
            continue;
        }
        let Some(capsule) = capsules::find(capsules, &inst.spec.capsule) else {
            continue;
        };
        let region = inst
            .status
            .as_ref()
            .and_then(|s| s.active_region.clone())
            .unwrap_or_else(|| inst.spec.region.clone());
        let req = Request {
            capsule: &capsule.spec,
            approved: is_approved(capsule),
            region: &region,
            replicas: requested_replicas(&inst.spec),
        };
        for v in policy::evaluate(&bundles, &req).blocking {
            violations.push(Violation {
                kind: "Installation".into(),
                namespace: namespace.clone(),
                name: inst.name_any(),
                rule: v.rule.as_str().into(),
                message: v.message,
            });
        }
    }
    violations.sort();
    Audit {
        governed_namespaces: governed.len(),
        violations,
    }
}

/// `Ready=False` for a bundle that cannot be used as written, if so (pure).
pub fn unusable(problems: &crate::domain::bundle_checks::Problems) -> Option<Desired> {
    let all = problems.all().join("; ");
    let (reason, message) = if !problems.selector.is_empty() {
        (
            "InvalidSelector",
            format!("the bundle governs no namespace: its selector is invalid: {all}"),
        )
    } else if !problems.keys.is_empty() {
        (
            "InvalidKey",
            format!("{all}; signatures by these keys are refused"),
        )
    } else if !problems.ceilings.is_empty() {
        (
            "InvalidCeiling",
            format!("{all}; every governed Installation that sets it is refused"),
        )
    } else {
        return None;
    };
    Some(Desired::new("Ready", Status::False, reason, message))
}

pub async fn reconcile(bundle: Arc<PolicyBundle>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await?;
    // Dereference (caches) and decide (pure).
    let audit = audit(
        &bundle,
        &ctx.caches.namespaces.state(),
        &ctx.caches.installations.state(),
        &ctx.caches.capsules.state(),
    );
    let ready = readiness(&bundle.spec, &audit);
    let health = health(&ready);
    let previous_count = bundle.status.as_ref().and_then(|s| s.violation_count);
    // Report.
    if let Some(note) = violations_found(previous_count, &audit) {
        ctx.event(
            bundle.as_ref(),
            EventType::Warning,
            "ViolationsFound",
            "Audit",
            note,
        )
        .await;
    }
    let status = PolicyBundleStatus {
        observed_generation: bundle.metadata.generation,
        conditions: conditions::merge_with_health(
            bundle.conditions(),
            &[ready],
            health,
            bundle.metadata.generation,
            &status::now(),
        ),
        governed_namespaces: Some(i32::try_from(audit.governed_namespaces).unwrap_or(i32::MAX)),
        violation_count: Some(audit.count()),
        violations: audit
            .violations
            .iter()
            .take(MAX_LISTED_VIOLATIONS)
            .cloned()
            .collect(),
    };
    status::apply_if_changed(
        &Api::<PolicyBundle>::all(ctx.client.clone()),
        bundle.as_ref(),
        bundle.status.as_ref(),
        serde_json::to_value(&status)?,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Pure: how GitOps tools read a bundle: one that cannot be used as
/// written stays so until it is changed (Stalled); an engaged kill switch
/// is the bundle doing what its spec says (Current).
pub fn health(ready: &Desired) -> Health {
    match ready.status {
        Status::True => Health::Current,
        _ => Health::Stalled,
    }
}

/// Pure: the bundle's `Ready`: unusable as written, a kill switch engaged,
/// or enforcing/auditing with what the audit found.
pub fn readiness(spec: &PolicyBundleSpec, audit: &Audit) -> Desired {
    if let Some(unusable) = unusable(&crate::domain::bundle_checks::check(spec)) {
        return unusable;
    }
    if let Some(ks) = spec.kill_switch.as_ref().filter(|k| k.engaged) {
        return Desired::new(
            "Ready",
            Status::True,
            "KillSwitchEngaged",
            format!(
                "kill switch engaged ({}): every governed Installation is stopped",
                ks.reason.as_deref().unwrap_or("no reason given")
            ),
        );
    }
    let (reason, mode) = match spec.enforcement {
        Enforcement::Enforce => ("Enforcing", "enforcing"),
        Enforcement::Audit => ("Auditing", "auditing (violations are reported, not blocked)"),
    };
    Desired::new(
        "Ready",
        Status::True,
        reason,
        format!(
            "{mode} {} namespace(s); {} violation(s) among running Installations",
            audit.governed_namespaces,
            audit.violations.len()
        ),
    )
}

/// Pure: the note of a `ViolationsFound` Warning, when the number of
/// violations changed and is not zero.
pub fn violations_found(previous_count: Option<i32>, audit: &Audit) -> Option<String> {
    let count = audit.count();
    let first = audit.violations.first()?;
    (count != previous_count.unwrap_or(0)).then(|| {
        format!(
            "{count} running Installation violation(s); first: {}/{}: {}",
            first.namespace, first.name, first.message
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use serde_json::json;

    use super::*;
    use crate::testing::{capsule, installation};

    #[test]
    fn gitops_tools_read_an_unusable_bundle_as_stalled() {
        assert_eq!(
            health(&Desired::new("Ready", Status::True, "KillSwitchEngaged", "m")),
            Health::Current
        );
        assert_eq!(
            health(&Desired::new("Ready", Status::False, "InvalidSelector", "m")),
            Health::Stalled
        );
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Arc<Namespace> {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        Arc::new(ns)
    }

    /// Governs namespaces labelled `tier=gold`; internal data only in us-east-1.
    fn gold_us_only(enforcement: &str) -> PolicyBundle {
        let spec: PolicyBundleSpec = serde_json::from_value(json!({
            "namespaceSelector": { "matchLabels": { "tier": "gold" } },
            "residency": { "rules": [{ "dataClassification": "internal", "allowedRegions": ["us-east-1"] }] },
            "enforcement": enforcement,
        }))
        .unwrap_or_else(|e| panic!("bundle spec: {e}"));
        PolicyBundle::new("gold", spec)
    }

    fn installed_in(namespace: &str) -> Arc<Installation> {
        let mut inst = installation(Some(1), None);
        inst.metadata.namespace = Some(namespace.into());
        Arc::new(inst)
    }

    #[test]
    fn the_audit_judges_running_installations_of_governed_namespaces_as_if_enforced() {
        let bundle = gold_us_only("Audit");
        let namespaces = [namespace("a", &[("tier", "gold")]), namespace("b", &[])];
        let capsules = [Arc::new(Capsule::new("summarizer-1.4.2", capsule()))];
        // Both in eu-west-1, against the rule; only the one in `a` is governed.
        let found = audit(
            &bundle,
            &namespaces,
            &[installed_in("a"), installed_in("b")],
            &capsules,
        );
        assert_eq!(found.governed_namespaces, 1);
        assert_eq!(found.count(), 1);
        let v = &found.violations[0];
        assert_eq!(
            (v.kind.as_str(), v.namespace.as_str(), v.name.as_str()),
            ("Installation", "a", "summarizer")
        );
        assert_eq!(v.rule, "residency");
        // An Installation whose capsule is not published is no one's violation.
        assert_eq!(audit(&bundle, &namespaces, &[installed_in("a")], &[]).count(), 0);
    }

    #[test]
    fn ready_says_what_the_bundle_does_and_an_unusable_bundle_comes_first() {
        let found = Audit {
            governed_namespaces: 2,
            violations: vec![],
        };
        let auditing = readiness(&gold_us_only("Audit").spec, &found);
        assert_eq!((auditing.status, auditing.reason), (Status::True, "Auditing"));
        assert_eq!(
            auditing.message,
            "auditing (violations are reported, not blocked) 2 namespace(s); 0 violation(s) among running Installations"
        );
        let mut stopped = gold_us_only("Enforce").spec;
        stopped.kill_switch = serde_json::from_value(json!({ "engaged": true, "reason": "incident 7" })).ok();
        let ks = readiness(&stopped, &found);
        assert_eq!(ks.reason, "KillSwitchEngaged");
        assert!(ks.message.contains("incident 7"), "{}", ks.message);
        stopped.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "tier".to_string(),
                "not a label value!".to_string(),
            )])),
            ..Default::default()
        });
        let broken = readiness(&stopped, &found);
        assert_eq!((broken.status, broken.reason), (Status::False, "InvalidSelector"));
    }

    #[test]
    fn violations_are_announced_when_their_number_changes() {
        let bundle = gold_us_only("Enforce");
        let namespaces = [namespace("a", &[("tier", "gold")])];
        let capsules = [Arc::new(Capsule::new("summarizer-1.4.2", capsule()))];
        let found = audit(&bundle, &namespaces, &[installed_in("a")], &capsules);
        let note = violations_found(None, &found).unwrap_or_default();
        assert!(
            note.starts_with("1 running Installation violation(s); first: a/summarizer: "),
            "{note}"
        );
        assert_eq!(violations_found(Some(1), &found), None);
        let none = Audit::default();
        assert_eq!(violations_found(Some(1), &none), None);
    }
}
