//! An object's health, from what it reports, by kstatus' rules (the library
//! Flux and kpt use), plus the states SomaStack objects say they are in
//! (suspended, awaiting approval). Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;

/// What an object reports, as health reads it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    pub conditions: &'a [Condition],
    /// `status.phase`, where the kind has one.
    pub phase: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Health {
    /// Reconciled and as asked (kstatus `Current`).
    Current,
    /// Being worked on, or not yet looked at (kstatus `InProgress`).
    InProgress,
    /// Cannot get there without a change (kstatus `Failed`).
    Failed,
    /// Stopped on purpose (spec.suspend, a paused Installation, a halted project).
    Suspended,
    /// Waiting for a reviewer (a Capsule awaiting review, a plan awaiting approval).
    AwaitingApproval,
}

/// A health and the one line that says why: the reason and message of the
/// condition (or phase) that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub health: Health,
    pub reason: String,
    pub message: String,
}

fn condition<'a>(o: &Observed<'a>, type_: &str) -> Option<&'a Condition> {
    o.conditions.iter().find(|c| c.type_ == type_)
}

fn from(health: Health, c: &Condition) -> Verdict {
    Verdict {
        health,
        reason: c.reason.clone(),
        message: c.message.replace('\n', " "),
    }
}

fn verdict(health: Health, reason: &str, message: String) -> Verdict {
    Verdict {
        health,
        reason: reason.to_string(),
        message,
    }
}

/// Phases that are work in progress (for kinds without a `Ready` condition).
const WORKING: [&str; 7] = [
    "Pending",
    "Planning",
    "Running",
    "Waiting",
    "Restoring",
    "Progressing",
    "Degraded",
];

