//! Capsule signatures (controllers/src/domain/signing.rs).
//!
//! Any bytes, as a public key, a signature and a payload: refused with a
//! reason or verified, never a panic, and never accepted for a key that did
//! not sign. Signing any payload with the real keys verifies, and a
//! verification over a changed payload or a changed signature fails. Bytes
//! that are a CapsuleSpec in JSON (the corpus holds the examples'): its
//! canonical payload is well formed, its digest is the payload's, and a
//! change to a signed field invalidates its signature.

#![no_main]

use libfuzzer_sys::fuzz_target;
use somastack_controllers::domain::sha256_hex;
use somastack_controllers::domain::signing::{self, KeyKind, PAYLOAD_HEADER, VerifyError};
use somastack_crds::capsule::{CapsuleSpec, SignatureAlgorithm};
use somastack_fuzz::{KEYS, Key, number};

const ALGORITHMS: [SignatureAlgorithm; 2] =
    [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::Ed25519];

/// Signing is slow in an unoptimized build: payloads past this are only verified.
const MAX_SIGNED_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // As a trusted key, as a PolicyBundle holds it.
    match signing::check_public_key(&text) {
        Ok(kind) => {
            // A key accepted here is one verify() can use: with it, a
            // signature fails to match, not to load.
            let algorithm = match kind {
                KeyKind::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
                KeyKind::Ed25519 => SignatureAlgorithm::Ed25519,
            };
            let zero = "A".repeat(if kind == KeyKind::Ed25519 { 88 } else { 96 });
            let verdict = signing::verify(algorithm, &text, "k", b"payload", &zero);
            assert!(
                !matches!(verdict, Ok(()) | Err(VerifyError::BadKey(_))),
                "check_public_key accepted {text:?} as {kind:?}, but verify says {verdict:?}"
            );
        }
        Err(why) => assert!(!why.is_empty(), "a key refused without a reason: {text:?}"),
    }

    // As a signature over itself, with the real keys: it cannot verify (the
    // fuzzer holds no private key); as a key: refused or a mismatch.
    for key in &KEYS {
        for algorithm in ALGORITHMS {
            let verdict = signing::verify(algorithm, key.public_pem, key.id, data, &text);
            assert!(
                verdict.is_err(),
                "{text:?} verified as a {algorithm:?} signature by {}",
                key.id
            );
            let verdict = signing::verify(algorithm, &text, key.id, data, "AAAA");
            assert!(
                verdict.is_err(),
                "{text:?} as a key verified a signature of zeros"
            );
        }
    }

    if data.len() <= MAX_SIGNED_BYTES {
        for key in &KEYS {
            signed_and_changed(key, data, number(data));
        }
    }

    if let Ok(spec) = serde_json::from_slice::<CapsuleSpec>(data) {
        capsule(&spec, number(data));
    }
});

