//! Capsules as the other kinds see them: which Capsule a reference names,
//! and whether policy lets it run somewhere. Pure.

use std::sync::Arc;

use kube::ResourceExt;
use somastack_crds::common::CapsuleRef;
use somastack_crds::installation::InstallationSpec;
use somastack_crds::{Capsule, Installation, PolicyBundle};

use super::policy::{self, Evaluation, Request};
use super::review::{DECISION_ANNOTATION, is_approved};

/// What a capsule reference (package and version) resolves to.
#[derive(Clone, Debug)]
pub enum Resolved<'a> {
    /// No Capsule has that package and version.
    Missing,
    /// The one Capsule it names.
    Found(&'a Arc<Capsule>),
    /// Several Capsules were published with that package and version at the
    /// same moment, and none of them is the first: none may be used.
    Ambiguous(String),
}

impl<'a> Resolved<'a> {
    /// The Capsule, when the reference resolves to exactly one.
    pub fn found(&self) -> Option<&'a Arc<Capsule>> {
        match self {
            Resolved::Found(c) => Some(c),
            _ => None,
        }
    }
}

/// What the kinds that use a Capsule read of it: all of it but the count of
/// Installations in its status, which changes with every Installation
/// created, so a new Installation does not requeue every other one.
pub fn as_used(c: &Capsule) -> String {
    let status = c.status.clone().map(|s| somastack_crds::CapsuleStatus {
        installations: None,
        ..s
    });
    let meta = &c.metadata;
    serde_json::to_string(&(
        &meta.name,
        &meta.creation_timestamp,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.is_some(),
        &c.spec,
        &status,
    ))
    .unwrap_or_default()
}

/// Resolves a capsule reference: a package version is published once, so
/// the first Capsule created with it is the one every Installation and task
/// runs. Admission refuses a second one; one that got in anyway (two
/// publishers in the same instant, or admission switched off) never shadows
/// the first, and two created in the same second are refused both
/// ([`Resolved::Ambiguous`]). The first stays the one while it is being
/// deleted (its deletion waits for its Installations), so no other can take
/// its Installations over.
pub fn resolve<'a>(capsules: &'a [Arc<Capsule>], wanted: &CapsuleRef) -> Resolved<'a> {
    let mut candidates: Vec<&'a Arc<Capsule>> = capsules
        .iter()
        .filter(|c| c.spec.package == wanted.package && c.spec.version == wanted.version)
        .collect();
    candidates.sort_by_key(|c| (published_at(c), c.name_any()));
    match candidates.as_slice() {
        [] => Resolved::Missing,
        [only] => Resolved::Found(only),
        [first, second, ..] if published_at(first) < published_at(second) => Resolved::Found(first),
        tied => {
            let names: Vec<String> = tied
                .iter()
                .take_while(|c| published_at(c) == published_at(tied[0]))
                .map(|c| format!("{} (publisher {})", c.name_any(), c.spec.publisher))
                .collect();
            Resolved::Ambiguous(format!(
                "Capsules {} all publish {} {} and were created at the same moment; none is used until all but one are deleted",
                names.join(", "),
                wanted.package,
                wanted.version
            ))
        }
    }
}

/// When a Capsule was created (the API server's timestamp).
fn published_at(c: &Capsule) -> Option<jiff::Timestamp> {
    c.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The Capsule a reference resolves to, if exactly one ([`resolve`]).
pub fn find<'a>(capsules: &'a [Arc<Capsule>], wanted: &CapsuleRef) -> Option<&'a Arc<Capsule>> {
    resolve(capsules, wanted).found()
}

/// Most replicas the spec may run (autoscaling: its maximum).
pub fn requested_replicas(spec: &InstallationSpec) -> i32 {
    match &spec.autoscaling {
        Some(a) => a.max_replicas,
        None => spec.replicas.unwrap_or(1),
    }
}

/// Whether a capsule may be used (installed, or run as a task) where asked.
#[derive(Clone, Debug, PartialEq)]
pub enum CapsuleUse {
    /// No Capsule with that package and version exists.
    CapsuleNotFound,
    /// The Capsule exists but may not be installed (being deleted, rejected).
    CapsuleUnusable(String),
    /// Enforced rules are broken: create or change nothing.
    Blocked(Evaluation),
    /// Go ahead (possibly stopped by a kill switch; warnings from Audit bundles).
    Allowed(Evaluation),
}

impl CapsuleUse {
    /// Why the capsule may not be used, for people; `None` when it may.
    pub fn refusal(&self) -> Option<String> {
        match self {
            CapsuleUse::CapsuleNotFound => Some("no Capsule with this package and version exists".into()),
            CapsuleUse::CapsuleUnusable(why) => Some(why.clone()),
            CapsuleUse::Blocked(eval) => Some(
                eval.blocking
                    .iter()
                    .map(|v| v.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            CapsuleUse::Allowed(_) => None,
        }
    }
}

/// Pure: may the Installation run its Capsule in `region` under the bundles
/// that govern its namespace?
pub fn may_install(
    inst: &Installation,
    capsule: &Resolved<'_>,
    bundles: &[Arc<PolicyBundle>],
    region: &str,
) -> CapsuleUse {
    may_use(capsule, bundles, region, requested_replicas(&inst.spec))
}

/// Pure: may `capsule` run `replicas` replicas in `region` under `bundles`?
/// Shared by Installations and KamachiqProject tasks.
pub fn may_use(
    capsule: &Resolved<'_>,
    bundles: &[Arc<PolicyBundle>],
    region: &str,
    replicas: i32,
) -> CapsuleUse {
    let capsule = match capsule {
        Resolved::Missing => return CapsuleUse::CapsuleNotFound,
        Resolved::Ambiguous(why) => return CapsuleUse::CapsuleUnusable(why.clone()),
        Resolved::Found(c) => c.as_ref(),
    };
    if capsule.metadata.deletion_timestamp.is_some() {
        return CapsuleUse::CapsuleUnusable(format!("Capsule {} is being deleted", capsule.name_any()));
    }
    if capsule.annotations().get(DECISION_ANNOTATION).map(|d| d.trim()) == Some("reject") {
        return CapsuleUse::CapsuleUnusable(format!(
            "Capsule {} was rejected by its reviewer",
            capsule.name_any()
        ));
    }
    let names: Vec<String> = bundles.iter().map(|b| b.name_any()).collect();
    let views = policy::views(bundles, &names);
    let req = Request {
        capsule: &capsule.spec,
        approved: is_approved(capsule),
        region,
        replicas,
    };
    let eval = policy::evaluate(&views, &req);
    if eval.compliant() {
        CapsuleUse::Allowed(eval)
    } else {
        CapsuleUse::Blocked(eval)
    }
}
