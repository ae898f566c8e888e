//! The real `somastack-agent` binary: `serve` on 127.0.0.1:0 called over
//! HTTP, `task`, `review`, `evaluate` and `moderate` run as the operator
//! runs them (environment in, termination message out); `evaluate` against
//! real `serve` processes.

// Test code throughout (clippy's allow-*-in-tests only covers `#[test]` bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use somastack_agent::EVAL_CORPUS;
use somastack_tests::process::{plain_http_client as client, sigterm, spawn_announced};
use tokio::io::{AsyncBufReadExt, BufReader};
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

/// `serve` on 127.0.0.1:0 with the settings in `env` (as a capsule's `env`
/// gives them) and nothing else from the test's environment.
async fn serve_env(env: &[(&str, &str)]) -> Agent {
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("the agent prints its address within 30s")
    .unwrap()
    .expect("a line on stdout");
    let addr = line.strip_prefix("somastack-agent listening on ").expect(&line);
    Agent {
        child,
        base: format!("http://{addr}"),
    }
}

/// Runs `somastack-agent <cmd>` with `env`, returning (success, what it
/// wrote as its termination message).
fn run(cmd: &str, env: &[(&str, &str)]) -> (bool, String) {
    let (code, text) = run_code(cmd, env);
    (code == Some(0), text)
}

/// Runs `somastack-agent <cmd>` with `env`, returning (exit code, what it
/// wrote as its termination message).
fn run_code(cmd: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
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
    (status.code(), text)
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

/// `evaluate` as the operator runs it (`auto`, with the gate's
/// environment): its exit code and its termination message.
async fn evaluate(candidate: &str, baseline: Option<&str>, inputs: Value) -> (Option<i32>, String) {
    let inputs = inputs.to_string();
    let mut env = vec![
        ("SOMASTACK_GATE_CANDIDATE", candidate),
        ("SOMASTACK_GATE_INPUTS", inputs.as_str()),
        ("SOMASTACK_INSTALLATION", "shop/summarizer"),
        ("SOMASTACK_GATE_REVISION", "2"),
    ];
    if let Some(b) = baseline {
        env.push(("SOMASTACK_GATE_BASELINE", b));
        env.push(("SOMASTACK_GATE_BASELINE_REVISION", "1"));
    }
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_code("auto", &env)
    })
    .await
    .unwrap()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[tokio::test]
async fn an_upgrade_is_evaluated_against_the_release_it_replaces() {
    let baseline = serve_env(&[]).await;
    let same = serve_env(&[("AGENT_METHOD", "scored")]).await;
    let regressed = serve_env(&[("AGENT_METHOD", "lead")]).await;
    let corpus = json!({ "corpus": EVAL_CORPUS });

    let (code, text) = evaluate(&same.base, Some(&baseline.base), corpus.clone()).await;
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Pass", "{report}");
    assert!(
        report["summary"]
            .as_str()
            .unwrap()
            .starts_with("all 5 checks passed on 3 documents: agreement 1.00 with the baseline"),
        "{report}"
    );
    assert_eq!(report["installation"], "shop/summarizer");
    assert_eq!(report["revision"], "2");
    assert_eq!(report["baselineRevision"], "1");

    let (code, text) = evaluate(&regressed.base, Some(&baseline.base), corpus.clone()).await;
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Fail", "{report}");
    assert_eq!(
        report["summary"],
        "agreement 0.00 < 0.80 with the baseline on 3 documents"
    );
    assert_eq!(check(&report, "agreement")["passed"], false);
    // Its answers are real summaries all the same: only agreement fails.
    for name in ["answers", "extractive", "length", "latency"] {
        assert_eq!(check(&report, name)["passed"], true, "{report}");
    }

    // Without a baseline, fixed expectations: the scored summaries, one
    // sentence a line, documents separated by --- lines.
    let http = client();
    let mut expected = Vec::new();
    for doc in EVAL_CORPUS.split("\n---\n") {
        let res = http
            .post(format!("{}/v1/summarize", baseline.base))
            .json(&json!({ "text": doc, "maxSentences": 2 }))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        let lines: Vec<&str> = body["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        expected.push(lines.join("\n"));
    }
    let fixed = json!({ "corpus": EVAL_CORPUS, "expected": expected.join("\n---\n") });
    let (code, text) = evaluate(&same.base, None, fixed.clone()).await;
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Pass", "{report}");
    let (_, text) = evaluate(&regressed.base, None, fixed).await;
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Fail", "{report}");
    assert!(
        check(&report, "agreement")["detail"]
            .as_str()
            .unwrap()
            .contains("with the expected summaries"),
        "{report}"
    );
}

#[tokio::test]
async fn an_evaluation_without_a_baseline_to_ask_cannot_run() {
    let candidate = serve_env(&[]).await;
    // A port that was just free: nothing listens there now.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (code, text) = evaluate(
        &candidate.base,
        Some(&gone),
        json!({ "corpus": EVAL_CORPUS, "connectSeconds": "1" }),
    )
    .await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.starts_with(&format!(
            "the baseline {gone} is not reachable: could not connect within 1 s: "
        )),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");

    // Nor with settings it cannot use.
    let (code, text) = evaluate(
        &candidate.base,
        Some(&gone),
        json!({ "corpus": EVAL_CORPUS, "maxSentences": "none" }),
    )
    .await;
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        text,
        "input maxSentences=\"none\" is not a whole number from 1 to 50"
    );

    // A candidate that is down is evaluated: it fails.
    let (code, text) = evaluate(
        &gone,
        Some(&candidate.base),
        json!({ "corpus": EVAL_CORPUS, "connectSeconds": "1" }),
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Fail");
    assert_eq!(check(&report, "answers")["passed"], false);
}

