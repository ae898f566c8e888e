//! `kubectl soma capsule payload|sign|verify|approve|reject`.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use somastack_controllers::conditions::Status;
use somastack_controllers::domain::review::{
    DECISION_ANNOTATION, DIGEST_ANNOTATION, REASON_ANNOTATION, REVIEWER_ANNOTATION,
};
use somastack_controllers::domain::signing;
use somastack_crds::capsule::{CapsuleSpec, SignatureAlgorithm};
use somastack_crds::{Capsule, PolicyBundle};

use crate::cli::{CapsuleCommand, Global, ManifestArgs, Output, ReviewArgs, SignArgs, VerifyArgs};
use crate::cluster::{FIELD_MANAGER, with_cluster};
use crate::error::{Context, Error, Result};

pub fn command(global: &Global, command: CapsuleCommand) -> Result<()> {
    match command {
        CapsuleCommand::Payload(args) => payload(&args),
        CapsuleCommand::Sign(args) => sign(global, &args),
        CapsuleCommand::Verify(args) => verify(global, &args),
        CapsuleCommand::Approve(args) => review(global, &args, "approve"),
        CapsuleCommand::Reject(args) => review(global, &args, "reject"),
    }
}

fn read(path: &Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(Error::io("could not read standard input"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(Error::io(path.display().to_string()))
    }
}

/// A Capsule manifest (YAML or JSON) as written, and its spec.
pub fn parse_manifest(text: &str, origin: &str) -> Result<(Value, Capsule)> {
    let doc: Value =
        serde_saphyr::from_str(text).map_err(|e| Error::Input(format!("{origin}: not YAML or JSON: {e}")))?;
    if doc.get("kind").and_then(Value::as_str) != Some("Capsule") {
        return Err(Error::Input(format!(
            "{origin}: not a Capsule manifest (kind: Capsule)"
        )));
    }
    let capsule: Capsule = serde_json::from_value(doc.clone())
        .map_err(|e| Error::Input(format!("{origin}: not a valid Capsule: {e}")))?;
    Ok((doc, capsule))
}

fn manifest(args: &ManifestArgs) -> Result<(Value, Capsule)> {
    parse_manifest(&read(&args.file)?, &args.file.display().to_string())
}

fn payload(args: &ManifestArgs) -> Result<()> {
    let (_, capsule) = manifest(args)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&signing::canonical_payload(&capsule.spec))
        .and_then(|()| out.flush())
        .map_err(Error::io("could not write to standard output"))
}

/// `doc` with `spec.image` set to `image` (when given, pinned by digest)
/// and `spec.signature` made with `private_key_pem` over the result.
pub fn signed_manifest(
    mut doc: Value,
    mut spec: CapsuleSpec,
    image: Option<&str>,
    private_key_pem: &str,
    key_id: &str,
) -> Result<Value> {
    if let Some(image) = image {
        if !image.contains("@sha256:") {
            return Err(Error::Input(format!(
                "--image must be pinned by digest (...@sha256:...): {image}"
            )));
        }
        spec.image = image.to_string();
        doc["spec"]["image"] = json!(image);
    }
    let (algorithm, value) = signing::sign(private_key_pem, &signing::canonical_payload(&spec))
        .map_err(|e| Error::Input(format!("the key {e}")))?;
    doc["spec"]["signature"] = json!({ "keyId": key_id, "algorithm": algorithm, "value": value });
    Ok(doc)
}

fn sign(global: &Global, args: &SignArgs) -> Result<()> {
    let (doc, capsule) = manifest(&args.manifest)?;
    let key = std::fs::read_to_string(&args.key).map_err(Error::io(args.key.display().to_string()))?;
    let key = key.trim();
    let signed = signed_manifest(doc, capsule.spec, args.image.as_deref(), key, &args.key_id)?;
    // A manifest is what signing makes: YAML unless JSON is asked for.
    let output = match global.output {
        Output::Json => Output::Json,
        Output::Table | Output::Yaml => Output::Yaml,
    };
    crate::output::print(output, &signed, |_| String::new())
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub capsule: String,
    pub verified: bool,
    pub reason: String,
    pub message: String,
}

