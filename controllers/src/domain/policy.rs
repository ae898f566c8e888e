//! Policy evaluation: pure functions over PolicyBundles, no API calls.
//!
//! Several bundles may govern one namespace. The effective policy is the most
//! restrictive combination: allowed regions and capabilities intersect, the
//! lowest ceiling wins, any bundle's signature/approval requirement applies,
//! a publisher key must be trusted by every bundle that lists publishers, and
//! any engaged kill switch stops everything. Each violation names the rule
//! and the bundles that impose it.
//!
//! Bundles in `Audit` mode report without blocking: [`evaluate`] checks the
//! request once against the `Enforce` bundles (blocking) and once against all
//! bundles (the rest are warnings).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::{Selector, SelectorExt};
use kube_quantity::ParsedQuantity;
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::common::DataClassification;
use somastack_crds::policy::{Enforcement, PolicyBundleSpec};

use crate::domain::signing;

/// A bundle by name, as the evaluation sees it.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    pub name: &'a str,
    pub spec: &'a PolicyBundleSpec,
}

/// Views of `bundles` for evaluation, named by `names` (the bundles' names,
/// in the same order).
pub fn views<'a>(
    bundles: &'a [std::sync::Arc<somastack_crds::PolicyBundle>],
    names: &'a [String],
) -> Vec<Bundle<'a>> {
    bundles
        .iter()
        .zip(names)
        .map(|(b, name)| Bundle { name, spec: &b.spec })
        .collect()
}

/// Whether `spec`'s namespace selector selects a namespace with `labels`.
/// An absent or empty selector selects every namespace; a selector that
/// cannot select as written (see [`crate::domain::bundle_checks::selector_problems`])
/// selects none, and the bundle says so in its status.
pub fn governs(spec: &PolicyBundleSpec, labels: &BTreeMap<String, String>) -> bool {
    match &spec.namespace_selector {
        None => true,
        Some(sel) => {
            crate::domain::bundle_checks::selector_problems(sel).is_empty()
                && Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
        }
    }
}

/// Stable rule names, used in messages, status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Residency,
    MaxReplicas,
    MaxCpu,
    MaxMemory,
    Capabilities,
    Signature,
    Approval,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Residency => "residency",
            Rule::MaxReplicas => "maxReplicas",
            Rule::MaxCpu => "maxCpu",
            Rule::MaxMemory => "maxMemory",
            Rule::Capabilities => "capabilities",
            Rule::Signature => "signature",
            Rule::Approval => "approval",
        }
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// Bundles imposing the rule that is broken (sorted).
    pub bundles: Vec<String>,
    pub message: String,
}

impl Violation {
    fn new(rule: Rule, bundles: impl IntoIterator<Item = String>, message: String) -> Self {
        let mut bundles: Vec<String> = bundles.into_iter().collect();
        bundles.sort();
        bundles.dedup();
        let names = bundles.join(", ");
        Violation {
            rule,
            message: format!("{message} (rule {}, PolicyBundle {names})", rule.as_str()),
            bundles,
        }
    }
}

/// A resource ceiling: its value, and the quantity as the bundle wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceiling {
    pub parsed: ParsedQuantity,
    pub written: String,
}

impl PartialOrd for Ceiling {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ceiling {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parsed
            .cmp(&other.parsed)
            .then_with(|| self.written.cmp(&other.written))
    }
}

/// A value together with the bundles that imposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imposed<T> {
    pub value: T,
    pub bundles: BTreeSet<String>,
}

/// The most restrictive combination of a set of bundles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    /// Per classification, the regions every restricting bundle allows.
    pub residency: BTreeMap<DataClassification, Imposed<BTreeSet<String>>>,
    pub max_replicas: Option<Imposed<i32>>,
    pub max_cpu: Option<Imposed<Ceiling>>,
    pub max_memory: Option<Imposed<Ceiling>>,
    /// Capabilities every restricting bundle allows; `None`: no restriction.
    pub capabilities: Option<Imposed<BTreeSet<String>>>,
    pub require_signature: BTreeSet<String>,
    pub require_approval: BTreeSet<String>,
    /// Bundles that list trusted publishers, each with its `(publisher, key id) -> PEM`.
    pub trust: BTreeMap<String, BTreeMap<(String, String), String>>,
    /// Engaged kill switches: bundle -> reason.
    pub kill_switch: BTreeMap<String, String>,
    /// Ceilings a bundle wrote that are not quantities (the schema should
    /// prevent this); reported rather than ignored.
    pub invalid: Vec<(String, Rule, String)>,
}

fn tighten<T: Ord + Clone>(slot: &mut Option<Imposed<T>>, value: T, bundle: &str) {
    match slot {
        Some(cur) if cur.value < value => {}
        Some(cur) if cur.value == value => {
            cur.bundles.insert(bundle.to_string());
        }
        _ => {
            *slot = Some(Imposed {
                value,
                bundles: BTreeSet::from([bundle.to_string()]),
            })
        }
    }
}

fn intersect(slot: &mut Option<Imposed<BTreeSet<String>>>, allowed: BTreeSet<String>, bundle: &str) {
    match slot {
        Some(cur) => {
            cur.value = cur.value.intersection(&allowed).cloned().collect();
            cur.bundles.insert(bundle.to_string());
        }
        None => {
            *slot = Some(Imposed {
                value: allowed,
                bundles: BTreeSet::from([bundle.to_string()]),
            })
        }
    }
}

