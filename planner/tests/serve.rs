//! The real `somastack-planner serve` binary on 127.0.0.1:0, called over HTTP.

// Test code throughout (clippy's allow-*-in-tests only covers `#[test]` bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use somastack_crds::planner::PLANNER_API_VERSION;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_somastack-planner"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start somastack-planner");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the planner prints its address within 30s")
        .expect("read stdout")
        .expect("a line on stdout");
    let addr = line
        .strip_prefix("somastack-planner listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Planner {
        child,
        base: format!("http://{addr}"),
    }
}

/// A plain-http client: TLS (a reqwest feature in this workspace) set up with
/// the ring provider and no roots, so the test needs neither a process-wide
/// provider nor a CA bundle; no proxy from the environment.
fn client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap()
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
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["error"],
        "the goal needs 5 tasks; the project allows at most 4 (spec.budget.maxTasks)"
    );

    // No stage: 422.
    let answer = http.post(&url).json(&request(" ;\n ", 4)).send().await.unwrap();
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("the goal has no stage to plan: ")
    );

    // Not a PlanRequest: 400.
    let answer = http.post(&url).body("{\"goal\": 3}").send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not a PlanRequest: "),
        "{body}"
    );

    // Wrong apiVersion: 400.
    let mut wrong = request("a", 4);
    wrong["apiVersion"] = json!("planner.somastack.io/v9");
    let answer = http.post(&url).json(&wrong).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("planner.somastack.io/v9"),
        "{body}"
    );

    // Over the 1 MiB body limit: 413 with a PlanError.
    let big = request(&"a ".repeat(600 * 1024), 4);
    let answer = http.post(&url).json(&big).send().await.unwrap();
    assert_eq!(answer.status(), 413);
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    // SIGTERM: a graceful, successful exit.
    let mut planner = planner;
    let pid = planner.child.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), planner.child.wait())
        .await
        .expect("the planner exits within 10s of SIGTERM")
        .unwrap();
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
