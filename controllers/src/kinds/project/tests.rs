use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use somastack_crds::common::DataClassification;
use somastack_crds::kamachiq::{MAX_LISTED_TASKS, Task};

use super::fixtures::{capsules, eu_only, job_input, project, task};
use super::gates::check_capsules;
use super::plan::{self, Gates, Input, JobState, JobView, Judge, Outcome, Role, Spawn, TaskVerdict};
use super::render::{self, Project};
use super::service_url;
use crate::testing::capsule_spec;

fn diamond() -> Vec<Task> {
    vec![
        task("a", &[]),
        task("b", &["a"]),
        task("c", &["a"]),
        task("d", &["b", "c"]),
    ]
}

fn job(task: &str, attempt: u32, state: JobState, verdict: Option<TaskVerdict>) -> JobView {
    JobView {
        name: format!("p-{task}-{attempt}"),
        task: task.into(),
        role: Role::Task,
        attempt,
        round: String::new(),
        state,
        verdict,
        has_output: false,
    }
}

fn open() -> Gates {
    Gates {
        spawn: true,
        ..Gates::default()
    }
}

fn step(tasks: &[Task], jobs: &[JobView], parallelism: i32, gates: Gates) -> plan::Step {
    plan::step(&Input {
        tasks,
        jobs,
        round: "",
        parallelism,
        review: false,
        gates,
        moderation: None,
    })
}

fn spawned(s: &plan::Step) -> Vec<(&str, u32)> {
    s.spawn.iter().map(|s| (s.task.as_str(), s.attempt)).collect()
}

#[test]
fn a_valid_diamond_passes_and_problems_are_named() {
    assert_eq!(plan::validate(&diamond(), 100), Ok(()));
    let mut dup = diamond();
    dup.push(task("a", &[]));
    let unknown = vec![task("a", &["zz"])];
    assert_eq!(
        plan::validate(&dup, 100),
        Err(vec!["task name a appears more than once".to_string()])
    );
    assert_eq!(
        plan::validate(&unknown, 100),
        Err(vec!["task a depends on zz, which is not in the plan".to_string()])
    );
    assert_eq!(
        plan::validate(&diamond(), 3),
        Err(vec![
            "the plan has 4 tasks; budget.maxTasks allows at most 3".to_string()
        ])
    );
    assert_eq!(
        plan::validate(&[], 3),
        Err(vec!["the plan has no task".to_string()])
    );
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let tasks = vec![
        task("a", &["c"]),
        task("b", &["a"]),
        task("c", &["b"]),
        task("d", &[]),
    ];
    let err = plan::validate(&tasks, 100).err().unwrap_or_default();
    assert_eq!(err, vec!["the tasks form a cycle: a -> b -> c -> a".to_string()]);
    // A long chain is no cycle, and does not exhaust the stack.
    let chain: Vec<Task> = (0..5000)
        .map(|i| {
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("t{}", i - 1)]
            };
            Task {
                depends_on: deps,
                ..task(&format!("t{i}"), &[])
            }
        })
        .collect();
    assert_eq!(plan::find_cycle(&chain), None);
}

#[test]
fn the_digest_ignores_order_and_sees_every_change() {
    let d = plan::digest("g", &diamond());
    let mut reversed = diamond();
    reversed.reverse();
    assert_eq!(plan::digest("g", &reversed), d);
    assert!(d.starts_with("sha256:") && d.len() == 71);
    let mut changed = diamond();
    changed[3].input = "something else".into();
    assert_ne!(plan::digest("g", &changed), d);
    assert_ne!(plan::digest("another goal", &diamond()), d);
}