/// The signature of `spec` checked with one public key.
pub fn verify_with_key(name: &str, spec: &CapsuleSpec, public_key_pem: &str) -> Verification {
    let result = |verified: bool, reason: &str, message: String| Verification {
        capsule: name.to_string(),
        verified,
        reason: reason.to_string(),
        message,
    };
    let Some(sig) = &spec.signature else {
        return result(false, "Unsigned", "the capsule is not signed".into());
    };
    if let Err(why) = signing::check_public_key(public_key_pem) {
        return result(false, "InvalidKey", format!("the public key {why}"));
    }
    let payload = signing::canonical_payload(spec);
    match signing::verify(sig.algorithm, public_key_pem, &sig.key_id, &payload, &sig.value) {
        Ok(()) => result(
            true,
            "SignatureValid",
            format!(
                "signed by key {} of publisher {} ({})",
                sig.key_id,
                spec.publisher,
                algorithm_name(sig.algorithm)
            ),
        ),
        Err(e) => result(false, "SignatureInvalid", format!("key {}: {e}", sig.key_id)),
    }
}

fn algorithm_name(a: SignatureAlgorithm) -> &'static str {
    match a {
        SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        SignatureAlgorithm::Ed25519 => "ed25519",
    }
}

/// The signature of `spec` checked as the operator's `Verified` condition
/// checks it: with every key the PolicyBundles trust under its key id. A
/// capsule that needs no signature because it has none is not verified.
pub fn verify_with_bundles(name: &str, spec: &CapsuleSpec, bundles: &[Arc<PolicyBundle>]) -> Verification {
    let d = somastack_controllers::kinds::capsule::verification(spec, bundles);
    Verification {
        capsule: name.to_string(),
        verified: d.status == Status::True && spec.signature.is_some(),
        reason: if spec.signature.is_none() {
            "Unsigned".into()
        } else {
            d.reason.to_string()
        },
        message: if spec.signature.is_none() {
            "the capsule is not signed".into()
        } else {
            d.message
        },
    }
}

fn verify(global: &Global, args: &VerifyArgs) -> Result<()> {
    let local = match &args.file {
        Some(file) => {
            let (doc, capsule) = manifest(&ManifestArgs { file: file.clone() })?;
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or("(unnamed)")
                .to_string();
            Some((name, capsule.spec))
        }
        None => None,
    };
    let key = match &args.public_key {
        Some(path) => Some(std::fs::read_to_string(path).map_err(Error::io(path.display().to_string()))?),
        None => None,
    };
    let result = match (local, key) {
        (Some((name, spec)), Some(key)) => verify_with_key(&name, &spec, &key),
        (local, key) => with_cluster(global, async |cluster| {
            let (name, spec) = match local {
                Some(found) => found,
                None => {
                    let name = args.name.clone().unwrap_or_default();
                    let capsule = Api::<Capsule>::all(cluster.client.clone())
                        .get(&name)
                        .await
                        .context(format!("capsule {name}"))?;
                    (name, capsule.spec)
                }
            };
            Ok(match key {
                Some(key) => verify_with_key(&name, &spec, &key),
                None => {
                    let bundles = Api::<PolicyBundle>::all(cluster.client.clone())
                        .list(&ListParams::default())
                        .await
                        .context("list policybundles")?;
                    let bundles: Vec<Arc<PolicyBundle>> = bundles.items.into_iter().map(Arc::new).collect();
                    verify_with_bundles(&name, &spec, &bundles)
                }
            })
        })?,
    };
    crate::output::print(global.output, &result, |r| {
        format!("capsule {}: {}: {}\n", r.capsule, r.reason, r.message)
    })?;
    if result.verified {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "capsule {} is not verified ({})",
            result.capsule, result.reason
        )))
    }
}