impl Effective {
    /// Combines bundles; the result does not depend on their order.
    pub fn combine<'a>(bundles: impl IntoIterator<Item = Bundle<'a>>) -> Effective {
        let mut eff = Effective::default();
        for Bundle { name, spec } in bundles {
            if let Some(residency) = &spec.residency {
                for rule in &residency.rules {
                    let allowed: BTreeSet<String> = rule.allowed_regions.iter().cloned().collect();
                    let mut slot = eff.residency.remove(&rule.data_classification);
                    intersect(&mut slot, allowed, name);
                    if let Some(v) = slot {
                        eff.residency.insert(rule.data_classification, v);
                    }
                }
            }
            if let Some(limits) = &spec.limits {
                if let Some(max) = limits.max_replicas {
                    tighten(&mut eff.max_replicas, max, name);
                }
                for (q, slot, rule) in [
                    (&limits.max_cpu, &mut eff.max_cpu, Rule::MaxCpu),
                    (&limits.max_memory, &mut eff.max_memory, Rule::MaxMemory),
                ] {
                    if let Some(q) = q {
                        match ParsedQuantity::try_from(q) {
                            Ok(parsed) => tighten(
                                slot,
                                Ceiling {
                                    parsed,
                                    written: q.0.clone(),
                                },
                                name,
                            ),
                            Err(_) => eff.invalid.push((
                                name.to_string(),
                                rule,
                                format!("{} {:?} is not a quantity", rule.as_str(), q.0),
                            )),
                        }
                    }
                }
            }
            if let Some(caps) = &spec.capabilities {
                intersect(
                    &mut eff.capabilities,
                    caps.allowed.iter().cloned().collect(),
                    name,
                );
            }
            if let Some(trust) = &spec.trust {
                if trust.require_signature {
                    eff.require_signature.insert(name.to_string());
                }
                if trust.require_approval {
                    eff.require_approval.insert(name.to_string());
                }
                if !trust.publishers.is_empty() {
                    let keys = trust
                        .publishers
                        .iter()
                        .flat_map(|p| {
                            p.keys
                                .iter()
                                .map(|k| ((p.name.clone(), k.id.clone()), k.public_key.clone()))
                        })
                        .collect();
                    eff.trust.insert(name.to_string(), keys);
                }
            }
            if let Some(ks) = spec.kill_switch.as_ref().filter(|k| k.engaged) {
                eff.kill_switch
                    .insert(name.to_string(), ks.reason.clone().unwrap_or_default());
            }
        }
        eff.invalid.sort();
        eff
    }

    /// Regions where data of `class` may be processed; `None`: anywhere.
    pub fn allowed_regions(&self, class: DataClassification) -> Option<&BTreeSet<String>> {
        self.residency.get(&class).map(|f| &f.value)
    }

    /// Whether `region` is allowed for `class`.
    pub fn region_allowed(&self, class: DataClassification, region: &str) -> bool {
        self.allowed_regions(class).is_none_or(|r| r.contains(region))
    }

    /// The public keys the bundles that list publishers hold under
    /// `(publisher, key_id)`: each distinct PEM with the bundles holding it
    /// (empty when no bundle lists publishers). `Err`: the bundles that list
    /// publishers but not this key.
    ///
    /// Most restrictive: a signature must verify with every one of them, so
    /// two bundles naming one key id with different keys cannot relax each
    /// other.
    pub fn trusted_keys(
        &self,
        publisher: &str,
        key_id: &str,
    ) -> Result<Vec<(&str, Vec<String>)>, Vec<String>> {
        let key = (publisher.to_string(), key_id.to_string());
        let distrusting: Vec<String> = self
            .trust
            .iter()
            .filter(|(_, keys)| !keys.contains_key(&key))
            .map(|(b, _)| b.clone())
            .collect();
        if !distrusting.is_empty() {
            return Err(distrusting);
        }
        let mut out: Vec<(&str, Vec<String>)> = Vec::new();
        for (bundle, keys) in &self.trust {
            let Some(pem) = keys.get(&key) else { continue };
            match out.iter_mut().find(|(p, _)| p.trim() == pem.trim()) {
                Some((_, holders)) => holders.push(bundle.clone()),
                None => out.push((pem.as_str(), vec![bundle.clone()])),
            }
        }
        Ok(out)
    }
}

/// What is asked: run `capsule` with at most `replicas` replicas in `region`.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub capsule: &'a CapsuleSpec,
    /// The Capsule carries a current approval (review bound to its digest).
    pub approved: bool,
    pub region: &'a str,
    pub replicas: i32,
}

/// Per-replica CPU and memory of a capsule: its limits, else its requests.
pub fn capsule_amounts(spec: &CapsuleSpec) -> (Option<&Quantity>, Option<&Quantity>) {
    let Some(res) = &spec.resources else {
        return (None, None);
    };
    let pick = |f: fn(&somastack_crds::capsule::ResourceAmounts) -> Option<&Quantity>| {
        res.limits
            .as_ref()
            .and_then(f)
            .or_else(|| res.requests.as_ref().and_then(f))
    };
    (pick(|a| a.cpu.as_ref()), pick(|a| a.memory.as_ref()))
}

/// The result of checking one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Violations of `Enforce` bundles: nothing new may be created.
    pub blocking: Vec<Violation>,
    /// Violations only `Audit` bundles impose: reported, not blocking.
    pub warnings: Vec<Violation>,
    /// Engaged kill switches (bundle -> reason), whatever their enforcement.
    pub kill_switch: BTreeMap<String, String>,
}

impl Evaluation {
    pub fn compliant(&self) -> bool {
        self.blocking.is_empty()
    }
}

