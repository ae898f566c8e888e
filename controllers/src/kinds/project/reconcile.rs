//! One reconcile of a KamachiqProject, as a pipeline: dereference (the
//! plan, the Jobs), decide ([`gates::decide`], [`plan::step`]), build
//! ([`render`]), apply (Jobs, verdicts, results), report (status, Events).
//! The decisions are pure functions of their own modules; this module
//! reads the cluster, performs the writes and publishes the Events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use somastack_crds::common::CapsuleRef;
use somastack_crds::kamachiq::{
    ATTEMPT_LABEL, DECISION_ANNOTATION, DEFAULT_MAX_TASKS, OUTPUT_ANNOTATION, PROJECT_UID_LABEL, Planner,
    ProjectPhase, REASON_ANNOTATION, RETRY_FAILED_ANNOTATION, ROLE_LABEL, ROUND_ANNOTATION, TASK_LABEL, Task,
    VERDICT_ANNOTATION,
};
use somastack_crds::planner::{PLANNER_API_VERSION, PlanRequest, ProjectRef};
use somastack_crds::{Capsule, KamachiqProject, KamachiqProjectStatus, PolicyBundle};

use super::gates::{
    self, EventIntent, GateDecision, Gated, Observed, Progress, Recorded, Report, SETTLED_RESYNC,
};
use super::moderation::{self, Decision, Gate, Moderator, Records, Stage, Subject};
use super::plan::{self, JobView, Judge, Role, Step, TaskVerdict};
use super::render::{self, JobInput, ModerationInput, PLAN_INPUT_ANNOTATION, PLAN_KEY, Project, REFUSED_KEY};
use super::{
    MAX_OUTPUT, PLANNER_RETRY, ProjectContext, job_view, planner_input, planning, service_url, summary,
    truncate_bytes,
};
use crate::apply::{ApiResultExt, apply_object, owner_reference};
use crate::conditions::{self, Status};
use crate::domain::capsules;
use crate::domain::policy::{self, Effective};
use crate::shards::admits;
use crate::status::{self, HasConditions};
use crate::{Error, Result};

/// API calls one reconcile makes at once when it judges finished Jobs or
/// creates new ones (each a round trip of its own).
const CALLS_AT_ONCE: usize = 16;

/// Runs `calls`, [`CALLS_AT_ONCE`] at a time, all to their end; the first error.
async fn together(calls: Vec<impl Future<Output = Result<()>>>) -> Result<()> {
    let done: Vec<Result<()>> = stream::iter(calls)
        .buffer_unordered(CALLS_AT_ONCE)
        .collect()
        .await;
    done.into_iter().collect()
}

/// The plan, or the report of why there is none (yet).
type Planned = std::result::Result<Vec<Task>, Report>;

pub async fn reconcile(obj: Arc<KamachiqProject>, ctx: Arc<ProjectContext>) -> Result<Action> {
    if !admits(ctx.shards.projects.as_ref(), obj.labels()) {
        // Another operator's shard.
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    ctx.jobs_ready().await?;
    if obj.metadata.deletion_timestamp.is_some() {
        // Owner references: the garbage collector removes Jobs and ConfigMaps.
        return Ok(Action::await_change());
    }
    let project = project_of(&obj)?;
    sweep(&ctx);
    let mut run = ProjectReconcile::new(&obj, &ctx, project);
    let report = match run.step().await {
        Ok(report) => report,
        // An object the project needs was refused by the API server: say
        // so (status and Event) instead of retrying the same write forever.
        Err(e @ Error::ChildRefused { .. }) => {
            let (report, event) = gates::child_rejected(&e.to_string(), &run.recorded());
            run.publish(event).await;
            report
        }
        Err(e) => return Err(e),
    };
    run.write_status(&report).await?;
    Ok(Action::requeue(report.requeue))
}

/// What is kept per project in memory goes with the project.
fn sweep(ctx: &ProjectContext) {
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
}

/// The project's identity, as its children need it: read once, and a
/// project without a name, namespace or uid is an error, never a default.
fn project_of(obj: &KamachiqProject) -> Result<Project<'_>> {
    let meta = &obj.metadata;
    Ok(Project {
        name: meta.name.as_deref().ok_or(Error::MissingField("metadata.name"))?,
        namespace: meta
            .namespace
            .as_deref()
            .ok_or(Error::MissingField("metadata.namespace"))?,
        uid: meta.uid.as_deref().ok_or(Error::MissingField("metadata.uid"))?,
        goal: &obj.spec.goal,
        owner: owner_reference(obj)?,
        region: obj.spec.region.as_deref(),
        placement: obj.spec.placement.as_ref(),
    })
}

/// Everything one reconcile of a project works with.
struct ProjectReconcile<'a> {
    obj: &'a KamachiqProject,
    ctx: &'a ProjectContext,
    /// Name, namespace and uid (read once), and what children carry.
    project: Project<'a>,
    /// The status being built, written at the end.
    status: KamachiqProjectStatus,
    /// The PolicyBundles governing the namespace.
    bundles: Vec<Arc<PolicyBundle>>,
    /// The moderators that apply (the bundles' required ones, then the project's).
    moderators: Vec<Moderator>,
}

