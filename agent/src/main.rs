//! somastack-agent: the reference agent capsule (docs/agent.md).
//!
//! - `serve`: as an Installation, an HTTP service: `/healthz`, `/readyz`
//!   and `POST /v1/summarize`.
//! - `task`: as a KamachiqProject agent, summarizes its input with its
//!   dependencies' outputs and writes the result where the operator reads
//!   it (the termination message).
//! - `review`: as a reviewer, accepts an output only if every line of it is
//!   a sentence of what it was made from.
//! - `evaluate`: as an Installation upgrade's evaluation capsule, asks the
//!   candidate revision and the baseline to summarize a corpus and reports
//!   a verdict on the candidate (the termination message).
//! - `moderate`: as a KamachiqProject's moderation capsule, allows or
//!   refuses a goal, a task input or an output (the termination message).
//! - `auto` (the image's default command): the role the operator gave the
//!   pod: `evaluate` when `SOMASTACK_GATE_CANDIDATE` is set (an evaluation
//!   Job), `moderate` when `SOMASTACK_MODERATION_STAGE` is set (a moderation
//!   Job), `review` when `SOMASTACK_TASK_OUTPUT` is set (a review Job), `task`
//!   when `SOMASTACK_TASK` is set (a task Job), `serve` otherwise (an
//!   Installation). One image serves every role, as a capsule must.
//! - `connect`: one TCP connection attempt, its outcome printed and as the
//!   exit code: how tests see what a pod may reach (`kubectl exec`; the
//!   image has no shell).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
mod client;
mod connect;

use somastack_agent::evaluate::{self, Answer, Reference};
use somastack_agent::moderate::{self, Stage};
use somastack_agent::{FailMode, MAX_SENTENCES, MAX_TEXT_BYTES, Method, Readiness, review, run_task};

/// Dependencies' accepted outputs, as a JSON object `{task: output}`.
const ENV_DEPENDENCIES: &str = "SOMASTACK_TASK_DEPENDENCIES";

#[derive(Parser)]
#[command(
    name = "somastack-agent",
    version,
    about = "The SomaStack reference agent capsule"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the summarization API (an Installation's workload).
    Serve {
        /// Address to listen on (port 0 picks a free port). Loopback unless
        /// told otherwise: in a pod, the capsule sets AGENT_LISTEN=0.0.0.0:8080
        /// (the pod's own addresses).
        #[arg(long, env = "AGENT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// When /readyz answers 200: always, never, after:<seconds>.
        #[arg(long, env = "AGENT_READY", default_value = "always", value_parser = |v: &str| Readiness::parse(Some(v)))]
        ready: Readiness,
        /// How summaries are made: scored (the best sentences), or lead (the
        /// first ones: a regressed release).
        #[arg(long, env = "AGENT_METHOD", default_value = "scored", value_parser = |v: &str| Method::parse(Some(v)))]
        method: Method,
        /// How long to wait before answering each summarization (a slow
        /// release): 30s, 500ms, or seconds.
        #[arg(long, env = "AGENT_DELAY", default_value = "0", value_parser = |v: &str| somastack_agent::parse_delay(Some(v)))]
        delay: Duration,
    },
    /// Run one KamachiqProject task from SOMASTACK_TASK_* variables.
    Task {
        /// Where the result goes (the operator reads the termination message).
        #[arg(long, default_value = "/dev/termination-log")]
        output: String,
        /// How many sentences the result keeps.
        #[arg(long, env = "AGENT_SENTENCES", default_value_t = 3)]
        sentences: usize,
        /// always, first-attempt or never.
        #[arg(long, env = "AGENT_FAIL")]
        fail: Option<String>,
    },
    /// Review SOMASTACK_TASK_OUTPUT against the task's inputs; exit 0 accepts.
    Review {
        #[arg(long, default_value = "/dev/termination-log")]
        output: String,
    },
    /// Evaluate the candidate SOMASTACK_GATE_CANDIDATE against the baseline
    /// (or expected summaries); the report says Pass or Fail (exit 0), exit
    /// 2 when the evaluation cannot run.
    Evaluate {
        /// Where the report goes (the operator reads the termination message).
        #[arg(long, default_value = "/dev/termination-log")]
        output: String,
    },
    /// Moderate SOMASTACK_MODERATION_TEXT at SOMASTACK_MODERATION_STAGE; the
    /// decision says Allow or Refuse (exit 0), exit 2 when it cannot moderate.
    Moderate {
        /// Where the decision goes (the operator reads the termination message).
        #[arg(long, default_value = "/dev/termination-log")]
        output: String,
    },
    /// The role the pod's environment names (evaluate, moderate, review,
    /// task or serve), with
    /// every setting from the environment: the image's default command.
    Auto {
        /// Where a Job's role writes its result (ignored by serve).
        #[arg(long, default_value = "/dev/termination-log")]
        output: String,
    },
    /// Try one TCP connection to ADDRESS (IP:PORT) and say what came of it:
    /// `connected` (exit 0), `timeout` (1: no answer, dropped), `refused`
    /// (3: rejected, or nothing listens) or `error` (4).
    Connect {
        /// IP:PORT; no names (a pod here has no resolver).
        address: SocketAddr,
        /// How long to wait for the handshake: 2s, 500ms, or seconds.
        #[arg(long, default_value = "2s", value_parser = connect::parse_timeout)]
        timeout: std::time::Duration,
    },
}

