//! `PolicyBundle` controller: what the bundle governs, and an audit of the
//! Installations already running against it (as Gatekeeper's audit does).
//!
//! Enforcement itself happens where Installations are reconciled (and at
//! admission); this controller reports.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::policy::{Enforcement, MAX_LISTED_VIOLATIONS, Violation};
use somastack_crds::{Capsule, Installation, PolicyBundle};

use crate::Result;
use crate::conditions::{self, Desired, Status};
use crate::domain::capsules::{self, requested_replicas};
use crate::domain::policy::{self, Bundle, Request};
use crate::domain::review::is_approved;
use crate::runtime::Context;
use crate::status::{self, HasConditions};

/// Re-audits every bundle when Installations, Capsules or Namespaces change
/// (a relabelled namespace changes what a bundle governs).
pub fn wire(ctl: Controller<PolicyBundle>, ctx: &Arc<Context>) -> Controller<PolicyBundle> {
    let client = ctx.client.clone();
    let (a, b, c) = (ctx.bundles.clone(), ctx.bundles.clone(), ctx.bundles.clone());
    let all = move |store: &kube::runtime::reflector::Store<PolicyBundle>| {
        store
            .state()
            .iter()
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect::<Vec<_>>()
    };
    ctl.watches(
        Api::<Installation>::all(client.clone()),
        watcher::Config::default(),
        move |_| all(&a),
    )
    .watches(
        Api::<Capsule>::all(client.clone()),
        watcher::Config::default(),
        move |_| all(&b),
    )
    .watches(
        Api::<Namespace>::all(client),
        watcher::Config::default(),
        move |_| all(&c),
    )
}

/// What one bundle governs and which running Installations break it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub governed_namespaces: usize,
    /// Every violation, sorted (status lists the first [`MAX_LISTED_VIOLATIONS`]).
    pub violations: Vec<Violation>,
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
        let namespace = inst.namespace().unwrap_or_default();
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
    let result = audit(
        &bundle,
        &ctx.namespaces.state(),
        &ctx.installations.state(),
        &ctx.capsules.state(),
    );
    let now = status::now();

    let ready = if let Some(unusable) = unusable(&crate::domain::bundle_checks::check(&bundle.spec)) {
        unusable
    } else if let Some(ks) = bundle.spec.kill_switch.as_ref().filter(|k| k.engaged) {
        Desired::new(
            "Ready",
            Status::True,
            "KillSwitchEngaged",
            format!(
                "kill switch engaged ({}): every governed Installation is stopped",
                ks.reason.as_deref().unwrap_or("no reason given")
            ),
        )
    } else {
        let mode = match bundle.spec.enforcement {
            Enforcement::Enforce => ("Enforcing", "enforcing"),
            Enforcement::Audit => ("Auditing", "auditing (violations are reported, not blocked)"),
        };
        Desired::new(
            "Ready",
            Status::True,
            mode.0,
            format!(
                "{} {} namespace(s); {} violation(s) among running Installations",
                mode.1,
                result.governed_namespaces,
                result.violations.len()
            ),
        )
    };
    let merged = conditions::merge(bundle.conditions(), &[ready], bundle.metadata.generation, &now);

    let previous_count = bundle
        .status
        .as_ref()
        .and_then(|s| s.violation_count)
        .unwrap_or(0);
    let count = i32::try_from(result.violations.len()).unwrap_or(i32::MAX);
    if count != previous_count && count > 0 {
        let first = result
            .violations
            .first()
            .map(|v| format!("{}/{}: {}", v.namespace, v.name, v.message));
        ctx.event(
            bundle.as_ref(),
            EventType::Warning,
            "ViolationsFound",
            "Audit",
            format!(
                "{count} running Installation violation(s); first: {}",
                first.unwrap_or_default()
            ),
        )
        .await;
    }

    let listed: Vec<&Violation> = result.violations.iter().take(MAX_LISTED_VIOLATIONS).collect();
    let body = json!({
        "observedGeneration": bundle.metadata.generation,
        "conditions": merged,
        "governedNamespaces": result.governed_namespaces,
        "violationCount": count,
        "violations": listed,
    });
    status::apply_if_changed(
        &Api::<PolicyBundle>::all(ctx.client.clone()),
        bundle.as_ref(),
        bundle.status.as_ref(),
        body,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}
