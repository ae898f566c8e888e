//! Pure logic of a KamachiqProject: validating the task DAG, its digest, and
//! the next step computed from the plan and the Jobs that exist.
//!
//! Per-task state lives in the Jobs (labels, annotations, Job status), never
//! in the project's status, so the same inputs always give the same step and
//! a restarted operator continues where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::moderation::{self, Gate, Refusal, Stage};
use somastack_crds::kamachiq::{MAX_LISTED_TASKS, Task, TaskCounts, TaskPhase, TaskState};

pub use somastack_crds::kamachiq::{
    MAX_PLAN_BYTES, MAX_TASK_DEPENDENCIES as MAX_DEPENDENCIES, MAX_TASK_INPUT_BYTES as MAX_INPUT_BYTES,
    MAX_TASK_RETRIES, MAX_TASK_TIMEOUT_SECONDS,
};

/// Most problems named in a message; the rest are counted.
const MAX_NAMED_PROBLEMS: usize = 10;

/// Checks a plan: names unique, dependencies known, no cycle, at most
/// `max_tasks` tasks, every task within the bounds `spec.tasks` has in its
/// schema (planned tasks skip the API server's checks, so they are made
/// here), and small enough to be stored. Returns the problems found, as
/// sentences (the first ten, then a count of the rest).
pub fn validate(tasks: &[Task], max_tasks: i32) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if tasks.is_empty() {
        problems.push("the plan has no task".to_string());
    }
    if tasks.len() > max_tasks.max(0) as usize {
        problems.push(format!(
            "the plan has {} tasks; budget.maxTasks allows at most {max_tasks}",
            tasks.len()
        ));
    }
    let bytes = crate::domain::plans::plan_bytes(tasks);
    if bytes > MAX_PLAN_BYTES {
        problems.push(format!(
            "the plan is {} KiB; at most {} KiB can be stored (a ConfigMap holds 1 MiB): plan fewer or smaller tasks",
            bytes.div_ceil(1024),
            MAX_PLAN_BYTES / 1024
        ));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        if !seen.insert(t.name.as_str()) {
            problems.push(format!("task name {} appears more than once", t.name));
        }
        if !is_dns_label(&t.name) {
            problems.push(format!(
                "task name {:?} is not a lowercase name of at most 63 characters",
                t.name
            ));
        }
    }
    for t in tasks {
        // The limits spec.tasks has in its schema hold for planned tasks too.
        if t.depends_on.len() > MAX_DEPENDENCIES {
            problems.push(format!(
                "task {} depends on {} tasks; at most {MAX_DEPENDENCIES} are allowed",
                t.name,
                t.depends_on.len()
            ));
        }
        if t.input.len() > MAX_INPUT_BYTES {
            problems.push(format!(
                "task {} has an input over {MAX_INPUT_BYTES} bytes",
                t.name
            ));
        }
        if !(0..=MAX_TASK_RETRIES).contains(&t.retries) {
            problems.push(format!(
                "task {} asks for {} retries; 0 to {MAX_TASK_RETRIES} are allowed",
                t.name, t.retries
            ));
        }
        if !(1..=MAX_TASK_TIMEOUT_SECONDS).contains(&t.timeout_seconds) {
            problems.push(format!(
                "task {} has timeoutSeconds {}; 1 to {MAX_TASK_TIMEOUT_SECONDS} are allowed",
                t.name, t.timeout_seconds
            ));
        }
        if !is_dns_label(&t.capsule.package) || t.capsule.version.is_empty() || t.capsule.version.len() > 128
        {
            problems.push(format!(
                "task {} names capsule {:?} version {:?}, which is not a package name and version",
                t.name, t.capsule.package, t.capsule.version
            ));
        }
        for d in &t.depends_on {
            if d == &t.name {
                problems.push(format!("task {} depends on itself", t.name));
            } else if !seen.contains(d.as_str()) {
                problems.push(format!(
                    "task {} depends on {d}, which is not in the plan",
                    t.name
                ));
            }
        }
    }
    if problems.is_empty()
        && let Some(cycle) = find_cycle(tasks)
    {
        problems.push(format!("the tasks form a cycle: {}", cycle.join(" -> ")));
    }
    if problems.is_empty() {
        return Ok(());
    }
    if problems.len() > MAX_NAMED_PROBLEMS {
        let more = problems.len() - MAX_NAMED_PROBLEMS;
        problems.truncate(MAX_NAMED_PROBLEMS);
        problems.push(format!("{more} more problem(s)"));
    }
    Err(problems)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A cycle of the dependency graph, as names with the first repeated at the