/// What `auto` runs, from the variables the operator sets.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Serve,
    Task,
    Review,
    Evaluate,
    Moderate,
}

fn role(var: impl Fn(&str) -> Option<String>) -> Role {
    if var("SOMASTACK_GATE_CANDIDATE").is_some() {
        Role::Evaluate
    } else if var("SOMASTACK_MODERATION_STAGE").is_some() {
        Role::Moderate
    } else if var("SOMASTACK_TASK_OUTPUT").is_some() {
        Role::Review
    } else if var("SOMASTACK_TASK").is_some() {
        Role::Task
    } else {
        Role::Serve
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    run(Cli::parse().command)
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            listen,
            ready,
            method,
            delay,
        } => serve(listen, ready, method, delay),
        Command::Task {
            output,
            sentences,
            fail,
        } => task(&output, sentences, fail.as_deref()),
        Command::Review { output } => review_cmd(&output),
        Command::Evaluate { output } => evaluate_cmd(&output),
        Command::Moderate { output } => moderate_cmd(&output),
        Command::Connect { address, timeout } => ExitCode::from(connect::run(address, timeout)),
        Command::Auto { output } => {
            let sub = match role(|k| std::env::var(k).ok()) {
                Role::Serve => "serve",
                Role::Task => "task",
                Role::Review => "review",
                Role::Evaluate => "evaluate",
                Role::Moderate => "moderate",
            };
            tracing::info!(role = sub, "auto: running the role the environment names");
            // Parsed as if given on the command line, so every setting
            // comes from the environment exactly as for the named role, and
            // a bad one is refused the same way (exit 2).
            let mut args = vec!["somastack-agent", sub];
            if sub != "serve" {
                args.extend(["--output", &output]);
            }
            match Cli::try_parse_from(args) {
                Ok(cli) => run(cli.command),
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
                }
            }
        }
    }
}

fn fail_with(message: &str) -> ExitCode {
    eprintln!("somastack-agent: {message}");
    ExitCode::FAILURE
}

/// Writes `text` where the operator reads a result (and to stdout, for logs).
fn report(path: &str, text: &str) {
    println!("{text}");
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("somastack-agent: could not write {path}: {e}");
    }
}