#[test]
fn the_diamond_runs_in_dependency_order_within_parallelism() {
    let tasks = diamond();
    // Nothing yet: only the root is ready.
    assert_eq!(spawned(&step(&tasks, &[], 1, open())), vec![("a", 1)]);
    // The root runs: with parallelism 1, nothing more starts.
    let running = [job("a", 1, JobState::Active, None)];
    assert!(step(&tasks, &running, 1, open()).spawn.is_empty());
    // Root accepted: both middles are ready, parallelism decides how many start.
    let a_done = [job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted))];
    assert_eq!(spawned(&step(&tasks, &a_done, 1, open())), vec![("b", 1)]);
    assert_eq!(
        spawned(&step(&tasks, &a_done, 2, open())),
        vec![("b", 1), ("c", 1)]
    );
    // d waits for both.
    let b_done = [
        job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job("b", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job("c", 1, JobState::Active, None),
    ];
    let s = step(&tasks, &b_done, 2, open());
    assert!(s.spawn.is_empty());
    assert_eq!(s.outcome, Outcome::Running);
    let all = [
        job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job("b", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job("c", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job("d", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
    ];
    let s = step(&tasks, &all, 2, open());
    assert_eq!(s.outcome, Outcome::Succeeded);
    assert_eq!(plan::counts(&s.tasks).succeeded, 4);
}

#[test]
fn finished_jobs_are_judged_before_anything_else() {
    let tasks = diamond();
    let jobs = [job("a", 1, JobState::Succeeded, None)];
    let s = step(&tasks, &jobs, 4, open());
    assert_eq!(s.judge, vec![Judge::ReadOutput { job: "p-a-1".into() }]);
    assert!(s.spawn.is_empty(), "b and c wait until a's output is accepted");
    let failed = [job("a", 1, JobState::Failed("DeadlineExceeded".into()), None)];
    assert_eq!(
        step(&tasks, &failed, 4, open()).judge,
        vec![Judge::Failed {
            job: "p-a-1".into(),
            reason: "DeadlineExceeded".into()
        }]
    );
}

#[test]
fn a_failing_task_is_retried_then_fails_the_project_naming_it() {
    let tasks = vec![task("a", &[]), task("b", &["a"])];
    let once = [job(
        "a",
        1,
        JobState::Failed("x".into()),
        Some(TaskVerdict::Failed("exit 1".into())),
    )];
    let s = step(&tasks, &once, 4, open());
    assert_eq!(spawned(&s), vec![("a", 2)]);
    assert_eq!(s.outcome, Outcome::Running);
    let twice = [
        once[0].clone(),
        job(
            "a",
            2,
            JobState::Failed("x".into()),
            Some(TaskVerdict::Failed("exit 1".into())),
        ),
    ];
    let s = step(&tasks, &twice, 4, open());
    assert!(s.spawn.is_empty());
    match &s.outcome {
        Outcome::Failed(failed) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, "a");
            assert!(failed[0].1.contains("failed after 2 attempts"), "{}", failed[0].1);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let c = plan::counts(&s.tasks);
    assert_eq!((c.failed, c.pending), (1, 1));
}

#[test]
fn a_new_retry_round_reruns_only_the_failed_tasks() {
    let tasks = vec![task("a", &[]), task("b", &[]), task("c", &["b"])];
    let jobs = [
        job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted)),
        job(
            "b",
            1,
            JobState::Failed("x".into()),
            Some(TaskVerdict::Failed("x".into())),
        ),
        job(
            "b",
            2,
            JobState::Failed("x".into()),
            Some(TaskVerdict::Failed("x".into())),
        ),
    ];
    let old_round = step(&tasks, &jobs, 4, open());
    assert!(matches!(old_round.outcome, Outcome::Failed(_)));
    let s = plan::step(&Input {
        tasks: &tasks,
        jobs: &jobs,
        round: "r1",
        parallelism: 4,
        review: false,
        gates: open(),
        moderation: None,
    });
    assert_eq!(spawned(&s), vec![("b", 3)], "a is not run again; c waits for b");
    assert_eq!(s.outcome, Outcome::Running);
}

#[test]
fn stopping_suspends_running_jobs_and_resuming_resumes_them() {
    let tasks = diamond();
    let jobs = [job("a", 1, JobState::Active, None)];
    let stop = Gates {
        spawn: true,
        stop: true,
        ..Gates::default()
    };
    let s = step(&tasks, &jobs, 4, stop);
    assert_eq!(s.suspend, vec!["p-a-1".to_string()]);
    assert!(s.spawn.is_empty());
    let suspended = [job("a", 1, JobState::Suspended, None)];
    let s = step(&tasks, &suspended, 4, open());
    assert_eq!(s.resume, vec!["p-a-1".to_string()]);
    assert!(s.suspend.is_empty());
}

#[test]
fn an_exhausted_budget_stops_and_fails_the_project() {
    let tasks = diamond();
    let jobs = [job("a", 1, JobState::Active, None)];
    let s = step(
        &tasks,
        &jobs,
        4,
        Gates {
            spawn: true,
            stop: false,
            deadline_passed: true,
        },
    );
    assert_eq!(s.suspend, vec!["p-a-1".to_string()]);
    assert!(matches!(&s.outcome, Outcome::Failed(f) if f.len() == 4));
}

#[test]
fn with_a_review_capsule_the_review_decides() {
    let tasks = vec![task("a", &[])];
    let mut done = job("a", 1, JobState::Succeeded, None);
    done.has_output = true;
    let input = |jobs: &[JobView]| {
        plan::step(&Input {
            tasks: &tasks,
            jobs,
            round: "",
            parallelism: 1,
            review: true,
            gates: open(),
            moderation: None,
        })
    };
    let s = input(std::slice::from_ref(&done));
    assert_eq!(
        s.spawn,
        vec![Spawn {
            task: "a".into(),
            role: Role::Review,
            attempt: 1
        }]
    );
    let review = JobView {
        name: "p-a-1-review".into(),
        role: Role::Review,
        state: JobState::Failed("BackoffLimitExceeded".into()),
        ..done.clone()
    };
    let s = input(&[done.clone(), review]);
    assert_eq!(
        s.judge,
        vec![Judge::Reviewed {
            job: "p-a-1".into(),
            review: "p-a-1-review".into(),
            accepted: false,
            reason: "BackoffLimitExceeded".into()
        }]
    );
}

#[test]
fn status_lists_failed_tasks_first_and_stays_capped() {
    let tasks: Vec<Task> = (0..1000).map(|i| task(&format!("t{i}"), &[])).collect();
    let mut jobs: Vec<JobView> = (0..998)
        .map(|i| {
            job(
                &format!("t{i}"),
                1,
                JobState::Succeeded,
                Some(TaskVerdict::Accepted),
            )
        })
        .collect();
    for i in [998, 999] {
        jobs.push(job(
            &format!("t{i}"),
            1,
            JobState::Failed("x".into()),
            Some(TaskVerdict::Failed("x".into())),
        ));
        jobs.push(job(
            &format!("t{i}"),
            2,
            JobState::Failed("x".into()),
            Some(TaskVerdict::Failed("x".into())),
        ));
    }
    let s = step(&tasks, &jobs, 100, open());
    let listed = plan::listed(&s.tasks);
    assert_eq!(listed.len(), MAX_LISTED_TASKS);
    assert_eq!(listed[0].name, "t998");
    assert_eq!(listed[1].name, "t999");
    let bytes = serde_json::to_vec(&listed).map(|v| v.len()).unwrap_or(usize::MAX);
    assert!(bytes < 16 * 1024, "{bytes} bytes");
}

#[test]
fn results_are_sharded_under_the_object_size_limit() {
    let big = "x".repeat(4096);
    let outputs: Vec<(String, String)> = (0..1000).map(|i| (format!("t{i}"), big.clone())).collect();
    let shards = plan::shard_results(&outputs);
    assert_eq!(shards.len(), 5);
    assert_eq!(shards.iter().map(|s| s.len()).sum::<usize>(), 1000);
    for s in &shards {
        let size: usize = s.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= plan::RESULTS_SHARD_BYTES);
    }
    assert_eq!(plan::shard_results(&[]).len(), 1);
}

