//! The real `somastack-planner serve` binary on 127.0.0.1:0, called over HTTP.

// Test code throughout (clippy's allow-*-in-tests only covers `#[test]` bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use somastack_crds::planner::PLANNER_API_VERSION;
use somastack_tests::process::{plain_http_client as client, sigterm, spawn_announced};
use tokio::process::Child;

struct Planner {
    child: Child,
    base: String,
}

impl Drop for Planner {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start() -> Planner {
    let binary = Path::new(env!("CARGO_BIN_EXE_somastack-planner"));
    let args = ["serve", "--listen", "127.0.0.1:0"];
    let (child, base) = spawn_announced(binary, &args, "somastack-planner listening on ").await;
    Planner { child, base }
}

/// An answer that must have `status` and a PlanError body: its `error`.
async fn plan_error(answer: reqwest::Response, status: u16) -> String {
    assert_eq!(answer.status(), status);
    let body: Value = answer.json().await.unwrap();
    let error = body["error"].as_str();
    error.unwrap_or_else(|| panic!("no error in {body}")).to_string()
}

fn request(goal: &str, max_tasks: i32) -> Value {
    json!({
        "apiVersion": PLANNER_API_VERSION,
        "goal": goal,
        "project": { "namespace": "research", "name": "market-brief", "uid": "0b7c6a52-1f" },
        "agent": { "package": "researcher", "version": "1.2.0" },
        "maxTasks": max_tasks,
    })
}

#[tokio::test]
async fn serves_plans_refusals_and_health_then_stops_on_sigterm() {
    let planner = start().await;
    let http = client();
    let url = format!("{}/plan", planner.base);

    let health = http
        .get(format!("{}/healthz", planner.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // A 3-stage goal: fan-out of 3, a join, then a single follow-up.
    let goal = "3 x gather sources on EU battery makers\nwrite the brief; review it for accuracy";
    let answer = http.post(&url).json(&request(goal, 10)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["apiVersion"], PLANNER_API_VERSION);
    let tasks = body["tasks"].as_array().unwrap();
    let dag: Vec<(&str, Vec<&str>)> = tasks
        .iter()
        .map(|t| {
            let deps = t["dependsOn"]
                .as_array()
                .map(|d| d.iter().map(|x| x.as_str().unwrap()).collect())
                .unwrap_or_default();
            (t["name"].as_str().unwrap(), deps)
        })
        .collect();
    let gather = [
        "s1-gather-sources-on-1",
        "s1-gather-sources-on-2",
        "s1-gather-sources-on-3",
    ];
    assert_eq!(
        dag,
        vec![
            (gather[0], vec![]),
            (gather[1], vec![]),
            (gather[2], vec![]),
            ("s2-write-the-brief", gather.to_vec()),
            ("s3-review-it-for", vec!["s2-write-the-brief"]),
        ]
    );
    assert_eq!(
        tasks[2]["input"],
        "gather sources on EU battery makers (part 3 of 3)"
    );
    assert_eq!(
        tasks[3]["capsule"],
        json!({ "package": "researcher", "version": "1.2.0" })
    );
    assert_eq!(tasks[3]["timeoutSeconds"], 600);
    assert_eq!(tasks[3]["retries"], 1);
    // The answer is a PlanResponse by the contract's types.
    let parsed: somastack_crds::planner::PlanResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(parsed.tasks.len(), 5);

    // More tasks than maxTasks: 422 with the sentence.
    let answer = http.post(&url).json(&request(goal, 4)).send().await.unwrap();
    assert_eq!(
        plan_error(answer, 422).await,
        "the goal needs 5 tasks; the project allows at most 4 (spec.budget.maxTasks)"
    );

    // No stage: 422.
    let answer = http.post(&url).json(&request(" ;\n ", 4)).send().await.unwrap();
    let error = plan_error(answer, 422).await;
    assert!(error.starts_with("the goal has no stage to plan: "), "{error}");

    // Not a PlanRequest: 400.
    let answer = http.post(&url).body("{\"goal\": 3}").send().await.unwrap();
    let error = plan_error(answer, 400).await;
    assert!(error.starts_with("the body is not a PlanRequest: "), "{error}");

    // Wrong apiVersion: 400.
    let mut wrong = request("a", 4);
    wrong["apiVersion"] = json!("planner.somastack.io/v9");
    let answer = http.post(&url).json(&wrong).send().await.unwrap();
    let error = plan_error(answer, 400).await;
    assert!(error.contains("planner.somastack.io/v9"), "{error}");

    // Over the 1 MiB body limit: 413 with a PlanError (an `error` string).
    let big = request(&"a ".repeat(600 * 1024), 4);
    let answer = http.post(&url).json(&big).send().await.unwrap();
    plan_error(answer, 413).await;

    // SIGTERM: a graceful, successful exit.
    let mut planner = planner;
    let status = sigterm(&mut planner.child, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}

#[test]
fn schema_subcommand_prints_the_committed_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_somastack-planner"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, somastack_crds::planner::contract_schema_pretty());
    let v: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["title"], "SomaStack planner contract");
}
