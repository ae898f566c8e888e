//! `metav1.Condition` bookkeeping.
//!
//! `lastTransitionTime` moves only when a condition's status flips, so
//! `kubectl wait`, kstatus and Argo CD read transitions, not reconciles.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition's status, as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// What a reconcile wants a condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    /// Positive CamelCase, e.g. `SignatureValid`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Messages longer than this are cut (the API allows 32768; status stays small).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Merges `desired` into `current` and returns the new list, sorted by type.
/// Messages are sanitized and bounded ([`crate::text::bounded`]).
///
/// A condition whose status is unchanged keeps its `lastTransitionTime`; a
/// new or flipped one gets `now`. Conditions of other types are kept as they are.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let previous = current.iter().find(|c| c.type_ == d.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == d.status.as_str() => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: d.type_.to_string(),
            status: d.status.as_str().to_string(),
            reason: d.reason.to_string(),
            // Messages quote what users, planners and agents wrote: never
            // let a control character or an override reach kubectl.
            message: crate::text::bounded(&d.message, MAX_MESSAGE_LEN),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// How GitOps tools should read an object, decided by its kind from what
/// it observed. kstatus (Flux, kpt) reads `Stalled=True` as Failed,
/// `Reconciling=True` (or a stale `observedGeneration`) as InProgress, then
/// `Ready`; Argo CD reads the same conditions through the scripts in
/// `gitops/argocd/` (docs/gitops.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The spec is realized (also a deliberate suspension): `Ready=True`.
    Current,
    /// The controller is at work on it: `Reconciling=True`.
    Progressing,
    /// Nothing moves until a person or another object acts (an approval,
    /// a kill switch release, a Capsule to publish): `Ready=False` alone.
    Waiting,
    /// Failed, and stays so until the spec (or what it names) changes:
    /// `Stalled=True`.
    Stalled,
}

/// The conditions kstatus reads, kept with abnormal-true polarity as Flux
/// does: `Reconciling` and `Stalled` exist only while true.
pub const HEALTH_TYPES: [&str; 2] = ["Reconciling", "Stalled"];

/// Pure: `desired` plus the `Reconciling` or `Stalled` condition `health`
/// asks for: as `desired` gives it, else with the deciding reason and
/// message (those of `Ready`).
pub fn with_health(desired: &[Desired], health: Health) -> Vec<Desired> {
    let mut out: Vec<Desired> = desired
        .iter()
        .filter(|d| !HEALTH_TYPES.contains(&d.type_))
        .cloned()
        .collect();
    let type_ = match health {
        Health::Progressing => "Reconciling",
        Health::Stalled => "Stalled",
        Health::Current | Health::Waiting => return out,
    };
    if let Some(given) = desired.iter().find(|d| d.type_ == type_) {
        out.push(given.clone());
        return out;
    }
    let (reason, message) = desired
        .iter()
        .find(|d| d.type_ == "Ready")
        .map(|r| (r.reason, r.message.clone()))
        .unwrap_or(("Reconciling", String::new()));
    out.push(Desired::new(type_, Status::True, reason, message));
    out
}

