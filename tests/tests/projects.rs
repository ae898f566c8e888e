//! KamachiqProjects against the real control plane: the operator creates
//! Jobs, kube-controller-manager's Job controller makes their pods, the
//! scheduler binds them, and kwok stands in for the kubelet and the agent
//! process (hack/kwok-stages.yaml: an agent pod runs 1 s, or `kwok:run=<d>`,
//! writes "result of <task>: <input>" as its termination message, and fails
//! when its input says `kwok:fail` / `kwok:fail-first`). Needs the operator
//! hack/test.sh starts; projects labelled `somastack.io/project-shard`
//! belong to an operator a test starts itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    agent_capsule, allow_planners, bundle, capsule, condition_with, denied, message, on_real_nodes,
    published, put, put_api, put_policy, wait_condition, wait_succeeded,
};
use somastack_tests::http::{Reply, Server};
use somastack_tests::users::{PUBLISHER_ROLE, REVIEWER_ROLE, user};
use somastack_tests::{
    TestNamespace, api_for, free_port, http_get, kubectl, setup, soma_ok, spawn_shard_operator,
    unique_suffix, wait_for, workspace_binary,
};

const T: Duration = Duration::from_secs(120);
const UID_LABEL: &str = "kamachiq.somastack.io/project-uid";

/// A namespace and a fresh agent capsule `agent-<suffix>` 1.0.0 (deleted
/// with the namespace, as are the PolicyBundles made for it).
struct Env {
    ns: TestNamespace,
    package: String,
}

impl Env {
    /// The client and the environment: what every kwok project test starts with.
    async fn new(prefix: &str) -> (Client, Env) {
        let (client, ns) = setup(prefix).await;
        let (package, _) = published(&client, &ns, "agent", "internal").await;
        (client, Env { ns, package })
    }

    /// A free loopback port for a planner, which this namespace's projects
    /// may call.
    async fn planner_port(&self, client: &Client) -> u16 {
        let port = free_port();
        allow_planners(client, &self.ns, &[format!("http://127.0.0.1:{port}/")]).await;
        port
    }

    fn task(&self, name: &str, deps: &[&str], input: &str) -> Value {
        json!({ "name": name, "capsule": { "package": self.package, "version": "1.0.0" },
                "dependsOn": deps, "input": input })
    }

    /// As [`Env::task`], never retried: its first failure fails it for good.
    fn unretried(&self, name: &str, deps: &[&str], input: &str) -> Value {
        let mut task = self.task(name, deps, input);
        task["retries"] = json!(0);
        task
    }

    /// A project `name` with goal "g" that runs exactly the listed `tasks`.
    fn listed(&self, name: &str, tasks: Vec<Value>) -> Value {
        self.project(name, json!({ "goal": "g", "tasks": tasks }))
    }

    fn project(&self, name: &str, spec: Value) -> Value {
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                "metadata": { "name": name, "namespace": self.ns.name }, "spec": spec })
    }

    async fn jobs(&self, client: &Client, project: &DynamicObject) -> Vec<Job> {
        let uid = project.uid().unwrap_or_default();
        Api::<Job>::namespaced(client.clone(), &self.ns.name)
            .list(&ListParams::default().labels(&format!("{UID_LABEL}={uid}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    async fn delete(self) {
        self.ns.delete().await;
    }
}

fn label<'a>(job: &'a Job, key: &str) -> &'a str {
    job.labels().get(key).map(String::as_str).unwrap_or_default()
}

fn task_jobs(jobs: &[Job]) -> Vec<&Job> {
    jobs.iter()
        .filter(|j| label(j, "kamachiq.somastack.io/role") == "task")
        .collect()
}

/// Sets `spec.suspend` of the project `name`, as a user does.
async fn set_suspend(api: &Api<DynamicObject>, name: &str, suspend: bool) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "spec": { "suspend": suspend } })),
    )
    .await
    .unwrap();
}

/// The `(task, attempt)` pairs `expected`, owned as [`attempts`] returns them.
fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|&(task, attempt)| (task.to_string(), attempt.to_string()))
        .collect()
}

