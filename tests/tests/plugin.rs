//! `kubectl soma` through the real binary (`kubectl-soma`), against the real
//! control plane and the operator hack/test.sh starts: what a user sees
//! (tables, JSON, exit codes) and what each command leaves in the cluster.
//! Every subcommand is run here at least once; `kubectl soma status -A` is
//! also run through kubectl itself, finding the plugin on PATH.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    Key, Scratch, bundle, capsule, condition, installation, published, put, put_api, put_policy,
    wait_condition,
};
use somastack_tests::users::{REVIEWER_ROLE, tenant, user};
use somastack_tests::{api_for, kubeconfig_path, setup, soma, unique_suffix, wait_for, workspace_binary};

const T: Duration = Duration::from_secs(90);

/// What a run of the plugin gave: exit code, stdout, stderr.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

fn run(args: &[&str]) -> Run {
    let out = soma(args);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A run that must exit 0.
fn ok(args: &[&str]) -> Run {
    let r = run(args);
    assert_eq!(
        r.code,
        0,
        "kubectl soma {}: stdout {} stderr {}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r
}

/// A run that must exit `code`, saying `says` on stderr.
fn fails(args: &[&str], code: i32, says: &str) -> Run {
    let r = run(args);
    assert_eq!(
        r.code,
        code,
        "kubectl soma {}: {} {}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr.contains(says),
        "kubectl soma {}: {}",
        args.join(" "),
        r.stderr
    );
    r
}

/// The row of `kind`/`name` in `status -o json` output.
fn status_row<'a>(rows: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    rows.as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
}

#[tokio::test]
async fn status_shows_health_and_kubectl_finds_the_plugin_on_path() {
    let (client, ns) = setup("soma-status").await;
    let (package, _) = published(&client, &ns, "soma-status", "internal").await;
    let api = put_api(
        &client,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1),
    )
    .await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;

    let rows = ok(&["status", "-n", &ns.name, "-o", "json"]).json();
    let app = status_row(&rows, "Installation", "app").unwrap_or_else(|| panic!("{rows:#}"));
    assert_eq!(app["namespace"], ns.name.as_str());
    assert_eq!(app["health"], "Current", "{app}");
    assert!(app["reason"].as_str().is_some_and(|r| !r.is_empty()), "{app}");
    // Cluster-scoped kinds are listed too, without a namespace.
    let cap = status_row(&rows, "Capsule", &package).unwrap_or_else(|| panic!("{rows:#}"));
    assert!(cap.get("namespace").is_none(), "{cap}");

    let table = ok(&["status", "-n", &ns.name]).stdout;
    let header = table.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["KIND", "NAMESPACE", "NAME", "HEALTH", "REASON", "MESSAGE"]
    );
    assert!(
        table.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.starts_with(&["Installation", ns.name.as_str(), "app", "Current"])
        }),
        "{table}"
    );
    let yaml: Value = serde_saphyr::from_str(&ok(&["status", "-n", &ns.name, "-o", "yaml"]).stdout).unwrap();
    assert_eq!(yaml, rows, "-o yaml is the same value as -o json");

    // kubectl finds kubectl-soma on PATH and runs it as `kubectl soma`.
    let binary = workspace_binary("kubectl-soma");
    let dir = binary.parent().expect("the binary's folder");
    let path = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["soma", "status", "-A"])
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("kubectl is on PATH (hack/build-tools.sh --print)");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.starts_with("KIND "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&ns.name) && l.contains("Installation")),
        "-A lists every namespace: {table}"
    );

    // As kubectl: without -n, the context's namespace; --context picks a context.
    let mut kubeconfig: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig_path()).unwrap()).unwrap();
    let current = kubeconfig["current-context"].as_str().unwrap().to_string();
    for c in kubeconfig["contexts"].as_array_mut().unwrap() {
        if c["name"] == current.as_str() {
            c["context"]["namespace"] = json!(ns.name);
        }
    }
    let dir = Scratch::new("soma-context");
    let file = dir.path("kubeconfig");
    std::fs::write(&file, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    let with_context = |args: &[&str]| {
        std::process::Command::new(&binary)
            .args(args)
            .arg("--kubeconfig")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = with_context(&["status", "--context", &current, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status_row(&rows, "Installation", "app").is_some(), "{rows:#}");
    let out = with_context(&["status", "--context", "no-such-context"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not load the Kubernetes client configuration")
    );

    // Usage errors are exit code 2.
    fails(&["status", "-o", "xml"], 2, "invalid value 'xml'");
    ns.delete().await;
}

/// Verifies `signature` (base64) over `payload` with the public key, with
/// the openssl command line: an independent check of what the plugin signed.
fn openssl_verifies(dir: &Scratch, key: &Key, payload: &[u8], signature: &str) -> bool {
    let (sig, data, public) = (dir.path("sig"), dir.path("data"), dir.path("pub.pem"));
    std::fs::write(
        &sig,
        base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&data, payload).unwrap();
    std::fs::write(&public, &key.public_pem).unwrap();
    let (p, s, d) = (
        public.to_str().unwrap(),
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", p, "-signature", s, d])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn capsules_are_signed_verified_approved_and_rejected() {
    let (client, ns) = setup("soma-capsule").await;
    let dir = Scratch::new("soma-capsule");
    let key = Key::ecdsa(&dir, "publisher");
    let key_id = format!("k-{}", unique_suffix());
    let package = format!("soma-cap-{}", unique_suffix());
    let manifest = capsule(&package, &package, "1.0.0", "internal");
    let file = dir.path("capsule.json");
    std::fs::write(&file, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let file = file.to_str().unwrap();

    // payload: the documented bytes.
    let payload = ok(&["capsule", "payload", "-f", file]).stdout;
    assert_eq!(
        payload,
        format!(
            "somastack.io/capsule-signature/v1\npublisher:test-pub\npackage:{package}\nversion:1.0.0\nimage:{image}\ndigest:{digest}\ncapabilities:\ndataClassification:internal\n",
            image = manifest["spec"]["image"].as_str().unwrap(),
            digest = manifest["spec"]["image"]
                .as_str()
                .unwrap()
                .split_once('@')
                .unwrap()
                .1,
        )
    );

    // sign: the manifest with spec.signature, which openssl accepts.
    let private = key.private.to_str().unwrap();
    let signed = ok(&[
        "capsule", "sign", "-f", file, "--key", private, "--key-id", &key_id, "-o", "json",
    ])
    .json();
    assert_eq!(signed["spec"]["signature"]["keyId"], key_id.as_str());
    assert_eq!(signed["spec"]["signature"]["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(
        signed["metadata"], manifest["metadata"],
        "the rest of the manifest is kept"
    );
    let value = signed["spec"]["signature"]["value"].as_str().unwrap();
    assert!(openssl_verifies(&dir, &key, payload.as_bytes(), value));
    let signed_file = dir.path("signed.json");
    std::fs::write(&signed_file, serde_json::to_vec(&signed).unwrap()).unwrap();
    let signed_file = signed_file.to_str().unwrap();
    let public = dir.path("publisher.pub");
    std::fs::write(&public, &key.public_pem).unwrap();
    let public = public.to_str().unwrap();

    // verify a file: 0 when it verifies, 3 when it does not.
    let good = ok(&[
        "capsule",
        "verify",
        "-f",
        signed_file,
        "--public-key",
        public,
        "-o",
        "json",
    ])
    .json();
    assert_eq!(
        (good["verified"].as_bool(), good["reason"].as_str()),
        (Some(true), Some("SignatureValid"))
    );
    let mut tampered = signed.clone();
    tampered["spec"]["capabilities"] = json!(["shell"]);
    let tampered_file = dir.path("tampered.json");
    std::fs::write(&tampered_file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let bad = fails(
        &[
            "capsule",
            "verify",
            "-f",
            tampered_file.to_str().unwrap(),
            "--public-key",
            public,
        ],
        3,
        "is not verified (SignatureInvalid)",
    );
    assert!(bad.stdout.contains("SignatureInvalid: key"), "{}", bad.stdout);

    // verify a Capsule in the cluster, with the keys PolicyBundles trust.
    let trust = bundle(
        &format!("{}-trust", ns.name),
        &ns.name,
        json!({ "trust": { "publishers": [{ "name": "test-pub", "keys": [{ "id": key_id, "publicKey": key.public_pem }] }] } }),
    );
    put_policy(&client, ns.owns(&trust)).await;
    put(&client, ns.owns(&signed)).await;
    let found = ok(&["capsule", "verify", &package]).stdout;
    assert!(
        found.contains("SignatureValid") && found.contains(&format!("{}-trust", ns.name)),
        "{found}"
    );
    let unsigned = format!("{package}-unsigned");
    put(
        &client,
        ns.owns(&capsule(&unsigned, &unsigned, "1.0.0", "internal")),
    )
    .await;
    fails(&["capsule", "verify", &unsigned], 3, "is not verified (Unsigned)");
    fails(
        &["capsule", "verify", "no-such-capsule-x"],
        1,
        "capsule no-such-capsule-x not found",
    );

    // approve and reject, as a reviewer (the tests' admin submitted it).
    let reviewer = user(&client, "soma-reviewer", &[REVIEWER_ROLE]).await;
    let as_reviewer = ["--as", reviewer.name.as_str()];
    let api = api_for(&client, &signed).await;
    let approved = ok(&[
        &[
            "capsule", "approve", &package, "--reason", "scanned", "-o", "json",
        ][..],
        &as_reviewer,
    ]
    .concat())
    .json();
    let digest = approved["payloadDigest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{approved}");
    assert_eq!(
        approved["reviewer"],
        reviewer.name.as_str(),
        "stamped by admission"
    );
    let obj = wait_condition(&api, &package, "Approved", "True", Some("Approved"), T).await;
    assert_eq!(obj.data["status"]["review"]["payloadDigest"], digest.as_str());
    assert_eq!(obj.data["status"]["review"]["reason"], "scanned");
    assert_eq!(obj.data["status"]["payloadDigest"], digest.as_str());

    let rejected = ok(&[&["capsule", "reject", &package][..], &as_reviewer].concat()).stdout;
    assert!(
        rejected.starts_with(&format!(
            "capsule.somastack.io/{package} rejected (payload {digest}"
        )),
        "{rejected}"
    );
    let obj = wait_condition(&api, &package, "Approved", "False", Some("Rejected"), T).await;
    assert_eq!(obj.data["status"]["review"]["decision"], "reject");
    assert!(
        obj.data["status"]["review"].get("reason").is_none(),
        "the old reason is gone"
    );
    // The submitter may not review: admission says so, the plugin exits 1.
    fails(&["capsule", "approve", &package], 1, "may not review");
    ns.delete().await;
}

#[tokio::test]
async fn installation_history_diff_and_rollback() {
    let (client, ns) = setup("soma-inst").await;
    let (package, _) = published(&client, &ns, "soma-inst", "internal").await;
    put(
        &client,
        ns.owns(&capsule(&format!("{package}-v2"), &package, "1.1.0", "internal")),
    )
    .await;
    let mut inst = installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1);
    let api = put_api(&client, &inst).await;
    let revision = |n: i64| {
        let api = api.clone();
        async move {
            wait_for(&format!("app at revision {n}, Ready"), T, || async {
                let o = api.get("app").await.ok()?;
                (o.data["status"]["currentRevision"] == n && condition(&o, "Ready")?["status"] == "True")
                    .then_some(o)
            })
            .await
        }
    };
    revision(1).await;
    inst["spec"]["capsule"]["version"] = json!("1.1.0");
    put(&client, &inst).await;
    revision(2).await;

    let history = ok(&["installation", "history", "app", "-n", &ns.name, "-o", "json"]).json();
    let rows: Vec<(i64, bool, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["current"].as_bool().unwrap(),
                r["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rows, [(1, false, "1.0.0".into()), (2, true, "1.1.0".into())]);
    // No gate asked for: no revision carries a gate's outcome.
    assert!(
        history.as_array().unwrap().iter().all(|r| r["gate"].is_null()),
        "{history:#}"
    );
    let table = ok(&["installation", "history", "app", "-n", &ns.name]).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0]
            .split_whitespace()
            .eq(["REVISION", "CURRENT", "CAPSULE", "REPLICAS", "GATE", "IMAGE"]),
        "{table}"
    );
    let gate_column = lines[0].find("GATE").unwrap();
    assert_eq!(
        lines[2]
            .get(gate_column..)
            .and_then(|c| c.split_whitespace().next()),
        Some("-"),
        "{table}"
    );

    // The gate of an Installation without one: no record (JSON null), exit
    // 0; an override of it is refused and writes nothing.
    let gate = ok(&["installation", "gate", "app", "-n", &ns.name, "-o", "json"]);
    assert_eq!(gate.json(), Value::Null);
    let gate = ok(&["installation", "gate", "app", "-n", &ns.name]).stdout;
    assert!(gate.contains("has no regression gate record"), "{gate}");
    fails(
        &[
            "installation",
            "gate",
            "app",
            "--override",
            "2",
            "--reason",
            "nothing was rejected",
            "-n",
            &ns.name,
        ],
        1,
        &format!(
            "installation {}/app has no regression gate record: nothing to override",
            ns.name
        ),
    );
    let after = api.get("app").await.unwrap();
    assert!(
        after
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.keys().any(|k| k.starts_with("somastack.io/gate-override"))),
        "{:?}",
        after.metadata.annotations
    );
    fails(
        &["installation", "gate", "app", "--override", "2", "-n", &ns.name],
        2,
        "--reason",
    );
    fails(&["installation", "gate", "nope", "-n", &ns.name], 1, "not found");

    let diff = ok(&[
        "installation",
        "diff",
        "app",
        "1",
        "2",
        "-n",
        &ns.name,
        "-o",
        "json",
    ])
    .json();
    let changed: Vec<&str> = diff
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        changed.contains(&"spec.capsule.version") && changed.contains(&"image"),
        "{diff:#}"
    );
    let version = diff
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "spec.capsule.version")
        .unwrap();
    assert_eq!(
        (version["from"].as_str(), version["to"].as_str()),
        (Some("1.0.0"), Some("1.1.0"))
    );
    let table = ok(&["installation", "diff", "app", "1", "2", "-n", &ns.name]).stdout;
    assert!(
        table.starts_with("FIELD") && table.contains("REVISION 1") && table.contains("1.0.0"),
        "{table}"
    );

    let out = ok(&["installation", "rollback", "app", "--to", "1", "-n", &ns.name]).stdout;
    assert!(out.contains("rolled back from revision 2 to revision 1"), "{out}");
    let back = revision(3).await;
    assert_eq!(back.data["spec"]["capsule"]["version"], "1.0.0");
    assert_eq!(back.data["status"]["lastRollback"]["trigger"], "Manual");

    fails(
        &["installation", "rollback", "app", "--to", "99", "-n", &ns.name],
        1,
        &format!("revision 99 of installation {}/app not found", ns.name),
    );
    fails(
        &["installation", "history", "nope", "-n", &ns.name],
        1,
        "not found",
    );
    fails(&["installation", "rollback", "app", "-n", &ns.name], 2, "--to");
    ns.delete().await;
}

#[tokio::test]
async fn a_drill_runs_again_on_demand_and_is_summarized() {
    let (client, ns) = setup("soma-drill").await;
    let (package, _) = published(&client, &ns, "soma-drill", "internal").await;
    let api = put_api(
        &client,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 2),
    )
    .await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;
    let drill = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
        "metadata": { "name": "pods", "namespace": ns.name },
        "spec": { "installationRef": { "name": "app" }, "scenario": "PodLoss", "objectives": { "rtoSeconds": 60 } } });
    let drills = put_api(&client, &drill).await;
    let runs = |n: usize| {
        let drills = drills.clone();
        async move {
            wait_for(&format!("drill pods: {n} runs finished"), T, || async {
                let s = drills.get("pods").await.ok()?.data["status"].clone();
                (s["run"].is_null() && s["history"].as_array().map(Vec::len) == Some(n)).then_some(s)
            })
            .await
        }
    };
    runs(1).await;

    // A one-off drill that ran runs again when asked, once.
    let asked = ok(&["drill", "run", "pods", "-n", &ns.name, "-o", "json"]).json();
    let request = asked["request"].as_str().unwrap().to_string();
    let status = runs(2).await;
    assert_eq!(status["runRequest"], request.as_str());
    assert_eq!(status["history"][0]["verdict"], "Pass", "{status:#}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = drills.get("pods").await.unwrap().data["status"].clone();
    assert_eq!(
        still["history"].as_array().map(Vec::len),
        Some(2),
        "the request is honoured once"
    );
    let table = ok(&["drill", "run", "pods", "-n", &ns.name]).stdout;
    assert!(
        table.starts_with("drdrill.somastack.io/pods run requested ("),
        "{table}"
    );
    runs(3).await;

    let summary = ok(&["drill", "summary", "-n", &ns.name, "-o", "json"]).json();
    assert_eq!(summary[0]["installation"], "app");
    assert_eq!(
        (summary[0]["runs"].as_u64(), summary[0]["passRate"].as_f64()),
        (Some(3), Some(1.0))
    );
    let table = ok(&["drill", "summary", "-n", &ns.name]).stdout;
    assert!(
        table.starts_with("NAMESPACE") && table.contains("MEDIAN-RTO"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("app") && l.contains("100%")),
        "{table}"
    );
    fails(
        &["drill", "run", "nope", "-n", &ns.name],
        1,
        &format!("drdrill {}/nope not found", ns.name),
    );

    // Asking for a run is asking for the drill: a tenant who may edit but
    // not disrupt cannot run the platform's region-wide drill (suspended
    // and scheduled far off here, so nothing is tainted meanwhile).
    let region = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
        "metadata": { "name": "region", "namespace": ns.name },
        "spec": { "installationRef": { "name": "app" }, "scenario": "RegionOutage", "scope": "Region",
                  "schedule": "0 3 1 1 *", "suspend": true, "objectives": { "rtoSeconds": 60 } } });
    put(&client, &region).await;
    let tenant = tenant(&client, &format!("soma-tenant-{}", unique_suffix()), &ns.name).await;
    fails(
        &["drill", "run", "region", "-n", &ns.name, "--as", &tenant.name],
        1,
        "may not run DrDrill region as written: scope: Region",
    );
    ok(&["drill", "run", "pods", "-n", &ns.name, "--as", &tenant.name]);
    ns.delete().await;
}

