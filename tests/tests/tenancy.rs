//! Multi-tenant safety, against the real control plane and the operator
//! hack/test.sh starts (webhooks on, the chart's RBAC). Each test reproduces
//! one way a careless or hostile user made the operator act beyond their
//! authority or fail without a word, as a tenant with the built-in `edit`
//! role in one namespace (or a publisher, or an admin) would try it, and
//! checks what that user sees now: a refusal naming the rule, or a status
//! and an Event.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use somastack_tests::fixtures::{
    Key, Scratch, allow_planners, bundle, capsule, condition, denied, image, installation, message,
    published, put, put_api, put_policy, setup_published, signed, wait_condition, wait_succeeded,
};
use somastack_tests::http::{Reply, Server};
use somastack_tests::users::{PUBLISHER_ROLE, User, tenant, user};
use somastack_tests::{
    TestNamespace, api_for, apply_as, client, create_dry_run, kubectl, setup, unique_suffix, wait_event,
    wait_for,
};

const T: Duration = Duration::from_secs(90);
const DRILLS: &str = "drill-authority.somastack.io";
const PROJECTS: &str = "project-policy.somastack.io";
const CAPSULES: &str = "capsule-versions.somastack.io";
const BUNDLES: &str = "policybundles.somastack.io";
const INSTALLATIONS: &str = "installations.somastack.io";

/// A namespace of its own and a tenant there (a fresh user with `edit` in it).
async fn tenant_namespace(admin: &Client, prefix: &str) -> (TestNamespace, User) {
    let ns = TestNamespace::create(admin, prefix).await;
    let tenant = tenant(admin, &format!("tenant-{}", unique_suffix()), &ns.name).await;
    (ns, tenant)
}

fn drill(ns: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["installationRef"] = json!({ "name": "app" });
    spec["scenario"] = spec.get("scenario").cloned().unwrap_or(json!("RegionOutage"));
    spec["objectives"] = json!({ "rtoSeconds": 120 });
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": { "name": name, "namespace": ns }, "spec": spec })
}

fn project(ns: &str, name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "KamachiqProject",
            "metadata": { "name": name, "namespace": ns }, "spec": spec })
}

/// A project planned by the planner at `url`, with agent `package` 1.0.0.
fn planned(ns: &str, name: &str, url: &str, package: &str) -> Value {
    project(
        ns,
        name,
        json!({ "goal": "write the brief",
                "planner": { "url": url, "agent": { "package": package, "version": "1.0.0" } } }),
    )
}

/// What a user is shown in `ns`: `msg` (a status message) and, once an
/// Event `reason` is recorded there, the messages of every Event.
async fn shown_with_event(ns: &str, reason: &str, msg: String) -> Vec<String> {
    wait_event(ns, reason, T).await;
    let mut shown = event_messages(ns);
    shown.push(msg);
    shown
}