fn dependencies() -> Result<BTreeMap<String, String>, String> {
    match std::env::var(ENV_DEPENDENCIES) {
        Err(_) => Ok(BTreeMap::new()),
        Ok(v) if v.trim().is_empty() => Ok(BTreeMap::new()),
        Ok(v) => serde_json::from_str(&v)
            .map_err(|e| format!("{ENV_DEPENDENCIES} is not a JSON object of task outputs: {e}")),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// A variable's value, if set (a value that is not UTF-8 read lossily).
fn env_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// The exit code of a gate that could not do its work (bad settings, a
/// baseline that does not answer): the operator counts it as a failure.
const CANNOT_RUN: u8 = 2;

/// Says why a gate could not do its work, on one line, where the operator
/// reads it; exit 2.
fn cannot_run(path: &str, why: &str) -> ExitCode {
    let line: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = match line.char_indices().nth(1000) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    };
    eprintln!("somastack-agent: {line}");
    if let Err(e) = std::fs::write(path, &line) {
        eprintln!("somastack-agent: could not write {path}: {e}");
    }
    ExitCode::from(CANNOT_RUN)
}

/// `evaluate`: asks the baseline (when set) and the candidate to summarize
/// every document, then judges the candidate's answers.
fn evaluate_cmd(output: &str) -> ExitCode {
    let settings = match evaluate::Settings::from_env(env_var) {
        Ok(s) => s,
        Err(e) => return cannot_run(output, &e),
    };
    let ask = |addr: SocketAddr, doc: &str| -> Result<(Vec<String>, Duration), String> {
        let body = evaluate::request_body(doc, settings.max_sentences);
        let (answer, took) = client::post_json(addr, "/v1/summarize", &body, settings.request_timeout)?;
        evaluate::summary_of(answer.status, &answer.body).map(|s| (s, took))
    };
    // First contact: both ends reachable at all (a new pod's network may
    // take a moment to admit it), so that what is measured afterwards is
    // the releases, not the network settling.
    if let Reference::Baseline(addr) = settings.reference
        && let Err(e) = client::wait_reachable(addr, settings.connect_wait)
    {
        return cannot_run(
            output,
            &format!("the baseline http://{addr} is not reachable: {e}"),
        );
    }
    if let Err(e) = client::wait_reachable(settings.candidate, settings.connect_wait) {
        tracing::warn!(error = %e, "the candidate is not reachable");
    }
    let mut answers = Vec::new();
    let mut reference = Vec::new();
    for (i, doc) in settings.documents.iter().enumerate() {
        if let Reference::Baseline(addr) = settings.reference {
            match ask(addr, doc) {
                Ok((sentences, _)) => reference.push(sentences),
                Err(e) => {
                    return cannot_run(
                        output,
                        &format!(
                            "the baseline http://{addr} gave no summary of document {} of {}: {e}",
                            i + 1,
                            settings.documents.len()
                        ),
                    );
                }
            }
        }
        let answer = match ask(settings.candidate, doc) {
            Ok((sentences, took)) => Answer::Summary { sentences, took },
            Err(e) => Answer::Failed(e),
        };
        tracing::info!(document = i + 1, ?answer, "the candidate answered");
        answers.push(answer);
    }
    if let Reference::Expected(expected) = &settings.reference {
        reference = expected.clone();
    }
    let report = evaluate::judge(&settings, &answers, &reference);
    tracing::info!(verdict = ?report.verdict, summary = %report.summary, "evaluated");
    self::report(output, &evaluate::render(&report));
    ExitCode::SUCCESS
}

/// `moderate`: the decision on the text at its stage.
fn moderate_cmd(output: &str) -> ExitCode {
    let stage = match env_var("SOMASTACK_MODERATION_STAGE") {
        Some(v) => Stage::parse("SOMASTACK_MODERATION_STAGE", &v),
        None => Err("SOMASTACK_MODERATION_STAGE (goal, input or output) is not set".into()),
    };
    let settings = moderate::Settings::from_env(env_var);
    let (stage, settings) = match (stage, settings) {
        (Ok(stage), Ok(settings)) => (stage, settings),
        (Err(e), _) | (_, Err(e)) => return cannot_run(output, &e),
    };
    let text = env_var("SOMASTACK_MODERATION_TEXT").unwrap_or_default();
    let answer = moderate::moderate(&settings, stage, &text);
    tracing::info!(
        subject = env("SOMASTACK_MODERATION_SUBJECT"),
        stage = stage.as_str(),
        decision = ?answer.decision,
        reason = %answer.reason,
        "moderated"
    );
    let text = serde_json::to_string(&answer).unwrap_or_else(|e| e.to_string());
    report(output, &text);
    ExitCode::SUCCESS
}

fn task(output: &str, sentences: usize, fail: Option<&str>) -> ExitCode {
    let result = (|| {
        let fail = FailMode::parse(fail)?;
        let deps = dependencies()?;
        let attempt = env("SOMASTACK_TASK_ATTEMPT").parse::<u32>().unwrap_or(1);
        run_task(&env("SOMASTACK_TASK_INPUT"), &deps, attempt, fail, sentences).map_err(|e| e.to_string())
    })();
    match result {
        Ok(text) => {
            report(output, &text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(output, &e);
            ExitCode::FAILURE
        }
    }
}

fn review_cmd(output: &str) -> ExitCode {
    let deps = match dependencies() {
        Ok(d) => d,
        Err(e) => {
            report(output, &e);
            return ExitCode::FAILURE;
        }
    };
    let input = env("SOMASTACK_TASK_INPUT");
    let mut sources: Vec<&str> = vec![input.as_str()];
    sources.extend(deps.values().map(String::as_str));
    match review(&env("SOMASTACK_TASK_OUTPUT"), &sources) {
        Ok(()) => {
            report(output, "accepted: every line is a sentence of the task's inputs");
            ExitCode::SUCCESS
        }
        Err(why) => {
            report(output, &format!("rejected: {why}"));
            ExitCode::FAILURE
        }
    }
}

struct App {
    started: Instant,
    readiness: Readiness,
    method: Method,
    delay: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SummarizeRequest {
    text: String,
    #[serde(default)]
    max_sentences: Option<usize>,
}

#[derive(Serialize)]
struct SummarizeResponse {
    summary: String,
    sentences: Vec<String>,
}

fn serve(listen: SocketAddr, readiness: Readiness, method: Method, delay: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail_with(&format!("could not start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let app = Arc::new(App {
            started: Instant::now(),
            readiness,
            method,
            delay,
        });
        let router = Router::new()
            .route(
                "/",
                get(|| async {
                    Json(json!({ "name": "somastack-agent", "version": env!("CARGO_PKG_VERSION") }))
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/v1/summarize", post(summarize_handler))
            .layer(DefaultBodyLimit::max(MAX_TEXT_BYTES))
            .with_state(app);
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail_with(&format!("could not listen on {listen}: {e}")),
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        // The first line on stdout says where (tests start it on port 0).
        println!("somastack-agent listening on {local}");
        tracing::info!(%local, ?readiness, ?method, ?delay, "serving");
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        match axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail_with(&format!("server error: {e}")),
        }
    })
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.readiness.ready(app.started.elapsed().as_secs_f64()) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn summarize_handler(
    State(app): State<Arc<App>>,
    Json(req): Json<SummarizeRequest>,
) -> Result<Json<SummarizeResponse>, (StatusCode, Json<serde_json::Value>)> {
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    let max = req.max_sentences.unwrap_or(3);
    if max == 0 || max > MAX_SENTENCES {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": format!("maxSentences must be 1 to {MAX_SENTENCES}") })),
        ));
    }
    if req.text.trim().is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "text is empty" })),
        ));
    }
    let sentences = app.method.summarize(&req.text, max);
    Ok(Json(SummarizeResponse {
        summary: sentences.join(" "),
        sentences,
    }))
}

#[cfg(test)]
mod tests {
    use super::{Role, role};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn auto_picks_the_role_the_operator_set() {
        assert_eq!(role(env(&[])), Role::Serve);
        assert_eq!(role(env(&[("AGENT_LISTEN", "0.0.0.0:8080")])), Role::Serve);
        assert_eq!(
            role(env(&[("SOMASTACK_TASK", "t"), ("SOMASTACK_TASK_INPUT", "x")])),
            Role::Task
        );
        assert_eq!(
            role(env(&[("SOMASTACK_TASK", "t"), ("SOMASTACK_TASK_OUTPUT", "y")])),
            Role::Review
        );
        assert_eq!(
            role(env(&[
                ("SOMASTACK_MODERATION_STAGE", "goal"),
                ("SOMASTACK_TASK", "t")
            ])),
            Role::Moderate
        );
        // The gate comes first, whatever else is set.
        assert_eq!(
            role(env(&[
                ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
                ("SOMASTACK_MODERATION_STAGE", "goal"),
                ("SOMASTACK_TASK_OUTPUT", "y"),
            ])),
            Role::Evaluate
        );
    }
}