#[test]
fn job_names_are_deterministic_and_fit_63_characters() {
    let p = project();
    assert_eq!(p.job_name("gather", 2, Role::Task), "market-brief-gather-2");
    assert_eq!(
        p.job_name("gather", 2, Role::Review),
        "market-brief-gather-2-review"
    );
    let long = "t".repeat(63);
    let a = p.job_name(&long, 1, Role::Review);
    assert!(a.len() <= 63, "{a}");
    assert!(a.ends_with("-1-review"));
    assert_eq!(a, p.job_name(&long, 1, Role::Review));
    assert_ne!(a, p.job_name(&format!("{}u", &long[..62]), 1, Role::Review));
}

#[test]
fn a_job_runs_the_capsule_once_with_the_task_input_and_no_api_rights() {
    let p = project();
    let t = task("gather", &[]);
    let mut capsule = capsule_spec(DataClassification::Internal);
    capsule.capabilities = vec!["network-egress".into()];
    let job = render::job(
        &p,
        &render::JobInput {
            attempt: 3,
            round: "r1",
            ..job_input(&t, &capsule, &BTreeMap::new())
        },
    );
    assert_eq!(job.name_any(), "market-brief-gather-3");
    assert_eq!(job.owner_references()[0].uid, "0000-1111");
    assert_eq!(
        job.annotations()
            .get("kamachiq.somastack.io/round")
            .map(String::as_str),
        Some("r1")
    );
    let spec = job.spec.clone().unwrap_or_default();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    let pod = spec.template.spec.clone().unwrap_or_default();
    assert_eq!(pod.service_account_name.as_deref(), Some("market-brief-agent"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("eu-central-1")
    );
    let pod_labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
    assert_eq!(
        pod_labels.get("kamachiq.somastack.io/egress").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env_value(&job, "SOMASTACK_TASK_INPUT").as_deref(),
        Some("do gather")
    );
    assert_eq!(env_value(&job, "SOMASTACK_TASK_ATTEMPT").as_deref(), Some("3"));
    assert_eq!(pod.containers[0].image.as_deref(), Some(capsule.image.as_str()));
    // The manifest is a Job the API accepts in shape.
    let sent = serde_json::to_value(&job).unwrap_or_default();
    assert!(serde_json::from_value::<k8s_openapi::api::batch::v1::Job>(sent).is_ok());
    assert_eq!(p.service_account().automount_service_account_token, Some(false));
}

/// The value of the agent container's environment variable `name`.
fn env_value(job: &Job, name: &str) -> Option<String> {
    let pod = job.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// The Job of a task's first attempt, with an internal capsule.
fn first_attempt(p: &Project, t: &Task, dependencies: &BTreeMap<String, String>) -> Job {
    let capsule = capsule_spec(DataClassification::Internal);
    render::job(
        p,
        &render::JobInput {
            round: "r1",
            ..job_input(t, &capsule, dependencies)
        },
    )
}

#[test]
fn placement_reaches_the_job_pods_and_the_region_stays_the_projects() {
    use somastack_crds::common::{Placement, Toleration, TolerationOperator};
    let placement = Placement {
        node_selector: BTreeMap::from([("somastack.io/real-node".into(), "true".into())]),
        tolerations: vec![Toleration {
            key: "node.somastack.io/real".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        }],
    };
    let p = Project {
        placement: Some(&placement),
        ..project()
    };
    let job = first_attempt(&p, &task("gather", &[]), &BTreeMap::new());
    let pod = job.spec.and_then(|s| s.template.spec).unwrap_or_default();
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([
            ("somastack.io/real-node".to_string(), "true".to_string()),
            (
                "topology.kubernetes.io/region".to_string(),
                "eu-central-1".to_string()
            ),
        ]))
    );
    assert_eq!(
        serde_json::to_value(&pod.tolerations).unwrap_or_default(),
        serde_json::json!([{ "key": "node.somastack.io/real", "operator": "Exists" }])
    );
}