/// end (`a -> b -> a`), if there is one. Iterative depth-first search, so a
/// 5,000-task chain does not exhaust the stack.
pub fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: BTreeMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = tasks
        .iter()
        .map(|t| {
            t.depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; tasks.len()];
    for root in 0..tasks.len() {
        if mark[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = deps[node].get(*next) {
                *next += 1;
                match mark[dep] {
                    0 => {
                        mark[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|(n, _)| tasks[*n].name.clone())
                            .collect();
                        cycle.push(tasks[dep].name.clone());
                        // Shown in the direction work flows: a needs b -> printed b -> a.
                        cycle.reverse();
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// `sha256:<hex>` over the goal and the tasks in a canonical JSON form
/// (sorted by name, defaults spelled out): what an approval is bound to.
pub fn digest(goal: &str, tasks: &[Task]) -> String {
    let mut sorted: Vec<&Task> = tasks.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let canonical = json!({
        "goal": goal,
        "tasks": sorted.iter().map(|t| {
            let mut deps = t.depends_on.clone();
            deps.sort();
            json!({
                "name": t.name,
                "capsule": { "package": t.capsule.package, "version": t.capsule.version },
                "dependsOn": deps,
                "input": t.input,
                "timeoutSeconds": t.timeout_seconds,
                "retries": t.retries,
            })
        }).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// What a Job is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the task's agent.
    Task,
    /// Runs the review capsule on a finished attempt's output.
    Review,
}

/// Where a Job is in its life, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Active,
    /// `spec.suspend` set: its pods are gone until it is resumed.
    Suspended,
    Succeeded,
    /// Failed, with Kubernetes' reason and message (e.g. `DeadlineExceeded`).
    Failed(String),
}

/// The operator's judgement of a finished task attempt (from its own end,
/// or its review's), as the task Job's annotations record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskVerdict {
    Accepted,
    Rejected(String),
    Failed(String),
}

impl TaskVerdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskVerdict::Accepted => "accepted",
            TaskVerdict::Rejected(_) => "rejected",
            TaskVerdict::Failed(_) => "failed",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            TaskVerdict::Accepted => "",
            TaskVerdict::Rejected(r) | TaskVerdict::Failed(r) => r,
        }
    }

    /// From the annotation values (`verdict`, `reason`).
    pub fn parse(verdict: Option<&str>, reason: Option<&str>) -> Option<TaskVerdict> {
        let reason = reason.unwrap_or_default().to_string();
        match verdict? {
            "accepted" => Some(TaskVerdict::Accepted),
            "rejected" => Some(TaskVerdict::Rejected(reason)),
            "failed" => Some(TaskVerdict::Failed(reason)),
            _ => None,
        }
    }
}

/// One Job of the project, reduced to what the plan needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub name: String,
    pub task: String,
    pub role: Role,
    pub attempt: u32,
    /// The retry round it was created in.
    pub round: String,
    pub state: JobState,
    pub verdict: Option<TaskVerdict>,
    /// The attempt's output has been read (awaiting its review).
    pub has_output: bool,
}

/// What the shell allows this step to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gates {
    /// New Jobs may be created (approved, capsules usable, caches caught up, ...).
    pub spawn: bool,
    /// Running Jobs must be stopped (suspend, kill switch, budget exhausted).
    pub stop: bool,
    /// `budget.maxDurationSeconds` has run out.
    pub deadline_passed: bool,
}

/// Everything [`step`] looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub tasks: &'a [Task],
    pub jobs: &'a [JobView],
    /// The current retry round (the retry-failed annotation's value).
    pub round: &'a str,
    pub parallelism: i32,
    pub review: bool,
    pub gates: Gates,
    /// What the moderators decided about inputs and outputs; `None` when no
    /// moderator applies (everything is allowed).
    pub moderation: Option<&'a moderation::Gates>,
}

/// A Job to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spawn {
    pub task: String,
    pub role: Role,
    pub attempt: u32,
}

/// A text to moderate before the pipeline goes on: the input of `task`
/// before its first Job (`attempt` 0), or the output of `attempt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moderate {
    pub stage: Stage,
    pub task: String,
    pub attempt: u32,
}

/// A finished Job to judge (the shell reads pods where needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judge {
    /// The attempt failed: record the verdict `failed` with this reason.
    Failed { job: String, reason: String },
    /// The attempt succeeded: read its output, then accept it (or, with a
    /// review capsule, record it for the review).
    ReadOutput { job: String },
    /// The output kept on `job` was allowed by every moderator and there is
    /// no review: accept it.
    Accept { job: String },
    /// The review of `job` finished: accepted when it succeeded.
    Reviewed {
        job: String,
        review: String,
        accepted: bool,
        reason: String,
    },
}