/// The messages of the Events recorded in `ns`, as `kubectl get events` has them.
fn event_messages(ns: &str) -> Vec<String> {
    let out = kubectl(&["get", "events", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

/// A plan answer from a planner.
fn plan_answer(tasks: Value) -> Reply {
    Reply::json(
        200,
        &json!({ "apiVersion": somastack_crds::planner::PLANNER_API_VERSION, "tasks": tasks }),
    )
}

#[tokio::test]
async fn a_tenant_cannot_take_a_region_down_or_run_drills_beyond_the_tenant_bounds() {
    let admin = client().await;
    let (ns, tenant) = tenant_namespace(&admin, "tn-drill").await;

    // What the tenant tried: a region-wide outage (every tenant's pods in
    // eu-west-1 evicted), a day-long outage, an outage every minute.
    for (name, spec, expect) in [
        (
            "region",
            json!({ "scope": "Region", "targetRegion": "eu-west-1" }),
            "scope: Region taints every node of a region NoExecute, evicting every tenant's pods there",
        ),
        (
            "long",
            json!({ "timeoutSeconds": 86400 }),
            "timeoutSeconds 86400 is above 1800",
        ),
        (
            "frequent",
            json!({ "schedule": "* * * * *" }),
            "schedule \"* * * * *\" runs 1 min apart, more often than every 60 minutes",
        ),
    ] {
        let msg = denied(&tenant.client, &drill(&ns.name, name, spec), DRILLS).await;
        assert!(
            msg.starts_with(&format!(
                "user {} may not run DrDrill {name} as written: ",
                tenant.name
            )),
            "{msg}"
        );
        assert!(msg.contains(expect), "{msg}");
        assert!(
            msg.contains("; that needs the RBAC verb 'disrupt' on drdrills.somastack.io in namespace"),
            "{msg}"
        );
    }
    let nodes: Vec<Node> = Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let tainted_by_tenant = nodes.iter().any(|n| {
        n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == "somastack.io/drill-outage" && t.value.as_deref().unwrap_or("").is_empty())
        })
    });
    assert!(!tainted_by_tenant);

    // Within the tenant bounds the tenant may drill its own Installation;
    // the webhook records who asked, and the tenant cannot forge it.
    let ok = drill(
        &ns.name,
        "weekly",
        json!({ "scope": "Installation", "schedule": "0 3 * * 1", "suspend": true }),
    );
    let stored = apply_as(&tenant.client, &ok, "tenant").await.expect("admitted");
    let stamp = |o: &DynamicObject| {
        o.annotations()
            .get("drills.somastack.io/requested-by")
            .cloned()
            .unwrap_or_default()
    };
    let recorded: Value = serde_json::from_str(&stamp(&stored)).expect("a requester is recorded");
    assert_eq!(recorded["user"], tenant.name.as_str());
    let mut forged = ok.clone();
    forged["metadata"]["annotations"] = json!({ "drills.somastack.io/requested-by": r#"{"user":"kubernetes-admin","groups":["system:masters"]}"# });
    let after = apply_as(&tenant.client, &forged, "tenant")
        .await
        .expect("admitted");
    assert_eq!(stamp(&after), stamp(&stored), "the requester cannot be forged");

    // A platform admin may (suspended, so nothing is taken down here).
    let platform = drill(
        &ns.name,
        "platform-region",
        json!({ "scope": "Region", "targetRegion": "ap-south-1", "suspend": true }),
    );
    let stored = put(&admin, &platform).await;
    assert!(!stamp(&stored).is_empty());
    ns.delete().await;
}

#[tokio::test]
async fn planner_urls_come_from_policy_and_their_answers_are_not_echoed() {
    let admin = client().await;
    let (ns, tenant) = tenant_namespace(&admin, "tn-ssrf").await;
    // A service inside the platform that a tenant should never reach
    // through the operator; it answers with something secret.
    let internal = Server::start(|_| {
        Reply::Now(
            403,
            "text/plain",
            b"internal-secret-token-7c1f: admin console".to_vec(),
        )
    })
    .await;
    let doc = planned(&ns.name, "probe", &internal.url("/plan"), "agent");

    // No PolicyBundle allows planner URLs in this namespace: refused at once.
    let msg = denied(&tenant.client, &doc, PROJECTS).await;
    assert_eq!(
        msg,
        format!(
            "KamachiqProject probe: planner {} is not allowed: no PolicyBundle governing this namespace lists planner URLs (projects.allowedPlannerUrls); ask a platform admin to allow it, or run the planner as a capsule (spec.planner.capsule)",
            internal.url("/plan")
        )
    );
    // A bundle allowing another planner does not allow this one.
    allow_planners(&admin, &ns, &["https://planner.platform.example/".into()]).await;
    let msg = denied(&tenant.client, &doc, PROJECTS).await;
    assert!(
        msg.contains("is not under any of projects.allowedPlannerUrls of PolicyBundle"),
        "{msg}"
    );
    assert_eq!(
        internal.requests(),
        0,
        "the operator called a URL no policy allows"
    );

    // Allowed by the platform (the same bundle, one more prefix): called,
    // and its answer is not repeated.
    let prefixes = [internal.url("/"), "https://planner.platform.example/".into()];
    allow_planners(&admin, &ns, &prefixes).await;
    apply_as(&tenant.client, &doc, "tenant").await.expect("admitted");
    let api = api_for(&admin, &doc).await;
    let (_, msg) = wait_succeeded(&api, "probe", "Unknown", "PlannerRefused", T).await;
    assert!(msg.contains("refused the goal: 403 Forbidden"), "{msg}");
    assert!(
        !msg.contains("internal-secret"),
        "the answer reached status: {msg}"
    );
    assert!(internal.requests() >= 1);
    for m in event_messages(&ns.name) {
        assert!(!m.contains("internal-secret"), "the answer reached an Event: {m}");
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_package_version_is_published_once_and_never_shadowed() {
    let admin = client().await;
    let sfx = unique_suffix();
    let first = user(&admin, &format!("pub-first-{sfx}"), &[PUBLISHER_ROLE]).await;
    let other = user(&admin, &format!("pub-other-{sfx}"), &[PUBLISHER_ROLE]).await;
    let ns = TestNamespace::create(&admin, "tn-shadow").await;
    let package = format!("shadowed-{sfx}");
    let mut original = capsule(&format!("{package}-original"), &package, "1.0.0", "public");
    original["spec"]["publisher"] = json!("acme");
    apply_as(&first.client, ns.owns(&original), "publisher")
        .await
        .expect("published");

    // Another publisher, same package and version, a name that sorts first.
    let mut impostor = capsule(&format!("{package}-0"), &package, "1.0.0", "public");
    impostor["spec"]["publisher"] = json!("mallory");
    impostor["spec"]["image"] = json!(image("mallory-backdoor"));
    let msg = denied(&other.client, &impostor, CAPSULES).await;
    assert_eq!(
        msg,
        format!(
            "{package} 1.0.0 is already published as Capsule {package}-original by publisher acme; a package version is published once: publish a new version instead"
        )
    );

    // A namespace no PolicyBundle governs runs the original's image.
    put(
        &admin,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    let image_run = wait_for("the Deployment", T, || async {
        let d = deployments.get_opt("app").await.ok()??;
        d.spec.template.spec?.containers.first()?.image.clone()
    })
    .await;
    assert_eq!(image_run, original["spec"]["image"].as_str().unwrap());
    ns.delete().await;
}

#[tokio::test]
async fn a_key_id_two_bundles_trust_with_different_keys_must_verify_with_both() {
    let (admin, ns) = setup("tn-trust").await;
    let dir = Scratch::new("tn-trust");
    let (signer, other) = (Key::ecdsa(&dir, "signer"), Key::ecdsa(&dir, "other"));
    let sfx = unique_suffix();
    let publisher = format!("trusted-{sfx}");
    let trusting = |name: &str, pem: &str| {
        bundle(
            name,
            &ns.name,
            json!({ "trust": { "requireSignature": true,
                               "publishers": [{ "name": publisher, "keys": [{ "id": "k1", "publicKey": pem }] }] } }),
        )
    };
    // "a-" sorts first: the bundle whose key signed the capsule.
    let a = trusting(&format!("a-{sfx}"), &signer.public_pem);
    let b = trusting(&format!("b-{sfx}"), &other.public_pem);
    put_policy(&admin, ns.owns(&a)).await;
    put_policy(&admin, ns.owns(&b)).await;
    let package = format!("trust-{sfx}");
    let mut cap = capsule(&package, &package, "1.0.0", "public");
    cap["spec"]["publisher"] = json!(publisher);
    let cap = signed(&dir, cap, &signer, "k1");
    put(&admin, ns.owns(&cap)).await;

    let msg = denied(
        &admin,
        &installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1),
        INSTALLATIONS,
    )
    .await;
    assert!(
        msg.contains(&format!(
            "signature check failed with the key PolicyBundle b-{sfx} trusts as k1"
        )),
        "{msg}"
    );
    let caps = api_for(&admin, &cap).await;
    let verified = wait_condition(&caps, &package, "Verified", "False", Some("SignatureInvalid"), T).await;
    assert!(message(&verified, "Verified").contains(&format!("PolicyBundle b-{sfx}")));
    ns.delete().await;
}

#[tokio::test]
async fn trusted_keys_the_operator_cannot_use_are_refused() {
    let admin = client().await;
    let dir = Scratch::new("tn-keys");
    let p256 = Key::ecdsa(&dir, "good").public_pem;
    let oversized = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        "QUFB".repeat(950)
    );
    let cases = [
        (
            "garbage",
            "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n".to_string(),
            "is not an ECDSA P-256 or Ed25519 public key",
        ),
        (
            "rsa",
            Key::other(
                &dir,
                "rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
            "is an RSA key",
        ),
        (
            "p384",
            Key::other(
                &dir,
                "p384",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            ),
            "is an ECDSA key on curve P-384",
        ),
        (
            "secp256k1",
            Key::other(
                &dir,
                "k1",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            ),
            "is an ECDSA key on curve secp256k1",
        ),
        (
            "two-keys",
            format!("{p256}{p256}"),
            "must hold exactly one PEM block (found 2)",
        ),
        (
            "oversized",
            oversized,
            "is not an ECDSA P-256 or Ed25519 public key",
        ),
    ];
    for (id, pem, expect) in cases {
        let name = format!("tn-key-{id}-{}", unique_suffix());
        let doc = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
            "metadata": { "name": name },
            "spec": { "namespaceSelector": { "matchLabels": { "somastack.io/test-never": "x" } },
                      "trust": { "publishers": [{ "name": "acme", "keys": [{ "id": id, "publicKey": pem }] }] } } });
        let msg = denied(&admin, &doc, BUNDLES).await;
        assert!(
            msg.starts_with(&format!(
                "PolicyBundle {name} cannot be used: trusted key {id} of publisher acme "
            )),
            "{msg}"
        );
        assert!(msg.contains(expect), "{id}: {msg}");
    }
}

/// The API server's answer to a manifest it must refuse as invalid (422).
async fn invalid(client: &Client, doc: &Value) -> String {
    match create_dry_run(client, doc).await {
        Ok(_) => panic!("{} was accepted", doc["metadata"]["name"]),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn quantities_are_checked_where_they_are_written() {
    let admin = client().await;
    let sfx = unique_suffix();
    for (name, resources, expect) in [
        (
            "negative",
            json!({ "requests": { "memory": "-1Gi" } }),
            "spec.resources.requests.memory: Invalid value: \"-1Gi\": must not be negative",
        ),
        (
            "absurd",
            json!({ "limits": { "cpu": "1e400" } }),
            "spec.resources.limits.cpu: Invalid value: \"1e400\": must be at most 4096",
        ),
        (
            "inverted",
            json!({ "requests": { "cpu": "2", "memory": "2Gi" }, "limits": { "cpu": "1", "memory": "1Gi" } }),
            "requests.cpu must not be greater than limits.cpu",
        ),
    ] {
        let mut cap = capsule(
            &format!("q-{name}-{sfx}"),
            &format!("q-{name}-{sfx}"),
            "1.0.0",
            "public",
        );
        cap["spec"]["resources"] = resources;
        let msg = invalid(&admin, &cap).await;
        assert!(msg.contains(expect), "{name}: {msg}");
    }
    for (field, value, expect) in [
        ("maxCpu", "-1", "must not be negative"),
        ("maxMemory", "1e400", "must be at most 64Ti"),
    ] {
        let doc = bundle(
            &format!("q-{field}-{sfx}").to_lowercase(),
            "nowhere",
            json!({ "limits": { field: value } }),
        );
        let msg = invalid(&admin, &doc).await;
        assert!(
            msg.contains(&format!(
                "spec.limits.{field}: Invalid value: \"{value}\": {expect}"
            )),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn what_the_api_server_would_refuse_is_refused_first_or_reported() {
    let (admin, ns, package) = setup_published("tn-silent", "public").await;
    let inst = |name: &str| installation(&ns.name, name, &package, "1.0.0", "eu-west-1", 1);

    // Known before anything is made: refused by the schema or the webhook.
    let mut dots = inst("app");
    dots["spec"]["config"] = json!({ "..data": "x" });
    assert!(
        invalid(&admin, &dots)
            .await
            .contains("may not be '.' or start with '..'")
    );
    for name in [format!("a{}", "b".repeat(63)), "my.app".to_string()] {
        let msg = invalid(&admin, &inst(&name)).await;
        assert!(
            msg.contains("must be a lowercase DNS label of at most 63 characters"),
            "{msg}"
        );
    }
    let mut big = inst("app");
    big["spec"]["config"] = (0..10)
        .map(|i| (format!("k{i}"), json!("x".repeat(60 * 1024))))
        .collect::<serde_json::Map<String, Value>>()
        .into();
    let msg = denied(&admin, &big, INSTALLATIONS).await;
    assert_eq!(
        msg,
        "Installation app: spec.config holds 601 KiB; at most 512 KiB fit the ConfigMap it becomes"
    );
    let tasks: Vec<Value> = (0..60)
        .map(|i| {
            json!({ "name": format!("t{i}"), "capsule": { "package": package, "version": "1.0.0" },
                          "input": "y".repeat(16384) })
        })
        .collect();
    let huge = project(&ns.name, "huge", json!({ "goal": "g", "tasks": tasks }));
    let msg = denied(&admin, &huge, PROJECTS).await;
    assert!(
        msg.starts_with("KamachiqProject huge: spec.tasks is 9")
            && msg.contains("at most 900 KiB fit the plan ConfigMap"),
        "{msg}"
    );

    // Known only when a child is written: a Deployment "app" of the tenant's
    // own, with another selector, makes the operator's refused. Reported.
    let theirs = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "app", "namespace": ns.name },
        "spec": { "replicas": 0, "selector": { "matchLabels": { "run": "theirs" } },
                  "template": { "metadata": { "labels": { "run": "theirs" } },
                                "spec": { "containers": [{ "name": "c", "image": image("theirs") }] } } } });
    put(&admin, &theirs).await;
    put(&admin, &inst("app")).await;
    let api = api_for(&admin, &inst("app")).await;
    let obj = wait_condition(&api, "app", "Ready", "False", Some("ChildRejected"), T).await;
    let msg = message(&obj, "Ready");
    assert!(
        msg.starts_with("the API server refused Deployment app: "),
        "{msg}"
    );
    assert!(msg.contains("field is immutable"), "{msg}");
    assert_eq!(obj.data["status"]["phase"], "Blocked");
    wait_event(&ns.name, "ChildRejected", T).await;
    ns.delete().await;
}

#[tokio::test]
async fn a_drill_lock_naming_no_running_drill_is_stale() {
    let admin = client().await;
    let (ns, tenant) = tenant_namespace(&admin, "tn-lock").await;
    let (package, _) = published(&admin, &ns, "lock", "public").await;
    let inst = installation(&ns.name, "app", &package, "1.0.0", "eu-west-1", 1);
    let insts = put_api(&admin, &inst).await;
    wait_condition(&insts, "app", "Ready", "True", None, T).await;
    let drills = api_for(&admin, &drill(&ns.name, "x", json!({}))).await;

    // The tenant names a drill that does not exist, then one that finished.
    for (holder, name) in [("ghost", "first"), ("first", "second")] {
        let lock = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
            "metadata": { "name": "app", "namespace": ns.name, "annotations": { "somastack.io/drill": holder } } });
        apply_as(&tenant.client, &lock, "tenant-lock")
            .await
            .expect("the tenant may annotate");
        put(&admin, &drill(&ns.name, name, json!({ "scenario": "PodLoss" }))).await;
        let done = wait_condition(&drills, name, "Succeeded", "True", None, T).await;
        assert_eq!(done.data["status"]["verdict"], "Pass");
    }
    let notes = event_messages(&ns.name);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("named \"ghost\" as its drill, which is not running a drill on it")),
        "{notes:?}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn planned_tasks_keep_the_bounds_of_listed_tasks() {
    let (admin, ns, package) = setup_published("tn-bounds", "internal").await;
    let agent = json!({ "package": package, "version": "1.0.0" });
    let planner = Server::start({
        let agent = agent.clone();
        move |_| {
            plan_answer(json!([
                { "name": "hammer", "capsule": agent, "retries": 50, "input": "kwok:fail" },
                { "name": "forever", "capsule": agent, "timeoutSeconds": 0 },
            ]))
        }
    })
    .await;
    allow_planners(&admin, &ns, &[planner.url("/")]).await;
    let doc = planned(&ns.name, "bounded", &planner.url("/plan"), &package);
    let api = put_api(&admin, &doc).await;
    let (_, msg) = wait_succeeded(&api, "bounded", "False", "InvalidPlan", T).await;
    assert!(
        msg.contains("task hammer asks for 50 retries; 0 to 10 are allowed"),
        "{msg}"
    );
    assert!(
        msg.contains("task forever has timeoutSeconds 0; 1 to 86400 are allowed"),
        "{msg}"
    );
    let jobs = Api::<Job>::namespaced(admin.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "a task of an invalid plan ran");
    ns.delete().await;
}

#[tokio::test]
async fn planner_credentials_never_reach_status_or_events() {
    let (admin, ns) = setup("tn-secret").await;
    // A port nothing listens on: the call fails and the URL is reported.
    let port = somastack_tests::free_port();
    allow_planners(&admin, &ns, &[format!("http://127.0.0.1:{port}/")]).await;
    let url = format!("http://alice:s3cretpass@127.0.0.1:{port}/plan?token=t0kenvalue");
    let doc = planned(&ns.name, "secret", &url, "agent");
    let api = put_api(&admin, &doc).await;
    let (_, msg) = wait_succeeded(&api, "secret", "Unknown", "PlannerUnavailable", T).await;
    assert!(
        msg.starts_with(&format!(
            "planner http://***@127.0.0.1:{port}/plan?*** is unavailable"
        )),
        "{msg}"
    );
    for text in shown_with_event(&ns.name, "PlannerUnavailable", msg).await {
        for secret in ["s3cretpass", "t0kenvalue", "alice"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_hanging_planner_does_not_hold_other_tenants_projects() {
    let admin = client().await;
    let (slow_ns, fast_ns) = (
        TestNamespace::create(&admin, "tn-hang").await,
        TestNamespace::create(&admin, "tn-fast").await,
    );
    let (package, _) = published(&admin, &slow_ns, "hang", "internal").await;
    let hanging = Server::start(|_| Reply::Hang).await;
    let agent = json!({ "package": package, "version": "1.0.0" });
    let fast = Server::start({
        let agent = agent.clone();
        move |_| plan_answer(json!([{ "name": "only", "capsule": agent, "input": "quick" }]))
    })
    .await;
    allow_planners(&admin, &slow_ns, &[hanging.url("/")]).await;
    allow_planners(&admin, &fast_ns, &[fast.url("/")]).await;

    // Eight projects whose planner never answers (10 minutes per attempt).
    for i in 0..8 {
        let mut doc = planned(
            &slow_ns.name,
            &format!("stuck-{i}"),
            &hanging.url("/plan"),
            &package,
        );
        doc["spec"]["planner"]["timeoutSeconds"] = json!(600);
        put(&admin, &doc).await;
    }
    wait_for("the hanging planner to hold calls", T, || async {
        (hanging.held() >= 4).then_some(())
    })
    .await;
    let stuck = api_for(&admin, &planned(&slow_ns.name, "stuck-0", "http://x/", &package)).await;
    let (_, waiting) = wait_succeeded(&stuck, "stuck-0", "Unknown", "Planning", T).await;
    assert!(waiting.starts_with("waiting for planner"));

    // Another tenant's project is planned while those calls still hang.
    let doc = planned(&fast_ns.name, "quick", &fast.url("/plan"), &package);
    let api = put_api(&admin, &doc).await;
    wait_for("the other tenant's project to be planned", T, || async {
        let obj = api.get("quick").await.ok()?;
        obj.data["status"]["planDigest"].as_str().map(|_| ())
    })
    .await;
    assert!(
        hanging.held() >= 4,
        "the hanging calls ended before the other project was planned"
    );
    drop(hanging);
    slow_ns.delete().await;
    fast_ns.delete().await;
}

#[tokio::test]
async fn control_characters_from_a_planner_are_escaped() {
    let (admin, ns) = setup("tn-ctrl").await;
    let planner = Server::start(|_| {
        Reply::json(
            422,
            &json!({ "error": "\u{1b}[31mred\u{1b}[0m\nsecond line\u{202e}exe.txt\u{0}" }),
        )
    })
    .await;
    allow_planners(&admin, &ns, &[planner.url("/")]).await;
    let doc = planned(&ns.name, "ctrl", &planner.url("/plan"), "agent");
    let api = put_api(&admin, &doc).await;
    let (_, msg) = wait_succeeded(&api, "ctrl", "Unknown", "PlannerRefused", T).await;
    assert!(
        msg.contains(r"422 Unprocessable Entity: \u{1b}[31mred\u{1b}[0m second line\u{202e}exe.txt\u{0}"),
        "{msg}"
    );
    for text in shown_with_event(&ns.name, "PlannerRefused", msg).await {
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "a control character reached the user: {text:?}"
        );
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_bundle_whose_selector_selects_nothing_is_refused() {
    let admin = client().await;
    let sfx = unique_suffix();
    for (case, selector, expect) in [
        (
            "empty-in",
            json!({ "matchExpressions": [{ "key": "team", "operator": "In", "values": [] }] }),
            "namespaceSelector matchExpressions team In: needs at least one value (with none it matches nothing)",
        ),
        (
            "bad-value",
            json!({ "matchLabels": { "team": "a b" } }),
            "namespaceSelector matchLabels team: value \"a b\" is not a label value",
        ),
    ] {
        let name = format!("tn-sel-{case}-{sfx}");
        let doc = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
                          "metadata": { "name": name },
                          "spec": { "namespaceSelector": selector, "killSwitch": { "engaged": true, "reason": "test" } } });
        let msg = denied(&admin, &doc, BUNDLES).await;
        assert!(
            msg.starts_with(&format!("PolicyBundle {name} cannot be used: {expect}")),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn a_plan_too_large_to_store_is_refused_once() {
    let (admin, ns) = setup("tn-large").await;
    let package = format!("large-{}", unique_suffix());
    let agent = json!({ "package": package, "version": "1.0.0" });
    // A 5,000-task chain within maxTasks: about 1.8 MB as the operator stores it.
    let planner = Server::start({
        let agent = agent.clone();
        move |_| {
            let tasks: Vec<Value> = (0..5000)
                .map(|i| {
                    let deps = if i == 0 {
                        vec![]
                    } else {
                        vec![format!("step-{}", i - 1)]
                    };
                    json!({ "name": format!("step-{i}"), "capsule": agent, "dependsOn": deps,
                            "input": format!("part {i} of the corpus: {}", "lorem ipsum ".repeat(16)) })
                })
                .collect();
            plan_answer(json!(tasks))
        }
    })
    .await;
    allow_planners(&admin, &ns, &[planner.url("/")]).await;
    let mut doc = planned(&ns.name, "large", &planner.url("/plan"), &package);
    doc["spec"]["budget"] = json!({ "maxTasks": 5000 });
    let api = put_api(&admin, &doc).await;
    let (failed, msg) = wait_succeeded(&api, "large", "False", "PlanTooLarge", T).await;
    assert!(
        msg.contains("planned 5000 tasks in") && msg.contains("at most 900 KiB can be stored"),
        "{msg}"
    );
    assert_eq!(failed.data["status"]["phase"], "Failed");
    // Nothing asks the planner again: not the resync, not other events.
    let cap = capsule(&package, &package, "1.0.0", "internal");
    put(&admin, ns.owns(&cap)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(planner.requests(), 1, "the planner was asked again");
    ns.delete().await;
}

#[tokio::test]
async fn capsule_events_do_not_call_planners_again() {
    let (admin, ns) = setup("tn-churn").await;
    let planner = Server::start(|_| Reply::json(422, &json!({ "error": "goal too vague" }))).await;
    allow_planners(&admin, &ns, &[planner.url("/")]).await;
    let doc = planned(&ns.name, "vague", &planner.url("/plan"), "agent");
    let api = put_api(&admin, &doc).await;
    wait_condition(&api, "vague", "Succeeded", "Unknown", Some("PlannerRefused"), T).await;
    let before = planner.requests();
    // Capsules come and go in the catalogue: none is this project's.
    let mut made = Vec::new();
    for i in 0..6 {
        let package = format!("churn-{i}-{}", unique_suffix());
        let cap = capsule(&package, &package, "1.0.0", "public");
        put(&admin, ns.owns(&cap)).await;
        made.push(package);
    }
    let capsules = api_for(&admin, &capsule("any", "any", "1.0.0", "public")).await;
    for name in &made {
        let _ = capsules.delete(name, &DeleteParams::default()).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        planner.requests(),
        before,
        "Capsule events called the planner of a project they do not concern"
    );
    let obj = api.get("vague").await.unwrap();
    assert_eq!(
        condition(&obj, "Succeeded").map(|c| c["reason"].clone()),
        Some(json!("PlannerRefused"))
    );
    ns.delete().await;
}
