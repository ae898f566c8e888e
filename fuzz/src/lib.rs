//! What the fuzz targets share: the real keys and example objects they
//! judge inputs against, read from the repository's own files.
//!
//! A fuzz target panics on purpose when a property fails (that is how
//! libFuzzer learns of it), so `panic!`/`assert!` are the point here; what
//! comes from the fuzzer is never unwrapped.

use std::sync::{Arc, LazyLock};

use somastack_crds::capsule::SignatureAlgorithm;
use somastack_crds::{Capsule, PolicyBundle};

/// A signing key the fuzz targets sign with, and its public half.
pub struct Key {
    pub id: &'static str,
    pub algorithm: SignatureAlgorithm,
    pub private_pem: &'static str,
    pub public_pem: &'static str,
}

/// The example publisher's P-256 key (examples/keys, trusted by
/// examples/10-policybundle.yaml) and an Ed25519 key made with openssl for
/// the fuzz targets (fuzz/keys).
pub const KEYS: [Key; 2] = [
    Key {
        id: "acme-agents-2026",
        algorithm: SignatureAlgorithm::EcdsaP256Sha256,
        private_pem: include_str!("../../examples/keys/acme-agents-demo.key"),
        public_pem: include_str!("../../examples/keys/acme-agents-demo.pub"),
    },
    Key {
        id: "fuzz-ed25519",
        algorithm: SignatureAlgorithm::Ed25519,
        private_pem: include_str!("../keys/fuzz-ed25519.key"),
        public_pem: include_str!("../keys/fuzz-ed25519.pub"),
    },
];

fn example<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
    match serde_saphyr::from_str(yaml) {
        Ok(k) => k,
        // The repository's own file, not fuzzer input: a broken example is a bug to see at once.
        Err(e) => panic!("an example in examples/ does not parse: {e}"),
    }
}

/// The example Capsule (examples/20-capsule.yaml), signed with the P-256 key.
pub static CAPSULE: LazyLock<Arc<Capsule>> =
    LazyLock::new(|| Arc::new(example(include_str!("../../examples/20-capsule.yaml"))));

/// The example PolicyBundle (examples/10-policybundle.yaml).
pub static BUNDLE: LazyLock<Arc<PolicyBundle>> =
    LazyLock::new(|| Arc::new(example(include_str!("../../examples/10-policybundle.yaml"))));

/// A few bytes of fuzzer input as a number (0 when there are none).
pub fn number(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).fold(0u64, |n, b| (n << 8) | u64::from(*b))
}
