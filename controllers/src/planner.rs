//! The operator's side of the planner contract (docs/planner.md): POST a
//! [`PlanRequest`] to a planner URL, get the task DAG back or a
//! [`PlanFailure`] a user can read in the project's status.
//!
//! Transient failures (connection refused or reset, DNS, timeouts, 5xx, 408,
//! 429) are retried within one call: 3 attempts, 200 ms then 400 ms apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use somastack_crds::kamachiq::Task;
use somastack_crds::planner::{PLANNER_API_VERSION, PlanError, PlanRequest, PlanResponse};

/// Attempts per [`PlannerClient::plan`] call when the planner is unavailable.
pub const PLAN_ATTEMPTS: usize = 3;
/// Delay before the second attempt; doubled before each later one.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Largest planner answer read.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// `User-Agent` of every planner call.
pub const USER_AGENT: &str = concat!("somastack-operator/", env!("CARGO_PKG_VERSION"));

/// Why a planner call produced no plan. `Display` is the sentence shown in
/// the project's status; [`PlanFailure::reason`] is the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanFailure {
    /// Connection refused/reset, DNS, TLS, timeout, or a 5xx (or 408, 429):
    /// worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    /// The planner answered another 4xx (or 3xx: redirects are not followed),
    /// or the URL cannot be called: it refuses this goal (message = its
    /// `error`, or the status line).
    #[error("{0}")]
    Refused(String),
    /// 200 but the body is not a PlanResponse (bad JSON, wrong apiVersion,
    /// over 4 MiB), or another 2xx.
    #[error("{0}")]
    Invalid(String),
}

impl PlanFailure {
    /// The condition reason: `PlannerUnavailable`, `PlannerRefused` or `PlannerAnswerInvalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanFailure::Unavailable(_) => "PlannerUnavailable",
            PlanFailure::Refused(_) => "PlannerRefused",
            PlanFailure::Invalid(_) => "PlannerAnswerInvalid",
        }
    }
}

/// What one attempt ran into; [`PlannerClient::plan`] adds the URL and the
/// attempt count.
#[derive(Debug)]
enum Attempt {
    Unavailable(String),
    Refused(String),
    Invalid(String),
}

impl Attempt {
    /// The same, with any part of `url` (credentials, query) redacted from
    /// the message: an HTTP client's error may quote them.
    fn redacted(self, url: &str) -> Self {
        let r = |s: String| crate::text::redact_in(&s, url);
        match self {
            Attempt::Unavailable(s) => Attempt::Unavailable(r(s)),
            Attempt::Refused(s) => Attempt::Refused(r(s)),
            Attempt::Invalid(s) => Attempt::Invalid(r(s)),
        }
    }
}

/// `err` and its sources, `: `-separated (reqwest's own message hides the
/// cause, e.g. "connection refused"), repeated messages said once.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Reads the body, at most `cap` bytes; `Ok(None)` when it is larger.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> reqwest::Result<Option<Vec<u8>>> {
    if response.content_length().is_some_and(|len| len > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Most characters of a planner's own words (its `error`, or what a bad
/// answer held) shown in status: a short reason, never the answer itself.
pub const MAX_REASON_CHARS: usize = 200;

/// What a non-200 answer says: its PlanError's `error`, sanitized and cut to
/// [`MAX_REASON_CHARS`], or else only the status line. Any other body is not
/// repeated: a planner URL could lead to a service that was never meant to
/// answer a tenant, and its answer must not reach the tenant's status.
fn refusal_text(status: StatusCode, body: Option<&[u8]>) -> String {
    let status_line = status.to_string();
    let Some(body) = body else { return status_line };
    match serde_json::from_slice::<PlanError>(body) {
        Ok(PlanError { error }) if !error.trim().is_empty() => {
            format!(
                "{status_line}: {}",
                crate::text::bounded(error.trim(), MAX_REASON_CHARS)
            )
        }
        _ => status_line,
    }
}

/// Calls planners over HTTP(S). Build one and share it: it keeps connections.
#[derive(Clone, Debug)]
pub struct PlannerClient {
    /// `Err`: why no HTTP client could be built (every [`PlannerClient::plan`] says it).
    http: Result<reqwest::Client, String>,
    attempts: usize,
    /// CA certificates found on the system; none (the operator's image has no
    /// bundle) leaves only plain-http planners callable.
    roots: usize,
}

/// TLS for https planners: rustls with the ring provider (given here, not
/// the process default), trusting the system's CA certificates
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's bundle), if any.
/// Also returns how many were found.
fn tls_config() -> (Result<rustls::ClientConfig, String>, usize) {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|builder| {
                let mut config = builder.with_root_certificates(roots).with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                config
            })
            .map_err(|e| format!("TLS: {e}"));
    (config, added)
}