/// [`merge`], then the health conditions of [`with_health`]: a
/// `Reconciling` or `Stalled` that `health` does not ask for is removed.
pub fn merge_with_health(
    current: &[Condition],
    desired: &[Desired],
    health: Health,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let desired = with_health(desired, health);
    let mut out = merge(current, &desired, generation, now);
    out.retain(|c| !HEALTH_TYPES.contains(&c.type_.as_str()) || desired.iter().any(|d| d.type_ == c.type_));
    out
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
    }

    /// One merge: a condition (type, status, reason, message), the object's
    /// generation, and the time.
    type Step<'a> = (&'static str, Status, &'static str, &'a str, Option<i64>, i64);

    /// The conditions after merging `steps` one after another into none.
    fn merged(steps: &[Step]) -> Vec<Condition> {
        let mut out = vec![];
        for &(type_, status, reason, message, generation, now) in steps {
            let desired = Desired::new(type_, status, reason, message);
            out = merge(&out, &[desired], generation, &at(now));
        }
        out
    }

    #[test]
    fn new_condition_gets_now() {
        let out = merged(&[("Ready", Status::Unknown, "Reconciling", "m", Some(3), 100)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, "Unknown");
        assert_eq!(out[0].observed_generation, Some(3));
        assert_eq!(out[0].last_transition_time, at(100));
    }

    #[test]
    fn unchanged_status_keeps_transition_time_but_updates_reason_and_message() {
        let second = merged(&[
            ("Ready", Status::False, "Waiting", "a", Some(1), 100),
            ("Ready", Status::False, "StillWaiting", "b", Some(2), 200),
        ]);
        assert_eq!(
            second,
            [Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "StillWaiting".into(),
                message: "b".into(),
                observed_generation: Some(2),
                last_transition_time: at(100),
            }]
        );
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let second = merged(&[
            ("Ready", Status::False, "Waiting", "", None, 100),
            ("Ready", Status::True, "Available", "", None, 200),
        ]);
        assert_eq!(second[0].last_transition_time, at(200));
    }

    #[test]
    fn other_types_are_kept_and_output_is_sorted() {
        let second = merged(&[
            ("Verified", Status::True, "SignatureValid", "", None, 1),
            ("Approved", Status::False, "Rejected", "", None, 2),
        ]);
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Approved", "Verified"]);
        assert_eq!(
            find(&second, "Verified").map(|c| c.last_transition_time.clone()),
            Some(at(1))
        );
    }

    #[test]
    fn health_adds_reconciling_or_stalled_with_readys_reason_and_removes_them_after() {
        let ready = |s, r: &'static str| Desired::new("Ready", s, r, format!("why {r}"));
        let types = |c: &[Condition]| {
            c.iter()
                .map(|c| format!("{}={}:{}", c.type_, c.status, c.reason))
                .collect::<Vec<_>>()
        };
        let progressing = merge_with_health(
            &[],
            &[ready(Status::False, "RollingOut")],
            Health::Progressing,
            Some(1),
            &at(1),
        );
        assert_eq!(
            types(&progressing),
            ["Ready=False:RollingOut", "Reconciling=True:RollingOut"]
        );
        assert_eq!(
            find(&progressing, "Reconciling").map(|c| c.message.as_str()),
            Some("why RollingOut")
        );
        let stalled = merge_with_health(
            &progressing,
            &[ready(Status::False, "ProgressDeadlineExceeded")],
            Health::Stalled,
            Some(1),
            &at(2),
        );
        assert_eq!(
            types(&stalled),
            [
                "Ready=False:ProgressDeadlineExceeded",
                "Stalled=True:ProgressDeadlineExceeded"
            ]
        );
        // Ready did not flip: its transition time stays; Stalled is new.
        assert_eq!(
            find(&stalled, "Ready").map(|c| c.last_transition_time.clone()),
            Some(at(1))
        );
        assert_eq!(
            find(&stalled, "Stalled").map(|c| c.last_transition_time.clone()),
            Some(at(2))
        );
        let waiting = merge_with_health(
            &stalled,
            &[ready(Status::False, "KillSwitchEngaged")],
            Health::Waiting,
            Some(2),
            &at(3),
        );
        assert_eq!(types(&waiting), ["Ready=False:KillSwitchEngaged"]);
        let current = merge_with_health(
            &waiting,
            &[ready(Status::True, "WorkloadReady")],
            Health::Current,
            Some(2),
            &at(4),
        );
        assert_eq!(types(&current), ["Ready=True:WorkloadReady"]);
        // A kind may say why it is stalled in its own words; a Stalled it
        // gives while not stalled is dropped.
        let own = Desired::new("Stalled", Status::True, "RolledBack", "rolled back to 2");
        let rolled_back = with_health(
            &[ready(Status::True, "WorkloadReady"), own.clone()],
            Health::Stalled,
        );
        assert_eq!(rolled_back.last(), Some(&own));
        assert_eq!(
            with_health(&[ready(Status::True, "WorkloadReady"), own], Health::Current).len(),
            1
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let cut = truncate(&long, MAX_MESSAGE_LEN);
        assert!(cut.len() <= MAX_MESSAGE_LEN);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }
}