/// What a review wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub capsule: String,
    pub decision: String,
    pub payload_digest: String,
    /// As the operator's admission webhook stamped it (the authenticated user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
}

/// The merge patch of a review: decision and reason, bound to `digest`.
/// The reviewer is not written: admission stamps it from the user.
pub fn review_patch(decision: &str, digest: &str, reason: Option<&str>) -> Value {
    json!({ "metadata": { "annotations": {
        DECISION_ANNOTATION: decision,
        DIGEST_ANNOTATION: digest,
        REASON_ANNOTATION: reason,
    } } })
}

fn review(global: &Global, args: &ReviewArgs, decision: &str) -> Result<()> {
    let review = with_cluster(global, async |cluster| {
        let api = Api::<Capsule>::all(cluster.client.clone());
        let what = format!("capsule {}", args.name);
        let capsule = api.get(&args.name).await.context(&what)?;
        // Bound to the payload the reviewer just read, not whatever is current later.
        let digest = signing::payload_digest(&capsule.spec);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patch = review_patch(decision, &digest, args.reason.as_deref());
        let patched = api
            .patch(&args.name, &params, &Patch::Merge(&patch))
            .await
            .context(format!("review {what}"))?;
        Ok(Review {
            capsule: args.name.clone(),
            decision: decision.to_string(),
            payload_digest: digest,
            reviewer: patched.annotations().get(REVIEWER_ANNOTATION).cloned(),
        })
    })?;
    crate::output::print(global.output, &review, |r| {
        let verb = if r.decision == "approve" {
            "approved"
        } else {
            "rejected"
        };
        format!(
            "capsule.somastack.io/{} {verb} (payload {}{})\n",
            r.capsule,
            r.payload_digest,
            r.reviewer
                .as_ref()
                .map(|u| format!(", reviewer {u}"))
                .unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: somastack.io/v1alpha1
kind: Capsule
metadata:
  name: summarizer-1-4-2
  labels: { team: a }
spec:
  package: summarizer
  version: 1.4.2
  publisher: acme-agents
  image: r.example/agents/summarizer@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4
  dataClassification: internal
";

    #[test]
    fn manifests_parse_from_yaml_and_json_and_other_kinds_are_refused() {
        let (doc, capsule) = parse_manifest(MANIFEST, "m.yaml").unwrap();
        assert_eq!(capsule.spec.version, "1.4.2");
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(parse_manifest(&json, "m.json").unwrap().1.spec, capsule.spec);
        let err = parse_manifest("kind: Installation\n", "i.yaml").unwrap_err();
        assert!(err.to_string().contains("not a Capsule manifest"), "{err}");
        assert!(parse_manifest(": : :", "x").is_err());
    }

    #[test]
    fn the_image_must_be_pinned_before_anything_is_signed() {
        let (doc, capsule) = parse_manifest(MANIFEST, "m.yaml").unwrap();
        let err = signed_manifest(doc, capsule.spec, Some("r.example/a:latest"), "unused", "k1").unwrap_err();
        assert!(err.to_string().contains("pinned by digest"), "{err}");
    }

    #[test]
    fn a_review_names_the_digest_and_clears_an_old_reason() {
        assert_eq!(
            review_patch("reject", "sha256:ab", None),
            json!({ "metadata": { "annotations": {
                "review.somastack.io/decision": "reject",
                "review.somastack.io/digest": "sha256:ab",
                "review.somastack.io/reason": null } } })
        );
    }

    #[test]
    fn an_unsigned_capsule_is_never_verified() {
        let (_, capsule) = parse_manifest(MANIFEST, "m.yaml").unwrap();
        let v = verify_with_bundles("c", &capsule.spec, &[]);
        assert!(!v.verified);
        assert_eq!(v.reason, "Unsigned");
        let v = verify_with_key("c", &capsule.spec, "-----BEGIN PUBLIC KEY-----");
        assert_eq!((v.verified, v.reason.as_str()), (false, "Unsigned"));
    }
}