/// (task, attempt) of every task Job, sorted.
fn attempts(jobs: &[Job]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = task_jobs(jobs)
        .iter()
        .map(|j| {
            (
                label(j, "kamachiq.somastack.io/task").to_string(),
                label(j, "kamachiq.somastack.io/attempt").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn finished(api: &Api<DynamicObject>, name: &str, status: &str, reason: &str) -> DynamicObject {
    wait_condition(api, name, "Succeeded", status, Some(reason), T).await
}

/// Seconds since the epoch of a Job's creation and completion.
fn interval(job: &Job) -> (i64, i64) {
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or_default();
    let done = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    (created, done)
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_within_parallelism_and_is_reviewed() {
    let (client, env) = Env::new("kp-diamond").await;
    let doc = env.project(
        "diamond",
        json!({
            "goal": "a diamond",
            "parallelism": 2,
            "review": { "package": env.package, "version": "1.0.0" },
            "tasks": [
                env.task("root", &[], "start"),
                env.task("left", &["root"], "kwok:run=2s left"),
                env.task("middle", &["root"], "kwok:run=2s middle"),
                env.task("right", &["root"], "kwok:run=2s right"),
                env.task("join", &["left", "middle", "right"], "join"),
            ],
        }),
    );
    let api = put_api(&client, &doc).await;
    let done = finished(&api, "diamond", "True", "AllTasksSucceeded").await;
    assert_eq!(done.data["status"]["phase"], "Succeeded");
    assert_eq!(done.data["status"]["taskCounts"]["succeeded"], 5);

    let jobs = env.jobs(&client, &done).await;
    let tasks: BTreeMap<String, (i64, i64)> = task_jobs(&jobs)
        .iter()
        .map(|j| (label(j, "kamachiq.somastack.io/task").to_string(), interval(j)))
        .collect();
    assert_eq!(tasks.len(), 5, "one Job per task: {:?}", attempts(&jobs));
    // Dependency order: a task's Job is created only after its dependencies' Jobs completed.
    for (task, deps) in [
        ("left", vec!["root"]),
        ("middle", vec!["root"]),
        ("right", vec!["root"]),
        ("join", vec!["left", "middle", "right"]),
    ] {
        for d in deps {
            assert!(
                tasks[task].0 >= tasks[d].1,
                "{task} created at {} before {d} completed at {}",
                tasks[task].0,
                tasks[d].1
            );
        }
    }
    // Parallelism 2: never more than two task Jobs between creation and completion.
    for (name, (at, _)) in &tasks {
        let running = tasks.values().filter(|(c, d)| c <= at && at < d).count();
        assert!(
            running <= 2,
            "{running} task Jobs running when {name} was created: {tasks:?}"
        );
    }
    // The three middle tasks could not all run at once.
    let middles: Vec<(i64, i64)> = ["left", "middle", "right"].iter().map(|t| tasks[*t]).collect();
    let last_start = middles.iter().map(|m| m.0).max().unwrap_or_default();
    let first_end = middles.iter().map(|m| m.1).min().unwrap_or_default();
    assert!(
        last_start >= first_end,
        "three middle tasks overlapped: {middles:?}"
    );

    // Every task's output was reviewed by a review Job, then accepted.
    let reviews = jobs
        .iter()
        .filter(|j| label(j, "kamachiq.somastack.io/role") == "review")
        .count();
    assert_eq!(reviews, 5);
    for j in task_jobs(&jobs) {
        assert_eq!(
            j.annotations()
                .get("kamachiq.somastack.io/verdict")
                .map(String::as_str),
            Some("accepted")
        );
    }

    // Data flows: join's Job received the accepted outputs of the three
    // tasks it depends on (SOMASTACK_TASK_DEPENDENCIES), root's none.
    let env_of = |task: &str| -> Option<Value> {
        let job = task_jobs(&jobs)
            .into_iter()
            .find(|j| label(j, "kamachiq.somastack.io/task") == task)?;
        let container = job
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .first()?
            .clone();
        let value = container
            .env?
            .into_iter()
            .find(|e| e.name == "SOMASTACK_TASK_DEPENDENCIES")?
            .value?;
        serde_json::from_str(&value).ok()
    };
    assert_eq!(
        env_of("join"),
        Some(json!({
            "left": "result of left: kwok:run=2s left",
            "middle": "result of middle: kwok:run=2s middle",
            "right": "result of right: kwok:run=2s right",
        }))
    );
    assert_eq!(env_of("root"), None);

    // Results, as a user reads them.
    let results = done.data["status"]["resultsRef"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(results, "diamond-results");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
        .get(&results)
        .await
        .unwrap();
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.get("join").map(String::as_str), Some("result of join: join"));
    assert_eq!(data.len(), 5);
    // The plan, with its digest, is stored.
    let digest = done.data["status"]["planDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plan = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
        .get("diamond-plan")
        .await
        .unwrap();
    assert_eq!(
        plan.annotations().get("kamachiq.somastack.io/plan-digest"),
        Some(&digest)
    );
    env.delete().await;
}

#[tokio::test]
async fn cycles_and_unknown_dependencies_are_refused_before_anything_runs() {
    let (client, env) = Env::new("kp-invalid").await;
    // An unknown dependency: the API server refuses it (CEL rule).
    let unknown = env.listed("unknown", vec![env.task("a", &["ghost"], "")]);
    let err = somastack_tests::apply(&client, &unknown)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("every dependsOn entry must name a task listed in spec.tasks")),
        "{err:?}"
    );
    // A cycle: the schema's rules cannot see it; the project-policy webhook
    // refuses it when written (planned cycles: tests/tests/hostile.rs).
    let cycle = env.listed(
        "cycle",
        vec![
            env.task("a", &["c"], ""),
            env.task("b", &["a"], ""),
            env.task("c", &["b"], ""),
            env.task("d", &[], ""),
        ],
    );
    let msg = denied(&client, &cycle, "project-policy.somastack.io").await;
    assert_eq!(
        msg,
        "KamachiqProject cycle: spec.tasks is not a plan that can run: the tasks form a cycle: a -> b -> c -> a"
    );
    env.delete().await;
}

/// Starts the reference planner on `port`; returns once it answers.
async fn start_planner(port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(workspace_binary("somastack-planner"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("somastack-planner starts (cargo build --bins first)");
    wait_for("the planner to answer /healthz", T, || async {
        http_get(port, "/healthz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    child
}

#[tokio::test]
async fn the_reference_planner_decomposes_a_goal_and_an_outage_is_reported_until_it_is_back() {
    let (client, env) = Env::new("kp-planner").await;
    let port = env.planner_port(&client).await;
    let doc = env.project(
        "planned",
        json!({
            "goal": "2 x gather sources on residency; write the brief",
            "planner": {
                "url": format!("http://127.0.0.1:{port}/plan"),
                "agent": { "package": env.package, "version": "1.0.0" },
            },
        }),
    );
    let api = put_api(&client, &doc).await;
    // Nothing listens yet: a clear status, nothing spawned.
    let (down, msg) = wait_succeeded(&api, "planned", "Unknown", "PlannerUnavailable", T).await;
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/plan")) && msg.contains("Connection refused")
            || msg.contains("connection refused"),
        "{msg}"
    );
    assert_eq!(down.data["status"]["phase"], "Planning");
    assert!(env.jobs(&client, &down).await.is_empty());

    // The planner comes up: the project is planned and runs.
    let mut planner = start_planner(port).await;
    let done = finished(&api, "planned", "True", "AllTasksSucceeded").await;
    let jobs = env.jobs(&client, &done).await;
    let names: BTreeSet<String> = attempts(&jobs).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "s1-gather-sources-on-1".to_string(),
            "s1-gather-sources-on-2".to_string(),
            "s2-write-the-brief".to_string(),
        ])
    );
    let plan = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
        .get("planned-plan")
        .await
        .unwrap();
    let tasks: Vec<Value> = serde_json::from_str(&plan.data.unwrap_or_default()["plan.json"]).unwrap();
    let brief = tasks
        .iter()
        .find(|t| t["name"] == "s2-write-the-brief")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        brief["dependsOn"],
        json!(["s1-gather-sources-on-1", "s1-gather-sources-on-2"])
    );
    assert!(somastack_tests::event_recorded(&env.ns.name, "Planned"));
    let _ = planner.kill().await;
    env.delete().await;
}

#[tokio::test]
async fn the_approval_gate_holds_until_an_authorized_reviewer_approves_the_plan() {
    let (client, env) = Env::new("kp-approve").await;
    let suffix = unique_suffix();
    let author = user(&client, &format!("kp-author-{suffix}"), &[PUBLISHER_ROLE]).await;
    let reviewer = user(&client, &format!("kp-reviewer-{suffix}"), &[REVIEWER_ROLE]).await;
    let doc = env.project(
        "gated",
        json!({ "goal": "g", "approval": { "required": true }, "tasks": [env.task("a", &[], "a")] }),
    );
    let api_author = put_api(&author.client, &doc).await;
    let api = api_for(&client, &doc).await;
    let waiting = wait_condition(&api, "gated", "Approved", "False", Some("AwaitingApproval"), T).await;
    assert_eq!(waiting.data["status"]["phase"], "AwaitingApproval");
    let digest = waiting.data["status"]["planDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message(&waiting, "Approved").contains(&digest));
    let approve = |digest: &str| {
        json!({ "metadata": { "annotations": {
            "review.somastack.io/decision": "approve", "review.somastack.io/digest": digest } } })
    };

    // The author may not approve (no 'approve' verb, and the submitter besides).
    let err = api_author
        .patch("gated", &PatchParams::default(), &Patch::Merge(&approve(&digest)))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("may not review KamachiqProjects")
            && err.contains("'approve' on kamachiqprojects.somastack.io"),
        "{err}"
    );
    // An approval of another plan does not open the gate.
    let api_reviewer = api_for(&reviewer.client, &doc).await;
    api_reviewer
        .patch(
            "gated",
            &PatchParams::default(),
            &Patch::Merge(&approve("sha256:0000")),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = api.get("gated").await.unwrap();
    assert_eq!(still.data["status"]["phase"], "AwaitingApproval");
    assert!(
        env.jobs(&client, &still).await.is_empty(),
        "nothing runs before the approval"
    );

    // The reviewer approves this plan: it runs.
    api_reviewer
        .patch("gated", &PatchParams::default(), &Patch::Merge(&approve(&digest)))
        .await
        .unwrap();
    let done = finished(&api, "gated", "True", "AllTasksSucceeded").await;
    let approved = condition_with(&done, "Approved", "status", "True");
    assert!(approved.contains(&reviewer.name), "{approved}");

    // A changed plan needs a new approval: the new task waits.
    let mut changed = doc.clone();
    changed["spec"]["tasks"] = json!([env.task("a", &[], "a"), env.task("b", &["a"], "b")]);
    put(&author.client, &changed).await;
    let waiting = wait_condition(&api, "gated", "Approved", "False", Some("AwaitingApproval"), T).await;
    let new_digest = waiting.data["status"]["planDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(new_digest, digest);
    assert_eq!(attempts(&env.jobs(&client, &waiting).await).len(), 1);
    api_reviewer
        .patch(
            "gated",
            &PatchParams::default(),
            &Patch::Merge(&approve(&new_digest)),
        )
        .await
        .unwrap();
    let done = finished(&api, "gated", "True", "AllTasksSucceeded").await;
    assert_eq!(
        attempts(&env.jobs(&client, &done).await),
        pairs(&[("a", "1"), ("b", "1")])
    );
    env.delete().await;
}

#[tokio::test]
async fn retrying_runs_only_the_failed_tasks() {
    let (client, env) = Env::new("kp-retry").await;
    let flaky = env.unretried("flaky", &[], "kwok:fail-first");
    let doc = env.listed(
        "retried",
        vec![
            env.task("good", &[], "fine"),
            flaky,
            env.task("after", &["flaky"], ""),
        ],
    );
    let api = put_api(&client, &doc).await;
    let failed = finished(&api, "retried", "False", "TasksFailed").await;
    let good_uid = |jobs: &[Job]| {
        task_jobs(jobs)
            .iter()
            .find(|j| label(j, "kamachiq.somastack.io/task") == "good")
            .and_then(|j| j.uid())
    };
    let before = good_uid(&env.jobs(&client, &failed).await);
    assert!(before.is_some());

    // The CLI a user runs.
    let out = soma_ok(&["project", "retry-failed", "retried", "-n", &env.ns.name]);
    assert!(out.contains("failed tasks will run again"));

    let done = finished(&api, "retried", "True", "AllTasksSucceeded").await;
    let jobs = env.jobs(&client, &done).await;
    assert_eq!(
        attempts(&jobs),
        pairs(&[("after", "1"), ("flaky", "1"), ("flaky", "2"), ("good", "1")])
    );
    assert_eq!(good_uid(&jobs), before, "the succeeded task was not run again");
    assert!(somastack_tests::event_recorded(
        &env.ns.name,
        "RetryingFailedTasks"
    ));

    // The summary a user asks for.
    let out = soma_ok(&["project", "summary", "-n", &env.ns.name, "-o", "json"]);
    let summary: Value = serde_json::from_str(&out).unwrap();
    let row = &summary["projects"][0];
    assert_eq!(row["name"], "retried");
    assert_eq!(row["phase"], "Succeeded");
    assert_eq!(
        (
            row["tasks"].as_i64(),
            row["succeeded"].as_i64(),
            row["failed"].as_i64()
        ),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(row["attempts"], 4, "four task Jobs: good, flaky twice, after");
    assert_eq!(row["successRate"], 1.0);
    assert!(row["meanTaskSeconds"].as_f64().is_some_and(|s| s >= 1.0), "{row}");
    assert_eq!(summary["totals"]["phases"]["Succeeded"], 1);
    env.delete().await;
}

#[tokio::test]
async fn a_task_timeout_fails_the_attempt_and_the_duration_budget_stops_the_project() {
    let (client, env) = Env::new("kp-budget").await;
    let mut slow = env.unretried("slow", &[], "kwok:run=60s");
    slow["timeoutSeconds"] = json!(2);
    let timed = env.listed("timed", vec![slow]);
    let budgeted = env.project(
        "budgeted",
        json!({ "goal": "g", "budget": { "maxDurationSeconds": 4 },
                "tasks": [env.task("slow", &[], "kwok:run=60s")] }),
    );
    put(&client, &timed).await;
    put(&client, &budgeted).await;
    let api = api_for(&client, &timed).await;

    // The Job's activeDeadlineSeconds ends the attempt; Kubernetes says why.
    let failed = finished(&api, "timed", "False", "TasksFailed").await;
    let msg = message(&failed, "Succeeded");
    assert!(
        msg.contains("slow (failed after 1 attempt; attempt 1 failed: DeadlineExceeded"),
        "{msg}"
    );

    // The project's own budget: the running Job is stopped, the project fails.
    let over = finished(&api, "budgeted", "False", "BudgetExceeded").await;
    let msg = message(&over, "Succeeded");
    assert!(
        msg.starts_with("budget.maxDurationSeconds ran out; running tasks were stopped: slow"),
        "{msg}"
    );
    let jobs = env.jobs(&client, &over).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.as_ref().and_then(|s| s.suspend), Some(true));
    env.delete().await;
}

/// Pods of the project's task Jobs that are not being deleted.
async fn live_pods(client: &Client, ns: &str) -> usize {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("kamachiq.somastack.io/role=task"))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn suspending_stops_running_jobs_and_resuming_continues() {
    let (client, env) = Env::new("kp-suspend").await;
    let doc = env.listed(
        "paused",
        vec![
            env.task("long", &[], "kwok:run=6s"),
            env.task("next", &["long"], ""),
        ],
    );
    let api = put_api(&client, &doc).await;
    wait_for("the first task's pod to run", T, || async {
        (live_pods(&client, &env.ns.name).await == 1).then_some(())
    })
    .await;
    set_suspend(&api, "paused", true).await;
    let suspended = wait_condition(&api, "paused", "Succeeded", "Unknown", Some("Suspended"), T).await;
    assert_eq!(suspended.data["status"]["phase"], "Suspended");
    wait_for("the running pod to be stopped", T, || async {
        (live_pods(&client, &env.ns.name).await == 0).then_some(())
    })
    .await;
    let jobs = env.jobs(&client, &suspended).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.as_ref().and_then(|s| s.suspend), Some(true));
    // Nothing finishes or starts while suspended.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let still = api.get("paused").await.unwrap();
    assert_eq!(still.data["status"]["phase"], "Suspended");
    assert_eq!(env.jobs(&client, &still).await.len(), 1);

    set_suspend(&api, "paused", false).await;
    let done = finished(&api, "paused", "True", "AllTasksSucceeded").await;
    assert_eq!(
        attempts(&env.jobs(&client, &done).await),
        pairs(&[("long", "1"), ("next", "1")]),
        "the suspended attempt was resumed, not replaced"
    );
    env.delete().await;
}

#[tokio::test]
async fn an_engaged_kill_switch_halts_the_project_and_stops_its_jobs() {
    let (client, env) = Env::new("kp-kill").await;
    let doc = env.listed("halted", vec![env.task("long", &[], "kwok:run=120s")]);
    let api = put_api(&client, &doc).await;
    wait_for("the task's pod to run", T, || async {
        (live_pods(&client, &env.ns.name).await == 1).then_some(())
    })
    .await;
    let name = format!("kill-{}", unique_suffix());
    let policy = bundle(
        &name,
        &env.ns.name,
        json!({ "killSwitch": { "engaged": true, "reason": "incident 42" } }),
    );
    put_policy(&client, env.ns.owns(&policy)).await;
    let (halted, msg) = wait_succeeded(&api, "halted", "Unknown", "KillSwitchEngaged", T).await;
    assert_eq!(halted.data["status"]["phase"], "Halted");
    assert!(
        msg.contains(&format!("PolicyBundle {name} (incident 42)")),
        "{msg}"
    );
    wait_for("the running pod to be stopped", T, || async {
        (live_pods(&client, &env.ns.name).await == 0).then_some(())
    })
    .await;
    let jobs = env.jobs(&client, &halted).await;
    assert_eq!(jobs[0].spec.as_ref().and_then(|s| s.suspend), Some(true));
    assert!(somastack_tests::event_recorded(&env.ns.name, "KillSwitchEngaged"));
    env.delete().await;
}

#[tokio::test]
async fn an_operator_killed_mid_run_and_restarted_creates_no_duplicate_job() {
    let (client, env) = Env::new("kp-crash").await;
    let shard = format!("crash-{}", unique_suffix());
    let selector = format!("somastack.io/project-shard={shard}");
    let start = || spawn_shard_operator("somastack.io/drill-shard=none", &selector);
    let mut operator = start();
    let tasks: Vec<Value> = (1..=6)
        .map(|i| env.task(&format!("t{i}"), &[], "kwok:run=3s"))
        .collect();
    let mut doc = env.project("crash", json!({ "goal": "g", "parallelism": 3, "tasks": tasks }));
    doc["metadata"]["labels"] = json!({ "somastack.io/project-shard": shard });
    let api = put_api(&client, &doc).await;
    let obj = wait_for("the first Jobs", T, || async {
        let obj = api.get("crash").await.ok()?;
        (env.jobs(&client, &obj).await.len() >= 3).then_some(obj)
    })
    .await;
    operator.start_kill().unwrap();
    let _ = operator.wait().await;
    let at_kill = attempts(&env.jobs(&client, &obj).await);

    let mut operator = start();
    let done = finished(&api, "crash", "True", "AllTasksSucceeded").await;
    let all = attempts(&env.jobs(&client, &done).await);
    let expected: Vec<(String, String)> = (1..=6).map(|i| (format!("t{i}"), "1".to_string())).collect();
    assert_eq!(
        all, expected,
        "one Job per task across the restart (at the kill: {at_kill:?})"
    );
    let _ = operator.kill().await;
    env.delete().await;
}

#[tokio::test]
async fn a_500_task_project_completes_with_a_small_status() {
    let (client, env) = Env::new("kp-large").await;
    let port = env.planner_port(&client).await;
    let mut planner = start_planner(port).await;
    let doc = env.project(
        "large",
        json!({
            "goal": "500 x summarize one part of the corpus",
            "parallelism": 100,
            "budget": { "maxTasks": 500 },
            "planner": {
                "url": format!("http://127.0.0.1:{port}/plan"),
                "agent": { "package": env.package, "version": "1.0.0" },
            },
        }),
    );
    let started = Instant::now();
    let api = put_api(&client, &doc).await;
    let done = wait_condition(
        &api,
        "large",
        "Succeeded",
        "True",
        Some("AllTasksSucceeded"),
        Duration::from_secs(600),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(done.data["status"]["taskCounts"]["succeeded"], 500);
    // What `kubectl get kamachiqproject large -o json` shows.
    let out = kubectl(&[
        "get",
        "kamachiqproject",
        "large",
        "-n",
        &env.ns.name,
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let object: Value = serde_json::from_slice(&out.stdout).unwrap();
    let status_bytes = serde_json::to_vec(&object["status"])
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    let object_bytes = out.stdout.len();
    eprintln!(
        "500-task project: completed in {:.1} s; status {status_bytes} bytes, whole object {object_bytes} bytes (kubectl get -o json)",
        took.as_secs_f64()
    );
    assert!(status_bytes < 64 * 1024, "status is {status_bytes} bytes");
    assert_eq!(object["status"]["tasks"].as_array().map(Vec::len), Some(50));
    let jobs = env.jobs(&client, &done).await;
    assert_eq!(task_jobs(&jobs).len(), 500);
    let _ = planner.kill().await;
    env.delete().await;
}

/// On the real nodes: the reference agent computes every result, the
/// reference planner runs as a capsule, failures are the agent's own.
mod real_node {
    use somastack_tests::real::pods_on_real_nodes;

    use super::*;

    const REGULATION: &str = "Chapter V of the GDPR governs transfers of personal data outside the EEA. \
        A transfer is lawful when the Commission found the destination adequate. \
        Without such a decision, the exporter must provide appropriate safeguards. \
        Standard contractual clauses are the safeguard most exporters use. \
        Fines for unlawful transfers reach four percent of worldwide turnover.";
    const GUIDANCE: &str = "The data protection board publishes guidance on artificial intelligence. \
        A model trained on personal data is not anonymous by default. \
        Controllers must document why a model cannot reveal its training data. \
        Legitimate interest may justify training after a balancing test. \
        Authorities may order the deletion of a model developed unlawfully.";

    /// A namespace with the reference agent as capsule `package` 1.0.0,
    /// configured with `env`.
    async fn agent_env(prefix: &str, env: &[(&str, &str)]) -> (Client, Env) {
        let (client, ns) = setup(prefix).await;
        let package = format!("agent-{}", unique_suffix());
        put(
            &client,
            ns.owns(&agent_capsule(&package, &package, "1.0.0", "internal", env)),
        )
        .await;
        (client, Env { ns, package })
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }

    fn sentences(s: &str) -> Vec<&str> {
        s.split_inclusive(". ").map(str::trim).collect()
    }

    /// Each result is the agent's summary of its input and the accepted
    /// outputs of its dependencies, reviewed by the agent as reviewer; a
    /// second project whose agent fails (AGENT_FAIL=always) is retried,
    /// then fails naming the task and the agent's own words.
    #[tokio::test]
    async fn agents_compute_results_from_inputs_and_upstream_outputs_and_a_failing_agent_fails_the_project() {
        let (client, env) = agent_env("kp-real", &[]).await;
        let failing = format!("failing-{}", unique_suffix());
        let fail_always = [("AGENT_FAIL", "always")];
        let failing_capsule = agent_capsule(&failing, &failing, "1.0.0", "internal", &fail_always);
        put(&client, env.ns.owns(&failing_capsule)).await;

        let doc = on_real_nodes(env.project(
            "brief",
            json!({
                "goal": "a brief on data transfers and AI guidance",
                "region": "eu-central-1",
                "parallelism": 2,
                "review": { "package": env.package, "version": "1.0.0" },
                "tasks": [
                    env.task("regulation", &[], REGULATION),
                    env.task("guidance", &[], GUIDANCE),
                    env.task("brief", &["regulation", "guidance"], "Combine both summaries into a brief."),
                ],
            }),
        ));
        let mut bad = json!({ "name": "bad", "capsule": { "package": failing, "version": "1.0.0" },
                              "input": REGULATION, "retries": 1 });
        bad["dependsOn"] = json!([]);
        let fails =
            on_real_nodes(env.listed("failing", vec![bad, env.task("after", &["bad"], "never runs")]));
        put(&client, &doc).await;
        put(&client, &fails).await;
        let api = api_for(&client, &doc).await;

        let done = finished(&api, "brief", "True", "AllTasksSucceeded").await;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
            .get("brief-results")
            .await
            .expect("results ConfigMap");
        let data = cm.data.unwrap_or_default();
        for (task, input) in [("regulation", REGULATION), ("guidance", GUIDANCE)] {
            let out = lines(data.get(task).map(String::as_str).unwrap_or_default());
            let from = sentences(input);
            assert_eq!(
                out.len(),
                3,
                "{task}: the agent keeps 3 sentences (AGENT_SENTENCES default): {out:?}"
            );
            assert!(
                out.iter().all(|l| from.contains(l)),
                "{task}: {out:?} are sentences of its input"
            );
        }
        let brief = data.get("brief").cloned().unwrap_or_default();
        for dep in ["regulation", "guidance"] {
            let upstream = lines(data.get(dep).map(String::as_str).unwrap_or_default());
            assert!(
                lines(&brief).iter().any(|l| upstream.contains(l)),
                "the brief combines {dep}'s output: {brief:?}"
            );
        }
        let jobs = env.jobs(&client, &done).await;
        assert_eq!(task_jobs(&jobs).len(), 3);
        assert_eq!(
            jobs.len(),
            6,
            "each task's output was reviewed by its own review Job"
        );
        let pods = pods_on_real_nodes(&client, &env.ns.name, "kamachiq.somastack.io/project=brief").await;
        assert_eq!(pods.len(), 6, "every task and review ran in a real container");

        let failed = finished(&api, "failing", "False", "TasksFailed").await;
        let msg = message(&failed, "Succeeded");
        assert!(
            msg.starts_with("1 of 2 tasks failed: bad (failed after 2 attempts;"),
            "{msg}"
        );
        assert!(
            msg.contains("configured to fail (AGENT_FAIL=always)"),
            "the agent's own words: {msg}"
        );
        assert_eq!(
            attempts(&env.jobs(&client, &failed).await),
            pairs(&[("bad", "1"), ("bad", "2")]),
            "bad ran twice (retries: 1); after never ran"
        );
        pods_on_real_nodes(&client, &env.ns.name, "kamachiq.somastack.io/project=failing").await;
        let _ = api_for(&client, &doc)
            .await
            .delete("brief", &DeleteParams::default())
            .await;
        env.delete().await;
    }

    /// The reference planner, installed as an Installation of its image on
    /// a real node, plans a project that names it (`planner.capsule`): the
    /// operator calls it through its Service, and the planned tasks run.
    #[tokio::test]
    async fn a_planner_capsule_plans_through_its_service_and_the_plan_runs() {
        let (client, env) = agent_env("kp-planner-real", &[]).await;
        let planner = format!("planner-{}", unique_suffix());
        let image = std::env::var("SOMASTACK_PLANNER_IMAGE")
            .expect("SOMASTACK_PLANNER_IMAGE (hack/test.sh builds and loads the planner image)");
        let mut cap = capsule(&planner, &planner, "1.0.0", "internal");
        cap["spec"]["image"] = json!(image);
        cap["spec"]["env"] = json!([{ "name": "PLANNER_LISTEN", "value": "0.0.0.0:8080" }]);
        cap["spec"]["readyPath"] = json!("/healthz");
        cap["spec"]["resources"] =
            json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } });
        put(&client, env.ns.owns(&cap)).await;
        let inst = on_real_nodes(somastack_tests::fixtures::installation(
            &env.ns.name,
            "planner",
            &planner,
            "1.0.0",
            "eu-west-1",
            1,
        ));
        put(&client, &inst).await;
        let goal = format!("{REGULATION}\nWrite a short brief from the summary.");
        let doc = on_real_nodes(env.project(
            "planned",
            json!({
                "goal": goal,
                "planner": {
                    "capsule": { "package": planner, "version": "1.0.0" },
                    "agent": { "package": env.package, "version": "1.0.0" },
                },
                "budget": { "maxTasks": 5 },
            }),
        ));
        let api = put_api(&client, &doc).await;
        let done = finished(&api, "planned", "True", "AllTasksSucceeded").await;
        pods_on_real_nodes(&client, &env.ns.name, "somastack.io/installation=planner").await;
        let names: Vec<String> = done.data["status"]["tasks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names.len(), 2, "two stages, one task each: {names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("s1-") || n.starts_with("s2-")),
            "{names:?}"
        );
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
            .get("planned-results")
            .await
            .expect("results ConfigMap");
        let data = cm.data.unwrap_or_default();
        let first = data
            .iter()
            .find(|(k, _)| k.starts_with("s1-"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let second = data
            .iter()
            .find(|(k, _)| k.starts_with("s2-"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let from = sentences(REGULATION);
        assert!(
            !lines(&first).is_empty() && lines(&first).iter().all(|l| from.contains(l)),
            "stage 1 summarized the goal's first step: {first:?}"
        );
        assert!(
            lines(&second).iter().any(|l| lines(&first).contains(l)),
            "stage 2 used stage 1's output: {second:?}"
        );
        pods_on_real_nodes(&client, &env.ns.name, "kamachiq.somastack.io/project=planned").await;
        env.delete().await;
    }

    /// How long a moderated project on the real nodes may take: every
    /// moderation is a pod of its own, one after another.
    const MODERATED: Duration = Duration::from_secs(240);

    /// The project's Jobs of `role` (`task`, `review`, `moderation`).
    fn with_role<'a>(jobs: &'a [Job], role: &str) -> Vec<&'a Job> {
        jobs.iter()
            .filter(|j| label(j, "kamachiq.somastack.io/role") == role)
            .collect()
    }

    /// (stage, task or "", decision) of every moderation Job, sorted.
    fn moderations(jobs: &[Job]) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = with_role(jobs, "moderation")
            .iter()
            .map(|j| {
                (
                    label(j, "kamachiq.somastack.io/stage").to_string(),
                    label(j, "kamachiq.somastack.io/task").to_string(),
                    j.annotations()
                        .get("kamachiq.somastack.io/decision")
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn triples(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    /// The moderation Job of `stage` (and `task`).
    fn moderation_job<'a>(jobs: &'a [Job], stage: &str, task: &str) -> &'a Job {
        with_role(jobs, "moderation")
            .into_iter()
            .find(|j| {
                label(j, "kamachiq.somastack.io/stage") == stage
                    && label(j, "kamachiq.somastack.io/task") == task
            })
            .unwrap_or_else(|| panic!("no {stage} moderation Job for {task:?}"))
    }

    /// The message of the Event with `reason` on the project `name`, as
    /// `kubectl get events` lists it (waited for).
    async fn event_message(client: &Client, ns: &str, name: &str, reason: &str) -> String {
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
        let fields = format!("involvedObject.name={name},reason={reason}");
        wait_for(&format!("a {reason} Event on {name}"), T, || async {
            let list = events.list(&ListParams::default().fields(&fields)).await.ok()?;
            list.items.into_iter().find_map(|e| e.message)
        })
        .await
    }

    /// The moderator: the reference agent's image again (its `auto` role
    /// moderates when SOMASTACK_MODERATION_STAGE is set), with `config`.
    fn moderation(env: &Env, config: Value) -> Value {
        json!({ "capsule": { "package": env.package, "version": "1.0.0" }, "config": config })
    }

    /// A PolicyBundle with `projects.moderation` governing only the test's
    /// namespace applies its moderator to a project that asks for none:
    /// the goal, each task's input and each output get a moderation Job
    /// (run by the reference agent on the real nodes), each before what it
    /// guards, every one allows, and the project succeeds.
    #[tokio::test]
    async fn a_policy_bundle_requiring_moderation_moderates_every_project_of_its_namespaces() {
        let (client, env) = agent_env("kp-mod-bundle", &[]).await;
        let bundle_name = format!("{}-moderation", env.ns.name);
        let policy = bundle(
            &bundle_name,
            &env.ns.name,
            json!({ "projects": { "moderation": moderation(&env, json!({ "MODERATION_DENY": "ransomware, exfiltrate" })) } }),
        );
        put_policy(&client, env.ns.owns(&policy)).await;
        let doc = on_real_nodes(env.project(
            "moderated",
            json!({
                "goal": "a brief on data transfers",
                "region": "eu-central-1",
                "tasks": [
                    env.task("regulation", &[], REGULATION),
                    env.task("brief", &["regulation"], "Write a brief from the summary."),
                ],
            }),
        ));
        let api = put_api(&client, &doc).await;
        let done = wait_condition(
            &api,
            "moderated",
            "Succeeded",
            "True",
            Some("AllTasksSucceeded"),
            MODERATED,
        )
        .await;
        assert_eq!(
            done.data["status"]["moderators"],
            json!([format!("{} 1.0.0 (PolicyBundle {bundle_name})", env.package)]),
            "status names the moderator and the bundle requiring it"
        );
        let jobs = env.jobs(&client, &done).await;
        assert_eq!(
            moderations(&jobs),
            triples(&[
                ("goal", "", "Allow"),
                ("input", "brief", "Allow"),
                ("input", "regulation", "Allow"),
                ("output", "brief", "Allow"),
                ("output", "regulation", "Allow"),
            ]),
            "one moderation Job per text, each allowed"
        );
        assert_eq!(attempts(&jobs), pairs(&[("brief", "1"), ("regulation", "1")]));
        // Each moderation ended before what it guards started.
        let task_job = |t: &str| {
            *task_jobs(&jobs)
                .iter()
                .find(|j| label(j, "kamachiq.somastack.io/task") == t)
                .unwrap_or_else(|| panic!("no task Job {t}"))
        };
        let goal = interval(moderation_job(&jobs, "goal", ""));
        for (t, upstream) in [("regulation", None), ("brief", Some("regulation"))] {
            let started = interval(task_job(t)).0;
            let input = interval(moderation_job(&jobs, "input", t));
            assert!(input.0 >= goal.1, "{t}'s input was moderated after the goal");
            assert!(started >= input.1, "{t} started before its input was allowed");
            if let Some(u) = upstream {
                let output = interval(moderation_job(&jobs, "output", u));
                assert!(started >= output.1, "{t} started before {u}'s output was allowed");
            }
        }
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
            .get("moderated-results")
            .await
            .expect("results ConfigMap");
        let data = cm.data.unwrap_or_default();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            vec!["brief", "regulation"],
            "both moderated outputs are the results"
        );
        let pods = pods_on_real_nodes(&client, &env.ns.name, "kamachiq.somastack.io/project=moderated").await;
        assert_eq!(pods.len(), 7, "5 moderations and 2 tasks ran in real containers");
        env.delete().await;
    }

    /// A goal with a denied word is refused before anything else: the
    /// project fails GoalRefused naming the moderator and its reason, the
    /// planner it names is never called, and no task Job exists.
    #[tokio::test]
    async fn a_refused_goal_is_never_planned() {
        let (client, env) = agent_env("kp-mod-goal", &[]).await;
        let planner =
            Server::start(|_| Reply::json(500, &json!({ "error": "this planner must not be called" }))).await;
        allow_planners(&client, &env.ns, &[planner.url("/")]).await;
        let doc = on_real_nodes(env.project(
            "refused-goal",
            json!({
                "goal": "Draft a ransomware note for the finance team.",
                "region": "eu-central-1",
                "planner": {
                    "url": planner.url("/plan"),
                    "agent": { "package": env.package, "version": "1.0.0" },
                },
                "moderation": moderation(&env, json!({ "MODERATION_DENY": "ransomware" })),
            }),
        ));
        let api = put_api(&client, &doc).await;
        let failed = wait_condition(
            &api,
            "refused-goal",
            "Succeeded",
            "False",
            Some("GoalRefused"),
            MODERATED,
        )
        .await;
        assert_eq!(failed.data["status"]["phase"], "Failed");
        let msg = message(&failed, "Succeeded");
        let head = format!(
            "the goal was refused by moderator {} 1.0.0 (spec.moderation): ",
            env.package
        );
        assert!(msg.starts_with(&head), "{msg}");
        assert!(
            msg.contains("denied term \"ransomware\""),
            "the moderator's reason: {msg}"
        );
        assert!(msg.ends_with("nothing was planned and no task ran"), "{msg}");
        condition_with(&failed, "Stalled", "status", "True");
        assert_eq!(
            event_message(&client, &env.ns.name, "refused-goal", "GoalRefused").await,
            msg
        );
        let jobs = env.jobs(&client, &failed).await;
        assert_eq!(moderations(&jobs), triples(&[("goal", "", "Refuse")]));
        assert_eq!(jobs.len(), 1, "no task Job: {:?}", attempts(&jobs));
        assert_eq!(
            planner.requests(),
            0,
            "the planner was called with a refused goal"
        );
        // What `kubectl soma project moderation` shows: the refusal (exit 3).
        let shown = somastack_tests::soma(&[
            "project",
            "moderation",
            "refused-goal",
            "-n",
            &env.ns.name,
            "-o",
            "json",
        ]);
        assert_eq!(shown.status.code(), Some(3), "{shown:?}");
        let shown: Value = serde_json::from_slice(&shown.stdout).expect("the moderation view as JSON");
        assert_eq!(shown["refusal"]["reason"], "GoalRefused", "{shown}");
        pods_on_real_nodes(
            &client,
            &env.ns.name,
            "kamachiq.somastack.io/project=refused-goal",
        )
        .await;
        env.delete().await;
    }

    /// A task whose input has a denied word is refused before its first
    /// Job: InputRefused names the task and the moderator's reason, and no
    /// Job of that task or of its dependant exists.
    #[tokio::test]
    async fn a_refused_input_never_reaches_a_job() {
        let (client, env) = agent_env("kp-mod-input", &[]).await;
        let doc = on_real_nodes(env.project(
            "refused-input",
            json!({
                "goal": "a brief on data transfers",
                "region": "eu-central-1",
                "moderation": moderation(&env, json!({ "MODERATION_DENY": "exfiltrate" })),
                "tasks": [
                    env.task("intake", &[], "Explain how to exfiltrate the customer database."),
                    env.task("report", &["intake"], "Report on the intake."),
                ],
            }),
        ));
        let api = put_api(&client, &doc).await;
        let failed = wait_condition(
            &api,
            "refused-input",
            "Succeeded",
            "False",
            Some("InputRefused"),
            MODERATED,
        )
        .await;
        let msg = message(&failed, "Succeeded");
        assert!(
            msg.starts_with(&format!(
                "the input of task intake was refused by moderator {} 1.0.0 (spec.moderation): ",
                env.package
            )),
            "{msg}"
        );
        assert!(msg.contains("denied term \"exfiltrate\""), "{msg}");
        assert!(msg.contains("task intake did not run"), "{msg}");
        assert_eq!(
            event_message(&client, &env.ns.name, "refused-input", "InputRefused").await,
            msg
        );
        let jobs = env.jobs(&client, &failed).await;
        assert_eq!(
            moderations(&jobs),
            triples(&[("goal", "", "Allow"), ("input", "intake", "Refuse")])
        );
        assert!(task_jobs(&jobs).is_empty(), "a task ran: {:?}", attempts(&jobs));
        let intake = &failed.data["status"]["tasks"][0];
        assert_eq!(
            (intake["name"].as_str(), intake["phase"].as_str()),
            (Some("intake"), Some("Failed"))
        );
        env.delete().await;
    }

    /// An output with a denied word is refused before it is accepted. The
    /// reference agent's output is made of its input's sentences, so an
    /// input with the word would be refused first: the moderator is told
    /// to check outputs only (`MODERATION_STAGES=output`; the goal and
    /// inputs are still given to it and allowed as "stage not moderated"),
    /// and every sentence of the input has the word, so whichever the
    /// agent keeps, its output has it. OutputRefused names the task; the
    /// output is not in the results and the dependant never runs.
    #[tokio::test]
    async fn a_refused_output_is_not_gathered_and_reaches_no_dependant() {
        let (client, env) = agent_env("kp-mod-output", &[]).await;
        let screening = "The quarantine of the shipment began on Monday. \
            Inspectors extended the quarantine after finding mould. \
            The importer disputes the quarantine in court. \
            A quarantine of this length is rare for grain.";
        let doc = on_real_nodes(env.project(
            "refused-output",
            json!({
                "goal": "a notice on the shipment",
                "region": "eu-central-1",
                "moderation": moderation(&env, json!({ "MODERATION_DENY": "quarantine", "MODERATION_STAGES": "output" })),
                "tasks": [
                    env.task("screening", &[], screening),
                    env.task("notice", &["screening"], "Write the notice."),
                ],
            }),
        ));
        let api = put_api(&client, &doc).await;
        let failed = wait_condition(
            &api,
            "refused-output",
            "Succeeded",
            "False",
            Some("OutputRefused"),
            MODERATED,
        )
        .await;
        let msg = message(&failed, "Succeeded");
        assert!(
            msg.starts_with(&format!(
                "the output of task screening (attempt 1) was refused by moderator {} 1.0.0 (spec.moderation): ",
                env.package
            )),
            "{msg}"
        );
        assert!(msg.contains("denied term \"quarantine\""), "{msg}");
        assert_eq!(
            event_message(&client, &env.ns.name, "refused-output", "OutputRefused").await,
            msg
        );
        let jobs = env.jobs(&client, &failed).await;
        assert_eq!(
            moderations(&jobs),
            triples(&[
                ("goal", "", "Allow"),
                ("input", "screening", "Allow"),
                ("output", "screening", "Refuse"),
            ])
        );
        assert_eq!(attempts(&jobs), pairs(&[("screening", "1")]), "notice never ran");
        let screening_job = task_jobs(&jobs)[0];
        assert!(
            !screening_job
                .annotations()
                .contains_key("kamachiq.somastack.io/verdict"),
            "the refused output was not accepted"
        );
        let results = failed.data["status"]["resultsRef"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(results, "refused-output-results");
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &env.ns.name)
            .get(&results)
            .await
            .expect("results ConfigMap");
        assert!(
            cm.data.unwrap_or_default().is_empty(),
            "the refused output is not among the results"
        );
        env.delete().await;
    }
}
