//! The domain layer: the rules more than one part of the operator applies,
//! as pure functions with no API calls and no kube runtime.
//!
//! Kinds (under [`crate::kinds`]) depend on it and never on each other; the
//! admission webhooks and the CLI use the same functions, so a rule is
//! written once whether it refuses a request or shows in a status.
//!
//! - [`capsules`]: which Capsule a reference names; may it run somewhere.
//! - [`review`]: the review protocol of Capsules and project plans.
//! - [`policy`]: PolicyBundles combined, and a request judged against them.
//! - [`bundle_checks`]: a PolicyBundle's own content.
//! - [`signing`]: Capsule signature payloads and their verification.
//! - [`regions`]: where a workload runs now; regions a drill took down.
//! - [`pods`]: what every pod the operator creates has in common.
//! - [`drills`]: drill schedules and tenant bounds.
//! - [`plans`]: project plans' stored size.

pub mod bundle_checks;
pub mod capsules;
pub mod drills;
pub mod plans;
pub mod pods;
pub mod policy;
pub mod regions;
pub mod review;
pub mod signing;

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes` (revision hashes, plan digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
