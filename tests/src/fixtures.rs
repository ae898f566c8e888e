//! Test data made the way users make it: keys and signatures by the
//! `openssl` command line, objects as the JSON a user would apply.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{TEST_LABEL, TestNamespace, apply};

/// A digest-pinned image reference that is unique per `seed`.
pub fn image(seed: &str) -> String {
    use sha2::Digest;
    format!(
        "registry.test.example/agents/{seed}@sha256:{}",
        hex::encode(sha2::Sha256::digest(seed.as_bytes()))
    )
}

/// A scratch folder removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("somastack-test-{tag}-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    crate::success_stdout(&format!("openssl {args:?}"), out)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A publisher key made by openssl: private key file and public PEM.
pub struct Key {
    pub private: PathBuf,
    pub public_pem: String,
    pub algorithm: &'static str,
}

impl Key {
    pub fn ecdsa(dir: &Scratch, name: &str) -> Key {
        let private = dir.path(&format!("{name}.key"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p(&private),
        ]);
        let public_pem = String::from_utf8(openssl(&["pkey", "-in", p(&private), "-pubout"])).expect("pem");
        Key {
            private,
            public_pem,
            algorithm: "ecdsa-p256-sha256",
        }
    }

    pub fn ed25519(dir: &Scratch, name: &str) -> Key {
        let private = dir.path(&format!("{name}.key"));
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p(&private)]);
        let public_pem = String::from_utf8(openssl(&["pkey", "-in", p(&private), "-pubout"])).expect("pem");
        Key {
            private,
            public_pem,
            algorithm: "ed25519",
        }
    }

    /// The public PEM of a key of another kind, made by `openssl genpkey`
    /// with `genpkey_args` (e.g. RSA or a curve the operator does not
    /// support), for tests of what is refused.
    pub fn other(dir: &Scratch, name: &str, genpkey_args: &[&str]) -> String {
        let private = dir.path(&format!("{name}.key"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(genpkey_args);
        args.extend_from_slice(&["-out", p(&private)]);
        openssl(&args);
        String::from_utf8(openssl(&["pkey", "-in", p(&private), "-pubout"])).expect("pem")
    }

    /// Signs `payload` with openssl, as a publisher would; base64 of the signature.
    pub fn sign(&self, dir: &Scratch, payload: &[u8]) -> String {
        let input = dir.path(&format!("payload-{}", crate::unique_suffix()));
        std::fs::write(&input, payload).expect("payload written");
        let raw = match self.algorithm {
            "ed25519" => openssl(&[
                "pkeyutl",
                "-sign",
                "-inkey",
                p(&self.private),
                "-rawin",
                "-in",
                p(&input),
            ]),
            _ => openssl(&["dgst", "-sha256", "-sign", p(&self.private), p(&input)]),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// The bytes to sign for a Capsule manifest, printed by the kubectl plugin
/// (`kubectl soma capsule payload`), as a publisher gets them.
pub fn payload_of(dir: &Scratch, capsule: &Value) -> Vec<u8> {
    let file = dir.path(&format!("capsule-{}.json", crate::unique_suffix()));
    std::fs::write(&file, serde_json::to_vec(capsule).expect("json")).expect("manifest written");
    let out = Command::new(crate::workspace_binary("kubectl-soma"))
        .args(["capsule", "payload", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl-soma capsule payload runs");
    crate::success_stdout("payload", out)
}

/// A Capsule manifest (labelled as the tests' own, for sweeping).
pub fn capsule(name: &str, package: &str, version: &str, class: &str) -> Value {
    json!({
        "apiVersion": "somastack.io/v1alpha1",
        "kind": "Capsule",
        "metadata": { "name": name, "labels": { TEST_LABEL: "true" } },
        "spec": {
            "package": package,
            "version": version,
            "publisher": "test-pub",
            "image": image(&format!("{package}-{version}")),
            "dataClassification": class,
            "ports": [{ "name": "http", "port": 8080 }],
            "healthPath": "/healthz",
            "readyPath": "/readyz",
            "resources": { "requests": { "cpu": "100m", "memory": "64Mi" }, "limits": { "cpu": "250m", "memory": "128Mi" } },
        },
    })
}

/// Adds `spec.signature` made with `key` over the manifest's payload.
pub fn signed(dir: &Scratch, mut capsule: Value, key: &Key, key_id: &str) -> Value {
    let value = key.sign(dir, &payload_of(dir, &capsule));
    capsule["spec"]["signature"] = json!({ "keyId": key_id, "algorithm": key.algorithm, "value": value });
    capsule
}

/// A fresh Capsule `<prefix>-<suffix>` of the package of that name, 1.0.0,
/// applied and deleted with `ns`: the package name and the manifest.
pub async fn published(client: &Client, ns: &TestNamespace, prefix: &str, class: &str) -> (String, Value) {
    let package = format!("{prefix}-{}", crate::unique_suffix());
    let cap = capsule(&package, &package, "1.0.0", class);
    put(client, ns.owns(&cap)).await;
    (package, cap)
}

/// [`crate::setup`] plus a fresh Capsule of `class` published in it
/// ([`published`], package `<prefix>-<suffix>`): the client, the namespace
/// and the package name.
pub async fn setup_published(prefix: &str, class: &str) -> (Client, TestNamespace, String) {
    let (client, ns) = crate::setup(prefix).await;
    let (package, _) = published(&client, &ns, prefix, class).await;
    (client, ns, package)
}

/// A PolicyBundle that governs only `namespace` (labelled as the tests' own).
pub fn bundle(name: &str, namespace: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["namespaceSelector"] = json!({ "matchLabels": { "kubernetes.io/metadata.name": namespace } });
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
            "metadata": { "name": name, "labels": { TEST_LABEL: "true" } }, "spec": spec })
}

/// Lets the KamachiqProjects of `ns` call planners under `prefixes` (planner
/// URLs come from policy): the PolicyBundle `<namespace>-planners`,
/// reconciled, deleted with the namespace. Applying it again replaces the list.
pub async fn allow_planners(client: &Client, ns: &TestNamespace, prefixes: &[String]) -> Value {
    let doc = bundle(
        &format!("{}-planners", ns.name),
        &ns.name,
        json!({ "projects": { "allowedPlannerUrls": prefixes } }),
    );
    put_policy(client, ns.owns(&doc)).await;
    doc
}

/// An Installation manifest.
pub fn installation(
    namespace: &str,
    name: &str,
    package: &str,
    version: &str,
    region: &str,
    replicas: i32,
) -> Value {
    json!({
        "apiVersion": "somastack.io/v1alpha1",
        "kind": "Installation",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "capsule": { "package": package, "version": version }, "region": region, "replicas": replicas },
    })
}

/// Applies and returns the stored object.
pub async fn put(client: &Client, doc: &Value) -> DynamicObject {
    apply(client, doc)
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", doc["metadata"]["name"]))
}

/// Applies `doc` and returns the API to follow it with.
pub async fn put_api(client: &Client, doc: &Value) -> Api<DynamicObject> {
    put(client, doc).await;
    crate::api_for(client, doc).await
}

/// Applies a manifest that must be refused by the operator's admission
/// webhook `webhook` (e.g. `installations.somastack.io`); returns the message
/// after the API server's prefix, exactly as `kubectl` shows it.
pub async fn denied(client: &Client, doc: &Value, webhook: &str) -> String {
    let name = doc["metadata"]["name"].clone();
    // A field manager of its own: with the tests' usual one, applying a
    // partial manifest would also drop every field that manager set before.
    match crate::apply_as(client, doc, "somastack-tests-refused").await {
        Ok(_) => panic!("{name} was admitted; the webhook {webhook} should have denied it"),
        Err(kube::Error::Api(status)) => {
            let prefix = format!("admission webhook \"{webhook}\" denied the request: ");
            assert_eq!(status.code, 403, "{name}: {status:?}");
            match status.message.strip_prefix(&prefix) {
                Some(rest) => rest.to_string(),
                None => panic!("{name}: not denied by {webhook}: {}", status.message),
            }
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Applies a PolicyBundle and waits until the operator has reconciled it, so
/// the Installations a test creates next are judged with it in place (the
/// operator's caches are eventually consistent; admission closes that gap
/// for real users).
pub async fn put_policy(client: &Client, doc: &Value) -> DynamicObject {
    let stored = put(client, doc).await;
    let api = crate::api_for(client, doc).await;
    let name = doc["metadata"]["name"].as_str().expect("name").to_string();
    let generation = stored.metadata.generation;
    crate::wait_for(
        &format!("PolicyBundle {name} to be reconciled"),
        Duration::from_secs(60),
        || async {
            let obj = api.get(&name).await.ok()?;
            (obj.data["status"]["observedGeneration"] == json!(generation)).then_some(obj)
        },
    )
    .await
}

/// The condition of `type_` in an object's status, if any.
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<Value> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The message of condition `type_`, or "" when absent.
pub fn message(obj: &DynamicObject, type_: &str) -> String {
    condition(obj, type_)
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The condition `type_` of `obj`, asserted to be there with `field` equal
/// to `value`; its message.
pub fn condition_with(obj: &DynamicObject, type_: &str, field: &str, value: &str) -> String {
    let c = condition(obj, type_).unwrap_or_else(|| panic!("no {type_} condition: {}", obj.data["status"]));
    assert_eq!(c[field], value, "{c}");
    c["message"].as_str().unwrap_or_default().to_string()
}

/// Waits until the object's condition `Succeeded` (of a DrDrill or a
/// KamachiqProject) has `status` and `reason`; returns it and the message.
pub async fn wait_succeeded(
    api: &Api<DynamicObject>,
    name: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> (DynamicObject, String) {
    let obj = wait_condition(api, name, "Succeeded", status, Some(reason), timeout).await;
    let msg = message(&obj, "Succeeded");
    (obj, msg)
}

/// Waits until the Installation `name` is refused by policy
/// (`PolicyCompliant=False`, reason `PolicyViolation`); returns it and the message.
pub async fn wait_refused(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
) -> (DynamicObject, String) {
    let obj = wait_condition(
        api,
        name,
        "PolicyCompliant",
        "False",
        Some("PolicyViolation"),
        timeout,
    )
    .await;
    let msg = message(&obj, "PolicyCompliant");
    (obj, msg)
}

/// Waits until the object's condition `type_` has `status` (and `reason`,
/// when given) for its current generation; returns the object.
pub async fn wait_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> DynamicObject {
    let what = format!(
        "{name}: {type_}={status}{}",
        reason.map(|r| format!(" ({r})")).unwrap_or_default()
    );
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(obj) = api.get(name).await {
            last = format!("{}", obj.data["status"]);
            if let Some(c) = condition(&obj, type_) {
                let generation = obj.metadata.generation;
                let fresh = generation.is_none() || c["observedGeneration"] == json!(generation);
                if fresh && c["status"] == status && reason.is_none_or(|r| c["reason"] == r) {
                    return obj;
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last status: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a namespaced object plainly (no apply), for objects tests own.
pub async fn create(client: &Client, doc: &Value) -> DynamicObject {
    let api = crate::api_for(client, doc).await;
    let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
    api.create(&PostParams::default(), &obj).await.expect("created")
}

/// The reference agent's image as the real nodes hold it, pinned by digest
/// (`localhost/somastack-agent@sha256:...`): hack/test.sh builds it, loads it
/// into the real nodes and exports SOMASTACK_AGENT_IMAGE.
pub fn agent_image() -> String {
    std::env::var("SOMASTACK_AGENT_IMAGE").unwrap_or_else(|_| {
        panic!("SOMASTACK_AGENT_IMAGE is not set: run the real-node tests with hack/test.sh (it builds the agent image and loads it into the real nodes)")
    })
}

/// A Capsule of the reference agent (docs/agent.md) that runs on the real
/// nodes: serving on 0.0.0.0:8080 with real health and readiness endpoints,
/// or, as a task, summarizing. `env` adds the agent's own settings (e.g.
/// `AGENT_READY=never`, `AGENT_FAIL=always`): a capsule's failure modes are
/// its configuration.
pub fn agent_capsule(name: &str, package: &str, version: &str, class: &str, env: &[(&str, &str)]) -> Value {
    let mut c = capsule(name, package, version, class);
    c["spec"]["image"] = json!(agent_image());
    let mut vars = vec![json!({ "name": "AGENT_LISTEN", "value": "0.0.0.0:8080" })];
    vars.extend(env.iter().map(|(k, v)| json!({ "name": k, "value": v })));
    c["spec"]["env"] = json!(vars);
    c["spec"]["resources"] = json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "cpu": "250m", "memory": "64Mi" } });
    c
}

/// The label and the taint of the local cluster's real nodes
/// (hack/real-nodes.sh).
pub const REAL_NODE_LABEL: &str = "somastack.io/real-node";
pub const REAL_NODE_TAINT: &str = "node.somastack.io/real";

/// `spec.placement` that puts an Installation's or a project's pods on the
/// real nodes of their region.
pub fn on_real_nodes(mut doc: Value) -> Value {
    doc["spec"]["placement"] = json!({
        "nodeSelector": { REAL_NODE_LABEL: "true" },
        "tolerations": [{ "key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule" }],
    });
    doc
}

/// `kubectl apply --server-side` of `docs` in one file (a List: applied in
/// order, as a GitOps sync or `kubectl apply -f dir/` does).
pub fn apply_together(docs: &[&Value]) -> std::process::Output {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": docs });
    let file = std::env::temp_dir().join(format!("somastack-together-{}.json", crate::unique_suffix()));
    std::fs::write(&file, list.to_string()).unwrap();
    let out = crate::kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    out
}
