//! `KamachiqProject` controller: goal → plan → approval → agent Jobs →
//! review → aggregated results.
//!
//! One reconcile:
//! 1. **Dereference**: governing PolicyBundles, the plan (from `spec.tasks`,
//!    or the plan ConfigMap, or the planner when the goal changed), the
//!    project's Jobs (from the watch cache).
//! 2. **Validate** (pure, [`plan::validate`]): names, dependencies, cycles,
//!    `budget.maxTasks`; then approval, capsules and policy, kill switch,
//!    suspend and budget decide what this step may do ([`plan::Gates`]).
//! 3. **Build** (pure, [`plan::step`]): every task's state from its Jobs,
//!    the Jobs to create, judge, stop or resume, and the outcome.
//! 4. **Apply**: the agents' ServiceAccount and NetworkPolicies, Jobs
//!    (created, never updated: the name is deterministic, so a second create
//!    is refused and a restart cannot duplicate one), verdicts written on
//!    the Jobs as annotations, results ConfigMaps at the end.
//! 5. **Status**: phase, `Succeeded` (and `Approved`) conditions, counts and
//!    a capped task list; per-task state stays in the Jobs.

pub mod plan;
pub mod planning;
pub mod render;
pub mod summary;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::common::CapsuleRef;
use somastack_crds::kamachiq::{
    ATTEMPT_LABEL, DEFAULT_MAX_TASKS, OUTPUT_ANNOTATION, PROJECT_UID_LABEL, ProjectPhase, REASON_ANNOTATION,
    RETRY_FAILED_ANNOTATION, ROLE_LABEL, ROUND_ANNOTATION, TASK_LABEL, Task, VERDICT_ANNOTATION,
};
use somastack_crds::planner::{PLANNER_API_VERSION, PlanRequest, ProjectRef};
use somastack_crds::{Capsule, KamachiqProject, KamachiqProjectStatus, PolicyBundle};

use self::plan::{Gates, JobState, JobView, Judge, Outcome, Role, Verdict};
use self::render::{JobInput, PLAN_INPUT_ANNOTATION, PLAN_KEY, Project, REFUSED_KEY};
use crate::apply::{self, owner_reference};
use crate::conditions::{self, Desired, Status};
use crate::domain::capsules::{self, CapsuleUse, may_use};
use crate::domain::policy::{self, Bundle, Effective};
use crate::domain::review::{DECISION_ANNOTATION, DIGEST_ANNOTATION, plan_approval_required_by, plan_review};
use crate::runtime::Context;
use crate::status::{self, HasConditions};
use crate::{Error, Result};