#[tokio::test]
async fn projects_are_approved_retried_and_summarized() {
    let (client, ns) = setup("soma-kp").await;
    let (package, _) = published(&client, &ns, "agent", "internal").await;
    let task = |name: &str, input: &str| json!({ "name": name, "capsule": { "package": package, "version": "1.0.0" }, "input": input, "retries": 0 });
    let project = |name: &str, spec: Value| {
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
                "metadata": { "name": name, "namespace": ns.name }, "spec": spec })
    };
    let gated = project(
        "gated",
        json!({ "goal": "g", "approval": { "required": true }, "tasks": [task("a", "a")] }),
    );
    let api = put_api(&client, &gated).await;
    let waiting = wait_condition(&api, "gated", "Approved", "False", Some("AwaitingApproval"), T).await;
    let digest = waiting.data["status"]["planDigest"].as_str().unwrap().to_string();
    let rows = ok(&["status", "-n", &ns.name, "-o", "json"]).json();
    let row = status_row(&rows, "KamachiqProject", "gated").unwrap_or_else(|| panic!("{rows:#}"));
    assert_eq!(row["health"], "AwaitingApproval", "{row}");

    let reviewer = user(&client, "soma-kp-reviewer", &[REVIEWER_ROLE]).await;
    let approved = ok(&[
        "project",
        "approve",
        "gated",
        "-n",
        &ns.name,
        "--as",
        &reviewer.name,
        "-o",
        "json",
    ])
    .json();
    assert_eq!(approved["planDigest"], digest.as_str());
    assert_eq!(approved["reviewer"], reviewer.name.as_str());
    wait_condition(&api, "gated", "Succeeded", "True", Some("AllTasksSucceeded"), T).await;
    // No moderator governs it (under KWOK a moderation Job has no answer,
    // so a moderated project could not have succeeded): nothing refused,
    // exit 0.
    let moderation = ok(&["project", "moderation", "gated", "-n", &ns.name, "-o", "json"]).json();
    assert_eq!(
        moderation,
        json!({ "project": "gated", "namespace": ns.name, "moderators": [], "refusal": null, "decisions": [] })
    );
    let table = ok(&["project", "moderation", "gated", "-n", &ns.name]).stdout;
    assert!(table.contains("No moderation Jobs."), "{table}");

    // A task that fails its first attempt, never retried: the project fails
    // until its failed tasks run again.
    let flaky = project(
        "flaky",
        json!({ "goal": "g", "tasks": [task("f", "kwok:fail-first")] }),
    );
    put(&client, &flaky).await;
    wait_condition(&api, "flaky", "Succeeded", "False", Some("TasksFailed"), T).await;
    let retry = ok(&["project", "retry-failed", "flaky", "-n", &ns.name, "-o", "json"]).json();
    let done = wait_condition(&api, "flaky", "Succeeded", "True", Some("AllTasksSucceeded"), T).await;
    assert_eq!(done.data["status"]["retryToken"], retry["round"]);

    let summary = ok(&["project", "summary", "-n", &ns.name, "-o", "json"]).json();
    assert_eq!(summary["totals"]["projects"], 2);
    assert_eq!(summary["totals"]["phases"]["Succeeded"], 2);
    let flaky_row = summary["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky_row["attempts"], 2, "{flaky_row}");
    let table = ok(&["project", "summary", "-n", &ns.name]).stdout;
    assert!(table.contains("projects: 2 (Succeeded 2)"), "{table}");

    fails(&["project", "approve", "nope", "-n", &ns.name], 1, "not found");
    fails(&["project", "moderation", "nope", "-n", &ns.name], 1, "not found");
    ns.delete().await;
}

