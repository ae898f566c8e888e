//! Real users, for tests of what depends on who asks. Each is a
//! ServiceAccount in one fixed namespace, with a token from the TokenRequest
//! API, so the API server authenticates it like any other user
//! (`system:serviceaccount:<namespace>:<name>`) and RBAC decides what it may do.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::{TEST_MANAGER, kubeconfig_path};

/// Namespace of the test users (kept between runs; everything in it is
/// applied idempotently).
pub const USERS_NAMESPACE: &str = "somastack-test-users";

/// May create and change Capsules and KamachiqProjects, not review them.
pub const PUBLISHER_ROLE: &str = "somastack-test-capsule-publisher";
/// May review Capsules and KamachiqProject plans: the verb `approve`, and
/// patch to set the decision.
pub const REVIEWER_ROLE: &str = "somastack-test-capsule-reviewer";

pub struct User {
    /// The name the API server knows the user by.
    pub name: String,
    pub client: Client,
}

async fn ssa(admin: &Client, doc: Value) {
    let api = crate::api_for(admin, &doc).await;
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&doc),
    )
    .await
    .unwrap_or_else(|e| panic!("could not apply {name}: {e}"));
}

/// The ServiceAccount `name`, bound to `cluster_roles` (and to nothing else:
/// bindings are named after it), with a client that authenticates as it.
pub async fn user(admin: &Client, name: &str, cluster_roles: &[&str]) -> User {
    account(admin, name).await;
    // Capsules and KamachiqProjects: both are reviewed the same way.
    let capsules = |verbs: &[&str]| json!([{ "apiGroups": ["somastack.io"], "resources": ["capsules", "kamachiqprojects"], "verbs": verbs }]);
    ssa(
        admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": PUBLISHER_ROLE},
               "rules": capsules(&["get", "list", "watch", "create", "patch", "update", "delete"])}),
    )
    .await;
    ssa(
        admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": REVIEWER_ROLE},
               "rules": capsules(&["get", "list", "watch", "patch", "update", "approve"])}),
    )
    .await;
    for role in [PUBLISHER_ROLE, REVIEWER_ROLE] {
        let binding = format!(
            "somastack-test-{name}-{}",
            role.trim_start_matches("somastack-test-")
        );
        let api = crate::api_for(
            admin,
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding"}),
        )
        .await;
        if cluster_roles.contains(&role) {
            ssa(
                admin,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                       "metadata": {"name": binding},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                       "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": USERS_NAMESPACE}]}),
            )
            .await;
        } else {
            let _ = api.delete(&binding, &Default::default()).await;
        }
    }

    // RBAC reaches the authorizer's cache a moment after the write.
    let username = format!("system:serviceaccount:{USERS_NAMESPACE}:{name}");
    for (role, verb) in [(PUBLISHER_ROLE, "create"), (REVIEWER_ROLE, "approve")] {
        let want = cluster_roles.contains(&role);
        crate::wait_for(
            &format!("RBAC: {username} may {verb} capsules = {want}"),
            std::time::Duration::from_secs(30),
            || async { (may(admin, &username, verb).await == want).then_some(()) },
        )
        .await;
    }

    signed_in(admin, name).await
}

/// A tenant: the ServiceAccount `name` with the built-in `edit` role in
/// `namespace` only (a RoleBinding there), as a platform team gives its
/// tenants; the chart aggregates the right to manage Installations, DrDrills
/// and KamachiqProjects into `edit`.
pub async fn tenant(admin: &Client, name: &str, namespace: &str) -> User {
    account(admin, name).await;
    ssa(
        admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": format!("tenant-{name}"), "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": USERS_NAMESPACE}]}),
    )
    .await;
    let username = format!("system:serviceaccount:{USERS_NAMESPACE}:{name}");
    crate::wait_for(
        &format!("RBAC: {username} may create drdrills in {namespace}"),
        std::time::Duration::from_secs(30),
        || async {
            may_in(admin, &username, "create", "drdrills", Some(namespace))
                .await
                .then_some(())
        },
    )
    .await;
    signed_in(admin, name).await
}

/// The ServiceAccount `name` in [`USERS_NAMESPACE`] (made if missing).
async fn account(admin: &Client, name: &str) {
    ssa(
        admin,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": USERS_NAMESPACE}}),
    )
    .await;
    ssa(
        admin,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": USERS_NAMESPACE}}),
    )
    .await;
}

/// A client authenticated as the test ServiceAccount `name` (a token from
/// the TokenRequest API).
async fn signed_in(admin: &Client, name: &str) -> User {
    let username = format!("system:serviceaccount:{USERS_NAMESPACE}:{name}");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), USERS_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("no token for {name}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    User {
        name: username,
        client: client_with_token(&token).await,
    }
}

/// A client for the test cluster that authenticates with `token` only.
async fn client_with_token(token: &str) -> Client {
    let admin = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    let mut doc = serde_json::to_value(&admin).expect("kubeconfig serializes");
    let user = json!({ "token": token });
    if let Some(users) = doc["users"].as_array_mut() {
        for u in users {
            u["user"] = user.clone();
        }
    }
    let kubeconfig: Kubeconfig = serde_json::from_value(doc).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

/// Whether RBAC lets `username` (a ServiceAccount) `verb` capsules.
async fn may(admin: &Client, username: &str, verb: &str) -> bool {
    may_in(admin, username, verb, "capsules", None).await
}

/// Whether RBAC lets `username` (a test ServiceAccount) `verb` the
/// somastack.io `resource` (in `namespace`), as the API server decides.
pub async fn may_in(
    admin: &Client,
    username: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(username.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{USERS_NAMESPACE}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("somastack.io".into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                namespace: namespace.map(str::to_string),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}