/// The project's Jobs, as the cache shows them.
struct OwnJobs {
    jobs: Vec<Arc<Job>>,
    /// What the plan sees of them.
    views: Vec<JobView>,
    /// The cache shows every Job this operator created.
    caught_up: bool,
}

impl<'a> ProjectReconcile<'a> {
    fn new(obj: &'a KamachiqProject, ctx: &'a ProjectContext, project: Project<'a>) -> Self {
        ProjectReconcile {
            bundles: ctx.governing_bundles(project.namespace),
            moderators: Vec::new(),
            status: obj.status.clone().unwrap_or_default(),
            obj,
            ctx,
            project,
        }
    }

    /// One step: dereference, decide, build, apply, report.
    async fn step(&mut self) -> Result<Report> {
        let round = self.retry_round().await;
        let own = self.own_jobs(&round);
        let names = self.bundle_names();
        let views = policy::views(&self.bundles, &names);
        let effective = Effective::combine(views.iter().copied());
        self.moderators = moderation::effective(self.obj.spec.moderation.as_ref(), &views);
        self.status.moderators = moderation::listed(&self.moderators);
        let records = self.judge_moderation(&own).await?;
        if let Some(report) = self.moderate_goal(&records, &own, &effective).await? {
            return Ok(report);
        }
        let (tasks, digest) = match self.plan().await? {
            Ok(plan) => plan,
            Err(report) => return Ok(report),
        };
        let moderated = (!self.moderators.is_empty()).then(|| {
            moderation::gates(
                self.project.name,
                &tasks,
                &kept_outputs(&own.jobs),
                &self.moderators,
                &records,
            )
        });
        let now = jiff::Timestamp::now();
        let gated = match self.gate(&tasks, &digest, &own, &effective, now) {
            GateDecision::Rejected(report) => return Ok(report),
            GateDecision::Proceed(gated) => gated,
        };
        for event in &gated.events {
            self.publish(Some(event.clone())).await;
        }
        let step = plan::step(&plan::Input {
            tasks: &tasks,
            jobs: &own.views,
            round: &round,
            parallelism: self.obj.spec.parallelism,
            review: self.obj.spec.review.is_some(),
            gates: gated.gates.clone(),
            moderation: moderated.as_ref(),
        });
        self.apply(&step, &tasks, &own.jobs, &round, &effective).await?;
        self.moderate(&step.moderate, &tasks, &own.jobs, &records, &effective)
            .await?;
        self.report(&step, &tasks, &own, &gated, now).await
    }