#[tokio::test]
async fn the_kill_switch_and_the_policy_of_a_namespace() {
    let (client, ns) = setup("soma-ks").await;
    let (package, _) = published(&client, &ns, "soma-ks", "internal").await;
    let name = format!("{}-policy", ns.name);
    let policy = bundle(
        &name,
        &ns.name,
        json!({ "limits": { "maxReplicas": 3 }, "residency": { "rules": [
            { "dataClassification": "internal", "allowedRegions": ["eu-west-1", "eu-central-1"] } ] } }),
    );
    put_policy(&client, ns.owns(&policy)).await;
    let api = put_api(
        &client,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1),
    )
    .await;
    wait_condition(&api, "app", "Ready", "True", None, T).await;

    // policy explain: each rule with the bundle it comes from.
    let explained = ok(&["policy", "explain", &ns.name, "-o", "json"]).json();
    let bundles: Vec<&str> = explained["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(bundles.contains(&name.as_str()), "{explained:#}");
    let rule = |e: &Value, r: &str| {
        e["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["rule"] == r && x["bundles"].as_array().is_some_and(|b| b.contains(&json!(name))))
            .cloned()
    };
    assert_eq!(
        rule(&explained, "maxReplicas").map(|r| r["value"].clone()),
        Some(json!("3"))
    );
    assert_eq!(
        rule(&explained, "residency/internal").map(|r| r["value"].clone()),
        Some(json!("eu-central-1, eu-west-1"))
    );
    let table = ok(&["policy", "explain", &ns.name]).stdout;
    assert!(table.contains("PolicyBundle") && table.contains(&name), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["maxReplicas", "3", "Enforce", name.as_str()]),
        "{table}"
    );

    // killswitch engage: the Installation stops, and says why.
    let engaged = ok(&[
        "killswitch",
        "engage",
        &name,
        "--reason",
        "incident 42",
        "-o",
        "json",
    ])
    .json();
    assert_eq!(
        (engaged["engaged"].as_bool(), engaged["reason"].as_str()),
        (Some(true), Some("incident 42"))
    );
    let stopped = wait_condition(&api, "app", "Ready", "False", Some("KillSwitchEngaged"), T).await;
    assert!(
        stopped.data["status"]["conditions"]
            .to_string()
            .contains("incident 42")
    );
    let rows = ok(&["status", "-n", &ns.name, "-o", "json"]).json();
    let row = status_row(&rows, "Installation", "app").unwrap_or_else(|| panic!("{rows:#}"));
    assert_ne!(row["health"], "Current", "{row}");
    let explained = ok(&["policy", "explain", &ns.name, "-o", "json"]).json();
    assert_eq!(
        rule(&explained, "killSwitch").map(|r| r["value"].clone()),
        Some(json!("engaged: incident 42"))
    );

    let released = ok(&["killswitch", "release", &name, "--reason", "resolved"]).stdout;
    assert_eq!(
        released,
        format!("policybundle.somastack.io/{name} kill switch released: resolved\n")
    );
    wait_condition(&api, "app", "Ready", "True", None, T).await;

    fails(&["killswitch", "engage", &name], 2, "--reason");
    fails(
        &["killswitch", "engage", "no-such-bundle-x", "--reason", "r"],
        1,
        "policybundle no-such-bundle-x not found",
    );
    fails(
        &["policy", "explain", "no-such-namespace-x"],
        1,
        "namespace no-such-namespace-x not found",
    );
    ns.delete().await;
}
