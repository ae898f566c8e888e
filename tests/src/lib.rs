//! Helpers for the integration tests. Every test talks to the real local
//! control plane started by `hack/cluster-up.sh` (or to the cluster named by
//! `$KUBECONFIG`); nothing here imitates the API server.

pub mod fixtures;
pub mod http;
pub mod process;
pub mod real;
pub mod users;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, Config};
use serde_json::Value;

/// Field manager of everything the tests apply.
pub const TEST_MANAGER: &str = "somastack-tests";
/// Label (`true`) on every namespace and every Capsule and PolicyBundle the
/// tests create, so hack/test.sh can sweep what an interrupted run left.
pub const TEST_LABEL: &str = "somastack.io/test";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The kubeconfig the tests use: `$KUBECONFIG`, else the local cluster's.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".local/kubeconfig"),
    }
}

/// A client for the test cluster. Panics with what to do when there is none.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no cluster to test against ({}: {e}); start one with hack/cluster-up.sh or run hack/test.sh",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

/// What nearly every test starts with: a client for the test cluster
/// ([`client`]) and a namespace of its own named after `prefix`
/// ([`TestNamespace::create`]).
pub async fn setup(prefix: &str) -> (Client, TestNamespace) {
    let client = client().await;
    let ns = TestNamespace::create(&client, prefix).await;
    (client, ns)
}

/// A client acting as `user` in `groups`: the test cluster's admin
/// impersonating them (`kubectl --as USER --as-group GROUP`), so the API
/// server authorizes, and webhooks see, that user.
pub async fn client_as(user: &str, groups: &[&str]) -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).expect("kubeconfig");
    let mut doc = serde_json::to_value(&kubeconfig).expect("kubeconfig serializes");
    if let Some(users) = doc["users"].as_array_mut() {
        for u in users {
            u["user"]["as"] = user.into();
            u["user"]["as-groups"] = groups.into();
        }
    }
    let kubeconfig: Kubeconfig = serde_json::from_value(doc).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

/// The identity an example file is applied as: its `# kubectl-as: USER GROUP...` line.
pub fn example_identity(text: &str) -> Option<(String, Vec<String>)> {
    let line = text.lines().find_map(|l| l.strip_prefix("# kubectl-as: "))?;
    let mut words = line.split_whitespace().map(str::to_string);
    Some((words.next()?, words.collect()))
}

/// Splits a multi-document YAML stream into JSON objects (empty documents dropped).
pub fn parse_docs(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    docs.into_iter().filter(Value::is_object).collect()
}

pub fn read_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_docs(&text)
}

/// The API of a manifest's kind, found through discovery.
pub async fn api_for(client: &Client, doc: &Value) -> Api<DynamicObject> {
    let api_version = doc["apiVersion"].as_str().expect("apiVersion");
    let kind = doc["kind"].as_str().expect("kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .expect("kind is served");
    match (&caps.scope, doc["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    }
}

/// Server-side applies one manifest and returns what the server stored.
pub async fn apply(client: &Client, doc: &Value) -> Result<DynamicObject, kube::Error> {
    apply_as(client, doc, TEST_MANAGER).await
}

/// Server-side applies one manifest as field manager `manager`.
pub async fn apply_as(client: &Client, doc: &Value, manager: &str) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, doc).await;
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    api.patch(name, &PatchParams::apply(manager).force(), &Patch::Apply(doc))
        .await
}

/// Creates a manifest with `dryRun=All`: the API server validates it fully
/// (schema, CEL, admission) and stores nothing.
pub async fn create_dry_run(client: &Client, doc: &Value) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, doc).await;
    let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("manifest is an object");
    let params = PostParams {
        dry_run: true,
        field_manager: Some(TEST_MANAGER.into()),
    };
    api.create(&params, &obj).await
}

/// True when every field of `want` is in `have` with the same value
/// (objects compared key by key, arrays element by element).
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv)))
        }
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (a, b) => a == b,
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after
/// `timeout` saying what was awaited. The timeout only bounds a test that
/// would otherwise hang; it is not a speed claim.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A short suffix that differs between test runs and between calls.
pub fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{n}", (nanos ^ std::process::id()) & 0xfffff)
}

/// A namespace of its own for one test, labelled for sweeping, and the
/// cluster-scoped objects made for that test ([`TestNamespace::owns`]).
/// [`TestNamespace::delete`] deletes them all; when a test panics before
/// that, dropping the guard deletes them instead.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    /// Cluster-scoped objects deleted with the namespace: (apiVersion, kind, name).
    owned: Mutex<Vec<(String, String, String)>>,
    /// Cleared by `delete`: then nothing is left for `Drop` to do.
    armed: bool,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("t-{prefix}-{}", unique_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { TEST_LABEL: "true" } }
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        Self {
            name,
            client: client.clone(),
            owned: Mutex::new(Vec::new()),
            armed: true,
        }
    }

    /// Deletes `doc` with the namespace; returns it, to apply it in the same
    /// breath. A cluster-scoped object (a Capsule, a PolicyBundle) is
    /// recorded for that; an object in this namespace goes with it anyway.
    pub fn owns<'a>(&self, doc: &'a Value) -> &'a Value {
        let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
        if let Some(namespace) = doc["metadata"].get("namespace") {
            assert_eq!(
                namespace.as_str(),
                Some(self.name.as_str()),
                "{} is in another namespace than {}",
                doc["metadata"]["name"],
                self.name
            );
            return doc;
        }
        let entry = (
            field(&doc["apiVersion"]),
            field(&doc["kind"]),
            field(&doc["metadata"]["name"]),
        );
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
        doc
    }

    /// Deletes the namespace (and so everything in it) and the objects it owns.
    pub async fn delete(mut self) {
        self.armed = false;
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
        let owned = std::mem::take(self.owned.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (api_version, kind, name) in owned {
            let doc = serde_json::json!({ "apiVersion": api_version, "kind": kind });
            let _ = api_for(&self.client, &doc)
                .await
                .delete(&name, &DeleteParams::default())
                .await;
        }
    }
}

