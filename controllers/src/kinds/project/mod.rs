//! `KamachiqProject` controller: goal → plan → approval → agent Jobs →
//! review → aggregated results.
//!
//! One reconcile ([`reconcile()`]), a pipeline over pure functions:
//! 1. **Dereference**: governing PolicyBundles, the plan (from `spec.tasks`,
//!    or the plan ConfigMap, or the planner when the goal changed), the
//!    project's Jobs (from the watch cache).
//! 2. **Decide** (pure): the plan is validated ([`plan::validate`]: names,
//!    dependencies, cycles, `budget.maxTasks`); then approval, capsules and
//!    policy, kill switch, suspend and budget decide what this step may do
//!    ([`gates::decide`]).
//!    With moderators ([`moderation`]: `spec.moderation` and those enforced
//!    PolicyBundles require), the goal is moderated before anything else:
//!    until every moderator allowed it, nothing is planned or run.
//! 3. **Build** (pure, [`plan::step`], [`render`]): every task's state from
//!    its Jobs, the Jobs to create, judge, stop or resume, the inputs and
//!    outputs to moderate, and the outcome (a refusal stops everything).
//! 4. **Apply**: the agents' ServiceAccount and NetworkPolicies, Jobs
//!    (created, never updated: the name is deterministic, so a second create
//!    is refused and a restart cannot duplicate one), verdicts written on
//!    the Jobs as annotations, results ConfigMaps at the end.
//! 5. **Report** (pure, [`gates::outcome`]): phase, `Succeeded` (and
//!    `Approved`) conditions, counts and a capped task list, and the Events
//!    the gates and the outcome asked for; per-task state stays in the Jobs.

#[cfg(test)]
mod fixtures;
pub mod gates;
#[cfg(test)]
mod golden;
pub mod moderation;
pub mod plan;
pub mod planning;
mod reconcile;
pub mod render;
pub mod summary;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::KamachiqProject;
use somastack_crds::common::CapsuleRef;
use somastack_crds::kamachiq::{
    ATTEMPT_LABEL, OUTPUT_ANNOTATION, ProjectPhase, REASON_ANNOTATION, ROLE_LABEL, ROUND_ANNOTATION,
    TASK_LABEL, Task, VERDICT_ANNOTATION,
};

use self::plan::{JobState, JobView, Role, TaskVerdict};
use crate::domain::capsules;
use crate::runtime::{CACHE_WAIT, Context, Wired};
use crate::shards::admits;
use crate::{Result, triggers};

/// Condition types.
pub const SUCCEEDED: &str = "Succeeded";
pub const APPROVED: &str = "Approved";
/// How soon a failed planner call is tried again.
const PLANNER_RETRY: Duration = Duration::from_secs(10);
/// Longest the operator trusts its own record of a Job it created but has
/// not seen in the cache yet.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);
/// Most bytes of an agent's output kept (a termination message is at most 4096).
const MAX_OUTPUT: usize = 4096;

/// Jobs this operator created and its cache has not shown yet, per project
/// uid (controller-runtime's "expectations"): until the cache catches up,
/// nothing more is spawned, so a stale cache can never exceed `parallelism`.
#[derive(Debug, Default)]
pub struct Expectations(Mutex<HashMap<String, HashMap<String, Instant>>>);

impl Expectations {
    fn expect(&self, uid: &str, job: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(uid.to_string())
                .or_default()
                .insert(job.to_string(), Instant::now());
        }
    }

    /// Drops what `seen` holds (or what is too old); true when nothing is outstanding.
    fn satisfied(&self, uid: &str, seen: impl Fn(&str) -> bool) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return true;
        };
        let Some(pending) = m.get_mut(uid) else {
            return true;
        };
        pending.retain(|name, at| !seen(name) && at.elapsed() < EXPECTATION_TTL);
        let done = pending.is_empty();
        if done {
            m.remove(uid);
        }
        done
    }
}

/// The capsules (package, version) each project's current plan uses, by
/// project uid: a Capsule event wakes only the projects whose plan names it,
/// not every project that has a planner.
#[derive(Debug, Default)]
pub struct CapsuleUses(Mutex<HashMap<String, HashSet<(String, String)>>>);

impl CapsuleUses {
    fn record(&self, uid: &str, tasks: &[Task], others: &[&CapsuleRef]) {
        let used: HashSet<(String, String)> = tasks
            .iter()
            .map(|t| &t.capsule)
            .chain(others.iter().copied())
            .map(|r| (r.package.clone(), r.version.clone()))
            .collect();
        if let Ok(mut m) = self.0.lock() {
            m.insert(uid.to_string(), used);
        }
    }

    fn contains(&self, uid: &str, package: &str, version: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(uid)
                .is_some_and(|u| u.contains(&(package.to_string(), version.to_string())))
        })
    }

    fn sweep(&self, live: &HashSet<String>) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|uid, _| live.contains(uid));
        }
    }
}

/// What project reconciles get beyond the shared [`Context`] (which it
/// derefs to): state only this kind keeps, owned by its own wiring.
pub struct ProjectContext {
    pub shared: Arc<Context>,
    /// KamachiqProject Jobs (labelled with their project's uid), kept by the
    /// leader only.
    pub jobs: Store<Job>,
    jobs_ready: crate::caches::Filled,
    /// Jobs created and not yet seen in the cache, per KamachiqProject.
    pub expectations: Expectations,
    /// Planner calls, made beside the reconciles.
    pub planner: planning::Calls,
    /// The capsules each project's plan uses (Capsule events wake only those).
    pub project_uses: CapsuleUses,
}

