//! Types and schema pieces shared by several kinds.
//!
//! String formats (region names, semantic versions, digests, quantities, cron
//! expressions) are checked by the API server with CEL rules that carry a
//! message a person understands, instead of bare `pattern`s whose error only
//! repeats the regular expression.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How sensitive the data a capsule handles is; residency rules key on it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataClassification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl DataClassification {
    pub const ALL: [DataClassification; 4] =
        [Self::Public, Self::Internal, Self::Confidential, Self::Restricted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Confidential => "confidential",
            Self::Restricted => "restricted",
        }
    }
}

impl std::fmt::Display for DataClassification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one version of a marketplace package (a Capsule).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapsuleRef {
    /// Package name, as in `Capsule.spec.package`.
    #[schemars(schema_with = "dns_label")]
    pub package: String,
    /// Exact semantic version, as in `Capsule.spec.version`.
    #[schemars(schema_with = "semver")]
    pub version: String,
}

/// Conditions list as Kubernetes API conventions want it: a map keyed by `type`.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut item = generator.subschema_for::<Condition>();
    // k8s-openapi's Condition schema is large; inline what the API server needs.
    item.remove("description");
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// A CEL rule with its message, in the shape `x-kubernetes-validations` wants.
fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

fn string_with(max_len: u32, rules: Vec<Value>) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": max_len,
        "x-kubernetes-validations": rules,
    })
}

const DNS_LABEL_RE: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A lowercase RFC 1123 label: package, publisher, task and capability names.
pub fn dns_label(_: &mut SchemaGenerator) -> Schema {
    string_with(
        63,
        vec![rule(
            &format!("self.matches('{DNS_LABEL_RE}')"),
            "must be a lowercase name of at most 63 characters: letters a-z, digits and '-', starting and ending with a letter or digit",
        )],
    )
}

/// A region name such as `eu-west-1`: what kwok/cloud nodes carry in
/// `topology.kubernetes.io/region`.
pub fn region(_: &mut SchemaGenerator) -> Schema {
    string_with(63, vec![region_rule()])
}

fn region_rule() -> Value {
    rule(
        &format!("self.matches('{DNS_LABEL_RE}')"),
        "must be a region name such as eu-west-1: lowercase letters, digits and '-', at most 63 characters",
    )
}

/// A set of region names (no duplicates).
pub fn region_set(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": string_with(63, vec![region_rule()]),
        "x-kubernetes-list-type": "set",
    })
}

/// A set of lowercase names (capabilities, dependencies).
pub fn dns_label_set(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": dns_label(generator),
        "x-kubernetes-list-type": "set",
    })
}

/// Semantic version 2.0.0 (`1.2.3`, `1.2.3-rc.1`), at most 63 characters
/// and without build metadata (`+build.5`): the version is the
/// `app.kubernetes.io/version` label of every child of an Installation, and
/// a label value takes neither (the API server refused such children).
pub fn semver(_: &mut SchemaGenerator) -> Schema {
    string_with(
        63,
        vec![rule(
            r"self.matches('^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$')",
            "must be a semantic version such as 1.4.2 or 2.0.0-rc.1, without build metadata (+...): it labels the workload",
        )],
    )
}

/// A container image pinned by digest: `registry/repo@sha256:<64 hex>`.
pub fn image_digest(_: &mut SchemaGenerator) -> Schema {
    string_with(
        512,
        vec![rule(
            r"self.matches('^[a-z0-9]+([._/:-][a-z0-9]+)*@sha256:[a-f0-9]{64}$')",
            "must be an image pinned by digest, such as registry.example/agents/summarizer@sha256:<64 hex digits>; tags are not accepted",
        )],
    )
}

/// A URL path such as `/healthz`.
pub fn http_path(_: &mut SchemaGenerator) -> Schema {
    string_with(
        256,
        vec![rule(
            r"self.matches('^/[A-Za-z0-9._~!$&()*+,;=:@%/-]*$')",
            "must be an absolute URL path starting with '/', such as /healthz",
        )],
    )
}

/// Largest CPU quantity the API accepts anywhere (cores): far above any
/// node, low enough that no quantity overflows on its way to a Pod.
pub const MAX_CPU: &str = "4096";
/// Largest memory quantity the API accepts anywhere.
pub const MAX_MEMORY: &str = "64Ti";

