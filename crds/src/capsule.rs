//! `Capsule`: one signed, reviewed version of a marketplace package.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{self, DataClassification};

/// A published, signed version of a package (an agent or a service image).
///
/// Cluster-scoped: a Capsule is a catalogue entry that any tenant namespace
/// may install, where policy allows.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "somastack.io",
    version = "v1alpha1",
    kind = "Capsule",
    plural = "capsules",
    shortname = "cap",
    category = "somastack",
    status = "CapsuleStatus",
    doc = "One signed, reviewed version of a marketplace package (an agent or service image).",
    printcolumn(name = "Package", type_ = "string", json_path = ".spec.package"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Publisher", type_ = "string", json_path = ".spec.publisher"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.__package__ == oldSelf.__package__ && self.publisher == oldSelf.publisher").message("package and publisher cannot change; publish a new Capsule instead"))]
pub struct CapsuleSpec {
    /// Package name (lowercase DNS label), shared by all versions of the package.
    #[schemars(schema_with = "common::dns_label")]
    pub package: String,
    /// Semantic version of this release.
    #[schemars(schema_with = "common::semver")]
    pub version: String,
    /// Publisher name; its keys are trusted through PolicyBundle `trust.publishers`.
    #[schemars(schema_with = "common::dns_label")]
    pub publisher: String,
    /// Container image pinned by digest (`...@sha256:...`).
    #[schemars(schema_with = "common::image_digest")]
    pub image: String,
    /// Ports the workload listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port))").message("each port number may appear only once"))]
    pub ports: Vec<CapsulePort>,
    /// Environment variables set in every container of the capsule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    /// Compute resources of one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Capabilities the capsule needs (e.g. `network-egress`); a PolicyBundle must allow each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::dns_label_set")]
    pub capabilities: Vec<String>,
    /// Sensitivity of the data the capsule handles; decides where it may run.
    pub data_classification: DataClassification,
    /// HTTP path of the liveness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::http_path")]
    pub health_path: Option<String>,
    /// HTTP path of the readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::http_path")]
    pub ready_path: Option<String>,
    /// Publisher's signature over the canonical payload (see docs/signing.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CapsulePort {
    /// Port name (lowercase, at most 15 characters, as Services require).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 15 && self.matches('[a-z]') && !self.contains('--')").message("port name must be a lowercase name of at most 15 characters, with a letter and no '--' (an IANA service name, as Services require)"))]
    #[schemars(length(max = 15))]
    pub name: String,
    /// Port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("environment variable names must start with a letter or '_' and contain only letters, digits and '_'"))]
    #[schemars(length(max = 128))]
    pub name: String,
    /// Value (plain text; do not put secrets here).
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || !has(self.limits.cpu) || !isQuantity(string(self.requests.cpu)) || !isQuantity(string(self.limits.cpu)) || quantity(string(self.requests.cpu)).compareTo(quantity(string(self.limits.cpu))) <= 0").message("requests.cpu must not be greater than limits.cpu"))]
#[x_kube(validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || !has(self.limits.memory) || !isQuantity(string(self.requests.memory)) || !isQuantity(string(self.limits.memory)) || quantity(string(self.requests.memory)).compareTo(quantity(string(self.limits.memory))) <= 0").message("requests.memory must not be greater than limits.memory"))]
pub struct ResourceRequirements {
    /// What the scheduler reserves for one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// The most one replica may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, e.g. `250m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::cpu_quantity")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "common::memory_quantity")]
    pub memory: Option<Quantity>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// Id of the publisher key that made the signature (`trust.publishers[].keys[].id`).
    #[schemars(schema_with = "common::dns_label")]
    pub key_id: String,
    /// Signature algorithm.
    pub algorithm: SignatureAlgorithm,
    /// Base64 of the signature bytes (DER for ECDSA, 64 raw bytes for Ed25519).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9+/]+={0,2}$')").message("signature value must be standard base64"))]
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SignatureAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256 (what `openssl dgst -sha256 -sign` and cosign produce).
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    /// Ed25519 (RFC 8032), signing the payload itself.
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// What the operator observed about a Capsule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapsuleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Verified`, `Approved` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "common::conditions")]
    pub conditions: Vec<Condition>,
    /// `sha256:<hex>` of the canonical signed payload; an approval is bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_digest: Option<String>,
    /// The review decision and who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRecord>,
    /// How many Installations use this Capsule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installations: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRecord {
    /// `approve` or `reject`.
    pub decision: String,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the operator recorded the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The payload digest the decision applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_digest: Option<String>,
}
