//! The record of PolicyBundle writes the admission webhook let through, so
//! that any replica can judge an Installation from its cache and still see
//! every bundle written before the request.
//!
//! A bundle and an Installation applied together (one `kubectl apply`, one
//! GitOps sync) must be judged together: the bundle's write has returned
//! before the Installation's request starts, but a replica's cache can lag
//! it by a few milliseconds. A consistent list of PolicyBundles closes that
//! gap, but the API server answers it from its watch cache only once that
//! cache has caught up with etcd, and under load that wait is one progress
//! notification away (up to 100 ms). A GET of one object is read from etcd
//! directly, in a millisecond or two. So:
//!
//! - the PolicyBundle webhook, before it allows a create, a change of spec
//!   or a delete, records `name -> digest of the spec` (or `gone`) in one
//!   ConfigMap ([`record`]);
//! - the Installation and project webhooks GET that ConfigMap and use their
//!   cache only when it shows every recorded bundle as recorded
//!   ([`lagging`]); otherwise they list, as before.
//!
//! A write that was let through and then never stored (another webhook
//! refused it, a conflict) leaves a record the cache never matches; once it
//! is older than [`GRACE`], a webhook that listed and saw otherwise repairs
//! it ([`repairs`]). Records of deleted bundles are dropped after
//! [`FORGET_GONE`]. All of it is pure; `operator/src/webhook` reads and
//! writes the ConfigMap.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use somastack_crds::PolicyBundleSpec;

/// How long a write that was let through may still be on its way to etcd
/// (the API server's request timeout is 60 s).
pub const GRACE_SECONDS: i64 = 120;
/// How long the record of a deleted bundle is kept.
pub const FORGET_GONE_SECONDS: i64 = 3600;

/// What a bundle was written as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Created or changed to a spec of this digest.
    Spec(String),
    /// Deleted.
    Gone,
}

/// One bundle's record: what it was written as, and when (Unix seconds).
/// A value nobody can read (edited by hand) is `None`: it matches nothing,
/// so the webhook lists until it is repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub written: Option<Written>,
    pub at: i64,
}

/// The digest a bundle's spec is recorded by.
pub fn digest(spec: &PolicyBundleSpec) -> String {
    // The spec serializes the same way each time (fields in declaration
    // order, maps ordered): equal specs give equal digests.
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

fn format(written: &Written, at: i64) -> String {
    match written {
        Written::Spec(d) => format!("{d} {at}"),
        Written::Gone => format!("gone {at}"),
    }
}

fn parse(value: &str) -> Entry {
    let (what, at) = value.split_once(' ').unwrap_or((value, ""));
    let at = at.parse().unwrap_or(0);
    let written = match what {
        "gone" => Some(Written::Gone),
        d if d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()) => Some(Written::Spec(d.into())),
        _ => None,
    };
    Entry { written, at }
}

/// The record held in the ConfigMap's data.
pub fn read(data: &BTreeMap<String, String>) -> BTreeMap<String, Entry> {
    data.iter().map(|(k, v)| (k.clone(), parse(v))).collect()
}

/// The merge patch of the ConfigMap's `data` recording `name` as `written`
/// at `now`, and dropping records of bundles deleted more than
/// [`FORGET_GONE_SECONDS`] ago (from `data`, the record as last read).
pub fn record(data: &BTreeMap<String, String>, name: &str, written: &Written, now: i64) -> Value {
    let mut patch = Map::new();
    for (k, e) in read(data) {
        if k != name && e.written == Some(Written::Gone) && now - e.at > FORGET_GONE_SECONDS {
            patch.insert(k, Value::Null);
        }
    }
    patch.insert(name.into(), Value::String(format(written, now)));
    json!({ "data": patch })
}

