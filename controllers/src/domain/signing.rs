//! Capsule signatures: the canonical payload and its verification.
//!
//! The exact byte format is documented in `docs/signing.md`; publishers sign
//! it with standard tools (`openssl dgst -sha256 -sign` for ECDSA P-256,
//! `openssl pkeyutl -sign -rawin` for Ed25519, or cosign's `sign-blob`), or
//! with [`sign`] (`kubectl soma capsule sign`).

use base64::Engine;
use sha2::{Digest, Sha256};
use somastack_crds::capsule::{CapsuleSpec, SignatureAlgorithm};

/// First line of every payload; bump it if the format ever changes.
pub const PAYLOAD_HEADER: &str = "somastack.io/capsule-signature/v1";

/// The bytes a publisher signs for a capsule release.
///
/// One `key:value` line per field, in this order, each ending with `\n`:
/// header, publisher, package, version, image, digest (the `sha256:` part of
/// the image), capabilities (sorted, de-duplicated, comma-separated; empty
/// when none), dataClassification. The CRD schema keeps newlines out of
/// every value, so the encoding is unambiguous.
pub fn canonical_payload(spec: &CapsuleSpec) -> Vec<u8> {
    let mut capabilities: Vec<&str> = spec.capabilities.iter().map(String::as_str).collect();
    capabilities.sort_unstable();
    capabilities.dedup();
    let digest = spec.image.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    format!(
        "{PAYLOAD_HEADER}\npublisher:{}\npackage:{}\nversion:{}\nimage:{}\ndigest:{}\ncapabilities:{}\ndataClassification:{}\n",
        spec.publisher,
        spec.package,
        spec.version,
        spec.image,
        digest,
        capabilities.join(","),
        spec.data_classification,
    )
    .into_bytes()
}

/// `sha256:<hex>` of the canonical payload. Approvals are bound to it, so
/// any change to a signed field invalidates an earlier approval.
pub fn payload_digest(spec: &CapsuleSpec) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(canonical_payload(spec))))
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature value is not valid base64")]
    BadEncoding,
    #[error("public key {0} is not a valid PEM public key for the signature's algorithm")]
    BadKey(String),
    #[error("signature is malformed for {0}")]
    Malformed(&'static str),
    #[error("signature does not match the capsule's payload")]
    Mismatch,
}

/// Verdicts already reached, by a digest of everything they depend on.
type Verdicts = std::collections::HashMap<[u8; 32], Result<(), VerifyError>>;

/// [`Verdicts`] of this process.
/// Policy judges a Capsule's signature for every Installation of it (each
/// reconcile, each bundle's audit, each admission); before this memo, P-256
/// verification was 70% of the operator's CPU samples while 1,000
/// Installations of one Capsule were created (`perf record`,
/// docs/performance.md). Verification is a pure function of
/// its inputs, so a verdict can be reused; the memo is emptied when full.
static VERDICTS: std::sync::LazyLock<std::sync::Mutex<Verdicts>> = std::sync::LazyLock::new(Default::default);
const VERDICTS_KEPT: usize = 4096;

/// Verifies `signature_b64` over `payload` with the PEM (SPKI) `public_key_pem`.
pub fn verify(
    algorithm: SignatureAlgorithm,
    public_key_pem: &str,
    key_id: &str,
    payload: &[u8],
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let mut h = Sha256::new();
    for part in [
        format!("{algorithm:?}").as_bytes(),
        public_key_pem.as_bytes(),
        key_id.as_bytes(),
        payload,
        signature_b64.as_bytes(),
    ] {
        // Length-prefixed, so that no two inputs hash alike.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let key: [u8; 32] = h.finalize().into();
    if let Some(verdict) = VERDICTS.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return verdict;
    }
    let verdict = verify_now(algorithm, public_key_pem, key_id, payload, signature_b64);
    if let Ok(mut m) = VERDICTS.lock() {
        if m.len() >= VERDICTS_KEPT {
            m.clear();
        }
        m.insert(key, verdict.clone());
    }
    verdict
}