#[test]
fn capsules_are_checked_against_residency_and_existence() {
    let tasks = vec![task("a", &[])];
    let capsules = capsules();
    let bundles = vec![eu_only()];
    assert_eq!(
        check_capsules(&tasks, &[], &capsules, &bundles, Some("eu-central-1")),
        Ok(())
    );
    let (reason, message) = check_capsules(&tasks, &[], &capsules, &bundles, Some("us-east-1"))
        .err()
        .unwrap_or_default();
    assert_eq!(reason, "PolicyBlocked");
    assert!(
        message.contains("confidential data may not be processed in region us-east-1"),
        "{message}"
    );
    let (_, message) = check_capsules(&tasks, &[], &capsules, &bundles, None)
        .err()
        .unwrap_or_default();
    assert!(message.contains("spec.region is not set"), "{message}");
    let (reason, _) = check_capsules(&tasks, &[], &[], &bundles, None)
        .err()
        .unwrap_or_default();
    assert_eq!(reason, "CapsuleNotFound");
}

#[test]
fn a_task_receives_its_dependencies_latest_accepted_outputs() {
    let p = project();
    let t = task("brief", &["solar", "wind"]);
    let accepted = [
        plan::Accepted {
            task: "solar",
            attempt: 1,
            output: "Solar rose.",
        },
        plan::Accepted {
            task: "wind",
            attempt: 1,
            output: "old wind",
        },
        plan::Accepted {
            task: "wind",
            attempt: 2,
            output: "Wind fell.",
        },
        plan::Accepted {
            task: "other",
            attempt: 1,
            output: "not a dependency",
        },
    ];
    let deps = plan::dependency_outputs(&t, &accepted);
    assert_eq!(
        deps,
        BTreeMap::from([
            ("solar".to_string(), "Solar rose.".to_string()),
            ("wind".to_string(), "Wind fell.".to_string()),
        ])
    );
    let job = first_attempt(&p, &t, &deps);
    let value = env_value(&job, "SOMASTACK_TASK_DEPENDENCIES")
        .map(|v| serde_json::from_str::<serde_json::Value>(&v).unwrap());
    assert_eq!(
        value,
        Some(serde_json::json!({ "solar": "Solar rose.", "wind": "Wind fell." }))
    );
    // A task without dependencies gets no such variable.
    assert!(plan::dependency_outputs(&task("first", &[]), &accepted).is_empty());
}