/// How the whole project stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Succeeded,
    /// The failed tasks with their messages (or the budget that ran out).
    Failed(Vec<(String, String)>),
    /// A moderator refused an input or an output: nothing more starts or
    /// is judged, and running Jobs are stopped.
    Refused(Refusal),
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Every task's state, in plan order.
    pub tasks: Vec<TaskState>,
    /// Jobs to create, within parallelism.
    pub spawn: Vec<Spawn>,
    /// Finished Jobs to judge (accept, reject, or count as failed).
    pub judge: Vec<Judge>,
    /// Running Jobs to suspend (kill switch, suspend, budget).
    pub suspend: Vec<String>,
    /// Suspended Jobs to resume.
    pub resume: Vec<String>,
    /// Texts to moderate (their moderation Jobs are created where missing).
    pub moderate: Vec<Moderate>,
    /// Where the project stands after this step.
    pub outcome: Outcome,
}

/// The name of the accepted Job of every succeeded task, by task.
pub fn accepted_jobs(jobs: &[JobView]) -> BTreeMap<&str, &str> {
    jobs.iter()
        .filter(|j| j.role == Role::Task && j.verdict == Some(TaskVerdict::Accepted))
        .map(|j| (j.task.as_str(), j.name.as_str()))
        .collect()
}