/// Checks `req` against every bundle in `bundles`.
pub fn evaluate(bundles: &[Bundle<'_>], req: &Request<'_>) -> Evaluation {
    let enforced = Effective::combine(
        bundles
            .iter()
            .copied()
            .filter(|b| b.spec.enforcement == Enforcement::Enforce),
    );
    let all = Effective::combine(bundles.iter().copied());
    let blocking = violations(&enforced, req);
    let warnings = violations(&all, req)
        .into_iter()
        .filter(|w| !blocking.iter().any(|b| b.rule == w.rule))
        .collect();
    Evaluation {
        blocking,
        warnings,
        kill_switch: all.kill_switch,
    }
}

/// Every rule of `eff` that `req` breaks, in a stable order.
pub fn violations(eff: &Effective, req: &Request<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let capsule = req.capsule;
    let class = capsule.data_classification;

    for (bundle, rule, problem) in &eff.invalid {
        out.push(Violation::new(
            *rule,
            [bundle.clone()],
            format!("the bundle is invalid: {problem}"),
        ));
    }

    if let Some(allowed) = eff.residency.get(&class)
        && !allowed.value.contains(req.region)
    {
        let list = allowed.value.iter().cloned().collect::<Vec<_>>().join(", ");
        let list = if list.is_empty() { "none".to_string() } else { list };
        out.push(Violation::new(
            Rule::Residency,
            allowed.bundles.iter().cloned(),
            format!(
                "{class} data may not be processed in region {}; allowed regions: {list}",
                req.region
            ),
        ));
    }

    if let Some(max) = &eff.max_replicas
        && req.replicas > max.value
    {
        out.push(Violation::new(
            Rule::MaxReplicas,
            max.bundles.iter().cloned(),
            format!("{} replicas exceed the ceiling of {}", req.replicas, max.value),
        ));
    }

    let (cpu, memory) = capsule_amounts(capsule);
    for (asked, max, rule, what) in [
        (cpu, &eff.max_cpu, Rule::MaxCpu, "CPU"),
        (memory, &eff.max_memory, Rule::MaxMemory, "memory"),
    ] {
        let (Some(asked), Some(max)) = (asked, max) else {
            continue;
        };
        match ParsedQuantity::try_from(asked) {
            Ok(parsed) if parsed <= max.value.parsed => {}
            Ok(_) => out.push(Violation::new(
                rule,
                max.bundles.iter().cloned(),
                format!(
                    "{what} per replica {} exceeds the ceiling of {}",
                    asked.0, max.value.written
                ),
            )),
            Err(_) => out.push(Violation::new(
                rule,
                max.bundles.iter().cloned(),
                format!("{what} per replica {:?} is not a quantity", asked.0),
            )),
        }
    }

    if let Some(allowed) = &eff.capabilities {
        let denied: Vec<&str> = capsule
            .capabilities
            .iter()
            .filter(|c| !allowed.value.contains(*c))
            .map(String::as_str)
            .collect();
        if !denied.is_empty() {
            out.push(Violation::new(
                Rule::Capabilities,
                allowed.bundles.iter().cloned(),
                format!("capabilities not allowed: {}", denied.join(", ")),
            ));
        }
    }

    if let Some(problem) = signature_problem(eff, capsule) {
        out.push(problem);
    }

    if !eff.require_approval.is_empty() && !req.approved {
        out.push(Violation::new(
            Rule::Approval,
            eff.require_approval.iter().cloned(),
            format!(
                "capsule {} {} is not approved by a reviewer",
                capsule.package, capsule.version
            ),
        ));
    }
    out
}

/// What is wrong with the capsule's signature under `eff`, if anything.
fn signature_problem(eff: &Effective, capsule: &CapsuleSpec) -> Option<Violation> {
    let signature = match &capsule.signature {
        None if eff.require_signature.is_empty() => return None,
        None => {
            return Some(Violation::new(
                Rule::Signature,
                eff.require_signature.iter().cloned(),
                format!("capsule {} {} is not signed", capsule.package, capsule.version),
            ));
        }
        Some(s) => s,
    };
    // A signature is checked whenever one is present: a bad one is never ignored.
    match eff.trusted_keys(&capsule.publisher, &signature.key_id) {
        Err(distrusting) => Some(Violation::new(
            Rule::Signature,
            distrusting,
            format!(
                "key {} of publisher {} is not trusted",
                signature.key_id, capsule.publisher
            ),
        )),
        Ok(keys) if keys.is_empty() && eff.require_signature.is_empty() => None,
        Ok(keys) if keys.is_empty() => Some(Violation::new(
            Rule::Signature,
            eff.require_signature.iter().cloned(),
            format!(
                "no bundle trusts key {} of publisher {}",
                signature.key_id, capsule.publisher
            ),
        )),
        Ok(keys) => {
            let payload = signing::canonical_payload(capsule);
            // Every bundle's key must accept the signature.
            let failed: Vec<(Vec<String>, signing::VerifyError)> = keys
                .into_iter()
                .filter_map(|(pem, holders)| {
                    signing::verify(
                        signature.algorithm,
                        pem,
                        &signature.key_id,
                        &payload,
                        &signature.value,
                    )
                    .err()
                    .map(|e| (holders, e))
                })
                .collect();
            let (holders, error) = failed.into_iter().reduce(|(mut a, e), (b, _)| {
                a.extend(b);
                (a, e)
            })?;
            let mut blamed: BTreeSet<String> = eff.require_signature.clone();
            blamed.extend(holders.iter().cloned());
            Some(Violation::new(
                Rule::Signature,
                blamed,
                format!(
                    "signature check failed with the key PolicyBundle {} trusts as {}: {error}",
                    holders.join(", "),
                    signature.key_id
                ),
            ))
        }
    }
}

/// Whether `url` lies under the allowed prefix `entry`: same scheme, host
/// and port, and a path that is the entry's path or continues it at a `/`
/// (`/plan` allows `/plan` and `/plan/x`, not `/planner`). Credentials,
/// query and fragment of `url` play no part.
pub fn url_under(url: &str, entry: &str) -> bool {
    let (Ok(u), Ok(e)) = (reqwest::Url::parse(url), reqwest::Url::parse(entry)) else {
        return false;
    };
    if u.scheme() != e.scheme()
        || u.host_str() != e.host_str()
        || u.port_or_known_default() != e.port_or_known_default()
    {
        return false;
    }
    let (p, prefix) = (u.path(), e.path());
    p == prefix || (p.starts_with(prefix) && (prefix.ends_with('/') || p[prefix.len()..].starts_with('/')))
}

/// The planner URL prefixes a bundle allows (`projects.allowedPlannerUrls`).
fn planner_urls<'a>(b: &Bundle<'a>) -> &'a [String] {
    b.spec
        .projects
        .as_ref()
        .map(|p| p.allowed_planner_urls.as_slice())
        .unwrap_or_default()
}

