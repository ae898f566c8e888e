//! Capsule verification and review against the real cluster, with keys and
//! signatures made by the openssl command line. Needs the operator running
//! (hack/test.sh starts it).

use std::time::Duration;

use kube::Client;
use kube::api::DeleteParams;
use serde_json::json;
use somastack_tests::fixtures::{
    Key, Scratch, bundle, capsule, condition, denied, installation, published, put, put_api, put_policy,
    signed, wait_condition, wait_refused,
};
use somastack_tests::users::{PUBLISHER_ROLE, REVIEWER_ROLE, User, user};
use somastack_tests::{TestNamespace, api_for, client, setup, unique_suffix};

const T: Duration = Duration::from_secs(60);

/// The test users "publisher" (may create and patch capsules, not approve)
/// and "reviewer" (may approve).
async fn publisher_and_reviewer(client: &Client) -> (User, User) {
    let publisher = user(client, "publisher", &[PUBLISHER_ROLE]).await;
    let reviewer = user(client, "reviewer", &[REVIEWER_ROLE]).await;
    (publisher, reviewer)
}

#[tokio::test]
async fn signatures_valid_invalid_unknown_and_unsigned() {
    let (client, ns) = setup("sig").await;
    let dir = Scratch::new("sig");
    let s = unique_suffix();
    let ec = Key::ecdsa(&dir, "ec");
    let ed = Key::ed25519(&dir, "ed");
    let untrusted = Key::ecdsa(&dir, "other");

    let policy = bundle(
        &format!("sig-{s}"),
        &ns.name,
        json!({
            "trust": {
                "requireSignature": true,
                "publishers": [{ "name": "test-pub", "keys": [
                    { "id": format!("ec-{s}"), "publicKey": ec.public_pem },
                    { "id": format!("ed-{s}"), "publicKey": ed.public_pem },
                ] }],
            },
        }),
    );
    put_policy(&client, ns.owns(&policy)).await;

    let valid_ec = signed(
        &dir,
        capsule(
            &format!("sig-ec-{s}"),
            &format!("sig-ec-{s}"),
            "1.0.0",
            "internal",
        ),
        &ec,
        &format!("ec-{s}"),
    );
    let valid_ed = signed(
        &dir,
        capsule(
            &format!("sig-ed-{s}"),
            &format!("sig-ed-{s}"),
            "1.0.0",
            "internal",
        ),
        &ed,
        &format!("ed-{s}"),
    );
    // Signed, then a signed field changed: the signature no longer matches.
    let mut tampered = signed(
        &dir,
        capsule(
            &format!("sig-bad-{s}"),
            &format!("sig-bad-{s}"),
            "1.0.0",
            "internal",
        ),
        &ec,
        &format!("ec-{s}"),
    );
    tampered["spec"]["capabilities"] = json!(["network-egress"]);
    let unknown = signed(
        &dir,
        capsule(
            &format!("sig-unk-{s}"),
            &format!("sig-unk-{s}"),
            "1.0.0",
            "internal",
        ),
        &untrusted,
        "nobody-knows-me",
    );
    let unsigned = capsule(
        &format!("sig-none-{s}"),
        &format!("sig-none-{s}"),
        "1.0.0",
        "internal",
    );

    let cases = [
        (&valid_ec, "True", "SignatureValid"),
        (&valid_ed, "True", "SignatureValid"),
        (&tampered, "False", "SignatureInvalid"),
        (&unknown, "False", "UnknownKey"),
        (&unsigned, "False", "Unsigned"),
    ];
    for (doc, _, _) in &cases {
        put(&client, ns.owns(doc)).await;
    }
    let api = api_for(&client, &valid_ec).await;
    for (doc, status, reason) in &cases {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let obj = wait_condition(&api, name, "Verified", status, Some(reason), T).await;
        if *status == "False" {
            // Readiness also depends on reviews other bundles in the cluster may
            // require, so only the failing cases pin it down.
            let ready = condition(&obj, "Ready").unwrap();
            assert_eq!(
                (ready["status"].as_str(), ready["reason"].as_str()),
                (Some("False"), Some(*reason)),
                "{name}"
            );
        }
    }

    // An Installation of the tampered capsule is refused, naming the rule.
    let inst = installation(
        &ns.name,
        "tampered",
        &format!("sig-bad-{s}"),
        "1.0.0",
        "eu-west-1",
        1,
    );
    let message = denied(&client, &inst, "installations.somastack.io").await;
    assert!(
        message.contains("signature check failed") && message.contains(&format!("PolicyBundle sig-{s}")),
        "{message}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn review_approves_rejects_and_a_changed_spec_needs_a_new_approval() {
    let client = client().await;
    let (publisher, reviewer) = publisher_and_reviewer(&client).await;
    let ns = TestNamespace::create(&client, "review").await;
    let s = unique_suffix();
    let package = format!("rev-{s}");
    let policy = bundle(
        &format!("rev-{s}"),
        &ns.name,
        json!({ "trust": { "requireApproval": true } }),
    );
    put_policy(&client, ns.owns(&policy)).await;
    let doc = capsule(&package, &package, "1.0.0", "internal");
    put(&publisher.client, ns.owns(&doc)).await;
    let api = api_for(&client, &doc).await;
    let obj = wait_condition(&api, &package, "Approved", "False", Some("AwaitingReview"), T).await;
    assert_eq!(
        obj.metadata.annotations.unwrap_or_default()["review.somastack.io/submitted-by"],
        publisher.name
    );

    // Nothing may be installed until it is approved.
    let inst = installation(&ns.name, "reviewed", &package, "1.0.0", "eu-west-1", 1);
    let msg = denied(&client, &inst, "installations.somastack.io").await;
    assert!(
        msg.contains("is not approved by a reviewer") && msg.contains("rule approval"),
        "{msg}"
    );

    // The reviewer approves; the reviewer named by the client is ignored.
    let mut approve = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule", "metadata": { "name": package,
        "annotations": { "review.somastack.io/decision": "approve", "review.somastack.io/reviewer": "alice",
                         "review.somastack.io/reason": "scanned" } } });
    somastack_tests::apply_as(&reviewer.client, &approve, "reviewer")
        .await
        .expect("approved");
    let obj = wait_condition(&api, &package, "Approved", "True", Some("Approved"), T).await;
    assert_eq!(obj.data["status"]["review"]["reviewer"], reviewer.name.as_str());
    let digest = obj.data["status"]["payloadDigest"].as_str().unwrap().to_string();
    assert_eq!(obj.data["status"]["review"]["payloadDigest"], digest.as_str());
    let inst_api = put_api(&client, &inst).await;
    wait_condition(&inst_api, "reviewed", "Ready", "True", None, T).await;

    // The publisher changes a signed field: the approval no longer applies.
    let mut changed = doc.clone();
    changed["spec"]["image"] = json!(somastack_tests::fixtures::image(&format!("{package}-rebuilt")));
    put(&publisher.client, &changed).await;
    let obj = wait_condition(&api, &package, "Approved", "False", Some("ApprovalOutdated"), T).await;
    assert_ne!(obj.data["status"]["payloadDigest"], digest.as_str());
    // The running workload is kept, but flagged.
    let (obj, _) = wait_refused(&inst_api, "reviewed", T).await;
    assert_eq!(obj.data["status"]["phase"], "Blocked");

    // Approving the new payload by digest restores it; then a rejection.
    let new_digest = api.get(&package).await.unwrap().data["status"]["payloadDigest"]
        .as_str()
        .unwrap()
        .to_string();
    approve["metadata"]["annotations"]["review.somastack.io/digest"] = json!(new_digest);
    somastack_tests::apply_as(&reviewer.client, &approve, "reviewer")
        .await
        .expect("re-approved");
    wait_condition(&api, &package, "Approved", "True", Some("Approved"), T).await;
    approve["metadata"]["annotations"] = json!({ "review.somastack.io/decision": "reject" });
    somastack_tests::apply_as(&reviewer.client, &approve, "reviewer")
        .await
        .expect("rejected");
    let obj = wait_condition(&api, &package, "Approved", "False", Some("Rejected"), T).await;
    assert_eq!(condition(&obj, "Ready").unwrap()["status"], "False");
    assert_eq!(
        condition(&obj, "Approved").unwrap()["message"],
        format!("rejected by {}", reviewer.name)
    );

    let _ = inst_api.delete("reviewed", &DeleteParams::default()).await;
    ns.delete().await;
}

