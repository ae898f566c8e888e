//! The planner contract: what the operator POSTs to a planner and what it
//! accepts back, when a `KamachiqProject` has no `spec.tasks` (docs/planner.md).
//!
//! [`contract_schema`] renders these types as one JSON Schema document,
//! committed as `docs/planner.schema.json` (a test keeps the two equal).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::common::CapsuleRef;
use crate::kamachiq::Task;

/// `apiVersion` of every request and answer of the planner contract.
pub const PLANNER_API_VERSION: &str = "planner.somastack.io/v1alpha1";

/// Most entries in one task's `dependsOn` (the `maxItems` of `Task.dependsOn`).
pub const MAX_TASK_DEPENDENCIES: usize = 16;

/// Path of the committed schema, relative to the workspace root.
pub const SCHEMA_FILE: &str = "docs/planner.schema.json";

/// Command that regenerates [`SCHEMA_FILE`].
pub const SCHEMA_REGENERATE: &str = "cargo run -q -p somastack-planner -- schema > docs/planner.schema.json";

/// What the operator POSTs (as JSON) to the planner URL to have a goal
/// decomposed into tasks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanRequest {
    /// Version of the contract: `planner.somastack.io/v1alpha1`.
    pub api_version: String,
    /// The project's goal (`spec.goal`), in plain words.
    pub goal: String,
    /// The project asking for a plan.
    pub project: ProjectRef,
    /// The agent capsule to assign to the planned tasks (`spec.planner.agent`).
    pub agent: CapsuleRef,
    /// Most tasks the plan may have (`spec.budget.maxTasks`, default 100); a
    /// planner that needs more answers 422.
    pub max_tasks: i32,
}

/// The KamachiqProject a plan is requested for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRef {
    /// Namespace of the project.
    pub namespace: String,
    /// Name of the project.
    pub name: String,
    /// `metadata.uid` of the project: stable across retries of the same project.
    pub uid: String,
}

/// The body of a planner's 200 answer: the task DAG.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanResponse {
    /// Version of the contract: `planner.somastack.io/v1alpha1`.
    pub api_version: String,
    /// The planned tasks, in the shape of `KamachiqProject.spec.tasks`: names
    /// unique, `dependsOn` naming other tasks of the plan, no cycle.
    #[schemars(schema_with = "task_list")]
    pub tasks: Vec<Task>,
}

/// The body of any non-200 answer (best effort: the operator shows `error`
/// in the project's status, or the status line when the body is not this).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanError {
    /// Why no plan was produced, in a sentence a user can act on.
    pub error: String,
}

/// `Task` derives `KubeSchema`, which inlines it (Kubernetes schemas have no
/// `$ref`); in the contract it is a definition of its own.
fn task_list(generator: &mut SchemaGenerator) -> Schema {
    let mut task = generator.subschema_for::<Task>();
    task.insert(
        "description".into(),
        "One task of the plan, as in `KamachiqProject.spec.tasks`: run as an agent Job once the \
         tasks it depends on succeeded."
            .into(),
    );
    generator.definitions_mut().insert("Task".into(), task.to_value());
    let path = generator
        .settings()
        .definitions_path
        .trim_start_matches('/')
        .to_string();
    json_schema!({
        "type": "array",
        "items": { "$ref": format!("#/{path}/Task") },
    })
}

/// Adds a JSON Schema `pattern` next to every CEL rule that is only a regular
/// expression match (`self.matches('<re>')`), so validators that do not read
/// `x-kubernetes-validations` check names and versions too.
fn add_patterns(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let pattern = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("rule").and_then(Value::as_str))
                .find_map(|rule| rule.strip_prefix("self.matches('")?.strip_suffix("')"))
                // A CEL string literal writes a backslash as two.
                .map(|re| re.replace("\\\\", "\\"));
            if let Some(pattern) = pattern {
                map.insert("pattern".into(), Value::String(pattern));
            }
            map.values_mut().for_each(add_patterns);
        }
        Value::Array(items) => items.iter_mut().for_each(add_patterns),
        _ => {}
    }
}