/// Whether a project in a namespace governed by `bundles` may call the
/// planner at `url`. Fail closed: some governing bundle must list it in
/// `projects.allowedPlannerUrls`, and every enforced bundle that lists
/// planners must allow it; an Audit bundle that does not is a warning.
/// `Err`: why not, naming the bundles; `Ok`: the warnings.
pub fn planner_url_allowed(bundles: &[Bundle<'_>], url: &str) -> Result<Vec<String>, String> {
    let shown = crate::text::redact_url(url);
    let listing: Vec<&Bundle<'_>> = bundles.iter().filter(|b| !planner_urls(b).is_empty()).collect();
    let allows = |b: &Bundle<'_>| planner_urls(b).iter().any(|e| url_under(url, e));
    let names = |bs: &[&Bundle<'_>]| bs.iter().map(|b| b.name).collect::<Vec<_>>().join(", ");
    if listing.is_empty() {
        return Err(format!(
            "planner {shown} is not allowed: no PolicyBundle governing this namespace lists planner URLs (projects.allowedPlannerUrls); ask a platform admin to allow it, or run the planner as a capsule (spec.planner.capsule)"
        ));
    }
    let (allowing, refusing): (Vec<&Bundle<'_>>, Vec<&Bundle<'_>>) =
        listing.into_iter().partition(|b| allows(b));
    let enforced_refusing: Vec<&Bundle<'_>> = refusing
        .iter()
        .copied()
        .filter(|b| b.spec.enforcement == Enforcement::Enforce)
        .collect();
    if allowing.is_empty() || !enforced_refusing.is_empty() {
        let who = if enforced_refusing.is_empty() {
            &refusing
        } else {
            &enforced_refusing
        };
        return Err(format!(
            "planner {shown} is not allowed: it is not under any of projects.allowedPlannerUrls of PolicyBundle {}",
            names(who)
        ));
    }
    Ok(refusing
        .iter()
        .map(|b| {
            format!(
                "audit: planner {shown} is not under projects.allowedPlannerUrls of PolicyBundle {}",
                b.name
            )
        })
        .collect())
}

/// The moderators the enforced bundles of `bundles` require for every
/// project they govern (`projects.moderation`): sorted by bundle name, one
/// per distinct moderator (package, version and config; the first bundle
/// names it). `Audit` bundles require none: a moderator that only reports
/// would still hold every text until it answered, so it is not run.
pub fn required_moderation<'a>(
    bundles: &[Bundle<'a>],
) -> Vec<(&'a str, &'a somastack_crds::kamachiq::Moderation)> {
    let mut required: Vec<(&'a str, &'a somastack_crds::kamachiq::Moderation)> = bundles
        .iter()
        .filter(|b| b.spec.enforcement == Enforcement::Enforce)
        .filter_map(|b| Some((b.name, b.spec.projects.as_ref()?.moderation.as_ref()?)))
        .collect();
    required.sort_by_key(|(name, _)| *name);
    let mut out: Vec<(&'a str, &'a somastack_crds::kamachiq::Moderation)> = Vec::new();
    for (name, m) in required {
        let same = |(_, o): &(&str, &somastack_crds::kamachiq::Moderation)| {
            o.capsule == m.capsule && o.config == m.config
        };
        if !out.iter().any(same) {
            out.push((name, m));
        }
    }
    out
}

/// One rule of the effective policy of a namespace, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Provenance {
    /// The rule, e.g. `residency/confidential`, `maxReplicas`, `killSwitch`.
    pub rule: String,
    /// What it comes to, most restrictively combined.
    pub value: String,
    /// `Enforce`: it blocks; `Audit`: it is stricter than what is enforced
    /// and only reported. (A kill switch stops everything in either mode.)
    pub mode: Enforcement,
    /// The PolicyBundles that impose it (sorted).
    pub bundles: Vec<String>,
}

fn listed<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// The rows of one combination, in a stable order (rule, then value).
fn rows_of(eff: &Effective, mode: Enforcement) -> Vec<Provenance> {
    let row = |rule: String, value: String, bundles: &BTreeSet<String>| Provenance {
        rule,
        value,
        mode,
        bundles: bundles.iter().cloned().collect(),
    };
    let mut out = Vec::new();
    for (class, allowed) in &eff.residency {
        out.push(row(
            format!("residency/{class}"),
            listed(&allowed.value),
            &allowed.bundles,
        ));
    }
    if let Some(m) = &eff.max_replicas {
        out.push(row("maxReplicas".into(), m.value.to_string(), &m.bundles));
    }
    if let Some(m) = &eff.max_cpu {
        out.push(row("maxCpu".into(), m.value.written.clone(), &m.bundles));
    }
    if let Some(m) = &eff.max_memory {
        out.push(row("maxMemory".into(), m.value.written.clone(), &m.bundles));
    }
    if let Some(c) = &eff.capabilities {
        out.push(row("capabilities".into(), listed(&c.value), &c.bundles));
    }
    if !eff.require_signature.is_empty() {
        out.push(row(
            "requireSignature".into(),
            "true".into(),
            &eff.require_signature,
        ));
    }
    if !eff.require_approval.is_empty() {
        out.push(row(
            "requireApproval".into(),
            "true".into(),
            &eff.require_approval,
        ));
    }
    if !eff.trust.is_empty() {
        // A key is usable only when every bundle that lists publishers lists it.
        let mut keys: Option<BTreeSet<&(String, String)>> = None;
        for held in eff.trust.values() {
            let these: BTreeSet<&(String, String)> = held.keys().collect();
            keys = Some(match keys {
                None => these,
                Some(k) => k.intersection(&these).copied().collect(),
            });
        }
        let names: Vec<String> = keys
            .unwrap_or_default()
            .into_iter()
            .map(|(publisher, id)| format!("{publisher}/{id}"))
            .collect();
        let bundles: BTreeSet<String> = eff.trust.keys().cloned().collect();
        out.push(row("trustedKeys".into(), listed(&names), &bundles));
    }
    for (bundle, rule, problem) in &eff.invalid {
        out.push(row(
            format!("{}/invalid", rule.as_str()),
            problem.clone(),
            &BTreeSet::from([bundle.clone()]),
        ));
    }
    out
}

/// The effective policy of a namespace governed by `bundles` (those whose
/// selector selects it, [`governs`]), rule by rule, each with the bundles it
/// comes from: what the `Enforce` bundles combine to, then each rule the
/// `Audit` bundles make stricter (reported only), then the engaged kill
/// switches, which stop everything whatever their mode; then the project
/// rules (plan approval, required moderators, allowed planner URLs).
pub fn explain(bundles: &[Bundle<'_>]) -> Vec<Provenance> {
    let enforced = Effective::combine(
        bundles
            .iter()
            .copied()
            .filter(|b| b.spec.enforcement == Enforcement::Enforce),
    );
    let all = Effective::combine(bundles.iter().copied());
    let mut out = rows_of(&enforced, Enforcement::Enforce);
    let strict: Vec<Provenance> = rows_of(&all, Enforcement::Audit)
        .into_iter()
        .filter(|a| !out.iter().any(|e| e.rule == a.rule && e.value == a.value))
        .collect();
    out.extend(strict);
    for (bundle, reason) in &all.kill_switch {
        out.push(Provenance {
            rule: "killSwitch".into(),
            value: format!("engaged: {reason}"),
            mode: Enforcement::Enforce,
            bundles: vec![bundle.clone()],
        });
    }
    let mut plan_approval: Vec<String> = bundles
        .iter()
        .filter(|b| {
            b.spec.enforcement == Enforcement::Enforce
                && b.spec.projects.as_ref().is_some_and(|p| p.require_approval)
        })
        .map(|b| b.name.to_string())
        .collect();
    plan_approval.sort();
    if !plan_approval.is_empty() {
        out.push(Provenance {
            rule: "projects/requireApproval".into(),
            value: "true".into(),
            mode: Enforcement::Enforce,
            bundles: plan_approval,
        });
    }
    for (bundle, m) in required_moderation(bundles) {
        out.push(Provenance {
            rule: "projects/moderation".into(),
            value: format!("{} {}", m.capsule.package, m.capsule.version),
            mode: Enforcement::Enforce,
            bundles: vec![bundle.to_string()],
        });
    }
    let mut planners: Vec<&Bundle<'_>> = bundles.iter().filter(|b| !planner_urls(b).is_empty()).collect();
    planners.sort_by_key(|b| b.name);
    for b in planners {
        let urls = planner_urls(b).to_vec();
        out.push(Provenance {
            rule: "projects/allowedPlannerUrls".into(),
            value: listed(&urls),
            mode: b.spec.enforcement,
            bundles: vec![b.name.to_string()],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use somastack_crds::capsule::{ResourceAmounts, ResourceRequirements};
    use somastack_crds::policy::{Capabilities, KillSwitch, Limits, Residency, ResidencyRule, Trust};

    const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];
    const CAPS: [&str; 4] = ["network-egress", "llm-inference", "gpu", "filesystem-write"];

    fn capsule(class: DataClassification, caps: &[&str], cpu: Option<&str>) -> CapsuleSpec {
        CapsuleSpec {
            resources: cpu.map(|c| ResourceRequirements {
                requests: None,
                limits: Some(ResourceAmounts {
                    cpu: Some(Quantity(c.into())),
                    memory: None,
                }),
            }),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            ..crate::testing::capsule_spec(class)
        }
    }

    fn bundle_spec() -> PolicyBundleSpec {
        PolicyBundleSpec::default()
    }

    fn residency(class: DataClassification, regions: &[&str]) -> Option<Residency> {
        Some(Residency {
            rules: vec![ResidencyRule {
                data_classification: class,
                allowed_regions: regions.iter().map(|r| r.to_string()).collect(),
            }],
        })
    }

    fn request<'a>(capsule: &'a CapsuleSpec, region: &'a str, replicas: i32) -> Request<'a> {
        Request {
            capsule,
            approved: false,
            region,
            replicas,
        }
    }

    fn with_trust(trust: Trust) -> PolicyBundleSpec {
        PolicyBundleSpec {
            trust: Some(trust),
            ..bundle_spec()
        }
    }

    fn bundle<'a>(name: &'a str, spec: &'a PolicyBundleSpec) -> Bundle<'a> {
        Bundle { name, spec }
    }

    fn rules(v: &[Violation]) -> BTreeSet<Rule> {
        v.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn explain_names_the_bundle_of_every_rule() {
        use somastack_crds::policy::{ProjectRules, PublisherKey, TrustedPublisher};
        let key = |id: &str| PublisherKey {
            id: id.into(),
            public_key: format!("pem-{id}"),
        };
        let eu = PolicyBundleSpec {
            residency: residency(DataClassification::Confidential, &["eu-west-1", "eu-central-1"]),
            limits: Some(Limits {
                max_replicas: Some(5),
                max_cpu: Some(Quantity("2".into())),
                max_memory: None,
            }),
            trust: Some(Trust {
                publishers: vec![TrustedPublisher {
                    name: "acme".into(),
                    keys: vec![key("k1"), key("k2")],
                }],
                require_signature: true,
                require_approval: false,
            }),
            projects: Some(ProjectRules {
                require_approval: true,
                allowed_planner_urls: vec!["https://planner.example/".into()],
                moderation: None,
            }),
            ..bundle_spec()
        };
        let tight = PolicyBundleSpec {
            residency: residency(DataClassification::Confidential, &["eu-west-1"]),
            limits: Some(Limits {
                max_replicas: Some(3),
                max_cpu: None,
                max_memory: None,
            }),
            capabilities: Some(Capabilities {
                allowed: vec!["network-egress".into()],
            }),
            trust: Some(Trust {
                publishers: vec![TrustedPublisher {
                    name: "acme".into(),
                    keys: vec![key("k1")],
                }],
                require_signature: false,
                require_approval: false,
            }),
            ..bundle_spec()
        };
        let audit = PolicyBundleSpec {
            limits: Some(Limits {
                max_replicas: Some(2),
                max_cpu: None,
                max_memory: None,
            }),
            kill_switch: Some(KillSwitch {
                engaged: true,
                reason: Some("incident 42".into()),
            }),
            enforcement: Enforcement::Audit,
            ..bundle_spec()
        };
        let rows = explain(&[
            bundle("eu", &eu),
            bundle("tight", &tight),
            bundle("watch", &audit),
        ]);
        let shown: Vec<(String, String, Enforcement, String)> = rows
            .iter()
            .map(|r| (r.rule.clone(), r.value.clone(), r.mode, r.bundles.join(",")))
            .collect();
        let e = Enforcement::Enforce;
        let a = Enforcement::Audit;
        let row = |rule: &str, value: &str, mode, bundles: &str| {
            (rule.to_string(), value.to_string(), mode, bundles.to_string())
        };
        assert_eq!(
            shown,
            vec![
                row("residency/confidential", "eu-west-1", e, "eu,tight"),
                row("maxReplicas", "3", e, "tight"),
                row("maxCpu", "2", e, "eu"),
                row("capabilities", "network-egress", e, "tight"),
                row("requireSignature", "true", e, "eu"),
                row("trustedKeys", "acme/k1", e, "eu,tight"),
                row("maxReplicas", "2", a, "watch"),
                row("killSwitch", "engaged: incident 42", e, "watch"),
                row("projects/requireApproval", "true", e, "eu"),
                row("projects/allowedPlannerUrls", "https://planner.example/", e, "eu"),
            ]
        );
        assert!(explain(&[]).is_empty(), "no bundle: nothing restricted");
    }

    #[test]
    fn residency_is_the_intersection_and_names_the_bundles() {
        let a = PolicyBundleSpec {
            residency: residency(DataClassification::Confidential, &["eu-west-1", "eu-central-1"]),
            ..bundle_spec()
        };
        let b = PolicyBundleSpec {
            residency: residency(DataClassification::Confidential, &["eu-central-1", "us-east-1"]),
            ..bundle_spec()
        };
        let bundles = [bundle("a", &a), bundle("b", &b)];
        let eff = Effective::combine(bundles);
        assert_eq!(
            eff.allowed_regions(DataClassification::Confidential).cloned(),
            Some(BTreeSet::from(["eu-central-1".to_string()]))
        );
        assert!(
            eff.allowed_regions(DataClassification::Public).is_none(),
            "no rule, no restriction"
        );

        let c = capsule(DataClassification::Confidential, &[], None);
        let result = evaluate(&bundles, &request(&c, "eu-west-1", 1));
        assert_eq!(rules(&result.blocking), BTreeSet::from([Rule::Residency]));
        let v = &result.blocking[0];
        assert_eq!(v.bundles, ["a", "b"]);
        assert!(
            v.message
                .contains("confidential data may not be processed in region eu-west-1"),
            "{}",
            v.message
        );
        assert!(
            v.message.contains("allowed regions: eu-central-1"),
            "{}",
            v.message
        );
        assert!(v.message.contains("PolicyBundle a, b"), "{}", v.message);
        assert!(evaluate(&bundles, &request(&c, "eu-central-1", 1)).compliant());
    }

    #[test]
    fn lowest_ceilings_win() {
        let ceilings = |replicas: i32, cpu: &str| PolicyBundleSpec {
            limits: Some(Limits {
                max_replicas: Some(replicas),
                max_cpu: Some(Quantity(cpu.into())),
                max_memory: None,
            }),
            ..bundle_spec()
        };
        let (a, b) = (ceilings(10, "2"), ceilings(3, "500m"));
        let bundles = [bundle("a", &a), bundle("b", &b)];
        let c = capsule(DataClassification::Public, &[], Some("750m"));
        let result = evaluate(&bundles, &request(&c, "us-east-1", 4));
        assert_eq!(
            rules(&result.blocking),
            BTreeSet::from([Rule::MaxReplicas, Rule::MaxCpu])
        );
        assert!(result.blocking.iter().all(|v| v.bundles == ["b"]));
        let small = capsule(DataClassification::Public, &[], Some("0.5"));
        assert!(
            evaluate(&bundles, &request(&small, "us-east-1", 3)).compliant(),
            "0.5 CPU == 500m"
        );
    }

    #[test]
    fn capabilities_intersect() {
        let a = PolicyBundleSpec {
            capabilities: Some(Capabilities {
                allowed: vec!["network-egress".into(), "gpu".into()],
            }),
            ..bundle_spec()
        };
        let b = PolicyBundleSpec {
            capabilities: Some(Capabilities {
                allowed: vec!["gpu".into()],
            }),
            ..bundle_spec()
        };
        let bundles = [bundle("a", &a), bundle("b", &b)];
        let c = capsule(DataClassification::Public, &["network-egress"], None);
        let result = evaluate(&bundles, &request(&c, "us-east-1", 1));
        assert_eq!(rules(&result.blocking), BTreeSet::from([Rule::Capabilities]));
        assert!(
            result.blocking[0]
                .message
                .contains("capabilities not allowed: network-egress")
        );
    }

    #[test]
    fn audit_bundles_warn_but_do_not_block() {
        let audit = PolicyBundleSpec {
            enforcement: Enforcement::Audit,
            limits: Some(Limits {
                max_replicas: Some(1),
                ..Default::default()
            }),
            ..bundle_spec()
        };
        let bundles = [bundle("audit", &audit)];
        let c = capsule(DataClassification::Public, &[], None);
        let result = evaluate(&bundles, &request(&c, "us-east-1", 5));
        assert!(result.compliant());
        assert_eq!(rules(&result.warnings), BTreeSet::from([Rule::MaxReplicas]));
    }

    #[test]
    fn any_kill_switch_wins_even_in_audit_mode() {
        let on = PolicyBundleSpec {
            enforcement: Enforcement::Audit,
            kill_switch: Some(KillSwitch {
                engaged: true,
                reason: Some("incident 42".into()),
            }),
            ..bundle_spec()
        };
        let off = PolicyBundleSpec {
            kill_switch: Some(KillSwitch {
                engaged: false,
                reason: None,
            }),
            ..bundle_spec()
        };
        let bundles = [bundle("off", &off), bundle("on", &on)];
        let c = capsule(DataClassification::Public, &[], None);
        let result = evaluate(&bundles, &request(&c, "us-east-1", 1));
        assert_eq!(
            result.kill_switch,
            BTreeMap::from([("on".to_string(), "incident 42".to_string())])
        );
    }

    #[test]
    fn unsigned_capsule_is_refused_only_when_a_bundle_requires_signatures() {
        let requires = with_trust(Trust {
            require_signature: true,
            ..Default::default()
        });
        let relaxed = bundle_spec();
        let c = capsule(DataClassification::Public, &[], None);
        let result = evaluate(&[bundle("strict", &requires)], &request(&c, "us-east-1", 1));
        assert_eq!(rules(&result.blocking), BTreeSet::from([Rule::Signature]));
        assert!(result.blocking[0].message.contains("is not signed"));
        assert!(evaluate(&[bundle("relaxed", &relaxed)], &request(&c, "us-east-1", 1)).compliant());
    }

    #[test]
    fn a_key_id_two_bundles_trust_with_different_keys_must_verify_with_both() {
        use somastack_crds::capsule::{Signature, SignatureAlgorithm};
        use somastack_crds::policy::{PublisherKey, TrustedPublisher};
        use somastack_tests::fixtures::{Key, Scratch};
        let dir = Scratch::new("trust-both");
        let signer = Key::ecdsa(&dir, "signer");
        let other = Key::ecdsa(&dir, "other");
        let mut c = capsule(DataClassification::Public, &[], None);
        let value = signer.sign(&dir, &signing::canonical_payload(&c));
        c.signature = Some(Signature {
            key_id: "k1".into(),
            algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            value,
        });
        let trusting = |pem: &str| PolicyBundleSpec {
            trust: Some(Trust {
                publishers: vec![TrustedPublisher {
                    name: c.publisher.clone(),
                    keys: vec![PublisherKey {
                        id: "k1".into(),
                        public_key: pem.into(),
                    }],
                }],
                ..Default::default()
            }),
            ..bundle_spec()
        };
        let (a, b) = (trusting(&signer.public_pem), trusting(&other.public_pem));
        // Alone, the bundle holding the signer's key accepts the signature.
        let alone = [bundle("a-first", &a)];
        assert!(evaluate(&alone, &request(&c, "us-east-1", 1)).compliant());
        // Adding a bundle that names k1 with another key never relaxes:
        // the signature must satisfy it too, whatever the order.
        for bundles in [
            [bundle("a-first", &a), bundle("b-second", &b)],
            [bundle("b-second", &b), bundle("a-first", &a)],
        ] {
            let result = evaluate(&bundles, &request(&c, "us-east-1", 1));
            assert_eq!(rules(&result.blocking), BTreeSet::from([Rule::Signature]));
            let v = &result.blocking[0];
            assert_eq!(v.bundles, vec!["b-second".to_string()], "{v:?}");
            assert!(
                v.message.contains("the key PolicyBundle b-second trusts as k1"),
                "{}",
                v.message
            );
        }
        // Two bundles holding the same key are one check.
        let same = [bundle("a-first", &a), bundle("a-again", &a)];
        assert!(evaluate(&same, &request(&c, "us-east-1", 1)).compliant());
    }

    #[test]
    fn approval_is_required_when_any_bundle_says_so() {
        let requires = with_trust(Trust {
            require_approval: true,
            ..Default::default()
        });
        let bundles = [bundle("review", &requires)];
        let c = capsule(DataClassification::Public, &[], None);
        let mut req = request(&c, "us-east-1", 1);
        assert_eq!(
            rules(&evaluate(&bundles, &req).blocking),
            BTreeSet::from([Rule::Approval])
        );
        req.approved = true;
        assert!(evaluate(&bundles, &req).compliant());
    }

    #[test]
    fn planner_urls_need_an_allowing_bundle_and_no_enforced_refusal() {
        use somastack_crds::policy::ProjectRules;
        assert!(url_under(
            "http://p.platform.svc:8080/plan",
            "http://p.platform.svc:8080/"
        ));
        assert!(url_under(
            "http://u:pw@p.platform.svc:8080/plan?x=1",
            "http://p.platform.svc:8080/plan"
        ));
        assert!(url_under("https://p.example/plan/v1", "https://p.example/plan"));
        assert!(!url_under("https://p.example/planner", "https://p.example/plan"));
        assert!(!url_under("http://p.example/plan", "https://p.example/"));
        assert!(!url_under("http://p.example:81/plan", "http://p.example/"));
        assert!(!url_under("http://p.example.evil.test/plan", "http://p.example/"));
        assert!(!url_under("http://169.254.169.254/latest", "http://p.example/"));
        assert!(url_under("https://p.example/plan", "https://p.example:443/"));

        let allowing = |entries: &[&str], enforcement| PolicyBundleSpec {
            projects: Some(ProjectRules {
                require_approval: false,
                allowed_planner_urls: entries.iter().map(|e| e.to_string()).collect(),
                moderation: None,
            }),
            enforcement,
            ..bundle_spec()
        };
        let url = "http://ops:hunter2@planner.platform.svc:8080/plan";
        // No bundle lists planners: refused, without repeating credentials.
        let none = planner_url_allowed(&[], url).unwrap_err();
        assert!(
            none.contains("no PolicyBundle governing this namespace lists planner URLs"),
            "{none}"
        );
        assert!(
            !none.contains("hunter2") && none.contains("http://***@planner.platform.svc:8080/plan"),
            "{none}"
        );
        let a = allowing(&["http://planner.platform.svc:8080/"], Enforcement::Enforce);
        let b = allowing(&["https://other.example/"], Enforcement::Enforce);
        let audit = allowing(&["https://other.example/"], Enforcement::Audit);
        assert_eq!(planner_url_allowed(&[bundle("a", &a)], url), Ok(vec![]));
        let both = planner_url_allowed(&[bundle("a", &a), bundle("b", &b)], url);
        assert!(both.unwrap_err().contains("of PolicyBundle b"));
        let warned = planner_url_allowed(&[bundle("a", &a), bundle("c", &audit)], url).unwrap_or_default();
        assert_eq!(warned.len(), 1);
        assert!(warned[0].starts_with("audit: ") && warned[0].contains("PolicyBundle c"));
        // An Audit bundle alone allows nothing it does not list.
        assert!(planner_url_allowed(&[bundle("c", &audit)], url).is_err());
    }

    #[test]
    fn moderation_is_required_by_enforced_bundles_sorted_and_deduplicated() {
        use somastack_crds::common::CapsuleRef;
        use somastack_crds::kamachiq::Moderation;
        use somastack_crds::policy::ProjectRules;
        let moderator = |package: &str, deny: &str| Moderation {
            capsule: CapsuleRef {
                package: package.into(),
                version: "1.0.0".into(),
            },
            config: BTreeMap::from([("MODERATION_DENY".to_string(), deny.to_string())]),
            timeout_seconds: 120,
        };
        let requiring = |m: Moderation, enforcement| PolicyBundleSpec {
            projects: Some(ProjectRules {
                moderation: Some(m),
                ..ProjectRules::default()
            }),
            enforcement,
            ..bundle_spec()
        };
        let (z, a, same, audit, none) = (
            requiring(moderator("mod", "secret"), Enforcement::Enforce),
            requiring(moderator("mod", "weapon"), Enforcement::Enforce),
            requiring(moderator("mod", "secret"), Enforcement::Enforce),
            requiring(moderator("other", "x"), Enforcement::Audit),
            bundle_spec(),
        );
        let bundles = [
            bundle("zeta", &z),
            bundle("none", &none),
            bundle("audit", &audit),
            bundle("beta", &same),
            bundle("alpha", &a),
        ];
        let required: Vec<(&str, &str)> = required_moderation(&bundles)
            .into_iter()
            .map(|(b, m)| (b, m.config["MODERATION_DENY"].as_str()))
            .collect();
        // Sorted by bundle; zeta's moderator is beta's (same package,
        // version and config): run once, named by beta; the Audit bundle's is not run.
        assert_eq!(required, vec![("alpha", "weapon"), ("beta", "secret")]);
        let rows: Vec<(String, Vec<String>)> = explain(&bundles)
            .into_iter()
            .filter(|r| r.rule == "projects/moderation")
            .map(|r| (r.value, r.bundles))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("mod 1.0.0".to_string(), vec!["alpha".to_string()]),
                ("mod 1.0.0".to_string(), vec!["beta".to_string()]),
            ]
        );
        assert!(required_moderation(&[bundle("none", &none)]).is_empty());
    }

    #[test]
    fn selectors() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let labels = BTreeMap::from([("somastack.io/tenant".to_string(), "acme".to_string())]);
        let all = bundle_spec();
        assert!(governs(&all, &labels));
        let acme = PolicyBundleSpec {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: None,
            }),
            ..bundle_spec()
        };
        assert!(governs(&acme, &labels));
        assert!(!governs(&acme, &BTreeMap::new()));
        // A selector that cannot select as written governs nothing.
        let broken = PolicyBundleSpec {
            namespace_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "somastack.io/tenant".into(),
                        operator: "NotIn".into(),
                        values: Some(vec![]),
                    },
                ]),
            }),
            ..bundle_spec()
        };
        assert!(!governs(&broken, &labels));
        assert!(!governs(&broken, &BTreeMap::new()));
    }

    // ---- properties -------------------------------------------------------

    fn arb_regions() -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(REGIONS.to_vec(), 0..=REGIONS.len())
            .prop_map(|v| v.into_iter().map(String::from).collect())
    }

    fn arb_class() -> impl Strategy<Value = DataClassification> {
        proptest::sample::select(DataClassification::ALL.to_vec())
    }

    prop_compose! {
        fn arb_bundle()(
            rules in proptest::collection::vec((arb_class(), arb_regions()), 0..3),
            max_replicas in proptest::option::of(0..12i32),
            max_cpu in proptest::option::of(1..4000u32),
            caps in proptest::option::of(proptest::sample::subsequence(CAPS.to_vec(), 0..=CAPS.len())),
            audit in any::<bool>(),
            kill in any::<bool>(),
        ) -> PolicyBundleSpec {
            let mut seen = BTreeSet::new();
            let rules = rules.into_iter().filter(|(c, _)| seen.insert(*c))
                .map(|(c, r)| ResidencyRule { data_classification: c, allowed_regions: r }).collect();
            PolicyBundleSpec {
                residency: Some(Residency { rules }),
                limits: Some(Limits { max_replicas, max_cpu: max_cpu.map(|m| Quantity(format!("{m}m"))), max_memory: None }),
                capabilities: caps.map(|c| Capabilities { allowed: c.into_iter().map(String::from).collect() }),
                kill_switch: Some(KillSwitch { engaged: kill, reason: kill.then(|| "drill".to_string()) }),
                enforcement: if audit { Enforcement::Audit } else { Enforcement::Enforce },
                ..bundle_spec()
            }
        }
    }

    prop_compose! {
        fn arb_capsule()(
            class in arb_class(),
            caps in proptest::sample::subsequence(CAPS.to_vec(), 0..=2),
            cpu in proptest::option::of(1..4000u32),
        ) -> CapsuleSpec {
            capsule(class, &caps, cpu.map(|c| format!("{c}m")).as_deref())
        }
    }

    /// Bundles, and an approved request to judge under them.
    #[derive(Debug)]
    struct Case {
        specs: Vec<PolicyBundleSpec>,
        capsule: CapsuleSpec,
        region: &'static str,
        replicas: i32,
    }

    impl Case {
        fn request(&self) -> Request<'_> {
            Request {
                capsule: &self.capsule,
                approved: true,
                region: self.region,
                replicas: self.replicas,
            }
        }
    }

    prop_compose! {
        fn arb_case(bundles: std::ops::Range<usize>)(
            specs in proptest::collection::vec(arb_bundle(), bundles),
            capsule in arb_capsule(),
            region in proptest::sample::select(REGIONS.to_vec()),
            replicas in 0..15i32,
        ) -> Case {
            Case { specs, capsule, region, replicas }
        }
    }

    fn named(specs: &[PolicyBundleSpec]) -> Vec<Bundle<'_>> {
        const NAMES: [&str; 6] = ["b0", "b1", "b2", "b3", "b4", "b5"];
        specs
            .iter()
            .zip(NAMES)
            .map(|(spec, name)| Bundle { name, spec })
            .collect()
    }

    proptest! {
        /// The order bundles are listed in never changes the outcome.
        #[test]
        fn combination_is_order_independent(specs in proptest::collection::vec(arb_bundle(), 0..5), seed in any::<u64>()) {
            let bundles = named(&specs);
            let mut shuffled = bundles.clone();
            let n = shuffled.len();
            if n > 1 {
                for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n); }
            }
            prop_assert_eq!(Effective::combine(bundles.iter().copied()), Effective::combine(shuffled.iter().copied()));
        }

        /// A rule is broken under the combination exactly when some single
        /// bundle breaks it: the combination is the most restrictive, never
        /// stricter than its parts.
        #[test]
        fn combined_violations_are_the_union_of_each_bundles(case in arb_case(0..5)) {
            let bundles = named(&case.specs);
            let req = case.request();
            let combined = rules(&violations(&Effective::combine(bundles.iter().copied()), &req));
            let mut union = BTreeSet::new();
            for b in &bundles {
                union.extend(rules(&violations(&Effective::combine([*b]), &req)));
            }
            prop_assert_eq!(combined, union);
        }

        /// Adding a bundle can only add restrictions.
        #[test]
        fn adding_a_bundle_never_relaxes(case in arb_case(1..5)) {
            let bundles = named(&case.specs);
            let req = case.request();
            let fewer = evaluate(&bundles[..bundles.len() - 1], &req);
            let more = evaluate(&bundles, &req);
            prop_assert!(rules(&fewer.blocking).is_subset(&rules(&more.blocking)));
            prop_assert!(fewer.kill_switch.keys().all(|k| more.kill_switch.contains_key(k)));
            let class = case.capsule.data_classification;
            if let Some(cls) = Effective::combine(bundles[..bundles.len() - 1].iter().copied()).allowed_regions(class) {
                let all = Effective::combine(bundles.iter().copied());
                let now = all.allowed_regions(class).cloned().unwrap_or_default();
                prop_assert!(now.is_subset(cls));
            }
        }

        /// Audit-only bundles never block, and their findings are reported.
        #[test]
        fn audit_never_blocks(case in arb_case(0..5)) {
            let audit: Vec<PolicyBundleSpec> = case.specs.iter().map(|s| PolicyBundleSpec { enforcement: Enforcement::Audit, ..s.clone() }).collect();
            let bundles = named(&audit);
            let req = case.request();
            let result = evaluate(&bundles, &req);
            prop_assert!(result.blocking.is_empty());
            prop_assert_eq!(rules(&result.warnings), rules(&violations(&Effective::combine(bundles.iter().copied()), &req)));
        }
    }
}