impl Drop for TestNamespace {
    /// The test ended without `delete` (it panicked): delete everything as
    /// hack/test.sh's sweep does. Drop cannot await, so this runs kubectl,
    /// which returns once the deletions are accepted (`--wait=false`).
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut targets = vec![format!("namespace/{}", self.name)];
        let owned = self.owned.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (api_version, kind, name) in owned.iter() {
            let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or_default();
            targets.push(format!("{}.{group}/{name}", kind.to_lowercase()));
        }
        let _ = kubectl_command()
            .arg("delete")
            .args(&targets)
            .args(["--wait=false", "--ignore-not-found"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Path of a binary of this workspace; the test command builds them first
/// (`cargo build --bins`), or `SOMASTACK_<NAME>_BIN` names one.
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!("SOMASTACK_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --bins` (hack/test.sh does)",
        path.display()
    );
    path
}

/// Path of a checker `hack/build-checkers.sh` builds (promtool, verdicts),
/// found on PATH as the tests run it; the panic says how to get it.
pub fn checker(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on PATH: build it with hack/build-checkers.sh and put \
                 `hack/build-checkers.sh --print` on PATH (hack/test.sh does)"
            )
        })
}

/// A `kubectl` command against the test cluster.
fn kubectl_command() -> std::process::Command {
    let mut command = std::process::Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig_path());
    command
}

/// `kubectl` against the test cluster, as a user would run it.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    kubectl_command()
        .args(args)
        .output()
        .expect("kubectl is on PATH (hack/test.sh puts the built one there)")
}

/// Asserts that a command succeeded, naming `what` and its stderr when it
/// did not; its stdout.
pub fn success_stdout(what: &str, out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The kubectl plugin against the test cluster, as a user runs it:
/// `kubectl-soma <args> --kubeconfig <the tests' kubeconfig>`.
pub fn soma(args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_binary("kubectl-soma"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .output()
        .expect("kubectl-soma runs (cargo build --bins first)")
}

/// [`soma`] that must succeed; what it printed.
pub fn soma_ok(args: &[&str]) -> String {
    let what = format!("kubectl soma {}", args.join(" "));
    String::from_utf8_lossy(&success_stdout(&what, soma(args))).into_owned()
}

/// Whether an Event with `reason` was recorded in `namespace`, as
/// `kubectl get events` shows it.
pub fn event_recorded(namespace: &str, reason: &str) -> bool {
    let selector = format!("reason={reason}");
    let out = kubectl(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        &selector,
        "-o",
        "name",
    ]);
    out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Waits until an Event with `reason` is recorded in `namespace`
/// ([`event_recorded`]).
pub async fn wait_event(namespace: &str, reason: &str, timeout: Duration) {
    wait_for(&format!("a {reason} Event in {namespace}"), timeout, || async {
        event_recorded(namespace, reason).then_some(())
    })
    .await
}

/// Port of the /metrics, /healthz and /readyz of the operator hack/test.sh
/// starts: from `SOMASTACK_METRICS_URL`, else the default of hack/lib.sh.
pub fn metrics_port() -> u16 {
    std::env::var("SOMASTACK_METRICS_URL")
        .ok()
        .and_then(|u| {
            u.rsplit_once(':')
                .and_then(|(_, p)| p.split('/').next()?.parse().ok())
        })
        .unwrap_or(16490)
}

/// The namespace of the chart's release hack/test.sh installs for its
/// operator (hack/lib.sh: OPERATOR_NAMESPACE).
pub fn operator_namespace() -> String {
    std::env::var("SOMASTACK_OPERATOR_NAMESPACE").unwrap_or_else(|_| "somastack-system".into())
}

/// The value of one series (`name{labels}` exactly as exposed) on the
/// /metrics of the operator hack/test.sh starts; 0 when it has none yet.
pub async fn metric(series: &str) -> f64 {
    let (code, body) = http_get(metrics_port(), "/metrics")
        .await
        .unwrap_or_else(|| panic!("the operator serves /metrics on port {}", metrics_port()));
    assert_eq!(code, 200, "{body}");
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A loopback port free at the time of the call, for a process a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET http://127.0.0.1:{port}{path}` with HTTP/1.0; the status code and
/// body, or `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(([127, 0, 0, 1], port).into(), "GET", path, None)
        .await
        .ok()
}

/// One HTTP/1.0 request to `addr` (a JSON body when given); the status code
/// and body, or why nothing answered.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json: Option<&serde_json::Value>,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if json.is_some() {
            request += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        request += "\r\n";
        request += &body;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status code")?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())?
}

/// Starts the operator binary (`run` and `args`) against the test cluster
/// with the test kubeconfig, output discarded, killed when dropped.
pub fn spawn_operator(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(workspace_binary("somastack-operator"))
        .arg("run")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the operator starts (cargo build --bins first)")
}

/// Starts an extra operator without webhooks that acts only on the DrDrills
/// and KamachiqProjects the two label selectors select (the suite's operator
/// skips those labelled with a shard), for tests that kill and restart one.
pub fn spawn_shard_operator(drill_selector: &str, project_selector: &str) -> tokio::process::Child {
    spawn_operator(&[
        "--no-webhook",
        "--metrics-addr",
        "127.0.0.1:0",
        "--drill-selector",
        drill_selector,
        "--project-selector",
        project_selector,
    ])
}
