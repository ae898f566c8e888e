//! The reference planner: turns a `KamachiqProject` goal into a task DAG by
//! deterministic rules, and serves them over the planner contract
//! (`somastack_crds::planner`, docs/planner.md).
//!
//! [`plan`] holds the rules and no I/O; [`router`] and [`serve`] put it on HTTP.

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use somastack_crds::kamachiq::Task;
use somastack_crds::planner::{
    MAX_TASK_DEPENDENCIES, PLANNER_API_VERSION, PlanError, PlanRequest, PlanResponse,
};
use tokio::net::TcpListener;

/// Largest request body the server reads.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest `N` of a fan-out stage (`N x text`).
pub const MAX_FAN_OUT: u32 = 5000;
/// Longest slug in a task name.
pub const MAX_SLUG_LEN: usize = 40;
/// Longest task input (the `maxLength` of `Task.input`).
pub const MAX_INPUT_CHARS: usize = 16384;
/// `timeoutSeconds` of every planned task (the `Task` default).
pub const TASK_TIMEOUT_SECONDS: i32 = 600;
/// `retries` of every planned task (the `Task` default).
pub const TASK_RETRIES: i32 = 1;

/// One stage of the goal: `count` parallel tasks doing `text`.
#[derive(Debug, PartialEq, Eq)]
struct Stage<'a> {
    text: &'a str,
    /// `Some(N)` for a fan-out stage (`N x text`), `None` for a single task.
    fan_out: Option<u32>,
}

impl Stage<'_> {
    fn tasks(&self) -> u64 {
        u64::from(self.fan_out.unwrap_or(1))
    }
}

/// Splits the goal at newlines and `;`, trims, drops empty stages.
fn stages(goal: &str) -> Vec<Stage<'_>> {
    goal.split(['\n', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match fan_out(s) {
            Some((n, text)) => Stage {
                text,
                fan_out: Some(n),
            },
            None => Stage {
                text: s,
                fan_out: None,
            },
        })
        .collect()
}

/// `N x text` (N in 1..=5000; `x`, `X` or `×`; spaces optional before the
/// `x`, required after it; text not empty) → `(N, text)`.
fn fan_out(stage: &str) -> Option<(u32, &str)> {
    let digits = stage.find(|c: char| !c.is_ascii_digit()).unwrap_or(stage.len());
    if digits == 0 {
        return None;
    }
    let n: u32 = stage[..digits].parse().ok()?;
    if !(1..=MAX_FAN_OUT).contains(&n) {
        return None;
    }
    let rest = stage[digits..].trim_start().strip_prefix(['x', 'X', '×'])?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let text = rest.trim();
    (!text.is_empty()).then_some((n, text))
}

/// The first three words of `text` (whitespace-separated, lowercased, only
/// `a-z0-9` kept, words left empty skipped), joined by `-`, at most 40
/// characters, no trailing `-`; `task` when nothing is left.
fn slug(text: &str) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .take(3)
        .collect();
    let mut slug = words.join("-");
    // Only ASCII is left, so any byte index is a character boundary.
    slug.truncate(MAX_SLUG_LEN);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "task".to_string()
    } else {
        slug.to_string()
    }
}

/// A lowercase RFC 1123 label of at most 63 characters.
fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Decomposes `request.goal` into tasks by the reference rules
/// (docs/planner.md): stages in sequence, fan-out within a stage, every task
/// of a stage depending on every task of the stage before. The error is the
/// sentence a planner answers 422 with.
pub fn plan(request: &PlanRequest) -> Result<Vec<Task>, String> {
    let stages = stages(&request.goal);
    if stages.is_empty() {
        return Err(
            "the goal has no stage to plan: it is empty once split at newlines and ';' \
                    (write one step per line, or steps separated by ';')"
                .to_string(),
        );
    }
    let needed: u64 = stages.iter().map(Stage::tasks).sum();
    if needed > u64::try_from(request.max_tasks.max(0)).unwrap_or(0) {
        return Err(format!(
            "the goal needs {needed} tasks; the project allows at most {} (spec.budget.maxTasks)",
            request.max_tasks
        ));
    }
    for (k, pair) in stages.windows(2).enumerate() {
        let before = pair[0].tasks();
        if before > MAX_TASK_DEPENDENCIES as u64 {
            return Err(format!(
                "stage {} would depend on all {before} tasks of stage {}; a task may depend on at most \
                 {MAX_TASK_DEPENDENCIES} (fan out to at most {MAX_TASK_DEPENDENCIES}, or make the fan-out \
                 the last stage)",
                k + 2,
                k + 1
            ));
        }
    }

    let mut tasks = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for (k, stage) in stages.iter().enumerate() {
        let k = k + 1;
        let slug = slug(stage.text);
        let mut names = Vec::new();
        let parts: Vec<(String, String)> = match stage.fan_out {
            None => vec![(format!("s{k}-{slug}"), stage.text.to_string())],
            Some(n) => (1..=n)
                .map(|i| {
                    (
                        format!("s{k}-{slug}-{i}"),
                        format!("{} (part {i} of {n})", stage.text),
                    )
                })
                .collect(),
        };
        for (name, input) in parts {
            if !is_dns_label(&name) {
                return Err(format!(
                    "stage {k} yields the task name {name:?}, which is not a valid name"
                ));
            }
            if input.chars().count() > MAX_INPUT_CHARS {
                return Err(format!(
                    "stage {k} is longer than {MAX_INPUT_CHARS} characters, the most a task's input may hold"
                ));
            }
            names.push(name.clone());
            tasks.push(Task {
                name,
                capsule: request.agent.clone(),
                depends_on: previous.clone(),
                input,
                timeout_seconds: TASK_TIMEOUT_SECONDS,
                retries: TASK_RETRIES,
            });
        }
        previous = names;
    }
    Ok(tasks)
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, axum::Json(PlanError { error })).into_response()
}

