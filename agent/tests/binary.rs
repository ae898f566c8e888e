//! The real `somastack-agent` binary: `serve` on 127.0.0.1:0 called over
//! HTTP, `task` and `review` run as the operator runs them (environment in,
//! termination message out).

// Test code throughout (clippy's allow-*-in-tests only covers `#[test]` bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use somastack_tests::process::{plain_http_client as client, sigterm, spawn_announced};
use tokio::process::Child;

const BIN: &str = env!("CARGO_BIN_EXE_somastack-agent");

const ARTICLE: &str = "Solar capacity in Europe grew quickly in 2025. \
    Grid operators added storage to absorb solar peaks. \
    The weather was mild. \
    Storage and solar together cut evening prices. \
    A cat sat on a mat.";

struct Agent {
    child: Child,
    base: String,
}

async fn serve(ready: &str) -> Agent {
    let args = ["serve", "--listen", "127.0.0.1:0", "--ready", ready];
    let (child, base) = spawn_announced(Path::new(BIN), &args, "somastack-agent listening on ").await;
    Agent { child, base }
}

#[tokio::test]
async fn serves_health_readiness_and_summaries_then_stops_on_sigterm() {
    let mut agent = serve("always").await;
    let http = client();
    let get = |path: &str| http.get(format!("{}{path}", agent.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let res = http
        .post(format!("{}/v1/summarize", agent.base))
        .json(&json!({ "text": ARTICLE, "maxSentences": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["sentences"],
        json!([
            "Grid operators added storage to absorb solar peaks.",
            "Storage and solar together cut evening prices."
        ])
    );
    assert_eq!(
        body["summary"],
        "Grid operators added storage to absorb solar peaks. Storage and solar together cut evening prices."
    );

    for bad in [
        json!({ "text": "  " }),
        json!({ "text": ARTICLE, "maxSentences": 0 }),
    ] {
        let res = http
            .post(format!("{}/v1/summarize", agent.base))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }

    let exit = sigterm(&mut agent.child, Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_never_ready_release_answers_503_on_readyz() {
    let agent = serve("never").await;
    let http = client();
    let res = http.get(format!("{}/readyz", agent.base)).send().await.unwrap();
    assert_eq!(res.status(), 503);
    // Alive all the same.
    let res = http.get(format!("{}/healthz", agent.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Runs `somastack-agent <cmd>` with `env`, returning (success, what it
/// wrote as its termination message).
fn run(cmd: &str, env: &[(&str, &str)]) -> (bool, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("somastack-agent-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("termination-log");
    let status = std::process::Command::new(BIN)
        .args([cmd, "--output", out.to_str().unwrap()])
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status.success(), text)
}

#[test]
fn a_task_combines_its_dependencies_outputs_and_a_review_checks_it() {
    let deps = json!({
        "summarize-solar": "Solar output rose in May. Storage helped at night.",
        "summarize-wind": "Wind output fell in May. Offshore wind prices rose.",
    })
    .to_string();
    let (ok, result) = run(
        "task",
        &[
            ("SOMASTACK_TASK_INPUT", ""),
            ("SOMASTACK_TASK_ATTEMPT", "1"),
            ("SOMASTACK_TASK_DEPENDENCIES", &deps),
            ("AGENT_SENTENCES", "2"),
        ],
    );
    assert!(ok, "{result}");
    let lines: Vec<&str> = result.lines().collect();
    assert_eq!(lines.len(), 2, "{result}");
    assert!(
        lines[0].contains("Solar") || lines[0].contains("Storage"),
        "{result}"
    );
    assert!(lines[1].contains("Wind") || lines[1].contains("wind"), "{result}");

    let (accepted, verdict) = run(
        "review",
        &[
            ("SOMASTACK_TASK_OUTPUT", &result),
            ("SOMASTACK_TASK_DEPENDENCIES", &deps),
        ],
    );
    assert!(accepted, "{verdict}");
    let (accepted, verdict) = run(
        "review",
        &[
            ("SOMASTACK_TASK_OUTPUT", "Coal is back."),
            ("SOMASTACK_TASK_DEPENDENCIES", &deps),
        ],
    );
    assert!(!accepted);
    assert!(verdict.starts_with("rejected: "), "{verdict}");
}

#[test]
fn configured_and_real_failures_exit_non_zero_with_a_message() {
    let (ok, msg) = run(
        "task",
        &[
            ("SOMASTACK_TASK_INPUT", ARTICLE),
            ("SOMASTACK_TASK_ATTEMPT", "1"),
            ("AGENT_FAIL", "first-attempt"),
        ],
    );
    assert!(!ok);
    assert!(msg.contains("configured to fail its first attempt"), "{msg}");
    let (ok, msg) = run(
        "task",
        &[
            ("SOMASTACK_TASK_INPUT", ARTICLE),
            ("SOMASTACK_TASK_ATTEMPT", "2"),
            ("AGENT_FAIL", "first-attempt"),
        ],
    );
    assert!(ok, "{msg}");
    let (ok, msg) = run("task", &[("SOMASTACK_TASK_DEPENDENCIES", "not json")]);
    assert!(!ok);
    assert!(
        msg.contains("SOMASTACK_TASK_DEPENDENCIES is not a JSON object"),
        "{msg}"
    );
    let (ok, msg) = run("task", &[]);
    assert!(!ok);
    assert!(msg.contains("no input and no dependency output"), "{msg}");
}