/// The recorded bundles the cache does not show as recorded. `cached(name)`
/// is the digest of the cached bundle's spec (`None`: not in the cache).
pub fn lagging(record: &BTreeMap<String, Entry>, cached: impl Fn(&str) -> Option<String>) -> Vec<String> {
    record
        .iter()
        .filter(|(name, e)| {
            let seen = cached(name);
            match &e.written {
                Some(Written::Spec(d)) => seen.as_deref() != Some(d.as_str()),
                Some(Written::Gone) => seen.is_some(),
                None => true,
            }
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// After a consistent list (`listed`: name -> digest of every bundle that
/// exists) disagreed with the record: the entries older than
/// [`GRACE_SECONDS`] it contradicts, as values to write (their writes were
/// let through and never stored). Younger ones may still be on their way.
pub fn repairs(
    record: &BTreeMap<String, Entry>,
    listed: &BTreeMap<String, String>,
    now: i64,
) -> BTreeMap<String, String> {
    record
        .iter()
        .filter(|(_, e)| now - e.at > GRACE_SECONDS || e.written.is_none())
        .filter_map(|(name, e)| {
            let truth = match listed.get(name) {
                Some(d) => Written::Spec(d.clone()),
                None => Written::Gone,
            };
            (e.written.as_ref() != Some(&truth)).then(|| (name.clone(), format(&truth, now)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn spec(enforcement: &str) -> PolicyBundleSpec {
        serde_json::from_value(json!({ "enforcement": enforcement })).unwrap()
    }

    fn data(entries: &[(&str, String)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn equal_specs_have_equal_digests_and_others_differ() {
        assert_eq!(digest(&spec("Enforce")), digest(&spec("Enforce")));
        assert_ne!(digest(&spec("Enforce")), digest(&spec("Audit")));
        assert_eq!(digest(&spec("Audit")).len(), 32);
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let d = digest(&spec("Enforce"));
        let patch = record(&BTreeMap::new(), "a", &Written::Spec(d.clone()), NOW);
        let value = patch["data"]["a"].as_str().unwrap().to_string();
        let back = read(&data(&[("a", value)]));
        assert_eq!(
            back["a"],
            Entry {
                written: Some(Written::Spec(d)),
                at: NOW
            }
        );
        let gone = record(&BTreeMap::new(), "b", &Written::Gone, NOW);
        assert_eq!(gone["data"]["b"], "gone 1800000000");
    }

    #[test]
    fn recording_drops_only_old_records_of_deleted_bundles() {
        let old = NOW - FORGET_GONE_SECONDS - 1;
        let current = data(&[
            ("old-gone", format!("gone {old}")),
            ("new-gone", format!("gone {}", NOW - 10)),
            ("old-spec", format!("{} {old}", digest(&spec("Audit")))),
        ]);
        let patch = record(&current, "x", &Written::Gone, NOW);
        let keys: Vec<_> = patch["data"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["old-gone", "x"]);
        assert_eq!(patch["data"]["old-gone"], Value::Null);
    }

    #[test]
    fn the_cache_is_behind_when_it_misses_a_recorded_write() {
        let (a, b) = (digest(&spec("Enforce")), digest(&spec("Audit")));
        let rec = read(&data(&[
            ("a", format!("{a} {NOW}")),
            ("b", format!("gone {NOW}")),
            ("c", "edited by hand".into()),
        ]));
        // The cache: `a` at the recorded spec, `b` still there.
        let cache = |n: &str| match n {
            "a" => Some(a.clone()),
            "b" => Some(b.clone()),
            _ => None,
        };
        assert_eq!(lagging(&rec, cache), ["b", "c"]);
        // `a` at an older spec, `b` gone: only `a` (and the unreadable `c`).
        let cache = |n: &str| (n == "a").then(|| b.clone());
        assert_eq!(lagging(&rec, cache), ["a", "c"]);
        assert!(lagging(&BTreeMap::new(), |_| None).is_empty());
    }

    #[test]
    fn only_old_contradicted_records_are_repaired() {
        let (a, b) = (digest(&spec("Enforce")), digest(&spec("Audit")));
        let old = NOW - GRACE_SECONDS - 1;
        let rec = read(&data(&[
            ("stored", format!("{a} {old}")),
            ("never-stored", format!("{a} {old}")),
            ("never-created", format!("{a} {old}")),
            ("in-flight", format!("{a} {}", NOW - 1)),
            ("unreadable", "?".into()),
        ]));
        let listed: BTreeMap<_, _> = [
            ("stored".to_string(), a.clone()),
            ("never-stored".to_string(), b.clone()),
            ("in-flight".to_string(), b.clone()),
            ("unreadable".to_string(), b.clone()),
        ]
        .into();
        let fixed = repairs(&rec, &listed, NOW);
        assert_eq!(
            fixed,
            BTreeMap::from([
                ("never-created".to_string(), format!("gone {NOW}")),
                ("never-stored".to_string(), format!("{b} {NOW}")),
                ("unreadable".to_string(), format!("{b} {NOW}")),
            ])
        );
    }
}