/// [`verify`], without the memo.
fn verify_now(
    algorithm: SignatureAlgorithm,
    public_key_pem: &str,
    key_id: &str,
    payload: &[u8],
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| VerifyError::BadEncoding)?;
    match algorithm {
        SignatureAlgorithm::EcdsaP256Sha256 => {
            use p256::ecdsa::signature::Verifier;
            use p256::pkcs8::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_pem(public_key_pem.trim())
                .map_err(|_| VerifyError::BadKey(key_id.to_string()))?;
            // openssl and cosign emit ASN.1 DER; accept raw r||s as well.
            let sig = p256::ecdsa::Signature::from_der(&signature)
                .or_else(|_| p256::ecdsa::Signature::from_slice(&signature))
                .map_err(|_| VerifyError::Malformed("ecdsa-p256-sha256"))?;
            // OpenSSL may produce a high-S signature; both forms are valid ECDSA.
            let sig = sig.normalize_s();
            key.verify(payload, &sig).map_err(|_| VerifyError::Mismatch)
        }
        SignatureAlgorithm::Ed25519 => {
            use ed25519_dalek::pkcs8::DecodePublicKey;
            let key = ed25519_dalek::VerifyingKey::from_public_key_pem(public_key_pem.trim())
                .map_err(|_| VerifyError::BadKey(key_id.to_string()))?;
            let sig = ed25519_dalek::Signature::from_slice(&signature)
                .map_err(|_| VerifyError::Malformed("ed25519"))?;
            key.verify_strict(payload, &sig)
                .map_err(|_| VerifyError::Mismatch)
        }
    }
}

/// Why a private key could not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error(
        "is not an ECDSA P-256 or Ed25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----, as `openssl genpkey` writes it)"
    )]
    UnusableKey,
}

/// Signs `payload` with the PKCS#8 PEM private key `private_key_pem`, as a
/// publisher does: the key decides the algorithm (EC P-256:
/// `ecdsa-p256-sha256`, ASN.1 DER; Ed25519: `ed25519`, 64 bytes). The
/// signature in base64, as `spec.signature.value` holds it. Both schemes
/// are deterministic (RFC 6979, RFC 8032): no randomness is needed.
pub fn sign(private_key_pem: &str, payload: &[u8]) -> Result<(SignatureAlgorithm, String), SignError> {
    let pem = private_key_pem.trim();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            let sig: p256::ecdsa::Signature = key.sign(payload);
            return Ok((SignatureAlgorithm::EcdsaP256Sha256, b64(sig.to_der().as_bytes())));
        }
    }
    {
        use ed25519_dalek::Signer;
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok((SignatureAlgorithm::Ed25519, b64(&key.sign(payload).to_bytes())));
        }
    }
    Err(SignError::UnusableKey)
}

/// What a trusted public key is, once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Ed25519,
}

/// Checks that `pem` is one public key the operator can verify signatures
/// with: a single `PUBLIC KEY` PEM block (SubjectPublicKeyInfo) holding an
/// ECDSA P-256 or an Ed25519 key. RSA, other curves (P-384, secp256k1),
/// garbage and extra blocks are refused, each with a sentence saying why.
pub fn check_public_key(pem: &str) -> Result<KeyKind, String> {
    let pem = pem.trim();
    let blocks = pem.matches("-----BEGIN ").count();
    if blocks != 1 {
        return Err(format!(
            "must hold exactly one PEM block (found {blocks}): the key alone, as `openssl pkey -pubout` writes it"
        ));
    }
    if !pem.starts_with("-----BEGIN PUBLIC KEY-----") || !pem.ends_with("-----END PUBLIC KEY-----") {
        return Err("must be a PEM public key (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----) and nothing else".into());
    }
    {
        use p256::pkcs8::DecodePublicKey;
        if p256::ecdsa::VerifyingKey::from_public_key_pem(pem).is_ok() {
            return Ok(KeyKind::EcdsaP256);
        }
    }
    {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        if ed25519_dalek::VerifyingKey::from_public_key_pem(pem).is_ok() {
            return Ok(KeyKind::Ed25519);
        }
    }
    Err(describe_unusable_key(pem))
}

/// Why a well-formed PEM is not a usable key: names the algorithm when the
/// SubjectPublicKeyInfo says which (RSA, or the curve of an EC key).
fn describe_unusable_key(pem: &str) -> String {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return "is not a valid PEM: its body is not base64".into();
    };
    // DER encodings of the object identifiers a SubjectPublicKeyInfo names.
    const KNOWN: [(&[u8], &str); 5] = [
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            "an RSA key",
        ),
        (&[0x2b, 0x81, 0x04, 0x00, 0x22], "an ECDSA key on curve P-384"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x23], "an ECDSA key on curve P-521"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x0a], "an ECDSA key on curve secp256k1"),
        (&[0x2b, 0x65, 0x71], "an Ed448 key"),
    ];
    let found = KNOWN
        .iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, what)| *what);
    match found {
        Some(what) => format!("is {what}; only ECDSA P-256 and Ed25519 keys are supported"),
        None => "is not an ECDSA P-256 or Ed25519 public key (SubjectPublicKeyInfo)".into(),
    }
}