#[test]
fn a_planner_capsule_is_called_at_its_services_cluster_ip() {
    assert_eq!(
        service_url("10.0.0.17", 8080).as_deref(),
        Some("http://10.0.0.17:8080/plan")
    );
    assert_eq!(
        service_url("fd00::a", 80).as_deref(),
        Some("http://[fd00::a]:80/plan")
    );
    // A headless Service, or no address yet, gives no URL (and no DNS lookup).
    assert_eq!(service_url("None", 8080), None);
    assert_eq!(service_url("", 8080), None);
    assert_eq!(service_url("planner.ns.svc", 8080), None);
}

/// A finished task (or review) Job of the project, as the cache shows it.
fn judged_job(
    task: &str,
    attempt: u32,
    role: &str,
    verdict: &str,
    output: &str,
    round: &str,
    created: i64,
) -> Arc<Job> {
    let mut job = Job::default();
    job.metadata.name = Some(format!("p-{task}-{attempt}"));
    job.metadata.labels = Some(BTreeMap::from([
        ("kamachiq.somastack.io/task".to_string(), task.to_string()),
        ("kamachiq.somastack.io/attempt".to_string(), attempt.to_string()),
        ("kamachiq.somastack.io/role".to_string(), role.to_string()),
    ]));
    job.metadata.annotations = Some(BTreeMap::from([
        ("kamachiq.somastack.io/verdict".to_string(), verdict.to_string()),
        ("kamachiq.somastack.io/output".to_string(), output.to_string()),
        ("kamachiq.somastack.io/round".to_string(), round.to_string()),
    ]));
    job.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(created).unwrap(),
    ));
    Arc::new(job)
}