/// A Kubernetes resource quantity (`500m`, `2`, `1Gi`), as an integer or a
/// string, between 0 and `max`: negative amounts and absurd ones such as
/// `1e400` are refused here rather than by the API server when a Pod is made.
fn bounded_quantity(max: &str, example: &str) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{ "type": "integer" }, { "type": "string", "maxLength": 32 }],
        "x-kubernetes-validations": [
            rule(
                "isQuantity(string(self))",
                &format!("must be a Kubernetes quantity such as {example}"),
            ),
            rule(
                "!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('0')) >= 0",
                "must not be negative",
            ),
            rule(
                &format!("!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('{max}')) <= 0"),
                &format!("must be at most {max}"),
            ),
        ],
    })
}

/// A CPU quantity (`250m`, `2`), 0 to [`MAX_CPU`].
pub fn cpu_quantity(_: &mut SchemaGenerator) -> Schema {
    bounded_quantity(MAX_CPU, "500m or 2")
}

/// A memory quantity (`256Mi`, `1Gi`), 0 to [`MAX_MEMORY`].
pub fn memory_quantity(_: &mut SchemaGenerator) -> Schema {
    bounded_quantity(MAX_MEMORY, "256Mi or 1Gi")
}

/// A five-field cron expression, or one of the `@hourly`-style macros.
pub fn cron(_: &mut SchemaGenerator) -> Schema {
    string_with(
        128,
        vec![rule(
            r"self.matches('^(@(yearly|annually|monthly|weekly|daily|hourly)|[0-9A-Za-z*/,?#-]+(\\s+[0-9A-Za-z*/,?#-]+){4})$')",
            "must be a cron schedule with five fields (minute hour day-of-month month day-of-week), such as '0 3 * * *', or a macro such as @daily",
        )],
    )
}

/// An http or https URL.
pub fn http_url(_: &mut SchemaGenerator) -> Schema {
    string_with(
        2048,
        vec![rule(
            "isURL(self) && (url(self).getScheme() == 'http' || url(self).getScheme() == 'https')",
            "must be an http:// or https:// URL",
        )],
    )
}

/// Which nodes of the region the pods may use, beyond the region itself:
/// node labels to require and taints to tolerate, as a Deployment's pod
/// template has them. For dedicated node pools (GPU nodes, a tenant's own
/// nodes, the local cluster's real nodes: docs/real-nodes.md). The region is
/// never chosen here: `spec.region` and residency rules decide it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a node must carry (at most 16); not the region label.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(schema_with = "node_selector")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Taints the pods tolerate (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub tolerations: Vec<Toleration>,
}

/// A taint the pods tolerate (a pod's `tolerations` entry, without
/// `tolerationSeconds`). Checked as a Pod's would be, so a Deployment made
/// from it is never refused for it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator != 'Exists' || !has(self.value) || self.value == ''").message("a toleration with operator Exists takes no value"))]
#[x_kube(validation = Rule::new("self.operator == 'Exists' || (has(self.key) && self.key != '')").message("a toleration with operator Equal needs a key (an empty key with operator Exists tolerates every taint)"))]
pub struct Toleration {
    /// Taint key; empty with `operator: Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 317))]
    #[x_kube(validation = Rule::new(r"self == '' || self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')").message("a toleration key must be a label key: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub key: String,
    /// `Equal` (default: key and value match) or `Exists` (any value).
    #[serde(default)]
    pub operator: TolerationOperator,
    /// Taint value, for `Equal`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(r"self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')").message("a toleration value must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    pub value: String,
    /// Effect to tolerate; empty tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// The node label that names a node's region; `spec.region` owns it.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

fn node_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": { "type": "string", "maxLength": 63 },
        "x-kubernetes-validations": [
            rule(
                &format!("!('{REGION_LABEL}' in self)"),
                "placement.nodeSelector must not name topology.kubernetes.io/region: spec.region chooses the region, under the residency rules",
            ),
            rule(
                "self.all(k, size(k) <= 317)",
                "node label keys are at most 317 characters (prefix/name)",
            ),
            rule(
                r"self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",
                "node label keys must be label keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            rule(
                r"self.all(k, self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'))",
                "node label values must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            ),
        ],
    })
}