#[cfg(test)]
mod tests {
    //! Signatures here are made by the real `openssl` command line, never by
    //! the code under test.
    use super::*;
    use somastack_crds::common::DataClassification;
    use somastack_tests::fixtures::{Key, Scratch};

    fn spec() -> CapsuleSpec {
        CapsuleSpec {
            package: "summarizer".into(),
            version: "1.4.2".into(),
            publisher: "acme-agents".into(),
            image: "r.example/agents/summarizer@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4"
                .into(),
            ports: vec![],
            env: vec![],
            resources: None,
            capabilities: vec!["network-egress".into(), "llm-inference".into(), "network-egress".into()],
            data_classification: DataClassification::Confidential,
            health_path: None,
            ready_path: None,
            signature: None,
        }
    }

    fn keypair(dir: &Scratch, algorithm: SignatureAlgorithm) -> Key {
        match algorithm {
            SignatureAlgorithm::EcdsaP256Sha256 => Key::ecdsa(dir, &somastack_tests::unique_suffix()),
            SignatureAlgorithm::Ed25519 => Key::ed25519(dir, &somastack_tests::unique_suffix()),
        }
    }

    #[test]
    fn payload_is_the_documented_bytes() {
        let expected = "somastack.io/capsule-signature/v1\n\
            publisher:acme-agents\n\
            package:summarizer\n\
            version:1.4.2\n\
            image:r.example/agents/summarizer@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4\n\
            digest:sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4\n\
            capabilities:llm-inference,network-egress\n\
            dataClassification:confidential\n";
        assert_eq!(String::from_utf8(canonical_payload(&spec())).unwrap(), expected);
    }

    #[test]
    fn digest_follows_signed_fields_only() {
        let base = payload_digest(&spec());
        assert!(base.starts_with("sha256:") && base.len() == 71);
        let mut other = spec();
        other.env.push(somastack_crds::capsule::EnvVar {
            name: "X".into(),
            value: "1".into(),
        });
        assert_eq!(
            payload_digest(&other),
            base,
            "env is not part of the signed payload"
        );
        other.version = "1.4.3".into();
        assert_ne!(payload_digest(&other), base);
        let mut reordered = spec();
        reordered.capabilities.reverse();
        assert_eq!(
            payload_digest(&reordered),
            base,
            "capability order does not matter"
        );
    }

    #[test]
    fn only_p256_and_ed25519_keys_are_usable() {
        let dir = Scratch::new("keys");
        assert_eq!(
            check_public_key(&Key::ecdsa(&dir, "p256").public_pem),
            Ok(KeyKind::EcdsaP256)
        );
        assert_eq!(
            check_public_key(&Key::ed25519(&dir, "ed").public_pem),
            Ok(KeyKind::Ed25519)
        );
        for (algorithm, expect) in [
            (
                Key::other(
                    &dir,
                    "rsa",
                    &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                ),
                "an RSA key",
            ),
            (
                Key::other(
                    &dir,
                    "p384",
                    &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                ),
                "curve P-384",
            ),
            (
                Key::other(
                    &dir,
                    "k1",
                    &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
                ),
                "curve secp256k1",
            ),
        ] {
            let err = check_public_key(&algorithm).unwrap_err();
            assert!(err.contains(expect), "{err}");
        }
        let good = Key::ecdsa(&dir, "twice").public_pem;
        let err = check_public_key(&format!("{good}{good}")).unwrap_err();
        assert!(err.contains("exactly one PEM block (found 2)"), "{err}");
        let garbage = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----";
        assert!(
            check_public_key(garbage)
                .unwrap_err()
                .contains("not an ECDSA P-256 or Ed25519")
        );
        let not_base64 = "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----";
        assert!(check_public_key(not_base64).unwrap_err().contains("not base64"));
        assert!(check_public_key("hello").unwrap_err().contains("found 0"));
    }

    fn roundtrip(algorithm: SignatureAlgorithm) {
        let dir = Scratch::new("ok");
        let key = keypair(&dir, algorithm);
        let payload = canonical_payload(&spec());
        // Several signatures: ECDSA ones differ each time (and some are high-S).
        for _ in 0..4 {
            let sig = key.sign(&dir, &payload);
            assert_eq!(verify(algorithm, &key.public_pem, "k", &payload, &sig), Ok(()));
        }
    }