/// Computes the next step. See the module documentation.
pub fn step(input: &Input<'_>) -> Step {
    let mut by_task: BTreeMap<&str, Vec<&JobView>> = BTreeMap::new();
    let mut reviews: BTreeMap<(&str, u32), &JobView> = BTreeMap::new();
    for j in input.jobs {
        match j.role {
            Role::Task => by_task.entry(j.task.as_str()).or_default().push(j),
            Role::Review => {
                reviews.insert((j.task.as_str(), j.attempt), j);
            }
        }
    }

    let mut states: Vec<TaskState> = Vec::with_capacity(input.tasks.len());
    let mut judge = Vec::new();
    let mut spawn_reviews = Vec::new();
    let mut retry_next: BTreeMap<&str, u32> = BTreeMap::new();
    let mut active_jobs = Vec::new();
    let mut suspended_jobs = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut moderate_outputs = Vec::new();
    let mut moderate = Vec::new();

    for task in input.tasks {
        let mut jobs: Vec<&JobView> = by_task.get(task.name.as_str()).cloned().unwrap_or_default();
        jobs.sort_by_key(|j| j.attempt);
        let attempts = jobs.len() as i32;
        let state = |phase: TaskPhase, job: Option<&str>, message: String| TaskState {
            name: task.name.clone(),
            phase,
            attempts,
            job: job.map(str::to_string),
            // Agents' and Kubernetes' words: made safe to print.
            message: crate::text::bounded(&message, 512),
        };
        if let Some(done) = jobs.iter().find(|j| j.verdict == Some(TaskVerdict::Accepted)) {
            states.push(state(TaskPhase::Succeeded, Some(&done.name), String::new()));
            continue;
        }
        let Some(latest) = jobs.last() else {
            match input_gate(input, task) {
                Gate::Refused(r) => {
                    states.push(state(TaskPhase::Failed, None, r.message()));
                    refusals.push(r);
                }
                _ => states.push(state(TaskPhase::Pending, None, String::new())),
            }
            continue;
        };
        match &latest.verdict {
            None => {
                let mut message = String::new();
                let mut refused = None;
                match &latest.state {
                    JobState::Active => active_jobs.push(latest.name.clone()),
                    JobState::Suspended => {
                        suspended_jobs.push(latest.name.clone());
                        message = "suspended".into();
                    }
                    JobState::Failed(reason) => judge.push(Judge::Failed {
                        job: latest.name.clone(),
                        reason: reason.clone(),
                    }),
                    JobState::Succeeded if !latest.has_output => judge.push(Judge::ReadOutput {
                        job: latest.name.clone(),
                    }),
                    JobState::Succeeded => match output_gate(input, task, latest.attempt) {
                        Gate::Refused(r) => refused = Some(r),
                        Gate::Pending => {
                            message = "awaiting moderation of its output".into();
                            moderate_outputs.push(Moderate {
                                stage: Stage::Output,
                                task: task.name.clone(),
                                attempt: latest.attempt,
                            });
                        }
                        Gate::Allowed if !input.review => judge.push(Judge::Accept {
                            job: latest.name.clone(),
                        }),
                        Gate::Allowed => match reviews.get(&(task.name.as_str(), latest.attempt)) {
                            None => {
                                message = "awaiting review".into();
                                spawn_reviews.push(Spawn {
                                    task: task.name.clone(),
                                    role: Role::Review,
                                    attempt: latest.attempt,
                                });
                            }
                            Some(r) => match &r.state {
                                JobState::Active => {
                                    message = "under review".into();
                                    active_jobs.push(r.name.clone());
                                }
                                JobState::Suspended => {
                                    message = "review suspended".into();
                                    suspended_jobs.push(r.name.clone());
                                }
                                JobState::Succeeded => judge.push(Judge::Reviewed {
                                    job: latest.name.clone(),
                                    review: r.name.clone(),
                                    accepted: true,
                                    reason: String::new(),
                                }),
                                JobState::Failed(reason) => judge.push(Judge::Reviewed {
                                    job: latest.name.clone(),
                                    review: r.name.clone(),
                                    accepted: false,
                                    reason: reason.clone(),
                                }),
                            },
                        },
                    },
                }
                match refused {
                    Some(r) => {
                        states.push(state(TaskPhase::Failed, Some(&latest.name), r.message()));
                        refusals.push(r);
                    }
                    None => states.push(state(TaskPhase::Running, Some(&latest.name), message)),
                }
            }
            Some(verdict) => {
                let in_round = jobs.iter().filter(|j| j.round == input.round).count() as i32;
                let why = format!(
                    "attempt {} {}: {}",
                    latest.attempt,
                    verdict.as_str(),
                    verdict.reason()
                );
                if in_round < 1 + task.retries {
                    retry_next.insert(task.name.as_str(), latest.attempt + 1);
                    states.push(state(
                        TaskPhase::Pending,
                        Some(&latest.name),
                        format!("{why}; will retry"),
                    ));
                } else {
                    states.push(state(
                        TaskPhase::Failed,
                        Some(&latest.name),
                        format!(
                            "failed after {attempts} attempt{}; {why}",
                            if attempts == 1 { "" } else { "s" }
                        ),
                    ));
                }
            }
        }
    }

    let phase_of: BTreeMap<&str, TaskPhase> = states.iter().map(|s| (s.name.as_str(), s.phase)).collect();
    let running = states.iter().filter(|s| s.phase == TaskPhase::Running).count() as i32;
    let any_failed = states.iter().any(|s| s.phase == TaskPhase::Failed);
    let all_succeeded = states.iter().all(|s| s.phase == TaskPhase::Succeeded);

    let mut spawn = Vec::new();
    if input.gates.spawn && !input.gates.stop && !input.gates.deadline_passed {
        // Moderation of outputs and reviews first: they finish tasks that
        // already hold a slot.
        moderate.extend(moderate_outputs);
        spawn.extend(spawn_reviews);
        if !any_failed {
            let mut free = input.parallelism.max(1) - running;
            for task in input.tasks {
                if free <= 0 {
                    break;
                }
                if phase_of.get(task.name.as_str()) != Some(&TaskPhase::Pending) {
                    continue;
                }
                let ready = task
                    .depends_on
                    .iter()
                    .all(|d| phase_of.get(d.as_str()) == Some(&TaskPhase::Succeeded));
                if !ready {
                    continue;
                }
                free -= 1;
                match input_gate(input, task) {
                    Gate::Allowed => {}
                    Gate::Pending => {
                        // Its slot waits for the moderators' decision.
                        moderate.push(Moderate {
                            stage: Stage::Input,
                            task: task.name.clone(),
                            attempt: 0,
                        });
                        continue;
                    }
                    // (A retried task whose input changed since.)
                    Gate::Refused(r) => {
                        refusals.push(r);
                        continue;
                    }
                }
                spawn.push(Spawn {
                    task: task.name.clone(),
                    role: Role::Task,
                    attempt: retry_next.get(task.name.as_str()).copied().unwrap_or(1),
                });
            }
        }
    }

    if let Some(refusal) = refusals.into_iter().next() {
        // Nothing after a refusal: no Job, no moderation, no verdict (so no
        // output is accepted), and what runs is stopped.
        return Step {
            tasks: states,
            spawn: Vec::new(),
            judge: Vec::new(),
            suspend: active_jobs,
            resume: Vec::new(),
            moderate: Vec::new(),
            outcome: Outcome::Refused(refusal),
        };
    }

    let (suspend, resume) = if input.gates.stop || input.gates.deadline_passed {
        (active_jobs, Vec::new())
    } else {
        (Vec::new(), suspended_jobs)
    };

    let outcome = if all_succeeded {
        Outcome::Succeeded
    } else if input.gates.deadline_passed {
        let unfinished = states
            .iter()
            .filter(|s| s.phase != TaskPhase::Succeeded)
            .map(|s| {
                (
                    s.name.clone(),
                    "not finished when budget.maxDurationSeconds ran out".to_string(),
                )
            })
            .collect();
        Outcome::Failed(unfinished)
    } else if any_failed && running == 0 {
        Outcome::Failed(
            states
                .iter()
                .filter(|s| s.phase == TaskPhase::Failed)
                .map(|s| (s.name.clone(), s.message.clone()))
                .collect(),
        )
    } else {
        Outcome::Running
    };

    Step {
        tasks: states,
        spawn,
        judge,
        suspend,
        resume,
        moderate,
        outcome,
    }
}