/// `payload` signed with `key` verifies; changed by one bit or one byte, or
/// with its signature changed, or under the other key, it does not.
fn signed_and_changed(key: &Key, payload: &[u8], seed: u64) {
    let (algorithm, signature) = match signing::sign(key.private_pem, payload) {
        Ok(signed) => signed,
        Err(e) => panic!("the key {} no longer signs: {e}", key.id),
    };
    assert_eq!(algorithm, key.algorithm, "key {} signed as {algorithm:?}", key.id);
    assert_eq!(
        signing::verify(algorithm, key.public_pem, key.id, payload, &signature),
        Ok(()),
        "a signature by {} over {payload:?} does not verify",
        key.id
    );
    // verify() trims what a YAML block scalar leaves around the values.
    assert_eq!(
        signing::verify(
            algorithm,
            &format!("\n{}\n", key.public_pem),
            key.id,
            payload,
            &format!(" {signature}\n")
        ),
        Ok(()),
        "a signature by {} does not verify once surrounded by whitespace",
        key.id
    );

    let mut longer = payload.to_vec();
    longer.push(b'\n');
    assert_eq!(
        signing::verify(algorithm, key.public_pem, key.id, &longer, &signature),
        Err(VerifyError::Mismatch),
        "a signature by {} verified over the payload with a byte more",
        key.id
    );
    if !payload.is_empty() {
        let mut flipped = payload.to_vec();
        let at = (seed % payload.len() as u64) as usize;
        flipped[at] ^= 1 << (seed % 8);
        assert_eq!(
            signing::verify(algorithm, key.public_pem, key.id, &flipped, &signature),
            Err(VerifyError::Mismatch),
            "a signature by {} verified over the payload with byte {at} changed",
            key.id
        );
    }

    // One character of the signature changed to another base64 character.
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut changed = signature.clone().into_bytes();
    let body = changed.iter().take_while(|c| **c != b'=').count();
    let at = (seed % body as u64) as usize;
    let was = B64.iter().position(|c| *c == changed[at]).unwrap_or(0);
    changed[at] = B64[(was + 1 + (seed as usize >> 8) % 63) % 64];
    let changed = String::from_utf8_lossy(&changed);
    assert!(
        signing::verify(algorithm, key.public_pem, key.id, payload, &changed).is_err(),
        "signature {changed:?}, one character off {signature:?}, verified"
    );

    for other in KEYS.iter().filter(|k| k.id != key.id) {
        let verdict = signing::verify(algorithm, other.public_pem, other.id, payload, &signature);
        assert_eq!(
            verdict,
            Err(VerifyError::BadKey(other.id.to_string())),
            "a signature by {} checked with key {}",
            key.id,
            other.id
        );
    }
}

/// The canonical payload of `spec` and what a signature over it means.
fn capsule(spec: &CapsuleSpec, seed: u64) {
    let payload = signing::canonical_payload(spec);
    assert!(payload.starts_with(format!("{PAYLOAD_HEADER}\n").as_bytes()));
    assert!(payload.ends_with(b"\n"));
    let fields = [&spec.publisher, &spec.package, &spec.version, &spec.image];
    if !fields
        .into_iter()
        .chain(&spec.capabilities)
        .any(|f| f.contains('\n'))
    {
        // The CRD keeps newlines out of every value: one line per field.
        assert_eq!(payload.iter().filter(|b| **b == b'\n').count(), 8, "{spec:?}");
    }
    assert_eq!(
        signing::payload_digest(spec),
        format!("sha256:{}", sha256_hex(&payload))
    );

    // Capabilities are a set: order and repeats do not change what is signed.
    let mut shuffled = spec.clone();
    shuffled.capabilities.reverse();
    if let Some(first) = shuffled.capabilities.first().cloned() {
        shuffled.capabilities.push(first);
    }
    assert_eq!(signing::canonical_payload(&shuffled), payload);

    // A signed field changed: another payload, so the signature no longer holds.
    let mut changed = spec.clone();
    match seed % 4 {
        0 => changed.version.push('0'),
        1 => changed.image.push('0'),
        2 => changed.publisher.push('x'),
        _ => changed
            .capabilities
            .push(format!("{}x", spec.capabilities.join(""))),
    }
    let changed_payload = signing::canonical_payload(&changed);
    assert_ne!(changed_payload, payload, "{changed:?} signs like {spec:?}");

    if let Some(sig) = &spec.signature {
        for key in &KEYS {
            if signing::verify(sig.algorithm, key.public_pem, &sig.key_id, &payload, &sig.value).is_ok() {
                assert_eq!(
                    signing::verify(
                        sig.algorithm,
                        key.public_pem,
                        &sig.key_id,
                        &changed_payload,
                        &sig.value
                    ),
                    Err(VerifyError::Mismatch),
                    "the signature of {spec:?} still verifies once changed to {changed:?}"
                );
            }
        }
    }
    if payload.len() <= MAX_SIGNED_BYTES {
        for key in &KEYS {
            let Ok((algorithm, value)) = signing::sign(key.private_pem, &payload) else {
                panic!("the key {} no longer signs", key.id)
            };
            assert_eq!(
                signing::verify(algorithm, key.public_pem, key.id, &payload, &value),
                Ok(())
            );
            assert_eq!(
                signing::verify(algorithm, key.public_pem, key.id, &changed_payload, &value),
                Err(VerifyError::Mismatch)
            );
        }
    }
}