    #[test]
    fn openssl_ecdsa_p256_signature_verifies() {
        roundtrip(SignatureAlgorithm::EcdsaP256Sha256);
    }

    #[test]
    fn openssl_ed25519_signature_verifies() {
        roundtrip(SignatureAlgorithm::Ed25519);
    }

    #[test]
    fn tampered_payload_is_a_mismatch() {
        for algorithm in [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::Ed25519] {
            let dir = Scratch::new("tamper");
            let key = keypair(&dir, algorithm);
            let sig = key.sign(&dir, &canonical_payload(&spec()));
            let mut changed = spec();
            changed.capabilities.push("shell".into());
            assert_eq!(
                verify(
                    algorithm,
                    &key.public_pem,
                    "k",
                    &canonical_payload(&changed),
                    &sig
                ),
                Err(VerifyError::Mismatch)
            );
        }
    }

    #[test]
    fn another_key_is_a_mismatch() {
        let dir = Scratch::new("otherkey");
        let key = keypair(&dir, SignatureAlgorithm::EcdsaP256Sha256);
        let sig = key.sign(&dir, &canonical_payload(&spec()));
        let other_public = keypair(&dir, SignatureAlgorithm::EcdsaP256Sha256).public_pem;
        assert_eq!(
            verify(
                SignatureAlgorithm::EcdsaP256Sha256,
                &other_public,
                "k",
                &canonical_payload(&spec()),
                &sig
            ),
            Err(VerifyError::Mismatch)
        );
    }

    /// What [`sign`] makes verifies with the `openssl` command line (the
    /// independent check), for both algorithms; other keys are refused.
    #[test]
    fn signatures_made_here_verify_with_openssl() {
        use base64::Engine;
        let dir = Scratch::new("sign");
        let payload = canonical_payload(&spec());
        for algorithm in [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::Ed25519] {
            let key = keypair(&dir, algorithm);
            let private = std::fs::read_to_string(&key.private).unwrap();
            let (made, value) = sign(&private, &payload).unwrap();
            assert_eq!(made, algorithm);
            let sig = dir.path("sig");
            std::fs::write(
                &sig,
                base64::engine::general_purpose::STANDARD.decode(&value).unwrap(),
            )
            .unwrap();
            let data = dir.path("payload");
            std::fs::write(&data, &payload).unwrap();
            let public = dir.path("pub.pem");
            std::fs::write(&public, &key.public_pem).unwrap();
            let (p, s, d) = (
                public.to_str().unwrap(),
                sig.to_str().unwrap(),
                data.to_str().unwrap(),
            );
            let args: Vec<&str> = match algorithm {
                SignatureAlgorithm::Ed25519 => {
                    vec![
                        "pkeyutl", "-verify", "-pubin", "-inkey", p, "-rawin", "-in", d, "-sigfile", s,
                    ]
                }
                SignatureAlgorithm::EcdsaP256Sha256 => {
                    vec!["dgst", "-sha256", "-verify", p, "-signature", s, d]
                }
            };
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{algorithm:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(verify(algorithm, &key.public_pem, "k", &payload, &value), Ok(()));
        }
        let rsa = dir.path("rsa.key");
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa)
            .output()
            .unwrap();
        assert!(out.status.success());
        let rsa = std::fs::read_to_string(&rsa).unwrap();
        assert_eq!(sign(&rsa, &payload), Err(SignError::UnusableKey));
        assert_eq!(sign("garbage", &payload), Err(SignError::UnusableKey));
    }

    #[test]
    fn wrong_algorithm_key_and_garbage_are_reported() {
        let dir = Scratch::new("garbage");
        let ed_public = keypair(&dir, SignatureAlgorithm::Ed25519).public_pem;
        let payload = canonical_payload(&spec());
        assert_eq!(
            verify(
                SignatureAlgorithm::EcdsaP256Sha256,
                &ed_public,
                "k1",
                &payload,
                "AAAA"
            ),
            Err(VerifyError::BadKey("k1".into()))
        );
        assert_eq!(
            verify(
                SignatureAlgorithm::Ed25519,
                &ed_public,
                "k1",
                &payload,
                "not base64!"
            ),
            Err(VerifyError::BadEncoding)
        );
        assert_eq!(
            verify(SignatureAlgorithm::Ed25519, &ed_public, "k1", &payload, "AAAA"),
            Err(VerifyError::Malformed("ed25519"))
        );
    }
}
