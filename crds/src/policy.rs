//! `PolicyBundle`: the rules Installations and projects must follow.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{self, DataClassification};

/// Residency, trust, ceilings, capabilities and a kill switch for the
/// namespaces it selects. Several bundles may govern one namespace; the most
/// restrictive combination applies.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "somastack.io",
    version = "v1alpha1",
    kind = "PolicyBundle",
    plural = "policybundles",
    shortname = "pb",
    category = "somastack",
    status = "PolicyBundleStatus",
    doc = "Rules for the namespaces it selects: residency, trusted publishers, ceilings, capabilities, kill switch.",
    printcolumn(name = "Enforcement", type_ = "string", json_path = ".spec.enforcement"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.governedNamespaces"
    ),
    printcolumn(name = "Violations", type_ = "integer", json_path = ".status.violationCount"),
    printcolumn(
        name = "Kill-Switch",
        type_ = "boolean",
        json_path = ".spec.killSwitch.engaged"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBundleSpec {
    /// Namespaces this bundle governs; empty or absent selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Where each class of data may be processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<Residency>,
    /// Which publishers' signatures are trusted, and whether signatures and reviews are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<Trust>,
    /// Ceilings for one Installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Capabilities a capsule may use; absent means no restriction from this bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Rules for KamachiqProjects in governed namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<ProjectRules>,
    /// Emergency stop for every governed Installation and project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<KillSwitch>,
    /// `Enforce` (default) blocks violations; `Audit` only reports them.
    #[serde(default)]
    pub enforcement: Enforcement,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Enforcement {
    #[default]
    Enforce,
    Audit,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Residency {
    /// One rule per data classification; a classification without a rule is not restricted by this bundle.
    #[serde(default)]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["dataClassification".into()]))]
    pub rules: Vec<ResidencyRule>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResidencyRule {
    /// The class of data this rule is about.
    pub data_classification: DataClassification,
    /// Regions where that data may be processed (an empty list allows none).
    #[schemars(schema_with = "common::region_set")]
    pub allowed_regions: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    /// Publishers whose keys are trusted.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub publishers: Vec<TrustedPublisher>,
    /// Capsules without a valid signature from a trusted key may not be installed.
    #[serde(default)]
    pub require_signature: bool,
    /// Capsules must be approved by a reviewer before they may be installed.
    #[serde(default)]
    pub require_approval: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustedPublisher {
    /// Publisher name, as in `Capsule.spec.publisher`.
    #[schemars(schema_with = "common::dns_label")]
    pub name: String,
    /// The publisher's public keys.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub keys: Vec<PublisherKey>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PublisherKey {
    /// Key id, referenced by `Capsule.spec.signature.keyId`.
    #[schemars(schema_with = "common::dns_label")]
    pub id: String,
    /// The public key in PEM (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo), ECDSA P-256 or Ed25519.
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN PUBLIC KEY-----') && self.contains('-----END PUBLIC KEY-----')").message("publicKey must be a PEM public key (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----), as `openssl pkey -pubout` writes it"))]
    #[schemars(length(max = 4096))]
    pub public_key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Most replicas one Installation may run (also caps autoscaling's maxReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_replicas: Option<i32>,
    /// Most CPU one replica may be given (its limit, or request when no limit is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::cpu_quantity")]
    pub max_cpu: Option<Quantity>,
    /// Most memory one replica may be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::memory_quantity")]
    pub max_memory: Option<Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Capabilities a capsule may request; any other is refused.
    #[serde(default)]
    #[schemars(schema_with = "common::dns_label_set")]
    pub allowed: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRules {
    /// Every project's plan must be approved by a reviewer before any task runs.
    #[serde(default)]
    pub require_approval: bool,
    /// Planner endpoints projects may call (`spec.planner.url`), as URL
    /// prefixes: scheme, host and port must be equal and the path must start
    /// with the entry's path. A planner URL is called only when every
    /// governing bundle that lists planners allows it, and none when no
    /// governing bundle does: the operator calls no address a tenant names
    /// on its own. Installed planner capsules (`spec.planner.capsule`) need
    /// no entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "planner_url_set")]
    pub allowed_planner_urls: Vec<String>,
    /// A moderator every project of the governed namespaces runs, beside its
    /// own `spec.moderation` (every moderator must allow). Only `Enforce`
    /// bundles require it; an `Audit` bundle's moderator is not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<crate::kamachiq::Moderation>,
}

fn planner_url_set(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut item = common::http_url(generator);
    item.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "isURL(self) && (url(self).getScheme() == 'http' || url(self).getScheme() == 'https') && !self.contains('@') && !self.contains('?') && !self.contains('#')",
            "message": "must be an http:// or https:// URL prefix without credentials, query or fragment, such as https://planner.platform.svc:8080/",
        }]),
    );
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": item,
        "x-kubernetes-list-type": "set",
    })
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.engaged || (has(self.reason) && size(self.reason) > 0)").message("killSwitch.reason is required when the kill switch is engaged: say why, for whoever reads the stopped workloads' status"))]
pub struct KillSwitch {
    /// When true, every governed Installation is scaled to zero and projects are halted.
    #[serde(default)]
    pub engaged: bool,
    /// Why the switch was engaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// What the operator observed about a PolicyBundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBundleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::conditions")]
    pub conditions: Vec<Condition>,
    /// Number of namespaces the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governed_namespaces: Option<i32>,
    /// Number of existing Installations that break this bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation_count: Option<i32>,
    /// The first violations found (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub violations: Vec<Violation>,
}

/// One rule broken by one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// Kind of the offending object.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Stable rule name, e.g. `residency`, `maxReplicas`, `capabilities`.
    pub rule: String,
    pub message: String,
}

/// Maximum number of violations listed in a PolicyBundle's status.
pub const MAX_LISTED_VIOLATIONS: usize = 20;