crate::runtime::kind_context!(ProjectContext);

impl ProjectContext {
    /// Waits (bounded) until the Jobs cache has had its first full list.
    pub async fn jobs_ready(&self) -> Result<()> {
        self.jobs_ready.wait(CACHE_WAIT).await
    }
}

/// The project controller, its context, and the future that keeps its Jobs
/// cache (the one watch of Jobs).
///
/// Projects are reconciled when their Jobs change, when their planner call
/// ends, all of them when a PolicyBundle changes (kill switch, approvals),
/// and those whose plan uses a Capsule when it changes. Only the projects of
/// this operator's shard (`--project-selector`) are reconciled.
pub fn controller(
    ctx: &Arc<Context>,
) -> Wired<KamachiqProject, ProjectContext, impl Future<Output = ()> + Send + use<>> {
    let shard = ctx.shards.projects.clone();
    let in_shard = move |p: &KamachiqProject| admits(shard.as_ref(), p.labels());
    // Job events come from the watch that fills `jobs`, after the store has
    // them: a reconcile triggered by a Job change always sees it.
    let (jobs, jobs_ready, caches) = crate::caches::own_cache(
        Api::<Job>::all(ctx.client.clone()),
        ctx.tuning
            .watcher_config()
            .labels(somastack_crds::kamachiq::PROJECT_UID_LABEL),
        |_| {},
    );
    let job_events = jobs.touched();
    let jobs = jobs.store();
    let project_ctx = Arc::new(ProjectContext {
        shared: ctx.clone(),
        jobs,
        jobs_ready,
        expectations: Expectations::default(),
        planner: planning::Calls::default(),
        project_uses: CapsuleUses::default(),
    });

    let bundles_changed = ctx.caches.bundles.changes(triggers::intent).map(|_| ());
    let by_capsule = ctx.caches.projects.clone();
    let index = project_ctx.clone();
    let ctl = ctx.controller(ctx.caches.projects.applied(), &ctx.caches.projects, in_shard);
    let ctl = match project_ctx.planner.triggers() {
        Some(ended) => ctl.reconcile_on(ended),
        None => ctl,
    };
    let ctl = ctl
        .owns_shared_stream(job_events)
        .reconcile_all_on(triggers::coalesced(bundles_changed, triggers::WINDOW))
        .watches_shared_stream(ctx.caches.capsules.changes(capsules::as_used), move |c| {
            by_capsule.refs(|p| uses(p, &c.spec.package, &c.spec.version, &index.project_uses))
        });
    Wired::new(ctl, project_ctx, caches)
}

/// Whether a Capsule change can matter to a project: one that has not
/// finished and names the capsule (its tasks, review, moderator, planner
/// agent or planner capsule, or its planned tasks and the moderators its
/// bundles require as last seen).
fn uses(p: &KamachiqProject, package: &str, version: &str, planned: &CapsuleUses) -> bool {
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|ph| matches!(ph, ProjectPhase::Succeeded | ProjectPhase::Failed));
    if finished {
        return false;
    }
    let is = |r: &CapsuleRef| r.package == package && r.version == version;
    p.spec.tasks.iter().any(|t| is(&t.capsule))
        || p.spec.review.as_ref().is_some_and(is)
        || p.spec.moderation.as_ref().is_some_and(|m| is(&m.capsule))
        || p.spec
            .planner
            .as_ref()
            .is_some_and(|pl| is(&pl.agent) || pl.capsule.as_ref().is_some_and(is))
        || p.uid()
            .is_some_and(|uid| planned.contains(&uid, package, version))
}

pub use self::reconcile::reconcile;

/// The Job's state from its status.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let is = |t: &str| {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return JobState::Succeeded;
    }
    if let Some(c) = is("Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        return JobState::Failed(match &c.message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason,
        });
    }
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return JobState::Suspended;
    }
    JobState::Active
}

/// A Job as the plan sees it (`None` for a Job that is not one of ours).
pub fn job_view(job: &Job) -> Option<JobView> {
    let labels = job.labels();
    let annotations = job.annotations();
    let role = match labels.get(ROLE_LABEL).map(String::as_str) {
        Some("task") => Role::Task,
        Some("review") => Role::Review,
        _ => return None,
    };
    Some(JobView {
        name: job.name_any(),
        task: labels.get(TASK_LABEL)?.clone(),
        role,
        attempt: labels.get(ATTEMPT_LABEL)?.parse().ok()?,
        round: annotations.get(ROUND_ANNOTATION).cloned().unwrap_or_default(),
        state: job_state(job),
        verdict: TaskVerdict::parse(
            annotations.get(VERDICT_ANNOTATION).map(String::as_str),
            annotations.get(REASON_ANNOTATION).map(String::as_str),
        ),
        has_output: annotations.contains_key(OUTPUT_ANNOTATION),
    })
}

/// What a plan ConfigMap made by a planner was made from: the inputs whose
/// change calls for a new plan.
fn planner_input(p: &KamachiqProject, max_tasks: i32) -> String {
    let planner = json!({ "goal": p.spec.goal, "planner": p.spec.planner, "maxTasks": max_tasks });
    crate::domain::sha256_hex(planner.to_string().as_bytes())[..16].to_string()
}

fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The planner URL of a Service's cluster IP: `None` for a headless
/// Service or anything that is not an IP address.
fn service_url(cluster_ip: &str, port: i32) -> Option<String> {
    match cluster_ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(ip) => Some(format!("http://{ip}:{port}/plan")),
        std::net::IpAddr::V6(ip) => Some(format!("http://[{ip}]:{port}/plan")),
    }
}