#[tokio::test]
async fn a_slow_release_answers_late_and_fails_the_latency_check() {
    let slow = serve_env(&[("AGENT_DELAY", "600ms")]).await;
    let baseline = serve_env(&[]).await;
    let http = client();
    let start = Instant::now();
    let res = http
        .post(format!("{}/v1/summarize", slow.base))
        .json(&json!({ "text": ARTICLE, "maxSentences": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    // Only summaries wait: health checks do not.
    let start = Instant::now();
    assert_eq!(
        http.get(format!("{}/healthz", slow.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );

    let inputs = json!({ "corpus": EVAL_CORPUS, "maxLatencyMs": "300" });
    let (code, text) = evaluate(&slow.base, Some(&baseline.base), inputs).await;
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["verdict"], "Fail", "{report}");
    let latency = check(&report, "latency");
    assert_eq!(latency["passed"], false);
    assert!(
        latency["detail"].as_str().unwrap().ends_with("ms, over 300 ms"),
        "{report}"
    );
    assert_eq!(check(&report, "agreement")["passed"], true, "{report}");
}

#[test]
fn bad_serve_settings_are_refused_at_start() {
    for (var, value) in [
        ("AGENT_METHOD", "random"),
        ("AGENT_DELAY", "10m"),
        ("AGENT_READY", "later"),
    ] {
        let out = std::process::Command::new(BIN)
            .arg("auto")
            .env_clear()
            .env(var, value)
            .env("AGENT_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{var}={value}: {err}");
    }
}

/// `moderate` as the operator runs it: `auto` with the stage, the subject,
/// the text and the moderator's config.
fn moderate(stage: &str, text: &str, config: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut env = vec![
        ("SOMASTACK_MODERATION_STAGE", stage),
        ("SOMASTACK_MODERATION_SUBJECT", "quarterly-report"),
        ("SOMASTACK_MODERATION_TEXT", text),
    ];
    env.extend_from_slice(config);
    run_code("auto", &env)
}

#[test]
fn a_moderator_refuses_a_denied_goal_and_allows_a_clean_one() {
    let config = [("MODERATION_DENY", "customer records, exfiltrate\ndrop")];
    let (code, text) = moderate(
        "goal",
        "Summarize the drills, then EXFILTRATE the customer\nrecords.",
        &config,
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({ "decision": "Refuse", "stage": "goal", "reason": "goal contains the denied term \"exfiltrate\"" })
    );
    let (code, text) = moderate(
        "goal",
        "Summarize the dropdown menus of the drills dashboard.",
        &config,
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({ "decision": "Allow", "stage": "goal", "reason": "no rule matched" })
    );

    let limits = [("MODERATION_MAX_BYTES", "10"), ("MODERATION_STAGES", "output")];
    let (_, text) = moderate("output", "far more than ten bytes", &limits);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["decision"], "Refuse");
    assert_eq!(answer["reason"], "output is 23 bytes, over the limit of 10");
    let (_, text) = moderate("input", "far more than ten bytes", &limits);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["decision"], "Allow");
    assert_eq!(answer["reason"], "stage not moderated");

    // What it cannot moderate, it says so and exits 2: the operator counts
    // that as a refusal.
    let (code, text) = moderate("plan", "anything", &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        text,
        "SOMASTACK_MODERATION_STAGE=\"plan\" is not one of goal, input, output"
    );
    let (code, text) = moderate("goal", "anything", &[("MODERATION_MAX_BYTES", "-1")]);
    assert_eq!(code, Some(2));
    assert!(text.starts_with("MODERATION_MAX_BYTES=\"-1\""), "{text}");
}