/// The health of an object, in this order:
///
/// 1. `status.observedGeneration` (else the conditions' own) behind
///    `metadata.generation`, or no status yet: `InProgress`, `NotObserved`.
/// 2. `Stalled=True`: `Failed`.
/// 3. `Reconciling=True`: `InProgress`.
/// 4. phase `Suspended` or `Halted`: `Suspended`; phase `AwaitingApproval`,
///    or a condition whose reason is `AwaitingReview`/`AwaitingApproval`:
///    `AwaitingApproval`.
/// 5. `Ready`: `True` is `Current`, anything else `InProgress` (as kstatus).
/// 6. No `Ready` (kinds that do not report one yet): phase `Failed` is
///    `Failed`, a working phase `InProgress`, else `Current`.
pub fn health(o: &Observed<'_>) -> Verdict {
    let generation = o.generation.unwrap_or(0);
    // Kinds that keep no status.observedGeneration: their conditions' own
    // (Ready's, else the newest); no status at all: not looked at yet.
    let observed = o.observed_generation.or_else(|| {
        condition(o, "Ready")
            .and_then(|c| c.observed_generation)
            .or_else(|| o.conditions.iter().filter_map(|c| c.observed_generation).max())
    });
    match observed {
        Some(seen) if seen >= generation => {}
        Some(seen) => {
            return verdict(
                Health::InProgress,
                "NotObserved",
                format!("generation {generation} is not observed yet (status describes {seen})"),
            );
        }
        None if o.conditions.is_empty() => {
            return verdict(
                Health::InProgress,
                "NotObserved",
                "the operator has not reported on it yet".into(),
            );
        }
        None => {}
    }
    let is_true = |t: &str| condition(o, t).filter(|c| c.status == "True");
    if let Some(c) = is_true("Stalled") {
        return from(Health::Failed, c);
    }
    if let Some(c) = is_true("Reconciling") {
        return from(Health::InProgress, c);
    }
    // The condition that is not True and says why, for verdicts from a phase.
    let first_not_true = || o.conditions.iter().find(|c| c.status != "True");
    let by_phase = |health: Health, phase: &str| match first_not_true() {
        Some(c) => from(health, c),
        None => verdict(health, phase, String::new()),
    };
    match o.phase {
        Some(p @ ("Suspended" | "Halted")) => return by_phase(Health::Suspended, p),
        Some(p @ "AwaitingApproval") => return by_phase(Health::AwaitingApproval, p),
        _ => {}
    }
    if let Some(c) = o
        .conditions
        .iter()
        .find(|c| c.status != "True" && matches!(c.reason.as_str(), "AwaitingReview" | "AwaitingApproval"))
    {
        return from(Health::AwaitingApproval, c);
    }
    if let Some(ready) = condition(o, "Ready") {
        let health = if ready.status == "True" {
            Health::Current
        } else {
            Health::InProgress
        };
        return from(health, ready);
    }
    match o.phase {
        Some(p @ "Failed") => by_phase(Health::Failed, p),
        Some(p) if WORKING.contains(&p) => by_phase(Health::InProgress, p),
        Some(p) => match o.conditions.first() {
            Some(c) => from(Health::Current, c),
            None => verdict(Health::Current, p, String::new()),
        },
        None => match o.conditions.first() {
            Some(c) => from(Health::Current, c),
            None => verdict(Health::Current, "", String::new()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    fn of(conditions: &[Condition], phase: Option<&str>) -> Verdict {
        health(&Observed {
            generation: Some(2),
            observed_generation: Some(2),
            conditions,
            phase,
        })
    }

    #[test]
    fn stalled_is_failed_whatever_ready_says() {
        let v = of(
            &[
                c("Ready", "True", "Installable", ""),
                c("Stalled", "True", "RolledBack", "rolled back to revision 1"),
            ],
            None,
        );
        assert_eq!(
            v,
            Verdict {
                health: Health::Failed,
                reason: "RolledBack".into(),
                message: "rolled back to revision 1".into()
            }
        );
    }

    #[test]
    fn reconciling_or_a_stale_generation_is_in_progress() {
        let v = of(
            &[
                c("Ready", "True", "Ready", ""),
                c("Reconciling", "True", "Progressing", "2 of 3 replicas"),
            ],
            None,
        );
        assert_eq!((v.health, v.reason.as_str()), (Health::InProgress, "Progressing"));
        let ready = [c("Ready", "True", "Ready", "")];
        let stale = health(&Observed {
            generation: Some(3),
            observed_generation: Some(2),
            conditions: &ready,
            phase: None,
        });
        assert_eq!(
            (stale.health, stale.reason.as_str()),
            (Health::InProgress, "NotObserved")
        );
        assert!(stale.message.contains("generation 3"), "{}", stale.message);
        let never = health(&Observed {
            generation: Some(1),
            ..Default::default()
        });
        assert_eq!(never.health, Health::InProgress);
        // Without status.observedGeneration, the conditions' own count.
        let mut seen = c("Ready", "True", "Installable", "");
        seen.observed_generation = Some(3);
        let by_condition = |generation| {
            health(&Observed {
                generation: Some(generation),
                observed_generation: None,
                conditions: std::slice::from_ref(&seen),
                phase: None,
            })
            .health
        };
        assert_eq!(by_condition(3), Health::Current);
        assert_eq!(by_condition(4), Health::InProgress);
        // The generation check comes first: a stalled status of an older spec is not the verdict.
        let stalled = [c("Stalled", "True", "X", "")];
        let v = health(&Observed {
            generation: Some(3),
            observed_generation: Some(2),
            conditions: &stalled,
            phase: None,
        });
        assert_eq!(v.health, Health::InProgress);
    }

    #[test]
    fn ready_decides_when_nothing_else_does() {
        let v = of(&[c("Ready", "True", "Available", "3/3 replicas")], Some("Ready"));
        assert_eq!(
            (v.health, v.reason.as_str(), v.message.as_str()),
            (Health::Current, "Available", "3/3 replicas")
        );
        let v = of(
            &[c(
                "Ready",
                "False",
                "PolicyViolation",
                "region refused\nby bundle",
            )],
            Some("Blocked"),
        );
        assert_eq!(
            (v.health, v.reason.as_str(), v.message.as_str()),
            (Health::InProgress, "PolicyViolation", "region refused by bundle")
        );
    }

    #[test]
    fn suspended_and_awaiting_approval_where_the_object_says_so() {
        let v = of(
            &[c("Succeeded", "Unknown", "Suspended", "suspended: no run starts")],
            Some("Suspended"),
        );
        assert_eq!((v.health, v.reason.as_str()), (Health::Suspended, "Suspended"));
        let v = of(
            &[c(
                "Approved",
                "False",
                "AwaitingApproval",
                "approve plan sha256:ab",
            )],
            Some("AwaitingApproval"),
        );
        assert_eq!(
            (v.health, v.message.as_str()),
            (Health::AwaitingApproval, "approve plan sha256:ab")
        );
        let capsule = of(
            &[
                c("Approved", "False", "AwaitingReview", "needs a review"),
                c("Ready", "False", "NotApproved", ""),
                c("Verified", "True", "SignatureValid", ""),
            ],
            None,
        );
        assert_eq!(
            (capsule.health, capsule.reason.as_str()),
            (Health::AwaitingApproval, "AwaitingReview")
        );
    }

    #[test]
    fn kinds_without_ready_read_their_phase() {
        let failed = of(
            &[c("Succeeded", "False", "RtoMissed", "RTO 12s > 5s")],
            Some("Failed"),
        );
        assert_eq!(
            (failed.health, failed.reason.as_str()),
            (Health::Failed, "RtoMissed")
        );
        let running = of(&[c("Succeeded", "Unknown", "Running", "")], Some("Running"));
        assert_eq!(running.health, Health::InProgress);
        let done = of(&[c("Succeeded", "True", "Passed", "RTO 2s")], Some("Succeeded"));
        assert_eq!((done.health, done.reason.as_str()), (Health::Current, "Passed"));
        assert_eq!(of(&[], None).health, Health::Current);
    }
}