/// Condition types.
pub const SUCCEEDED: &str = "Succeeded";
pub const APPROVED: &str = "Approved";
/// Region name checked when a project sets none (no residency rule allows it).
const NO_REGION: &str = "(none: spec.region is not set)";
/// How soon a failed planner call is tried again.
const PLANNER_RETRY: Duration = Duration::from_secs(10);
/// How often a running project is looked at without an event.
const RUNNING_RESYNC: Duration = Duration::from_secs(60);
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
    fn record(&self, uid: &str, tasks: &[Task], review: Option<&CapsuleRef>) {
        let used: HashSet<(String, String)> = tasks
            .iter()
            .map(|t| &t.capsule)
            .chain(review)
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

/// Reconciles projects when their Jobs change, when their planner call ends,
/// all projects when a PolicyBundle changes (kill switch, approvals), and
/// those whose plan uses a Capsule when it changes.
pub fn wire(
    ctl: Controller<KamachiqProject>,
    ctx: &Arc<Context>,
    jobs: impl futures::Stream<Item = Arc<Job>> + Send + 'static,
) -> Controller<KamachiqProject> {
    let client = ctx.client.clone();
    let by_bundle = ctx.caches.projects.clone();
    let by_capsule = ctx.caches.projects.clone();
    let index = ctx.clone();
    let ctl = match ctx.planner.triggers() {
        Some(ended) => ctl.reconcile_on(ended),
        None => ctl,
    };
    // Job events come from the reflector that fills `ctx.jobs`, after the
    // store has them: a reconcile triggered by a Job change always sees it.
    ctl.owns_shared_stream(jobs)
        .watches(
            Api::<PolicyBundle>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                by_bundle
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Capsule>::all(client),
            watcher::Config::default(),
            move |c| {
                by_capsule
                    .state()
                    .iter()
                    .filter(|p| uses(p, &c.spec.package, &c.spec.version, &index.project_uses))
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
}

/// Whether a Capsule change can matter to a project: one that has not
/// finished and names the capsule (its tasks, review, planner agent or
/// planner capsule, or its planned tasks as last seen).
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
        || p.spec
            .planner
            .as_ref()
            .is_some_and(|pl| is(&pl.agent) || pl.capsule.as_ref().is_some_and(is))
        || p.uid()
            .is_some_and(|uid| planned.contains(&uid, package, version))
}

/// What one reconcile decided, written to status at the end.
struct Report {
    phase: ProjectPhase,
    succeeded: Desired,
    approved: Option<Desired>,
    requeue: Duration,
}

impl Report {
    fn new(
        phase: ProjectPhase,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
        requeue: Duration,
    ) -> Self {
        Report {
            phase,
            succeeded: Desired::new(SUCCEEDED, status, reason, message),
            approved: None,
            requeue,
        }
    }
}

/// Everything one reconcile works with.
struct Run<'a> {
    obj: &'a KamachiqProject,
    ctx: &'a Context,
    namespace: String,
    uid: String,
    status: KamachiqProjectStatus,
    bundles: Vec<Arc<PolicyBundle>>,
}

pub async fn reconcile(obj: Arc<KamachiqProject>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await?;
    ctx.jobs_ready().await?;
    if obj.metadata.deletion_timestamp.is_some() {
        // Owner references: the garbage collector removes Jobs and ConfigMaps.
        return Ok(Action::await_change());
    }
    let namespace = obj.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    // What is kept per project in memory goes with the project.
    ctx.planner.sweep(|| {
        let live: HashSet<String> = ctx
            .caches
            .projects
            .state()
            .iter()
            .filter_map(|p| p.uid())
            .collect();
        ctx.project_uses.sweep(&live);
        live
    });
    let mut run = Run {
        bundles: ctx.governing_bundles(&namespace),
        obj: obj.as_ref(),
        ctx: ctx.as_ref(),
        namespace,
        uid,
        status: obj.status.clone().unwrap_or_default(),
    };
    let report = match run.step().await {
        Ok(report) => report,
        // An object the project needs was refused by the API server: say
        // so (status and Event) instead of retrying the same write forever.
        Err(e @ Error::ChildRefused { .. }) => {
            let message = e.to_string();
            if !run.already(SUCCEEDED, "ChildRejected") {
                ctx.event(
                    obj.as_ref(),
                    EventType::Warning,
                    "ChildRejected",
                    "Apply",
                    message.clone(),
                )
                .await;
            }
            Report::new(
                ProjectPhase::Failed,
                Status::False,
                "ChildRejected",
                format!("{message}; change the project (or what conflicts with it) and it is tried again"),
                Duration::from_secs(300),
            )
        }
        Err(e) => return Err(e),
    };
    run.write_status(&report).await?;
    Ok(Action::requeue(report.requeue))
}

/// Pure: checks every capsule the plan uses. `Err((reason, message))` when
/// one is missing, unusable or blocked by enforced policy.
pub fn check_capsules(
    tasks: &[Task],
    review: Option<&CapsuleRef>,
    capsules: &[Arc<Capsule>],
    bundles: &[Arc<PolicyBundle>],
    region: Option<&str>,
) -> std::result::Result<(), (&'static str, String)> {
    let mut refs: Vec<&CapsuleRef> = tasks.iter().map(|t| &t.capsule).chain(review).collect();
    refs.sort_by(|a, b| (&a.package, &a.version).cmp(&(&b.package, &b.version)));
    refs.dedup();
    let region = region.unwrap_or(NO_REGION);
    for r in refs {
        match may_use(&capsules::resolve(capsules, r), bundles, region, 1) {
            CapsuleUse::Allowed(_) => {}
            CapsuleUse::CapsuleNotFound => {
                return Err((
                    "CapsuleNotFound",
                    format!(
                        "Capsule {} version {} is not published; no task runs until it is",
                        r.package, r.version
                    ),
                ));
            }
            CapsuleUse::CapsuleUnusable(why) => return Err(("CapsuleUnusable", why)),
            CapsuleUse::Blocked(eval) => {
                let problems: Vec<String> = eval
                    .blocking
                    .iter()
                    .map(|v| {
                        format!(
                            "{} (rule {}, PolicyBundle {})",
                            v.message,
                            v.rule.as_str(),
                            v.bundles.join(", ")
                        )
                    })
                    .collect();
                return Err((
                    "PolicyBlocked",
                    format!("capsule {} {}: {}", r.package, r.version, problems.join("; ")),
                ));
            }
        }
    }
    Ok(())
}

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
        verdict: Verdict::parse(
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

/// The project's identity, as its children need it.
fn project_of(obj: &KamachiqProject) -> Result<Project<'_>> {
    Ok(Project {
        name: obj
            .metadata
            .name
            .as_deref()
            .ok_or(Error::MissingField("metadata.name"))?,
        namespace: obj
            .metadata
            .namespace
            .as_deref()
            .ok_or(Error::MissingField("metadata.namespace"))?,
        uid: obj
            .metadata
            .uid
            .as_deref()
            .ok_or(Error::MissingField("metadata.uid"))?,
        goal: &obj.spec.goal,
        owner: owner_reference(obj)?,
        region: obj.spec.region.as_deref(),
        placement: obj.spec.placement.as_ref(),
    })
}

impl<'a> Run<'a> {
    fn project(&self) -> Result<Project<'a>> {
        project_of(self.obj)
    }

    fn max_tasks(&self) -> i32 {
        self.obj
            .spec
            .budget
            .as_ref()
            .and_then(|b| b.max_tasks)
            .unwrap_or(DEFAULT_MAX_TASKS)
    }

    /// The plan: `spec.tasks`, or the stored plan, or a new one from the
    /// planner (called beside the reconcile: see [`planning`]).
    async fn tasks(&mut self) -> Result<std::result::Result<Vec<Task>, Report>> {
        let spec = &self.obj.spec;
        if !spec.tasks.is_empty() {
            return Ok(Ok(spec.tasks.clone()));
        }
        let Some(planner) = &spec.planner else {
            return Ok(Err(Report::new(
                ProjectPhase::Failed,
                Status::False,
                "InvalidPlan",
                "the project lists no tasks and names no planner",
                Duration::from_secs(3600),
            )));
        };
        let project = self.project()?;
        let made_from = planner_input(self.obj, self.max_tasks());
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        if let Some(cm) = cms.get_opt(&project.plan_config_map_name()).await?
            && cm.annotations().get(PLAN_INPUT_ANNOTATION) == Some(&made_from)
        {
            let data = cm.data.unwrap_or_default();
            if let Some(why) = data.get(REFUSED_KEY) {
                // Refused once for this input: not asked again until it changes.
                return Ok(Err(Report::new(
                    ProjectPhase::Failed,
                    Status::False,
                    "PlanTooLarge",
                    why.clone(),
                    Duration::from_secs(3600),
                )));
            }
            if let Some(Ok(tasks)) = data
                .get(PLAN_KEY)
                .map(|json| serde_json::from_str::<Vec<Task>>(json))
            {
                self.ctx.planner.forget(&self.uid);
                return Ok(Ok(tasks));
            }
        }

        let url = match (&planner.url, &planner.capsule) {
            (Some(url), _) => {
                if let Err(why) =
                    policy::planner_url_allowed(&policy::views(&self.bundles, &self.bundle_names()), url)
                {
                    if !self.already(SUCCEEDED, "PlannerNotAllowed") {
                        self.ctx
                            .event(
                                self.obj,
                                EventType::Warning,
                                "PlannerNotAllowed",
                                "Plan",
                                why.clone(),
                            )
                            .await;
                    }
                    return Ok(Err(Report::new(
                        ProjectPhase::Pending,
                        Status::Unknown,
                        "PlannerNotAllowed",
                        format!("{why}; nothing was called"),
                        Duration::from_secs(3600),
                    )));
                }
                url.clone()
            }
            (None, Some(capsule)) => match self.planner_service(capsule).await {
                Ok(url) => url,
                Err(message) => {
                    return Ok(Err(Report::new(
                        ProjectPhase::Planning,
                        Status::Unknown,
                        "PlannerNotInstalled",
                        message,
                        PLANNER_RETRY,
                    )));
                }
            },
            (None, None) => String::new(),
        };
        let shown = crate::text::redact_url(&url);
        let request = PlanRequest {
            api_version: PLANNER_API_VERSION.into(),
            goal: spec.goal.clone(),
            project: ProjectRef {
                namespace: self.namespace.clone(),
                name: self.obj.name_any(),
                uid: self.uid.clone(),
            },
            agent: planner.agent.clone(),
            max_tasks: self.max_tasks(),
        };
        let timeout = Duration::from_secs(planner.timeout_seconds.max(1) as u64);
        // The URL is part of the call's identity (a capsule planner's
        // Service may move); the stored plan's is not.
        let call_input = format!("{made_from} {url}");
        let poll = self.ctx.planner.poll(
            ObjectRef::from_obj(self.obj),
            &self.uid,
            &call_input,
            &url,
            &request,
            timeout,
        );
        match poll {
            planning::Poll::InFlight(since) => Ok(Err(Report::new(
                ProjectPhase::Planning,
                Status::Unknown,
                "Planning",
                format!(
                    "waiting for planner {shown} ({}s so far; each attempt may take {}s)",
                    since.as_secs(),
                    timeout.as_secs()
                ),
                // The call's end triggers a reconcile; this only bounds a lost one.
                timeout.max(PLANNER_RETRY),
            ))),
            planning::Poll::Planned(tasks) => {
                let bytes = crate::domain::plans::plan_bytes(&tasks);
                if bytes > plan::MAX_PLAN_BYTES {
                    let why = format!(
                        "planner {shown} planned {} tasks in {} KiB; at most {} KiB can be stored (a ConfigMap holds 1 MiB), so nothing runs: ask the planner for fewer or smaller tasks (goal, budget.maxTasks), which plans again",
                        tasks.len(),
                        bytes.div_ceil(1024),
                        plan::MAX_PLAN_BYTES / 1024
                    );
                    let cm = project.refused_plan_config_map(&why, &made_from);
                    apply::apply::<ConfigMap>(&self.ctx.client, &self.namespace, &cm).await?;
                    self.ctx.planner.forget(&self.uid);
                    self.ctx
                        .event(self.obj, EventType::Warning, "PlanTooLarge", "Plan", why.clone())
                        .await;
                    return Ok(Err(Report::new(
                        ProjectPhase::Failed,
                        Status::False,
                        "PlanTooLarge",
                        why,
                        Duration::from_secs(3600),
                    )));
                }
                let digest = plan::digest(&spec.goal, &tasks);
                let cm = project.plan_config_map(&tasks, &digest, &made_from);
                apply::apply::<ConfigMap>(&self.ctx.client, &self.namespace, &cm).await?;
                self.ctx.planner.forget(&self.uid);
                self.ctx
                    .event(
                        self.obj,
                        EventType::Normal,
                        "Planned",
                        "Plan",
                        format!("planner {shown} planned {} tasks ({digest})", tasks.len()),
                    )
                    .await;
                Ok(Ok(tasks))
            }
            planning::Poll::Failed { failure, retry_in } => {
                let reason = failure.reason();
                if !self.already(SUCCEEDED, reason) {
                    self.ctx
                        .event(self.obj, EventType::Warning, reason, "Plan", failure.to_string())
                        .await;
                }
                Ok(Err(Report::new(
                    ProjectPhase::Planning,
                    Status::Unknown,
                    reason,
                    format!("{failure}; trying again in {} s", retry_in.as_secs().max(1)),
                    retry_in.max(Duration::from_secs(1)),
                )))
            }
        }
    }

    fn bundle_names(&self) -> Vec<String> {
        self.bundles.iter().map(|b| b.name_any()).collect()
    }

    /// `http://<cluster IP>:<port>/plan`: the Service of the Installation in
    /// this namespace that runs the planner capsule. Its ClusterIP, not its
    /// DNS name: the operator may run outside the cluster, or in a cluster
    /// without DNS, and an IP names exactly the Service it read.
    async fn planner_service(&self, capsule: &CapsuleRef) -> std::result::Result<String, String> {
        let inst = self
            .ctx
            .installations
            .state()
            .into_iter()
            .filter(|i| {
                i.namespace().as_deref() == Some(self.namespace.as_str()) && &i.spec.capsule == capsule
            })
            .min_by_key(|i| i.name_any())
            .ok_or_else(|| {
                format!(
                    "no Installation of planner capsule {} {} in namespace {}",
                    capsule.package, capsule.version, self.namespace
                )
            })?;
        let capsules = self.ctx.capsules.state();
        let port = capsules::find(&capsules, capsule)
            .and_then(|c| c.spec.ports.first().map(|p| p.port))
            .ok_or_else(|| {
                format!(
                    "planner capsule {} {} declares no port",
                    capsule.package, capsule.version
                )
            })?;
        let name = inst.name_any();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let service = services
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read Service {name} of planner Installation {name}: {e}"))?
            .ok_or_else(|| format!("planner Installation {name} has no Service yet"))?;
        let ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| format!("Service {name} of planner Installation {name} has no cluster IP"))?;
        service_url(&ip, port).ok_or_else(|| {
            format!("Service {name} of planner Installation {name} has no usable cluster IP ({ip:?})")
        })
    }

    /// Whether the `Succeeded` condition already has this reason (an Event
    /// was recorded when it got it).
    fn already(&self, type_: &str, reason: &str) -> bool {
        self.obj
            .conditions()
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason)
    }

    async fn step(&mut self) -> Result<Report> {
        let spec = &self.obj.spec;
        let round = self
            .obj
            .annotations()
            .get(RETRY_FAILED_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        if !round.is_empty() && self.status.retry_token.as_deref() != Some(round.as_str()) {
            // A retry of the failed tasks: the run (and its duration budget) starts again.
            self.status.retry_token = Some(round.clone());
            self.status.start_time = None;
            self.status.completion_time = None;
            self.ctx
                .event(
                    self.obj,
                    EventType::Normal,
                    "RetryingFailedTasks",
                    "Retry",
                    format!("retry round {round}: failed tasks run again"),
                )
                .await;
        }

        // Plan.
        let tasks = match self.tasks().await? {
            Ok(t) => t,
            Err(report) => return Ok(report),
        };
        self.ctx
            .project_uses
            .record(&self.uid, &tasks, spec.review.as_ref());
        if let Err(problems) = plan::validate(&tasks, self.max_tasks()) {
            self.status.plan_digest = None;
            if !self.already(SUCCEEDED, "InvalidPlan") {
                self.ctx
                    .event(
                        self.obj,
                        EventType::Warning,
                        "InvalidPlan",
                        "Plan",
                        problems.join("; "),
                    )
                    .await;
            }
            return Ok(Report::new(
                ProjectPhase::Failed,
                Status::False,
                "InvalidPlan",
                format!(
                    "the plan is invalid, nothing was started: {}",
                    problems.join("; ")
                ),
                Duration::from_secs(3600),
            ));
        }
        let digest = plan::digest(&spec.goal, &tasks);
        let project = self.project()?;
        if self.status.plan_digest.as_deref() != Some(digest.as_str()) || self.status.plan_ref.is_none() {
            if spec.planner.is_none() || !spec.tasks.is_empty() {
                let cm = project.plan_config_map(&tasks, &digest, "spec.tasks");
                apply::apply::<ConfigMap>(&self.ctx.client, &self.namespace, &cm).await?;
            }
            self.status.plan_digest = Some(digest.clone());
            self.status.plan_ref = Some(project.plan_config_map_name());
        }

        // Jobs, as the cache shows them.
        let jobs: Vec<Arc<Job>> = self
            .ctx
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.labels().get(PROJECT_UID_LABEL) == Some(&self.uid)
                    && j.namespace().as_deref() == Some(&self.namespace)
            })
            .collect();
        let views: Vec<JobView> = jobs.iter().filter_map(|j| job_view(j)).collect();
        if self.status.start_time.is_none() {
            // The run started when its first Job of this round was made; an
            // object read before the last status write reached the cache
            // must not lose that (the duration budget counts from it).
            self.status.start_time = jobs
                .iter()
                .filter(|j| {
                    j.annotations()
                        .get(ROUND_ANNOTATION)
                        .map(String::as_str)
                        .unwrap_or("")
                        == round
                })
                .filter_map(|j| j.metadata.creation_timestamp.clone())
                .min_by_key(|t| t.0);
        }
        let caught_up = self
            .ctx
            .expectations
            .satisfied(&self.uid, |name| views.iter().any(|v| v.name == name));

        // Gates.
        let mut report: Option<Report> = None;
        let mut approved = None;
        let mut gates = Gates {
            spawn: caught_up,
            ..Gates::default()
        };
        let required = spec
            .approval
            .as_ref()
            .is_some_and(|a| a.required)
            .then(|| "spec.approval.required".to_string())
            .or_else(|| plan_approval_required_by(&self.bundles).map(|b| format!("PolicyBundle {b}")));
        if let Some(why) = &required {
            match plan_review(self.obj, &digest) {
                Some(Ok(reviewer)) => {
                    approved = Some(Desired::new(
                        APPROVED,
                        Status::True,
                        "PlanApproved",
                        format!("{reviewer} approved plan {digest}"),
                    ));
                }
                Some(Err(message)) => {
                    return Ok(Report {
                        approved: Some(Desired::new(
                            APPROVED,
                            Status::False,
                            "PlanRejected",
                            message.clone(),
                        )),
                        ..Report::new(
                            ProjectPhase::Failed,
                            Status::False,
                            "PlanRejected",
                            message,
                            Duration::from_secs(3600),
                        )
                    });
                }
                None => {
                    gates.spawn = false;
                    let message = format!(
                        "approval required by {why}: a reviewer must approve plan {digest} (annotate the project {DECISION_ANNOTATION}=approve {DIGEST_ANNOTATION}={digest}; the plan is in ConfigMap {})",
                        project.plan_config_map_name()
                    );
                    if !self.already(SUCCEEDED, "AwaitingApproval") {
                        self.ctx
                            .event(
                                self.obj,
                                EventType::Normal,
                                "AwaitingApproval",
                                "Approve",
                                message.clone(),
                            )
                            .await;
                    }
                    approved = Some(Desired::new(
                        APPROVED,
                        Status::False,
                        "AwaitingApproval",
                        message.clone(),
                    ));
                    report = Some(Report::new(
                        ProjectPhase::AwaitingApproval,
                        Status::Unknown,
                        "AwaitingApproval",
                        message,
                        RUNNING_RESYNC,
                    ));
                }
            }
        }
        let capsules = self.ctx.capsules.state();
        if report.is_none()
            && let Err((reason, message)) = check_capsules(
                &tasks,
                spec.review.as_ref(),
                &capsules,
                &self.bundles,
                spec.region.as_deref(),
            )
        {
            gates.spawn = false;
            if !self.already(SUCCEEDED, reason) {
                self.ctx
                    .event(self.obj, EventType::Warning, reason, "Spawn", message.clone())
                    .await;
            }
            report = Some(Report::new(
                ProjectPhase::Pending,
                Status::Unknown,
                reason,
                message,
                RUNNING_RESYNC,
            ));
        }
        let names: Vec<String> = self.bundles.iter().map(|b| b.name_any()).collect();
        let effective = Effective::combine(
            self.bundles
                .iter()
                .zip(&names)
                .map(|(b, name)| Bundle { name, spec: &b.spec }),
        );
        if let Some((bundle, reason)) = effective.kill_switch.iter().next() {
            gates.stop = true;
            let message = format!(
                "kill switch engaged by PolicyBundle {bundle} ({reason}): running task Jobs are stopped and nothing new starts until it is released"
            );
            if !self.already(SUCCEEDED, "KillSwitchEngaged") {
                self.ctx
                    .event(
                        self.obj,
                        EventType::Warning,
                        "KillSwitchEngaged",
                        "Halt",
                        message.clone(),
                    )
                    .await;
            }
            report = Some(Report::new(
                ProjectPhase::Halted,
                Status::Unknown,
                "KillSwitchEngaged",
                message,
                RUNNING_RESYNC,
            ));
        } else if spec.suspend {
            gates.stop = true;
            report = Some(Report::new(
                ProjectPhase::Suspended,
                Status::Unknown,
                "Suspended",
                "spec.suspend is true: running task Jobs are suspended (their pods stopped) and nothing new starts; set it to false to resume",
                Duration::from_secs(3600),
            ));
        }
        let now = jiff::Timestamp::now();
        let deadline = spec
            .budget
            .as_ref()
            .and_then(|b| b.max_duration_seconds)
            .and_then(|max| {
                let start = self.status.start_time.as_ref()?.0;
                start
                    .checked_add(jiff::SignedDuration::from_secs(max as i64))
                    .ok()
            });
        gates.deadline_passed = deadline.is_some_and(|d| now >= d);

        // Build.
        let step = plan::step(&plan::Input {
            tasks: &tasks,
            jobs: &views,
            round: &round,
            parallelism: spec.parallelism,
            review: spec.review.is_some(),
            gates: gates.clone(),
        });

        // Apply.
        let job_api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let by_name: HashMap<&str, &Arc<Job>> = jobs
            .iter()
            .map(|j| (j.metadata.name.as_deref().unwrap_or_default(), j))
            .collect();
        for j in &step.judge {
            self.judge(&job_api, j, &by_name).await?;
        }
        for (names, suspend) in [(&step.suspend, true), (&step.resume, false)] {
            for name in names {
                let patch = json!({ "spec": { "suspend": suspend } });
                match job_api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !step.spawn.is_empty() {
            self.spawn(&project, &tasks, &jobs, &step.spawn, &round, &effective)
                .await?;
            if self.status.start_time.is_none() {
                self.status.start_time = Some(status::now());
            }
        }

        // Status.
        let counts = plan::counts(&step.tasks);
        self.status.task_counts = Some(counts.clone());
        self.status.tasks = plan::listed(&step.tasks);
        let outcome_report = match &step.outcome {
            Outcome::Succeeded => {
                self.finish(&project, &tasks, &jobs).await?;
                Report::new(
                    ProjectPhase::Succeeded,
                    Status::True,
                    "AllTasksSucceeded",
                    format!(
                        "all {} tasks succeeded; results in ConfigMap {}",
                        counts.total,
                        project.results_config_map_name(0)
                    ),
                    Duration::from_secs(3600),
                )
            }
            Outcome::Failed(failed) => {
                self.finish(&project, &tasks, &jobs).await?;
                let (reason, head) = if gates.deadline_passed {
                    (
                        "BudgetExceeded",
                        "budget.maxDurationSeconds ran out; running tasks were stopped".to_string(),
                    )
                } else {
                    (
                        "TasksFailed",
                        format!("{} of {} tasks failed", failed.len(), counts.total),
                    )
                };
                let named: Vec<String> = failed
                    .iter()
                    .take(10)
                    .map(|(t, m)| format!("{t} ({m})"))
                    .collect();
                let more = if failed.len() > 10 {
                    format!(" and {} more", failed.len() - 10)
                } else {
                    String::new()
                };
                let message = format!(
                    "{head}: {}{more}; annotate {RETRY_FAILED_ANNOTATION} with a new value to run the failed tasks again",
                    named.join(", ")
                );
                Report::new(
                    ProjectPhase::Failed,
                    Status::False,
                    reason,
                    message,
                    Duration::from_secs(3600),
                )
            }
            Outcome::Running => {
                self.status.completion_time = None;
                let requeue = match (caught_up, deadline) {
                    (false, _) => Duration::from_secs(1),
                    (true, Some(d)) => Duration::try_from(d.duration_since(now))
                        .unwrap_or_default()
                        .clamp(Duration::from_secs(1), RUNNING_RESYNC),
                    _ => RUNNING_RESYNC,
                };
                report
                    .map(|r| Report {
                        requeue: r.requeue.min(requeue),
                        ..r
                    })
                    .unwrap_or_else(|| {
                        Report::new(
                            ProjectPhase::Running,
                            Status::Unknown,
                            "Running",
                            plan::progress(&counts),
                            requeue,
                        )
                    })
            }
        };
        if matches!(
            outcome_report.phase,
            ProjectPhase::Succeeded | ProjectPhase::Failed
        ) && !self.already(SUCCEEDED, outcome_report.succeeded.reason)
        {
            let type_ = if outcome_report.phase == ProjectPhase::Succeeded {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.ctx
                .event(
                    self.obj,
                    type_,
                    outcome_report.succeeded.reason,
                    "Finish",
                    outcome_report.succeeded.message.clone(),
                )
                .await;
        }
        Ok(Report {
            approved: approved.or(outcome_report.approved.clone()),
            ..outcome_report
        })
    }

    /// Records the verdict of a finished Job (reading its pod for the output).
    async fn judge(&self, api: &Api<Job>, j: &Judge, jobs: &HashMap<&str, &Arc<Job>>) -> Result<()> {
        let (name, verdict, output) = match j {
            Judge::Failed { job, reason } => {
                let detail = self
                    .pod_message(job)
                    .await?
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                (
                    job,
                    Verdict::Failed(truncate_bytes(&format!("{reason}{detail}"), 512)),
                    None,
                )
            }
            Judge::ReadOutput { job } => {
                let output = self.pod_message(job).await?.unwrap_or_default();
                if output.trim().is_empty() {
                    (
                        job,
                        Verdict::Rejected("the agent wrote no output (termination message empty)".into()),
                        None,
                    )
                } else if self.obj.spec.review.is_some() {
                    // Kept for the review Job; the verdict comes from it.
                    let patch = json!({ "metadata": { "annotations": { OUTPUT_ANNOTATION: truncate_bytes(&output, MAX_OUTPUT) } } });
                    api.patch(job, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    return Ok(());
                } else {
                    (job, Verdict::Accepted, Some(output))
                }
            }
            Judge::Reviewed {
                job,
                review,
                accepted,
                reason,
            } => {
                if *accepted {
                    (job, Verdict::Accepted, None)
                } else {
                    let said = self
                        .pod_message(review)
                        .await?
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    (
                        job,
                        Verdict::Rejected(truncate_bytes(
                            &format!("review {review} rejected it ({reason}){said}"),
                            512,
                        )),
                        None,
                    )
                }
            }
        };
        let mut annotations =
            json!({ VERDICT_ANNOTATION: verdict.as_str(), REASON_ANNOTATION: verdict.reason() });
        if let Some(out) = output {
            annotations[OUTPUT_ANNOTATION] = json!(truncate_bytes(&out, MAX_OUTPUT));
        }
        let patch = json!({ "metadata": { "annotations": annotations } });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let seconds = jobs.get(name.as_str()).and_then(|j| summary::finished_seconds(j));
        self.ctx
            .metrics
            .task_judged(&self.namespace, verdict.as_str(), seconds);
        tracing::info!(job = %name, verdict = verdict.as_str(), reason = verdict.reason(), "task attempt judged");
        Ok(())
    }

    /// The termination message of the Job's (last) pod's agent container.
    async fn pod_message(&self, job: &str) -> Result<Option<String>> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await?;
        let mut finished: Vec<(jiff::Timestamp, String)> = list
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                let at = t.finished_at.as_ref().map(|f| f.0).unwrap_or_default();
                Some((at, t.message.clone().unwrap_or_default()))
            })
            .collect();
        finished.sort();
        Ok(finished.pop().map(|(_, m)| m).filter(|m| !m.trim().is_empty()))
    }

    /// Creates the Jobs of `spawns` (and, first, what they run under).
    async fn spawn(
        &self,
        project: &Project<'_>,
        tasks: &[Task],
        own_jobs: &[Arc<Job>],
        spawns: &[plan::Spawn],
        round: &str,
        effective: &Effective,
    ) -> Result<()> {
        let client = &self.ctx.client;
        apply::apply::<ServiceAccount>(client, &self.namespace, &project.service_account()).await?;
        for np in project.network_policies() {
            apply::apply::<NetworkPolicy>(client, &self.namespace, &np).await?;
        }
        let capsules = self.ctx.capsules.state();
        let api: Api<Job> = Api::namespaced(client.clone(), &self.namespace);
        let jobs = self.ctx.jobs.state();
        // Accepted task attempts: what dependents receive.
        let accepted: Vec<plan::Accepted<'_>> = own_jobs
            .iter()
            .filter(|j| j.labels().get(ROLE_LABEL).map(String::as_str) == Some("task"))
            .filter(|j| j.annotations().get(VERDICT_ANNOTATION).map(String::as_str) == Some("accepted"))
            .filter_map(|j| {
                Some(plan::Accepted {
                    task: j.labels().get(TASK_LABEL)?,
                    attempt: j.labels().get(ATTEMPT_LABEL)?.parse().ok()?,
                    output: j
                        .annotations()
                        .get(OUTPUT_ANNOTATION)
                        .map(String::as_str)
                        .unwrap_or(""),
                })
            })
            .collect();
        for s in spawns {
            let Some(task) = tasks.iter().find(|t| t.name == s.task) else {
                continue;
            };
            let capsule_ref = match s.role {
                Role::Task => &task.capsule,
                Role::Review => match &self.obj.spec.review {
                    Some(r) => r,
                    None => continue,
                },
            };
            let Some(capsule) = capsules::find(&capsules, capsule_ref) else {
                continue;
            };
            let output = match s.role {
                Role::Review => {
                    let name = project.job_name(&task.name, s.attempt, Role::Task);
                    jobs.iter()
                        .find(|j| j.name_any() == name && j.namespace().as_deref() == Some(&self.namespace))
                        .and_then(|j| j.annotations().get(OUTPUT_ANNOTATION).cloned())
                }
                Role::Task => None,
            };
            let dependencies = plan::dependency_outputs(task, &accepted);
            let manifest = render::job(
                project,
                &JobInput {
                    task,
                    role: s.role,
                    attempt: s.attempt,
                    round,
                    capsule: &capsule.spec,
                    output: output.as_deref(),
                    dependencies: &dependencies,
                    max_cpu: effective.max_cpu.as_ref().map(|c| c.value.written.as_str()),
                    max_memory: effective.max_memory.as_ref().map(|c| c.value.written.as_str()),
                },
            );
            let job: Job = serde_json::from_value(manifest)?;
            let name = job.name_any();
            match api.create(&PostParams::default(), &job).await {
                Ok(_) => tracing::info!(job = %name, task = %task.name, attempt = s.attempt, "job created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(job = %name, "job already exists")
                }
                Err(e) => return Err(Error::refusing(e, "Job", &name)),
            }
            self.ctx.expectations.expect(&self.uid, &name);
        }
        Ok(())
    }

    /// Gathers the accepted outputs into the results ConfigMap(s), once.
    async fn finish(&mut self, project: &Project<'_>, tasks: &[Task], jobs: &[Arc<Job>]) -> Result<()> {
        if self.status.completion_time.is_some() && self.status.results_ref.is_some() {
            return Ok(());
        }
        let accepted: HashMap<&str, &Arc<Job>> = jobs
            .iter()
            .filter(|j| j.annotations().get(VERDICT_ANNOTATION).map(String::as_str) == Some("accepted"))
            .filter(|j| j.labels().get(ROLE_LABEL).map(String::as_str) == Some("task"))
            .filter_map(|j| j.labels().get(TASK_LABEL).map(|t| (t.as_str(), j)))
            .collect();
        let outputs: Vec<(String, String)> = tasks
            .iter()
            .filter_map(|t| {
                let job = accepted.get(t.name.as_str())?;
                Some((
                    t.name.clone(),
                    job.annotations()
                        .get(OUTPUT_ANNOTATION)
                        .cloned()
                        .unwrap_or_default(),
                ))
            })
            .collect();
        let shards = plan::shard_results(&outputs);
        for (i, data) in shards.iter().enumerate() {
            let cm = project.results_config_map(i, shards.len(), data);
            apply::apply::<ConfigMap>(&self.ctx.client, &self.namespace, &cm).await?;
        }
        self.status.results_ref = Some(project.results_config_map_name(0));
        if self.status.completion_time.is_none() {
            self.status.completion_time = Some(status::now());
        }
        Ok(())
    }

    async fn write_status(&mut self, report: &Report) -> Result<()> {
        let mut desired = vec![report.succeeded.clone()];
        desired.extend(report.approved.clone());
        let generation = self.obj.metadata.generation;
        self.status.conditions =
            conditions::merge(self.obj.conditions(), &desired, generation, &status::now());
        self.status.observed_generation = generation;
        self.status.phase = Some(report.phase);
        if !matches!(report.phase, ProjectPhase::Succeeded | ProjectPhase::Failed) {
            self.status.completion_time = None;
        }
        let api: Api<KamachiqProject> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let body = serde_json::to_value(&self.status)?;
        status::apply_if_changed(&api, self.obj, self.obj.status.as_ref(), body).await
    }
}