/// What the moderators decided about `task`'s input (allowed without moderation).
fn input_gate(input: &Input<'_>, task: &Task) -> Gate {
    input.moderation.map_or(Gate::Allowed, |m| {
        m.input.get(&task.name).cloned().unwrap_or(Gate::Pending)
    })
}

/// What the moderators decided about the output of `task`'s `attempt`.
fn output_gate(input: &Input<'_>, task: &Task, attempt: u32) -> Gate {
    input.moderation.map_or(Gate::Allowed, |m| {
        m.output
            .get(&(task.name.clone(), attempt))
            .cloned()
            .unwrap_or(Gate::Pending)
    })
}

/// Counts by phase.
pub fn counts(tasks: &[TaskState]) -> TaskCounts {
    let n = |p: TaskPhase| tasks.iter().filter(|t| t.phase == p).count() as i32;
    TaskCounts {
        total: tasks.len() as i32,
        pending: n(TaskPhase::Pending),
        running: n(TaskPhase::Running),
        succeeded: n(TaskPhase::Succeeded),
        failed: n(TaskPhase::Failed),
    }
}

/// The tasks status lists: failed first, then running, pending, succeeded
/// (plan order within each), at most [`MAX_LISTED_TASKS`].
pub fn listed(tasks: &[TaskState]) -> Vec<TaskState> {
    let rank = |p: TaskPhase| match p {
        TaskPhase::Failed => 0,
        TaskPhase::Running => 1,
        TaskPhase::Pending => 2,
        TaskPhase::Succeeded => 3,
    };
    let mut out: Vec<&TaskState> = tasks.iter().collect();
    out.sort_by_key(|t| rank(t.phase));
    out.into_iter().take(MAX_LISTED_TASKS).cloned().collect()
}

/// One line saying how far the project is, for the condition's message.
pub fn progress(c: &TaskCounts) -> String {
    format!(
        "{} of {} tasks succeeded, {} running, {} pending, {} failed",
        c.succeeded, c.total, c.running, c.pending, c.failed
    )
}

/// An accepted attempt of a task, as the project's Jobs record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted<'a> {
    pub task: &'a str,
    pub attempt: u32,
    pub output: &'a str,
}

/// What `task` receives from the tasks it depends on
/// (`SOMASTACK_TASK_DEPENDENCIES`, docs/kamachiq.md): each dependency's
/// accepted output, from its latest accepted attempt. A dependency has one by
/// the time its dependent spawns; one without (never, unless its Job was
/// deleted) is left out rather than invented.
pub fn dependency_outputs(task: &Task, accepted: &[Accepted<'_>]) -> BTreeMap<String, String> {
    task.depends_on
        .iter()
        .filter_map(|dep| {
            accepted
                .iter()
                .filter(|a| a.task == dep)
                .max_by_key(|a| a.attempt)
                .map(|a| (dep.clone(), a.output.to_string()))
        })
        .collect()
}

/// Most bytes of outputs one results ConfigMap holds (the API server refuses
/// objects over 1 MiB; the rest is room for keys and metadata).
pub const RESULTS_SHARD_BYTES: usize = 900 * 1024;

/// Splits `(task, output)` pairs into ConfigMap data maps of at most
/// [`RESULTS_SHARD_BYTES`] each, in task order.
pub fn shard_results(outputs: &[(String, String)]) -> Vec<BTreeMap<String, String>> {
    let mut shards: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut size = 0;
    for (task, output) in outputs {
        let len = task.len() + output.len();
        if size + len > RESULTS_SHARD_BYTES && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(BTreeMap::new());
            size = 0;
        }
        if let Some(last) = shards.last_mut() {
            last.insert(task.clone(), output.clone());
        }
        size += len;
    }
    shards
}