/// The planner client's TLS settings (ring, the system's CA certificates if
/// any, HTTP/1.1), for other reqwest clients of the process: pass them to
/// `ClientBuilder::tls_backend_preconfigured`, so the client needs neither a
/// process-wide rustls provider nor a CA bundle to be built.
pub fn client_tls_config() -> Result<rustls::ClientConfig, String> {
    tls_config().0
}

impl Default for PlannerClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PlannerClient {
    /// An HTTP/1.1 client with rustls (ring), no proxy, no redirects, user
    /// agent `somastack-operator/<version>`. Never fails: a client that
    /// cannot be built (not expected) makes every call `Unavailable`.
    pub fn new() -> Self {
        let (tls, roots) = tls_config();
        let http = tls.and_then(|tls| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .http1_only()
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| error_chain(&e))
        });
        if let Err(error) = &http {
            tracing::error!(%error, "cannot build the HTTP client for planners");
        }
        Self {
            http,
            attempts: PLAN_ATTEMPTS,
            roots,
        }
    }

    /// POSTs `request` to `url` and returns the planned tasks. Each attempt
    /// may take `timeout` (connecting, sending and reading the answer);
    /// unavailable planners are tried [`PLAN_ATTEMPTS`] times with
    /// exponential backoff from [`FIRST_RETRY_DELAY`]. The tasks are as the
    /// planner sent them: checking the DAG is the caller's job.
    pub async fn plan(
        &self,
        url: &str,
        request: &PlanRequest,
        timeout: Duration,
    ) -> Result<Vec<Task>, PlanFailure> {
        // Only the redacted URL is ever shown: it may carry credentials.
        let shown = crate::text::redact_url(url);
        let http = self
            .http
            .as_ref()
            .map_err(|e| PlanFailure::Unavailable(format!("planner {shown} cannot be called: {e}")))?;
        let made = AtomicUsize::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST_RETRY_DELAY)
            .with_max_times(self.attempts.saturating_sub(1));
        let result = (|| {
            made.fetch_add(1, Ordering::Relaxed);
            Self::attempt(http, url, request, timeout)
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Attempt::Unavailable(_)))
        .notify(|e, delay| tracing::debug!(url, error = ?e, ?delay, "planner call failed; retrying"))
        .await;
        let made = made.load(Ordering::Relaxed);
        result.map_err(|e| match e.redacted(url) {
            Attempt::Unavailable(why) => {
                let attempts = if made == 1 { "1 attempt".to_string() } else { format!("{made} attempts") };
                let hint = if self.roots == 0 && url.starts_with("https://") {
                    " (the operator found no CA certificates to verify it with: mount a bundle and set SSL_CERT_FILE)"
                } else {
                    ""
                };
                PlanFailure::Unavailable(format!("planner {shown} is unavailable after {attempts}: {why}{hint}"))
            }
            Attempt::Refused(why) => PlanFailure::Refused(format!("planner {shown} refused the goal: {why}")),
            Attempt::Invalid(why) => PlanFailure::Invalid(format!("planner {shown} {why}")),
        })
    }

    async fn attempt(
        http: &reqwest::Client,
        url: &str,
        request: &PlanRequest,
        timeout: Duration,
    ) -> Result<Vec<Task>, Attempt> {
        let unavailable = |e: reqwest::Error| Attempt::Unavailable(error_chain(&e.without_url()));
        let mut response = http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(request)
            .send()
            .await
            .map_err(|e| {
                if e.is_builder() {
                    // A URL reqwest cannot call (bad scheme, ...): trying again will not help.
                    Attempt::Refused(format!("cannot call it: {}", error_chain(&e.without_url())))
                } else {
                    unavailable(e)
                }
            })?;
        let status = response.status();
        if status == StatusCode::OK {
            let body = read_capped(&mut response, MAX_ANSWER_BYTES)
                .await
                .map_err(unavailable)?;
            let body = body.ok_or_else(|| {
                Attempt::Invalid(format!(
                    "answered 200, but the answer is larger than {} MiB, the most the operator reads",
                    MAX_ANSWER_BYTES / (1024 * 1024)
                ))
            })?;
            // serde's messages may quote the answer: cut them short.
            let answer: PlanResponse = serde_json::from_slice(&body).map_err(|e| {
                Attempt::Invalid(format!(
                    "answered 200, but the answer is not a plan: {}",
                    crate::text::bounded(&e.to_string(), MAX_REASON_CHARS)
                ))
            })?;
            if answer.api_version != PLANNER_API_VERSION {
                return Err(Attempt::Invalid(format!(
                    "answered 200, but the answer has apiVersion {:?}; the operator speaks {PLANNER_API_VERSION}",
                    crate::text::bounded(&answer.api_version, 64)
                )));
            }
            return Ok(answer.tasks);
        }
        // The body of a refusal is best effort: unreadable, it is left out.
        let body = read_capped(&mut response, MAX_ANSWER_BYTES).await.ok().flatten();
        let text = refusal_text(status, body.as_deref());
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(Attempt::Unavailable(format!("it answered {text}")))
        } else if status.is_success() {
            Err(Attempt::Invalid(format!("answered {status} instead of 200 OK")))
        } else {
            Err(Attempt::Refused(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxStatus};
    use axum::routing::post;
    use serde_json::{Value, json};
    use somastack_crds::common::CapsuleRef;
    use somastack_crds::planner::ProjectRef;

    use super::*;

    #[derive(Clone, Default)]
    struct Counters {
        flaky: Arc<AtomicUsize>,
        down: Arc<AtomicUsize>,
        refuse: Arc<AtomicUsize>,
    }

    fn task(name: &str, agent: &Value, deps: &[&str]) -> Value {
        json!({ "name": name, "capsule": agent, "dependsOn": deps, "input": name })
    }

    /// A plan echoing what the client sent, so the tests check the request too.
    fn answer(req: &Value) -> Value {
        let agent = &req["agent"];
        json!({
            "apiVersion": PLANNER_API_VERSION,
            "tasks": [task("a", agent, &[]), task(req["project"]["name"].as_str().unwrap_or("?"), agent, &["a"])],
        })
    }

    async fn good(headers: HeaderMap, axum::Json(req): axum::Json<Value>) -> (AxStatus, axum::Json<Value>) {
        if headers.get("user-agent").and_then(|v| v.to_str().ok()) != Some(USER_AGENT)
            || req["apiVersion"] != PLANNER_API_VERSION
        {
            return (
                AxStatus::BAD_REQUEST,
                axum::Json(json!({ "error": "unexpected request" })),
            );
        }
        (AxStatus::OK, axum::Json(answer(&req)))
    }

    async fn flaky(
        State(c): State<Counters>,
        axum::Json(req): axum::Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if c.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
            return (AxStatus::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        axum::Json(answer(&req)).into_response()
    }

    async fn down(State(c): State<Counters>) -> (AxStatus, axum::Json<Value>) {
        c.down.fetch_add(1, Ordering::SeqCst);
        (
            AxStatus::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "model is warming up" })),
        )
    }

    async fn refuse(State(c): State<Counters>) -> (AxStatus, axum::Json<Value>) {
        c.refuse.fetch_add(1, Ordering::SeqCst);
        (
            AxStatus::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({ "error": "the goal needs 7 tasks; the project allows at most 3 (spec.budget.maxTasks)" }),
            ),
        )
    }

    /// A real HTTP server on 127.0.0.1:0 (and the reference planner under
    /// `/reference`); returns its base URL.
    async fn server(counters: Counters) -> String {
        let app = Router::new()
            .route("/good", post(good))
            .route("/garbage", post(|| async { (AxStatus::OK, "{\"apiVersion\": ") }))
            .route(
                "/no-tasks",
                post(|| async { axum::Json(json!({ "apiVersion": PLANNER_API_VERSION })) }),
            )
            .route(
                "/v9",
                post(|| async {
                    axum::Json(json!({ "apiVersion": "planner.somastack.io/v9", "tasks": [] }))
                }),
            )
            .route(
                "/huge",
                post(|| async { (AxStatus::OK, " ".repeat(MAX_ANSWER_BYTES + 1)) }),
            )
            .route("/refuse", post(refuse))
            .route("/accepted", post(|| async { (AxStatus::ACCEPTED, "later") }))
            .route(
                "/teapot",
                post(|| async { (AxStatus::IM_A_TEAPOT, "<html>\n<body>no</body></html>") }),
            )
            .route("/flaky", post(flaky))
            .route("/down", post(down))
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .with_state(counters)
            .nest_service("/reference", somastack_planner::router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A test server (base URL and counters) and a client.
    async fn started() -> (Counters, String, PlannerClient) {
        let counters = Counters::default();
        let base = server(counters.clone()).await;
        (counters, base, PlannerClient::new())
    }

    /// A client that does not retry.
    fn single_attempt() -> PlannerClient {
        PlannerClient {
            attempts: 1,
            ..PlannerClient::new()
        }
    }

    fn request(goal: &str, max_tasks: i32) -> PlanRequest {
        PlanRequest {
            api_version: PLANNER_API_VERSION.to_string(),
            goal: goal.to_string(),
            project: ProjectRef {
                namespace: "research".into(),
                name: "brief".into(),
                uid: "u-1".into(),
            },
            agent: CapsuleRef {
                package: "researcher".into(),
                version: "1.2.0".into(),
            },
            max_tasks,
        }
    }

    const T: Duration = Duration::from_secs(5);

    /// Plans goal "g" (at most 10 tasks) at `url`.
    async fn plan_g(client: &PlannerClient, url: &str) -> Result<Vec<Task>, PlanFailure> {
        client.plan(url, &request("g", 10), T).await
    }

    /// Checks that `err` is a `reason` failure whose message starts with
    /// `start`; returns the message.
    fn failure(err: &PlanFailure, reason: &str, start: &str) -> String {
        assert_eq!(err.reason(), reason);
        let msg = err.to_string();
        assert!(msg.starts_with(start), "{msg}");
        msg
    }

    #[tokio::test]
    async fn planner_good_answer_is_the_plan() {
        let (_, base, client) = started().await;
        let tasks = plan_g(&client, &format!("{base}/good")).await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].name, "brief");
        assert_eq!(tasks[1].depends_on, ["a"]);
        assert_eq!(tasks[1].capsule, request("g", 1).agent);
        assert_eq!((tasks[1].timeout_seconds, tasks[1].retries), (600, 1));
    }

    #[tokio::test]
    async fn planner_reference_planner_speaks_the_contract() {
        let (_, base, client) = started().await;
        let url = format!("{base}/reference/plan");
        let tasks = client
            .plan(&url, &request("2 x gather sources; write the brief", 10), T)
            .await
            .unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["s1-gather-sources-1", "s1-gather-sources-2", "s2-write-the-brief"]
        );
        assert_eq!(
            tasks[2].depends_on,
            ["s1-gather-sources-1", "s1-gather-sources-2"]
        );

        let err = client.plan(&url, &request("9 x a; b", 3), T).await.unwrap_err();
        assert_eq!(err.reason(), "PlannerRefused");
        assert_eq!(
            err.to_string(),
            format!(
                "planner {url} refused the goal: 422 Unprocessable Entity: the goal needs 10 tasks; the project allows at most 3 (spec.budget.maxTasks)"
            )
        );
    }

    #[tokio::test]
    async fn planner_garbage_is_invalid() {
        let (_, base, client) = started().await;
        let url = format!("{base}/garbage");
        let err = plan_g(&client, &url).await.unwrap_err();
        let start = format!("planner {url} answered 200, but the answer is not a plan: ");
        let msg = failure(&err, "PlannerAnswerInvalid", &start);
        assert!(msg.contains("EOF while parsing"), "{msg}");

        let url = format!("{base}/no-tasks");
        let err = plan_g(&client, &url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "planner {url} answered 200, but the answer is not a plan: missing field `tasks` at line 1 column 46"
            )
        );

        type Check = fn(&str) -> bool;
        let checks: [(&str, Check); 2] = [
            ("v9", |msg| msg.contains("apiVersion \"planner.somastack.io/v9\"")),
            ("huge", |msg| {
                msg.ends_with("the answer is larger than 4 MiB, the most the operator reads")
            }),
        ];
        for (path, check) in checks {
            let err = plan_g(&client, &format!("{base}/{path}")).await.unwrap_err();
            assert_eq!(err.reason(), "PlannerAnswerInvalid");
            assert!(check(&err.to_string()), "{err}");
        }
    }

    #[tokio::test]
    async fn planner_422_is_refused_without_retry() {
        let (counters, base, client) = started().await;
        let url = format!("{base}/refuse");
        let err = client.plan(&url, &request("g", 3), T).await.unwrap_err();
        assert_eq!(
            err,
            PlanFailure::Refused(format!(
                "planner {url} refused the goal: 422 Unprocessable Entity: the goal needs 7 tasks; the project allows at most 3 (spec.budget.maxTasks)"
            ))
        );
        assert_eq!(counters.refuse.load(Ordering::SeqCst), 1);

        // No PlanError body (and not a short text): the status line.
        let url = format!("{base}/teapot");
        let err = client.plan(&url, &request("g", 3), T).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("planner {url} refused the goal: 418 I'm a teapot")
        );
        let url = format!("{base}/nowhere");
        let err = client.plan(&url, &request("g", 3), T).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("planner {url} refused the goal: 404 Not Found")
        );
    }

    #[tokio::test]
    async fn planner_500_then_200_is_retried() {
        let (counters, base, client) = started().await;
        let started = Instant::now();
        let tasks = plan_g(&client, &format!("{base}/flaky")).await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(counters.flaky.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= FIRST_RETRY_DELAY, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn planner_5xx_every_time_is_unavailable_after_3_attempts() {
        let (counters, base, client) = started().await;
        let url = format!("{base}/down");
        let started = Instant::now();
        let err = plan_g(&client, &url).await.unwrap_err();
        assert_eq!(counters.down.load(Ordering::SeqCst), 3);
        // 200 ms, then 400 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.reason(), "PlannerUnavailable");
        assert_eq!(
            err.to_string(),
            format!(
                "planner {url} is unavailable after 3 attempts: it answered 503 Service Unavailable: model is warming up"
            )
        );
    }

    #[tokio::test]
    async fn planner_refused_connection_is_unavailable() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = PlannerClient::new();
        let url = format!("http://127.0.0.1:{port}/plan");
        let err = plan_g(&client, &url).await.unwrap_err();
        let start = format!("planner {url} is unavailable after 3 attempts: error sending request: ");
        let msg = failure(&err, "PlannerUnavailable", &start);
        assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
    }

    #[tokio::test]
    async fn planner_timeout_is_unavailable() {
        let base = server(Counters::default()).await;
        let client = single_attempt();
        let url = format!("{base}/slow");
        let started = Instant::now();
        let err = client
            .plan(&url, &request("g", 10), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let start = format!("planner {url} is unavailable after 1 attempt: ");
        let msg = failure(&err, "PlannerUnavailable", &start);
        assert!(msg.contains("timed out"), "{msg}");
    }

    #[tokio::test]
    async fn planner_url_that_cannot_be_called_is_refused() {
        let client = PlannerClient::new();
        let err = plan_g(&client, "ftp://planner/plan").await.unwrap_err();
        let start = "planner ftp://planner/plan refused the goal: cannot call it";
        failure(&err, "PlannerRefused", start);
    }

    #[tokio::test]
    async fn planner_https_goes_through_rustls() {
        // TLS is compiled in and set up: https to a plain-http server fails the
        // handshake (retried as unavailable), instead of "scheme not supported".
        let base = server(Counters::default()).await;
        let client = single_attempt();
        let url = format!("{}/good", base.replace("http://", "https://"));
        let err = plan_g(&client, &url).await.unwrap_err();
        let start = format!("planner {url} is unavailable after 1 attempt: error sending request: ");
        let msg = failure(&err, "PlannerUnavailable", &start);
        assert!(!msg.contains("scheme"), "{msg}");
    }

    #[test]
    fn planner_refusal_text_prefers_the_error_field() {
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(
            refusal_text(s, Some(br#"{"error":" nope "}"#)),
            "400 Bad Request: nope"
        );
        // Any other body is not repeated, however short.
        assert_eq!(refusal_text(s, Some(b"plain words")), "400 Bad Request");
        // The planner's own reason is sanitized and cut short.
        let long = format!(r#"{{"error":"\u001b[31m{}"}}"#, "x".repeat(1000));
        let text = refusal_text(s, Some(long.as_bytes()));
        assert!(text.starts_with("400 Bad Request: \\u{1b}[31mxxx"), "{text}");
        assert!(
            text.len() <= "400 Bad Request: ".len() + MAX_REASON_CHARS,
            "{text}"
        );
        assert_eq!(refusal_text(s, Some(b"<html></html>")), "400 Bad Request");
        assert_eq!(refusal_text(s, Some(br#"{"error":""}"#)), "400 Bad Request");
        assert_eq!(refusal_text(s, None), "400 Bad Request");
    }
}