#[test]
fn results_hold_each_tasks_accepted_output_in_plan_order() {
    let tasks = vec![task("b", &[]), task("a", &[]), task("c", &[])];
    let jobs = vec![
        judged_job("a", 1, "task", "rejected", "wrong", "", 1),
        judged_job("a", 2, "task", "accepted", "A", "", 2),
        judged_job("b", 1, "task", "accepted", "B", "", 3),
        judged_job("c", 1, "review", "accepted", "not a task's", "", 4),
    ];
    assert_eq!(
        super::reconcile::accepted_outputs(&tasks, &jobs),
        vec![
            ("b".to_string(), "B".to_string()),
            ("a".to_string(), "A".to_string())
        ]
    );
    let accepted = super::reconcile::accepted_attempts(&jobs);
    assert_eq!(
        accepted,
        vec![
            plan::Accepted {
                task: "a",
                attempt: 2,
                output: "A"
            },
            plan::Accepted {
                task: "b",
                attempt: 1,
                output: "B"
            },
        ]
    );
}

#[test]
fn a_run_starts_with_the_first_job_of_its_round() {
    let jobs = vec![
        judged_job("a", 1, "task", "failed", "", "", 10),
        judged_job("a", 2, "task", "failed", "", "r1", 30),
        judged_job("b", 1, "task", "accepted", "B", "r1", 20),
    ];
    let start = |round: &str| super::reconcile::run_start(&jobs, round).map(|t| t.0.as_second());
    assert_eq!(start(""), Some(10));
    assert_eq!(start("r1"), Some(20));
    assert_eq!(start("r2"), None);
}

mod moderated {
    //! The step with moderators: inputs before their first Job, outputs
    //! before review or acceptance, and a refusal stops everything.

    use super::*;
    use crate::kinds::project::moderation::{self, Gate, Refusal, Stage};
    use somastack_crds::kamachiq::TaskPhase;

    fn refusal(stage: Stage, task: &str, attempt: Option<u32>) -> Refusal {
        Refusal {
            stage,
            subject: task.into(),
            attempt,
            moderator: "mod 1.0.0 (spec.moderation)".into(),
            reason: format!("{} contains the denied term \"x\"", stage.as_str()),
            failed: false,
        }
    }

    fn gates(inputs: &[(&str, Gate)], outputs: &[(&str, u32, Gate)]) -> moderation::Gates {
        moderation::Gates {
            input: inputs.iter().map(|(t, g)| (t.to_string(), g.clone())).collect(),
            output: outputs
                .iter()
                .map(|(t, a, g)| ((t.to_string(), *a), g.clone()))
                .collect(),
        }
    }

    fn moderated_step(tasks: &[Task], jobs: &[JobView], review: bool, m: &moderation::Gates) -> plan::Step {
        plan::step(&Input {
            tasks,
            jobs,
            round: "",
            parallelism: 2,
            review,
            gates: open(),
            moderation: Some(m),
        })
    }

    fn kept(task: &str, attempt: u32) -> JobView {
        JobView {
            has_output: true,
            ..job(task, attempt, JobState::Succeeded, None)
        }
    }

    fn asked(s: &plan::Step) -> Vec<(Stage, &str, u32)> {
        s.moderate
            .iter()
            .map(|m| (m.stage, m.task.as_str(), m.attempt))
            .collect()
    }