/// Reviews only by users RBAC allows the verb `approve`, never by the
/// submitter, and the submitter and reviewer stamps cannot be forged.
#[tokio::test]
async fn only_an_authorized_reviewer_other_than_the_submitter_may_approve() {
    let client = client().await;
    // The publisher may create and patch capsules but not approve; the
    // reviewer may approve; "self-reviewer" may do both.
    let (publisher, reviewer) = publisher_and_reviewer(&client).await;
    let both = user(&client, "self-reviewer", &[PUBLISHER_ROLE, REVIEWER_ROLE]).await;
    let s = unique_suffix();
    let approve = |name: &str| {
        json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule", "metadata": { "name": name,
            "annotations": { "review.somastack.io/decision": "approve" } } })
    };

    // The publisher submits, trying to forge both stamps.
    let name = format!("authz-{s}");
    let mut doc = capsule(&name, &name, "1.0.0", "internal");
    doc["metadata"]["annotations"] = json!({ "review.somastack.io/submitted-by": "someone-else" });
    let stored = put(&publisher.client, &doc).await;
    let stamps = stored.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(stamps["review.somastack.io/submitted-by"], publisher.name);

    // Not authorized: refused, naming the verb.
    let msg = denied(&publisher.client, &approve(&name), "capsules.somastack.io").await;
    assert_eq!(
        msg,
        format!(
            "user {} may not review Capsules: setting review.somastack.io/decision needs the RBAC verb \
             'approve' on capsules.somastack.io",
            publisher.name
        )
    );

    // Authorized: admitted and stamped with the authenticated user.
    let stored = somastack_tests::apply_as(&reviewer.client, &approve(&name), "reviewer")
        .await
        .expect("an authorized reviewer approves");
    let stamps = stored.metadata.annotations.unwrap_or_default();
    assert_eq!(stamps["review.somastack.io/reviewer"], reviewer.name);
    assert_eq!(stamps["review.somastack.io/submitted-by"], publisher.name);

    // The publisher cannot move the stamps afterwards.
    let forged = json!({ "apiVersion": "somastack.io/v1alpha1", "kind": "Capsule", "metadata": { "name": name,
        "annotations": { "review.somastack.io/reviewer": "the-ceo", "review.somastack.io/submitted-by": "x" } } });
    let stored = somastack_tests::apply_as(&publisher.client, &forged, "forger")
        .await
        .expect("other fields may change");
    let stamps = stored.metadata.annotations.unwrap_or_default();
    assert_eq!(stamps["review.somastack.io/reviewer"], reviewer.name);
    assert_eq!(stamps["review.somastack.io/submitted-by"], publisher.name);

    // Self-approval: allowed the verb, but the submitter.
    let own = format!("self-{s}");
    put(&both.client, &capsule(&own, &own, "1.0.0", "internal")).await;
    let msg = denied(&both.client, &approve(&own), "capsules.somastack.io").await;
    assert_eq!(
        msg,
        format!(
            "user {} submitted Capsule {own} and may not review it; another reviewer must",
            both.name
        )
    );
    // Submitting already approved is self-approval too.
    let pre = format!("pre-{s}");
    let mut doc = capsule(&pre, &pre, "1.0.0", "internal");
    doc["metadata"]["annotations"] = json!({ "review.somastack.io/decision": "approve" });
    let msg = denied(&both.client, &doc, "capsules.somastack.io").await;
    assert!(msg.contains("may not review it"), "{msg}");

    let api = api_for(&client, &doc).await;
    for n in [&name, &own] {
        let _ = api.delete(n, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn an_installed_capsule_cannot_disappear_until_its_installations_go() {
    let (client, ns) = setup("protect").await;
    let (package, doc) = published(&client, &ns, "keep", "public").await;
    let api = api_for(&client, &doc).await;
    let inst = installation(&ns.name, "user", &package, "1.0.0", "us-east-1", 1);
    let inst_api = put_api(&client, &inst).await;
    wait_condition(&inst_api, "user", "Ready", "True", None, T).await;
    somastack_tests::wait_for("the capsule to count its installation", T, || async {
        let c = api.get(&package).await.ok()?;
        (c.data["status"]["installations"] == 1).then_some(())
    })
    .await;

    api.delete(&package, &DeleteParams::default())
        .await
        .expect("delete accepted");
    let obj = wait_condition(&api, &package, "Ready", "False", Some("DeletionBlocked"), T).await;
    let msg = condition(&obj, "Ready").unwrap()["message"].to_string();
    assert!(msg.contains(&format!("{}/user", ns.name)), "{msg}");
    // The Installation keeps running and says why it cannot be changed.
    let still = inst_api.get("user").await.unwrap();
    assert_eq!(condition(&still, "Available").unwrap()["status"], "True");

    inst_api
        .delete("user", &DeleteParams::default())
        .await
        .expect("installation deleted");
    somastack_tests::wait_for("the capsule to be deleted once unused", T, || async {
        api.get_opt(&package).await.ok()?.is_none().then_some(())
    })
    .await;
    ns.delete().await;
}