/// The planner contract as one JSON Schema (draft 2020-12) document, with
/// `PlanRequest`, `PlanResponse` and `PlanError` (and the types they use)
/// under `$defs`. Deterministic: object keys are sorted.
pub fn contract_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    // Each is a struct, so it lands in the definitions (as `$defs/<name>`).
    generator.subschema_for::<PlanRequest>();
    generator.subschema_for::<PlanResponse>();
    generator.subschema_for::<PlanError>();
    let mut defs: Map<String, Value> = generator.take_definitions(true);
    defs.values_mut().for_each(add_patterns);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://somastack.io/schemas/planner.schema.json",
        "title": "SomaStack planner contract",
        "description": format!(
            "{PLANNER_API_VERSION}: the operator POSTs a PlanRequest to the planner URL; the planner \
             answers 200 with a PlanResponse, or another status with a PlanError (each under \
             $defs). Generated from crds/src/planner.rs; see docs/planner.md."
        ),
        "$defs": defs,
    })
}

/// [`contract_schema`] as committed: pretty JSON with a trailing newline.
pub fn contract_schema_pretty() -> String {
    let mut out = serde_json::to_string_pretty(&contract_schema())
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_matches_the_types() {
        let committed = include_str!("../../docs/planner.schema.json");
        let generated = contract_schema_pretty();
        assert!(
            committed == generated,
            "{SCHEMA_FILE} is out of date with crds/src/planner.rs; regenerate it with:\n  {SCHEMA_REGENERATE}"
        );
    }

    #[test]
    fn schema_has_the_three_messages_and_task() {
        let s = contract_schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        for name in [
            "PlanRequest",
            "PlanResponse",
            "PlanError",
            "Task",
            "CapsuleRef",
            "ProjectRef",
        ] {
            assert!(s["$defs"][name].is_object(), "missing $defs/{name}");
        }
        let req = &s["$defs"]["PlanRequest"];
        assert_eq!(
            req["required"],
            json!(["apiVersion", "goal", "project", "agent", "maxTasks"])
        );
        assert!(req["properties"]["maxTasks"]["description"].is_string());
        let task = &s["$defs"]["Task"];
        assert_eq!(task["required"], json!(["name", "capsule"]));
        assert_eq!(task["properties"]["timeoutSeconds"]["default"], 600);
        assert_eq!(task["properties"]["retries"]["default"], 1);
        assert_eq!(task["properties"]["capsule"]["$ref"], "#/$defs/CapsuleRef");
        assert_eq!(
            s["$defs"]["PlanResponse"]["properties"]["tasks"]["items"]["$ref"],
            "#/$defs/Task"
        );
    }

    #[test]
    fn regular_expression_rules_become_patterns() {
        let s = contract_schema();
        let capsule = &s["$defs"]["CapsuleRef"]["properties"];
        assert_eq!(capsule["package"]["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
        let semver = capsule["version"]["pattern"].as_str().unwrap();
        assert!(semver.starts_with(r"^(0|[1-9][0-9]*)\.(0|"), "{semver}");
        let task = &s["$defs"]["Task"]["properties"];
        assert_eq!(task["name"]["pattern"], capsule["package"]["pattern"]);
        assert_eq!(
            task["dependsOn"]["items"]["pattern"],
            capsule["package"]["pattern"]
        );
        // Rules that are not a bare match stay CEL only.
        assert!(s["$defs"]["Task"].get("pattern").is_none());
    }

    #[test]
    fn max_dependencies_matches_the_task_schema() {
        let s = contract_schema();
        assert_eq!(
            s["$defs"]["Task"]["properties"]["dependsOn"]["maxItems"],
            json!(MAX_TASK_DEPENDENCIES)
        );
    }

    #[test]
    fn messages_use_camel_case_and_task_defaults() {
        let body = json!({
            "apiVersion": PLANNER_API_VERSION,
            "tasks": [{ "name": "a", "capsule": { "package": "p", "version": "1.0.0" } }]
        });
        let r: PlanResponse = serde_json::from_value(body).unwrap();
        assert_eq!(r.tasks[0].timeout_seconds, 600);
        assert_eq!(r.tasks[0].retries, 1);
        let req = PlanRequest {
            api_version: PLANNER_API_VERSION.into(),
            goal: "g".into(),
            project: ProjectRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            agent: CapsuleRef {
                package: "p".into(),
                version: "1.0.0".into(),
            },
            max_tasks: 3,
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["maxTasks"], 3);
        assert_eq!(v["apiVersion"], PLANNER_API_VERSION);
        assert_eq!(serde_json::from_value::<PlanRequest>(v).unwrap(), req);
    }
}