    #[test]
    fn nothing_is_spawned_for_a_task_whose_input_is_not_yet_allowed() {
        let tasks = diamond();
        let pending = gates(&[("a", Gate::Pending)], &[]);
        let s = moderated_step(&tasks, &[], false, &pending);
        assert!(s.spawn.is_empty(), "{:?}", s.spawn);
        assert_eq!(asked(&s), vec![(Stage::Input, "a", 0)]);
        assert_eq!(s.outcome, Outcome::Running);
        assert_eq!(s.tasks[0].phase, TaskPhase::Pending);
        // A task missing from the gates is not allowed either.
        let s = moderated_step(&tasks, &[], false, &gates(&[], &[]));
        assert!(s.spawn.is_empty());
        // Allowed: it is spawned, and nothing more is asked.
        let allowed = gates(&[("a", Gate::Allowed)], &[]);
        let s = moderated_step(&tasks, &[], false, &allowed);
        assert_eq!(spawned(&s), vec![("a", 1)]);
        assert!(s.moderate.is_empty());
        // A slot waiting for moderation counts against parallelism (2).
        let a_done = [job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted))];
        let mixed = gates(
            &[("a", Gate::Allowed), ("b", Gate::Pending), ("c", Gate::Allowed)],
            &[],
        );
        let s = moderated_step(&tasks, &a_done, false, &mixed);
        assert_eq!(spawned(&s), vec![("c", 1)]);
        assert_eq!(asked(&s), vec![(Stage::Input, "b", 0)]);
        // Nothing is asked while the gates hold the project.
        let s = plan::step(&Input {
            tasks: &tasks,
            jobs: &[],
            round: "",
            parallelism: 2,
            review: false,
            gates: Gates::default(),
            moderation: Some(&pending),
        });
        assert!(s.spawn.is_empty() && s.moderate.is_empty());
    }

    #[test]
    fn a_refused_input_stops_the_project_and_its_running_jobs() {
        let tasks = diamond();
        let a_done = job("a", 1, JobState::Succeeded, Some(TaskVerdict::Accepted));
        let b_running = job("b", 1, JobState::Active, None);
        let refused = gates(
            &[
                ("a", Gate::Allowed),
                ("b", Gate::Allowed),
                ("c", Gate::Refused(refusal(Stage::Input, "c", None))),
            ],
            &[],
        );
        let s = moderated_step(&tasks, &[a_done, b_running], false, &refused);
        assert!(s.spawn.is_empty() && s.moderate.is_empty() && s.judge.is_empty());
        assert_eq!(s.suspend, vec!["p-b-1".to_string()], "running Jobs are stopped");
        let Outcome::Refused(r) = &s.outcome else {
            panic!("refused: {:?}", s.outcome);
        };
        assert_eq!(r.condition_reason(), "InputRefused");
        let c = &s.tasks[2];
        assert_eq!(
            (c.name.as_str(), c.phase, c.job.as_deref()),
            ("c", TaskPhase::Failed, None)
        );
        assert!(
            c.message
                .starts_with("the input of task c was refused by moderator"),
            "{}",
            c.message
        );
    }

    #[test]
    fn an_output_is_moderated_before_it_is_accepted_or_reviewed() {
        let tasks = vec![task("a", &[]), task("b", &["a"])];
        let allowed_a = [("a", Gate::Allowed), ("b", Gate::Allowed)];
        // Kept, no decision yet: moderation is asked, nothing judged, b waits.
        let pending = gates(&allowed_a, &[("a", 1, Gate::Pending)]);
        let s = moderated_step(&tasks, &[kept("a", 1)], false, &pending);
        assert_eq!(asked(&s), vec![(Stage::Output, "a", 1)]);
        assert!(s.judge.is_empty() && s.spawn.is_empty());
        assert_eq!(s.tasks[0].phase, TaskPhase::Running);
        assert_eq!(s.tasks[0].message, "awaiting moderation of its output");
        // Allowed without a review: accepted.
        let allowed = gates(&allowed_a, &[("a", 1, Gate::Allowed)]);
        let s = moderated_step(&tasks, &[kept("a", 1)], false, &allowed);
        assert_eq!(s.judge, vec![Judge::Accept { job: "p-a-1".into() }]);
        // Allowed with a review: the review runs (it never sees an unmoderated output).
        let s = moderated_step(&tasks, &[kept("a", 1)], true, &pending);
        assert!(s.spawn.is_empty(), "no review before the moderators allowed");
        let s = moderated_step(&tasks, &[kept("a", 1)], true, &allowed);
        assert_eq!(
            s.spawn,
            vec![Spawn {
                task: "a".into(),
                role: Role::Review,
                attempt: 1
            }]
        );
    }

    #[test]
    fn a_refused_output_is_not_accepted_and_reaches_no_dependant() {
        let tasks = vec![task("a", &[]), task("b", &["a"]), task("c", &[])];
        let c_running = job("c", 1, JobState::Active, None);
        let refused = gates(
            &[("a", Gate::Allowed), ("b", Gate::Allowed), ("c", Gate::Allowed)],
            &[("a", 1, Gate::Refused(refusal(Stage::Output, "a", Some(1))))],
        );
        let s = moderated_step(&tasks, &[kept("a", 1), c_running], false, &refused);
        assert!(s.judge.is_empty(), "no verdict: the output is never accepted");
        assert!(s.spawn.is_empty(), "b never receives a's output");
        assert!(s.moderate.is_empty());
        assert_eq!(s.suspend, vec!["p-c-1".to_string()]);
        let Outcome::Refused(r) = &s.outcome else {
            panic!("refused: {:?}", s.outcome);
        };
        assert_eq!(r.condition_reason(), "OutputRefused");
        assert_eq!(s.tasks[0].phase, TaskPhase::Failed);
        assert_eq!(s.tasks[1].phase, TaskPhase::Pending);
    }

    #[test]
    fn without_moderators_a_kept_output_is_accepted_as_before() {
        // Moderation removed while an output waited for it: accepted.
        let tasks = vec![task("a", &[])];
        let s = step(&tasks, &[kept("a", 1)], 2, open());
        assert_eq!(s.judge, vec![Judge::Accept { job: "p-a-1".into() }]);
    }

    #[test]
    fn a_moderation_job_gets_the_contract_and_runs_like_a_review() {
        let p = project();
        let capsule = capsule_spec(DataClassification::Internal);
        let moderator = moderation::Moderator {
            capsule: somastack_crds::common::CapsuleRef {
                package: "moderator".into(),
                version: "1.0.0".into(),
            },
            config: BTreeMap::from([("MODERATION_DENY".to_string(), "weapon, secret".to_string())]),
            timeout_seconds: 90,
            source: "PolicyBundle strict".into(),
        };
        let t = task("gather", &[]);
        let subject = moderation::input_subject(&t);
        let job = render::moderation_job(
            &p,
            &render::ModerationInput {
                subject: &subject,
                moderator: &moderator,
                capsule: &capsule,
                max_cpu: None,
                max_memory: None,
            },
        );
        assert_eq!(
            job.name_any(),
            moderation::job_name("market-brief", &subject, &moderator)
        );
        assert!(job.name_any().starts_with("market-brief-gather-input-"));
        let labels = job.labels();
        assert_eq!(labels["kamachiq.somastack.io/role"], "moderation");
        assert_eq!(labels["kamachiq.somastack.io/stage"], "input");
        assert_eq!(labels["kamachiq.somastack.io/task"], "gather");
        assert_eq!(labels["kamachiq.somastack.io/project-uid"], "0000-1111");
        assert_eq!(
            job.annotations()["kamachiq.somastack.io/moderator"],
            "moderator 1.0.0 (PolicyBundle strict)"
        );
        for (name, value) in [
            ("SOMASTACK_MODERATION_STAGE", "input"),
            ("SOMASTACK_MODERATION_SUBJECT", "gather"),
            ("SOMASTACK_MODERATION_TEXT", "do gather"),
            ("MODERATION_DENY", "weapon, secret"),
        ] {
            assert_eq!(env_value(&job, name).as_deref(), Some(value), "{name}");
        }
        assert_eq!(
            env_value(&job, "SOMASTACK_TASK_INPUT"),
            None,
            "a moderator gets the text only"
        );
        let spec = job.spec.clone().unwrap_or_default();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(90));
        let pod = spec.template.spec.unwrap_or_default();
        assert_eq!(pod.service_account_name.as_deref(), Some("market-brief-agent"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.node_selector
                .unwrap_or_default()
                .get("topology.kubernetes.io/region")
                .map(String::as_str),
            Some("eu-central-1")
        );
        // The goal's Job names no task.
        let goal = moderation::goal_subject("market-brief", "g");
        let job = render::moderation_job(
            &p,
            &render::ModerationInput {
                subject: &goal,
                moderator: &moderator,
                capsule: &capsule,
                max_cpu: None,
                max_memory: None,
            },
        );
        assert!(!job.labels().contains_key("kamachiq.somastack.io/task"));
        assert_eq!(
            env_value(&job, "SOMASTACK_MODERATION_SUBJECT").as_deref(),
            Some("market-brief")
        );
    }
}