    /// The conditions the project had when this reconcile read it.
    fn recorded(&self) -> Recorded<'a> {
        Recorded(self.obj.conditions())
    }

    /// Publishes `event` on the project (best effort).
    async fn publish(&self, event: Option<EventIntent>) {
        if let Some(e) = event {
            self.ctx
                .event(self.obj, e.kind.event_type(), e.reason, e.action, e.message)
                .await;
        }
    }

    fn max_tasks(&self) -> i32 {
        self.obj
            .spec
            .budget
            .as_ref()
            .and_then(|b| b.max_tasks)
            .unwrap_or(DEFAULT_MAX_TASKS)
    }

    fn bundle_names(&self) -> Vec<String> {
        self.bundles.iter().map(|b| b.name_any()).collect()
    }

    /// The retry round (the retry-failed annotation's value); a new one
    /// runs the failed tasks again, and the run (and its duration budget)
    /// starts again.
    async fn retry_round(&mut self) -> String {
        let round = self
            .obj
            .annotations()
            .get(RETRY_FAILED_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        if let Some(event) = gates::retry_round(&round, self.status.retry_token.as_deref()) {
            self.status.retry_token = Some(round.clone());
            self.status.start_time = None;
            self.status.completion_time = None;
            self.publish(Some(event)).await;
        }
        round
    }

    /// The validated plan and its digest, recorded in the plan ConfigMap
    /// (a planner's plan is stored when it arrives).
    async fn plan(&mut self) -> Result<std::result::Result<(Vec<Task>, String), Report>> {
        let tasks = match self.tasks().await? {
            Ok(tasks) => tasks,
            Err(report) => return Ok(Err(report)),
        };
        let spec = &self.obj.spec;
        let others: Vec<&CapsuleRef> = spec
            .review
            .iter()
            .chain(self.moderators.iter().map(|m| &m.capsule))
            .collect();
        self.ctx.project_uses.record(self.project.uid, &tasks, &others);
        if let Err(problems) = plan::validate(&tasks, self.max_tasks()) {
            self.status.plan_digest = None;
            let (report, event) = gates::invalid_plan(&problems, &self.recorded());
            self.publish(event).await;
            return Ok(Err(report));
        }
        let digest = plan::digest(&spec.goal, &tasks);
        if self.status.plan_digest.as_deref() != Some(digest.as_str()) || self.status.plan_ref.is_none() {
            if spec.planner.is_none() || !spec.tasks.is_empty() {
                let cm = self.project.plan_config_map(&tasks, &digest, "spec.tasks");
                apply_object(&self.ctx.client, self.project.namespace, &cm).await?;
            }
            self.status.plan_digest = Some(digest.clone());
            self.status.plan_ref = Some(self.project.plan_config_map_name());
        }
        Ok(Ok((tasks, digest)))
    }

    /// The plan: `spec.tasks`, or the stored plan, or a new one from the
    /// planner (called beside the reconcile: see [`planning`]).
    async fn tasks(&self) -> Result<Planned> {
        let spec = &self.obj.spec;
        if !spec.tasks.is_empty() {
            return Ok(Ok(spec.tasks.clone()));
        }
        let Some(planner) = &spec.planner else {
            return Ok(Err(Report::failed(
                "InvalidPlan",
                "the project lists no tasks and names no planner",
            )));
        };
        let made_from = planner_input(self.obj, self.max_tasks());
        if let Some(stored) = self.stored_plan(&made_from).await? {
            return Ok(stored);
        }
        match self.planner_url(planner).await {
            Ok(url) => self.ask_planner(planner, &made_from, &url).await,
            Err(report) => Ok(Err(report)),
        }
    }

    /// The plan (or the refusal) stored for the planner inputs `made_from`.
    async fn stored_plan(&self, made_from: &str) -> Result<Option<Planned>> {
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), self.project.namespace);
        let Some(cm) = cms.get_opt(&self.project.plan_config_map_name()).await? else {
            return Ok(None);
        };
        if cm.annotations().get(PLAN_INPUT_ANNOTATION).map(String::as_str) != Some(made_from) {
            return Ok(None);
        }
        let data = cm.data.unwrap_or_default();
        if let Some(why) = data.get(REFUSED_KEY) {
            // Refused once for this input: not asked again until it changes.
            return Ok(Some(Err(Report::failed("PlanTooLarge", why.clone()))));
        }
        if let Some(Ok(tasks)) = data
            .get(PLAN_KEY)
            .map(|json| serde_json::from_str::<Vec<Task>>(json))
        {
            self.ctx.planner.forget(self.project.uid);
            return Ok(Some(Ok(tasks)));
        }
        Ok(None)
    }

    /// Where the planner is called: `spec.planner.url` when policy allows
    /// it, or the Service of the planner capsule's Installation.
    async fn planner_url(&self, planner: &Planner) -> std::result::Result<String, Report> {
        match (&planner.url, &planner.capsule) {
            (Some(url), _) => {
                let names = self.bundle_names();
                if let Err(why) = policy::planner_url_allowed(&policy::views(&self.bundles, &names), url) {
                    let event = EventIntent::warning("PlannerNotAllowed", "Plan", why.clone());
                    self.publish(event.once(&self.recorded())).await;
                    return Err(Report::new(
                        ProjectPhase::Pending,
                        Status::Unknown,
                        "PlannerNotAllowed",
                        format!("{why}; nothing was called"),
                        SETTLED_RESYNC,
                    ));
                }
                Ok(url.clone())
            }
            (None, Some(capsule)) => self.planner_service(capsule).await.map_err(|message| {
                Report::new(
                    ProjectPhase::Planning,
                    Status::Unknown,
                    "PlannerNotInstalled",
                    message,
                    PLANNER_RETRY,
                )
            }),
            (None, None) => Ok(String::new()),
        }
    }

    /// How the planner call (made beside the reconcile) stands.
    async fn ask_planner(&self, planner: &Planner, made_from: &str, url: &str) -> Result<Planned> {
        let shown = crate::text::redact_url(url);
        let request = PlanRequest {
            api_version: PLANNER_API_VERSION.into(),
            goal: self.obj.spec.goal.clone(),
            project: ProjectRef {
                namespace: self.project.namespace.to_string(),
                name: self.project.name.to_string(),
                uid: self.project.uid.to_string(),
            },
            agent: planner.agent.clone(),
            max_tasks: self.max_tasks(),
        };
        let timeout = Duration::from_secs(planner.timeout_seconds.max(1) as u64);
        // The URL is part of the call's identity (a capsule planner's
        // Service may move); the stored plan's is not.
        let call_input = format!("{made_from} {url}");
        let poll = self.ctx.planner.poll(planning::Call {
            project: ObjectRef::from_obj(self.obj),
            uid: self.project.uid,
            input: &call_input,
            url,
            request: &request,
            timeout,
        });
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
            planning::Poll::Planned(tasks) => self.store_planned(tasks, made_from, &shown).await,
            planning::Poll::Failed { failure, retry_in } => {
                let reason = failure.reason();
                let event = EventIntent::warning(reason, "Plan", failure.to_string());
                self.publish(event.once(&self.recorded())).await;
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

    /// Stores what the planner planned in the plan ConfigMap (or, when it
    /// is too large to store, why not: the same inputs are not planned again).
    async fn store_planned(&self, tasks: Vec<Task>, made_from: &str, shown: &str) -> Result<Planned> {
        let (client, namespace) = (&self.ctx.client, self.project.namespace);
        let bytes = crate::domain::plans::plan_bytes(&tasks);
        if bytes > plan::MAX_PLAN_BYTES {
            let why = format!(
                "planner {shown} planned {} tasks in {} KiB; at most {} KiB can be stored (a ConfigMap holds 1 MiB), so nothing runs: ask the planner for fewer or smaller tasks (goal, budget.maxTasks), which plans again",
                tasks.len(),
                bytes.div_ceil(1024),
                plan::MAX_PLAN_BYTES / 1024
            );
            let cm = self.project.refused_plan_config_map(&why, made_from);
            apply_object(client, namespace, &cm).await?;
            self.ctx.planner.forget(self.project.uid);
            self.publish(Some(EventIntent::warning("PlanTooLarge", "Plan", why.clone())))
                .await;
            return Ok(Err(Report::failed("PlanTooLarge", why)));
        }
        let digest = plan::digest(&self.obj.spec.goal, &tasks);
        let cm = self.project.plan_config_map(&tasks, &digest, made_from);
        apply_object(client, namespace, &cm).await?;
        self.ctx.planner.forget(self.project.uid);
        let message = format!("planner {shown} planned {} tasks ({digest})", tasks.len());
        self.publish(Some(EventIntent::normal("Planned", "Plan", message)))
            .await;
        Ok(Ok(tasks))
    }

    /// `http://<cluster IP>:<port>/plan`: the Service of the Installation in
    /// this namespace that runs the planner capsule. Its ClusterIP, not its
    /// DNS name: the operator may run outside the cluster, or in a cluster
    /// without DNS, and an IP names exactly the Service it read.
    async fn planner_service(&self, capsule: &CapsuleRef) -> std::result::Result<String, String> {
        let namespace = self.project.namespace;
        let inst = self
            .ctx
            .caches
            .installations
            .state()
            .into_iter()
            .filter(|i| i.namespace().as_deref() == Some(namespace) && &i.spec.capsule == capsule)
            .min_by_key(|i| i.name_any())
            .ok_or_else(|| {
                format!(
                    "no Installation of planner capsule {} {} in namespace {namespace}",
                    capsule.package, capsule.version
                )
            })?;
        let capsules = self.ctx.caches.capsules.state();
        let port = capsules::find(&capsules, capsule)
            .and_then(|c| c.spec.ports.first().map(|p| p.port))
            .ok_or_else(|| {
                format!(
                    "planner capsule {} {} declares no port",
                    capsule.package, capsule.version
                )
            })?;
        let name = inst.name_any();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), namespace);
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

    /// The project's Jobs as the cache shows them, and whether it shows
    /// every Job this operator created. Status gets the run's start back
    /// from them when it lost it.
    fn own_jobs(&mut self, round: &str) -> OwnJobs {
        let (uid, namespace) = (self.project.uid, self.project.namespace);
        let jobs: Vec<Arc<Job>> = self
            .ctx
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.labels().get(PROJECT_UID_LABEL).map(String::as_str) == Some(uid)
                    && j.namespace().as_deref() == Some(namespace)
            })
            .collect();
        let views: Vec<JobView> = jobs.iter().filter_map(|j| job_view(j)).collect();
        if self.status.start_time.is_none() {
            // The run started when its first Job of this round was made; an
            // object read before the last status write reached the cache
            // must not lose that (the duration budget counts from it).
            self.status.start_time = run_start(&jobs, round);
        }
        // Every Job created counts, moderation Jobs included.
        let caught_up = self.ctx.expectations.satisfied(uid, |name| {
            jobs.iter().any(|j| j.metadata.name.as_deref() == Some(name))
        });
        OwnJobs {
            jobs,
            views,
            caught_up,
        }
    }

    /// The gates of this step, from what was observed.
    fn gate(
        &self,
        tasks: &[Task],
        digest: &str,
        own: &OwnJobs,
        effective: &Effective,
        now: jiff::Timestamp,
    ) -> GateDecision {
        let capsules = self.ctx.caches.capsules.state();
        let plan_config_map = self.project.plan_config_map_name();
        let moderators: Vec<&CapsuleRef> = self.moderators.iter().map(|m| &m.capsule).collect();
        gates::check(&Observed {
            project: self.obj,
            tasks,
            digest,
            plan_config_map: &plan_config_map,
            capsules: &capsules,
            bundles: &self.bundles,
            moderators: &moderators,
            kill_switch: effective
                .kill_switch
                .iter()
                .next()
                .map(|(bundle, why)| (bundle.as_str(), why.as_str())),
            caught_up: own.caught_up,
            start: self.status.start_time.as_ref().map(|t| t.0),
            now,
            recorded: self.recorded(),
        })
    }

    /// Applies a step: verdicts on finished Jobs, Jobs stopped or resumed,
    /// new Jobs created.
    async fn apply(
        &mut self,
        step: &Step,
        tasks: &[Task],
        jobs: &[Arc<Job>],
        round: &str,
        effective: &Effective,
    ) -> Result<()> {
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), self.project.namespace);
        let by_name: HashMap<&str, &Arc<Job>> = jobs
            .iter()
            .filter_map(|j| Some((j.metadata.name.as_deref()?, j)))
            .collect();
        // Each judge reads a pod and patches its Job: independent round
        // trips, run together (one after another, a wave of 100 finished
        // tasks took seconds per reconcile: hack/bench --parts project).
        let judges: Vec<_> = step.judge.iter().map(|j| self.judge(&api, j, &by_name)).collect();
        together(judges).await?;
        for (names, suspend) in [(&step.suspend, true), (&step.resume, false)] {
            for name in names {
                let patch = json!({ "spec": { "suspend": suspend } });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .ok_if_not_found()?;
            }
        }
        if !step.spawn.is_empty() {
            self.spawn(tasks, jobs, &step.spawn, round, effective).await?;
            if self.status.start_time.is_none() {
                self.status.start_time = Some(status::now());
            }
        }
        Ok(())
    }

    /// Status from the step: task counts and list, the results once the
    /// project finished, and the report (with its Event).
    async fn report(
        &mut self,
        step: &Step,
        tasks: &[Task],
        own: &OwnJobs,
        gated: &Gated,
        now: jiff::Timestamp,
    ) -> Result<Report> {
        let counts = plan::counts(&step.tasks);
        self.status.task_counts = Some(counts.clone());
        self.status.tasks = plan::listed(&step.tasks);
        match step.outcome {
            plan::Outcome::Running => self.status.completion_time = None,
            plan::Outcome::Succeeded | plan::Outcome::Failed(_) | plan::Outcome::Refused(_) => {
                self.finish(tasks, &own.jobs).await?
            }
        }
        let results = self.project.results_config_map_name(0);
        let progress = Progress {
            outcome: &step.outcome,
            counts: &counts,
            results: &results,
            caught_up: own.caught_up,
            now,
            recorded: self.recorded(),
        };
        let (report, event) = gates::outcome(&progress, gated);
        self.publish(event).await;
        Ok(report)
    }

    /// Records the verdict of a finished Job (reading its pod for the output).
    async fn judge(&self, api: &Api<Job>, j: &Judge, jobs: &HashMap<&str, &Arc<Job>>) -> Result<()> {
        let Some((name, verdict, output)) = self.verdict(api, j).await? else {
            return Ok(());
        };
        let mut annotations =
            json!({ VERDICT_ANNOTATION: verdict.as_str(), REASON_ANNOTATION: verdict.reason() });
        if let Some(out) = output {
            annotations[OUTPUT_ANNOTATION] = json!(truncate_bytes(&out, MAX_OUTPUT));
        }
        let patch = json!({ "metadata": { "annotations": annotations } });
        let patched = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .ok_if_not_found()?;
        if patched.is_none() {
            return Ok(());
        }
        let seconds = jobs.get(name).and_then(|j| summary::finished_seconds(j));
        self.ctx
            .metrics
            .task_judged(self.project.namespace, verdict.as_str(), seconds);
        tracing::info!(job = %name, verdict = verdict.as_str(), reason = verdict.reason(), "task attempt judged");
        Ok(())
    }

    /// The verdict on the task Job a [`Judge`] names, and the output to
    /// keep with it; `None` when the output was kept for the review Job,
    /// whose end decides.
    async fn verdict<'j>(
        &self,
        api: &Api<Job>,
        j: &'j Judge,
    ) -> Result<Option<(&'j str, TaskVerdict, Option<String>)>> {
        Ok(Some(match j {
            Judge::Failed { job, reason } => {
                let reason = self.told(reason, job, |m| format!(" ({m})")).await?;
                (job.as_str(), TaskVerdict::Failed(reason), None)
            }
            Judge::ReadOutput { job } => {
                let output = self.pod_message(job).await?.unwrap_or_default();
                if output.trim().is_empty() {
                    let why = "the agent wrote no output (termination message empty)";
                    (job.as_str(), TaskVerdict::Rejected(why.into()), None)
                } else if self.obj.spec.review.is_some() || !self.moderators.is_empty() {
                    // Kept for the moderators and the review Job; the
                    // verdict comes from them.
                    let patch = json!({ "metadata": { "annotations": { OUTPUT_ANNOTATION: truncate_bytes(&output, MAX_OUTPUT) } } });
                    api.patch(job, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    return Ok(None);
                } else {
                    (job.as_str(), TaskVerdict::Accepted, Some(output))
                }
            }
            Judge::Accept { job }
            | Judge::Reviewed {
                job, accepted: true, ..
            } => (job.as_str(), TaskVerdict::Accepted, None),
            Judge::Reviewed {
                job, review, reason, ..
            } => {
                let head = format!("review {review} rejected it ({reason})");
                let why = self.told(&head, review, |m| format!(": {m}")).await?;
                (job.as_str(), TaskVerdict::Rejected(why), None)
            }
        }))
    }

    /// `head` followed by what `job`'s pod said (as `said` puts it), cut to
    /// the 512 bytes a verdict keeps.
    async fn told(&self, head: &str, job: &str, said: impl FnOnce(String) -> String) -> Result<String> {
        let said = self.pod_message(job).await?.map(said).unwrap_or_default();
        Ok(truncate_bytes(&format!("{head}{said}"), 512))
    }

    /// The termination message of the Job's (last) pod's agent container.
    async fn pod_message(&self, job: &str) -> Result<Option<String>> {
        crate::jobs::termination_message(&self.ctx.client, self.project.namespace, job).await
    }

    /// The ServiceAccount and NetworkPolicies every agent, reviewer and
    /// moderator Job runs under.
    async fn agents_objects(&self) -> Result<()> {
        let (client, namespace) = (&self.ctx.client, self.project.namespace);
        apply_object(client, namespace, &self.project.service_account()).await?;
        for np in self.project.network_policies() {
            apply_object(client, namespace, &np).await?;
        }
        Ok(())
    }

    /// Judges the moderation Jobs that ended without a decision (reading
    /// their pods' termination messages) and writes each decision on its
    /// Job, once; the project's moderation records, with those decisions.
    async fn judge_moderation(&self, own: &OwnJobs) -> Result<Records> {
        let mut records: Records = own.jobs.iter().filter_map(|j| moderation::record(j)).collect();
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), self.project.namespace);
        let mut decided: Vec<(String, Decision)> = Vec::new();
        for (name, stage, state) in moderation::to_judge(&records) {
            let message = self.pod_message(name).await?;
            let Some(decision) = moderation::judge(stage, state, message.as_deref()) else {
                continue;
            };
            let patch = json!({ "metadata": { "annotations": {
                DECISION_ANNOTATION: decision.as_str(), REASON_ANNOTATION: decision.reason() } } });
            let patched = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .ok_if_not_found()?;
            if patched.is_some() {
                tracing::info!(job = %name, stage = stage.as_str(), decision = decision.as_str(), reason = decision.reason(), "moderation judged");
                decided.push((name.to_string(), decision));
            }
        }
        for (name, decision) in decided {
            if let Some(r) = records.get_mut(&name) {
                r.decision = Some(decision);
            }
        }
        Ok(records)
    }

    /// The goal's moderation, before anything is planned or run: `None`
    /// once every moderator allowed it (or none applies); else the report
    /// of a refusal, or of a goal waiting for its moderators (whose Jobs
    /// are created here, when their capsules are usable and nothing holds
    /// the project).
    async fn moderate_goal(
        &self,
        records: &Records,
        own: &OwnJobs,
        effective: &Effective,
    ) -> Result<Option<Report>> {
        let subject = moderation::goal_subject(self.project.name, &self.obj.spec.goal);
        match moderation::gate(self.project.name, &subject, &self.moderators, records) {
            Gate::Allowed => Ok(None),
            Gate::Refused(refusal) => {
                let (report, event) = gates::refused(&refusal);
                self.publish(event.and_then(|e| e.once(&self.recorded()))).await;
                Ok(Some(report))
            }
            Gate::Pending => {
                if let Some(report) = self.moderation_held(effective).await {
                    return Ok(Some(report));
                }
                if own.caught_up {
                    self.create_moderation(&[subject], records, effective).await?;
                }
                let undecided = moderation::undecided(self.project.name, &subject, &self.moderators, records);
                Ok(Some(gates::moderating_goal(&undecided)))
            }
        }
    }

    /// What keeps the goal's moderation Jobs from being created: a
    /// moderator capsule missing, unusable or blocked by policy (checked as
    /// task capsules are), an engaged kill switch, `spec.suspend`.
    async fn moderation_held(&self, effective: &Effective) -> Option<Report> {
        let capsules = self.ctx.caches.capsules.state();
        let refs: Vec<&CapsuleRef> = self.moderators.iter().map(|m| &m.capsule).collect();
        let region = self.obj.spec.region.as_deref();
        let checked = gates::check_capsules(&[], &refs, &capsules, &self.bundles, region);
        if let Some((report, event)) = gates::capsules_waiting(checked, "Moderate") {
            self.publish(event.once(&self.recorded())).await;
            return Some(report);
        }
        let kill_switch = effective
            .kill_switch
            .iter()
            .next()
            .map(|(bundle, why)| (bundle.as_str(), why.as_str()));
        let (report, event) = gates::halt_gate(kill_switch, self.obj.spec.suspend)?;
        self.publish(event.and_then(|e| e.once(&self.recorded()))).await;
        Some(report)
    }

    /// Creates the moderation Jobs the step asked for (inputs before their
    /// first Job, outputs before review or acceptance) where missing.
    async fn moderate(
        &self,
        asked: &[plan::Moderate],
        tasks: &[Task],
        jobs: &[Arc<Job>],
        records: &Records,
        effective: &Effective,
    ) -> Result<()> {
        if asked.is_empty() || self.moderators.is_empty() {
            return Ok(());
        }
        let mut subjects: Vec<Subject<'_>> = Vec::new();
        for m in asked {
            let Some(task) = tasks.iter().find(|t| t.name == m.task) else {
                continue;
            };
            match m.stage {
                Stage::Goal => {}
                Stage::Input => subjects.push(moderation::input_subject(task)),
                Stage::Output => {
                    let name = self.project.job_name(&task.name, m.attempt, Role::Task);
                    let output = jobs
                        .iter()
                        .find(|j| j.metadata.name.as_deref() == Some(name.as_str()))
                        .and_then(|j| j.annotations().get(OUTPUT_ANNOTATION));
                    if let Some(text) = output {
                        subjects.push(moderation::output_subject(&task.name, m.attempt, text));
                    }
                }
            }
        }
        self.create_moderation(&subjects, records, effective).await
    }

    /// Creates the missing moderation Jobs of `subjects` (create-only: the
    /// name is deterministic, a second create is refused).
    async fn create_moderation(
        &self,
        subjects: &[Subject<'_>],
        records: &Records,
        effective: &Effective,
    ) -> Result<()> {
        let wanted: Vec<(&Subject<'_>, String, &Moderator)> = subjects
            .iter()
            .flat_map(|s| {
                moderation::missing(self.project.name, s, &self.moderators, records)
                    .into_iter()
                    .map(move |(name, m)| (s, name, m))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        self.agents_objects().await?;
        let capsules = self.ctx.caches.capsules.state();
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), self.project.namespace);
        let creates: Vec<_> = wanted
            .into_iter()
            .filter_map(|(subject, name, moderator)| {
                let capsule = capsules::find(&capsules, &moderator.capsule)?;
                let job = render::moderation_job(
                    &self.project,
                    &ModerationInput {
                        subject,
                        moderator,
                        capsule: &capsule.spec,
                        max_cpu: effective.max_cpu.as_ref().map(|c| c.value.written.as_str()),
                        max_memory: effective.max_memory.as_ref().map(|c| c.value.written.as_str()),
                    },
                );
                Some((name, subject.stage, job))
            })
            .map(|(name, stage, job)| {
                let api = &api;
                async move {
                    match api.create(&PostParams::default(), &job).await.ok_if_conflict() {
                        Ok(Some(_)) => {
                            tracing::info!(job = %name, stage = stage.as_str(), "moderation job created")
                        }
                        Ok(None) => tracing::debug!(job = %name, "moderation job already exists"),
                        Err(e) => return Err(Error::refusing(e, "Job", &name)),
                    }
                    self.ctx.expectations.expect(self.project.uid, &name);
                    Ok(())
                }
            })
            .collect();
        together(creates).await
    }

    /// Creates the Jobs of `spawns` (and, first, what they run under).
    async fn spawn(
        &self,
        tasks: &[Task],
        own_jobs: &[Arc<Job>],
        spawns: &[plan::Spawn],
        round: &str,
        effective: &Effective,
    ) -> Result<()> {
        let (client, namespace) = (&self.ctx.client, self.project.namespace);
        self.agents_objects().await?;
        let capsules = self.ctx.caches.capsules.state();
        let accepted = accepted_attempts(own_jobs);
        let api: Api<Job> = Api::namespaced(client.clone(), namespace);
        let creates: Vec<_> = spawns
            .iter()
            .filter_map(|s| Some((s, self.job_for(s, tasks, &capsules, &accepted, round, effective)?)))
            .map(|(s, job)| {
                let api = &api;
                async move {
                    let name = job.name_any();
                    match api.create(&PostParams::default(), &job).await.ok_if_conflict() {
                        Ok(Some(_)) => {
                            tracing::info!(job = %name, task = %s.task, attempt = s.attempt, "job created")
                        }
                        Ok(None) => tracing::debug!(job = %name, "job already exists"),
                        Err(e) => return Err(Error::refusing(e, "Job", &name)),
                    }
                    self.ctx.expectations.expect(self.project.uid, &name);
                    Ok(())
                }
            })
            .collect();
        together(creates).await
    }

    /// The Job of one spawn; `None` when its task, review capsule or
    /// capsule is gone.
    fn job_for(
        &self,
        s: &plan::Spawn,
        tasks: &[Task],
        capsules: &[Arc<Capsule>],
        accepted: &[plan::Accepted<'_>],
        round: &str,
        effective: &Effective,
    ) -> Option<Job> {
        let task = tasks.iter().find(|t| t.name == s.task)?;
        let capsule_ref = match s.role {
            Role::Task => &task.capsule,
            Role::Review => self.obj.spec.review.as_ref()?,
        };
        let capsule = capsules::find(capsules, capsule_ref)?;
        // A review gets the output of the attempt under review.
        let output = match s.role {
            Role::Review => {
                let name = self.project.job_name(&task.name, s.attempt, Role::Task);
                let reviewed = ObjectRef::new(&name).within(self.project.namespace);
                self.ctx
                    .jobs
                    .get(&reviewed)
                    .and_then(|j| j.annotations().get(OUTPUT_ANNOTATION).cloned())
            }
            Role::Task => None,
        };
        let dependencies = plan::dependency_outputs(task, accepted);
        let input = JobInput {
            task,
            role: s.role,
            attempt: s.attempt,
            round,
            capsule: &capsule.spec,
            output: output.as_deref(),
            dependencies: &dependencies,
            max_cpu: effective.max_cpu.as_ref().map(|c| c.value.written.as_str()),
            max_memory: effective.max_memory.as_ref().map(|c| c.value.written.as_str()),
        };
        Some(render::job(&self.project, &input))
    }

    /// Gathers the accepted outputs into the results ConfigMap(s), once.
    async fn finish(&mut self, tasks: &[Task], jobs: &[Arc<Job>]) -> Result<()> {
        if self.status.completion_time.is_some() && self.status.results_ref.is_some() {
            return Ok(());
        }
        let shards = plan::shard_results(&accepted_outputs(tasks, jobs));
        for (i, data) in shards.iter().enumerate() {
            let cm = self.project.results_config_map(i, shards.len(), data);
            apply_object(&self.ctx.client, self.project.namespace, &cm).await?;
        }
        self.status.results_ref = Some(self.project.results_config_map_name(0));
        if self.status.completion_time.is_none() {
            self.status.completion_time = Some(status::now());
        }
        Ok(())
    }

    async fn write_status(&mut self, report: &Report) -> Result<()> {
        let (ready, health) = report.readiness();
        let mut desired = vec![report.succeeded.clone(), ready];
        desired.extend(report.approved.clone());
        let generation = self.obj.metadata.generation;
        self.status.conditions = conditions::merge_with_health(
            self.obj.conditions(),
            &desired,
            health,
            generation,
            &status::now(),
        );
        self.status.observed_generation = generation;
        self.status.phase = Some(report.phase);
        if !report.finished() {
            self.status.completion_time = None;
        }
        let api: Api<KamachiqProject> = Api::namespaced(self.ctx.client.clone(), self.project.namespace);
        let body = serde_json::to_value(&self.status)?;
        status::apply_if_changed(&api, self.obj, self.obj.status.as_ref(), body).await
    }
}

/// When the run of `round` started: the creation of its first Job.
pub(super) fn run_start(jobs: &[Arc<Job>], round: &str) -> Option<Time> {
    jobs.iter()
        .filter(|j| {
            j.annotations()
                .get(ROUND_ANNOTATION)
                .map(String::as_str)
                .unwrap_or("")
                == round
        })
        .filter_map(|j| j.metadata.creation_timestamp.clone())
        .min_by_key(|t| t.0)
}

/// Whether a Job is an accepted attempt of a task.
fn is_accepted_task(j: &Job) -> bool {
    j.labels().get(ROLE_LABEL).map(String::as_str) == Some("task")
        && j.annotations().get(VERDICT_ANNOTATION).map(String::as_str) == Some("accepted")
}

/// The accepted task attempts among the project's Jobs: what dependents receive.
pub(super) fn accepted_attempts(jobs: &[Arc<Job>]) -> Vec<plan::Accepted<'_>> {
    jobs.iter()
        .filter(|j| is_accepted_task(j))
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
        .collect()
}

/// The outputs kept on task Jobs that have no verdict yet (awaiting their
/// moderators or review): `(task, attempt, output)`.
pub(super) fn kept_outputs(jobs: &[Arc<Job>]) -> Vec<moderation::KeptOutput<'_>> {
    jobs.iter()
        .filter(|j| j.labels().get(ROLE_LABEL).map(String::as_str) == Some("task"))
        .filter(|j| !j.annotations().contains_key(VERDICT_ANNOTATION))
        .filter_map(|j| {
            Some((
                j.labels().get(TASK_LABEL)?.as_str(),
                j.labels().get(ATTEMPT_LABEL)?.parse().ok()?,
                j.annotations().get(OUTPUT_ANNOTATION)?.as_str(),
            ))
        })
        .collect()
}

/// `(task, output)` of every task with an accepted attempt, in plan order:
/// what the results ConfigMaps hold.
pub(super) fn accepted_outputs(tasks: &[Task], jobs: &[Arc<Job>]) -> Vec<(String, String)> {
    let accepted: HashMap<&str, &Arc<Job>> = jobs
        .iter()
        .filter(|j| is_accepted_task(j))
        .filter_map(|j| j.labels().get(TASK_LABEL).map(|t| (t.as_str(), j)))
        .collect();
    tasks
        .iter()
        .filter_map(|t| {
            let job = accepted.get(t.name.as_str())?;
            let output = job.annotations().get(OUTPUT_ANNOTATION).cloned();
            Some((t.name.clone(), output.unwrap_or_default()))
        })
        .collect()
}