async fn plan_handler(body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(status = %rejection.status(), error = %rejection.body_text(), "request refused");
            return refuse(rejection.status(), rejection.body_text());
        }
    };
    let request: PlanRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(error = %e, "request is not a PlanRequest");
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not a PlanRequest: {e}"),
            );
        }
    };
    if request.api_version != PLANNER_API_VERSION {
        tracing::warn!(api_version = %request.api_version, "unsupported apiVersion");
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "apiVersion {:?} is not supported; this planner speaks {PLANNER_API_VERSION}",
                request.api_version
            ),
        );
    }
    let project = format!("{}/{}", request.project.namespace, request.project.name);
    match plan(&request) {
        Ok(tasks) => {
            tracing::info!(%project, tasks = tasks.len(), "planned");
            axum::Json(PlanResponse {
                api_version: PLANNER_API_VERSION.to_string(),
                tasks,
            })
            .into_response()
        }
        Err(error) => {
            tracing::info!(%project, %error, "goal refused");
            refuse(StatusCode::UNPROCESSABLE_ENTITY, error)
        }
    }
}

/// `POST /plan` and `GET /healthz`, with the request body limited to 1 MiB.
pub fn router() -> Router {
    Router::new()
        .route("/plan", post(plan_handler))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then finishes
/// the requests in flight.
pub async fn serve<F>(listener: TcpListener, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use somastack_crds::common::CapsuleRef;
    use somastack_crds::planner::ProjectRef;

    fn request(goal: &str, max_tasks: i32) -> PlanRequest {
        PlanRequest {
            api_version: PLANNER_API_VERSION.to_string(),
            goal: goal.to_string(),
            project: ProjectRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u-1".into(),
            },
            agent: CapsuleRef {
                package: "researcher".into(),
                version: "1.2.0".into(),
            },
            max_tasks,
        }
    }

    fn names(tasks: &[Task]) -> Vec<&str> {
        tasks.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn fan_out_then_join() {
        let tasks = plan(&request("3 x gather sources; write the brief", 100)).unwrap();
        assert_eq!(
            names(&tasks),
            [
                "s1-gather-sources-1",
                "s1-gather-sources-2",
                "s1-gather-sources-3",
                "s2-write-the-brief"
            ]
        );
        assert_eq!(tasks[1].input, "gather sources (part 2 of 3)");
        assert!(tasks[0].depends_on.is_empty());
        assert_eq!(
            tasks[3].depends_on,
            [
                "s1-gather-sources-1",
                "s1-gather-sources-2",
                "s1-gather-sources-3"
            ]
        );
        assert_eq!(tasks[3].input, "write the brief");
        for t in &tasks {
            assert_eq!(t.capsule.package, "researcher");
            assert_eq!(t.capsule.version, "1.2.0");
            assert_eq!(t.timeout_seconds, 600);
            assert_eq!(t.retries, 1);
        }
    }

    #[test]
    fn stages_split_at_newlines_and_semicolons_and_chain() {
        let tasks = plan(&request("  Collect the data\n\n; ;Clean it up\r\nPublish!  ", 10)).unwrap();
        assert_eq!(
            names(&tasks),
            ["s1-collect-the-data", "s2-clean-it-up", "s3-publish"]
        );
        assert_eq!(tasks[1].depends_on, ["s1-collect-the-data"]);
        assert_eq!(tasks[2].depends_on, ["s2-clean-it-up"]);
        assert_eq!(tasks[2].input, "Publish!");
    }

    #[test]
    fn fan_out_forms() {
        assert_eq!(fan_out("3 x a b"), Some((3, "a b")));
        assert_eq!(fan_out("3x a"), Some((3, "a")));
        assert_eq!(fan_out("12 X  review"), Some((12, "review")));
        assert_eq!(fan_out("2 × draft"), Some((2, "draft")));
        assert_eq!(fan_out("5000 x a"), Some((5000, "a")));
        assert_eq!(fan_out("5001 x a"), None);
        assert_eq!(fan_out("0 x a"), None);
        assert_eq!(fan_out("99999999999999999999 x a"), None);
        assert_eq!(fan_out("3 xylophones"), None);
        assert_eq!(fan_out("3 x"), None);
        assert_eq!(fan_out("x 3 a"), None);
        assert_eq!(fan_out("3 apples"), None);
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Gather the SOURCES for Q3"), "gather-the-sources");
        assert_eq!(slug("— résumé: don't panic"), "rsum-dont-panic");
        assert_eq!(slug("!!! ???"), "task");
        assert_eq!(slug(""), "task");
        let long = slug("abcdefghijklmnopqrstuvwxyz0123456789 abcdefghij klm");
        assert_eq!(long, "abcdefghijklmnopqrstuvwxyz0123456789-abc");
        assert_eq!(long.len(), 40);
        // A cut right after a separator leaves no trailing '-'.
        assert_eq!(
            slug("abcdefghijklmnopqrstuvwxyz0123456789abc de"),
            "abcdefghijklmnopqrstuvwxyz0123456789abc"
        );
    }

    #[test]
    fn a_stage_that_is_not_a_fan_out_is_one_task() {
        let tasks = plan(&request("3 apples", 10)).unwrap();
        assert_eq!(names(&tasks), ["s1-3-apples"]);
        let tasks = plan(&request("6000 x a", 10)).unwrap();
        assert_eq!(names(&tasks), ["s1-6000-x-a"]);
    }

    #[test]
    fn names_are_dns_labels_even_at_the_limits() {
        let text = "a".repeat(200);
        let goal = format!("{};5000 x {text}", vec![text.clone(); 15].join(";"));
        let tasks = plan(&request(&goal, 5015)).unwrap();
        assert_eq!(tasks.len(), 5015);
        for t in &tasks {
            assert!(is_dns_label(&t.name), "{}", t.name);
        }
        assert_eq!(tasks.last().unwrap().name, format!("s16-{}-5000", "a".repeat(40)));
        let mut unique: Vec<&str> = names(&tasks);
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), tasks.len());
    }

    #[test]
    fn too_many_tasks_is_refused() {
        let err = plan(&request("3 x a; b", 3)).unwrap_err();
        assert_eq!(
            err,
            "the goal needs 4 tasks; the project allows at most 3 (spec.budget.maxTasks)"
        );
        assert!(plan(&request("a", 0)).is_err());
        assert!(plan(&request("a", -5)).is_err());
        assert!(plan(&request("3 x a; b", 4)).is_ok());
    }

    #[test]
    fn no_stage_is_refused() {
        for goal in ["", "  ", ";\n ; \r\n"] {
            let err = plan(&request(goal, 10)).unwrap_err();
            assert!(err.starts_with("the goal has no stage to plan: "), "{err}");
        }
    }

    #[test]
    fn a_join_over_more_than_16_tasks_is_refused() {
        assert!(plan(&request("16 x a; b", 100)).is_ok());
        let err = plan(&request("17 x a; b", 100)).unwrap_err();
        assert!(
            err.contains("stage 2 would depend on all 17 tasks of stage 1"),
            "{err}"
        );
        // A fan-out as the last stage has one dependency per task.
        let tasks = plan(&request("a; 50 x b", 100)).unwrap();
        assert_eq!(tasks[50].depends_on, ["s1-a"]);
    }

    #[test]
    fn input_longer_than_a_task_holds_is_refused() {
        let err = plan(&request(&"a".repeat(MAX_INPUT_CHARS + 1), 10)).unwrap_err();
        assert!(err.contains("longer than 16384 characters"), "{err}");
        assert!(plan(&request(&"a".repeat(MAX_INPUT_CHARS), 10)).is_ok());
    }

    #[test]
    fn task_values_are_the_task_defaults() {
        let t: Task = serde_json::from_value(serde_json::json!({
            "name": "a", "capsule": { "package": "p", "version": "1.0.0" }
        }))
        .unwrap();
        assert_eq!(t.timeout_seconds, TASK_TIMEOUT_SECONDS);
        assert_eq!(t.retries, TASK_RETRIES);
    }

    #[test]
    fn plans_are_deterministic() {
        let r = request("2 x a; b\nc", 10);
        assert_eq!(plan(&r), plan(&r));
    }
}
