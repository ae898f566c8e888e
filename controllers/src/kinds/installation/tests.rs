//! Unit tests of the pure parts: the key, decide, assess, the rollback
//! decision and the status written.

use super::*;
use crate::domain::capsules::{Resolved, may_use};
use crate::domain::review::DECISION_ANNOTATION;
use crate::testing::{capsule, installation};
use serde_json::json;
use somastack_crds::installation::{ACTIVE_REGION_ANNOTATION, UpgradePolicy};
use somastack_crds::policy::{KillSwitch, Limits, PolicyBundleSpec, Residency, ResidencyRule};
use somastack_crds::{Capsule, PolicyBundle};

/// A Deployment of `replicas` replicas, all updated, Ready and Available.
fn rolled_out(replicas: i32) -> Workload {
    Workload {
        exists: true,
        observed: true,
        desired: replicas,
        total: replicas,
        updated: replicas,
        ready: replicas,
        available: true,
        deadline_exceeded: false,
    }
}

/// What `may_install` decides for `inst` running the published `cap`.
fn found(inst: &Installation, cap: &Capsule, bundles: &[Arc<PolicyBundle>], region: &str) -> CapsuleUse {
    may_install(inst, &Resolved::Found(&Arc::new(cap.clone())), bundles, region)
}

/// What `may_install` decides in eu-west-1 for an Installation of `replicas`
/// replicas of the published capsule, under the one PolicyBundle `bundle`.
fn found_in_eu(replicas: i32, bundle: Arc<PolicyBundle>) -> CapsuleUse {
    found(
        &installation(Some(replicas), None),
        &capsule_object(),
        &[bundle],
        "eu-west-1",
    )
}

fn capsule_object() -> Capsule {
    let mut spec = capsule();
    spec.data_classification = somastack_crds::common::DataClassification::Confidential;
    Capsule::new("summarizer-1.4.2", spec)
}

fn bundle(name: &str, f: impl FnOnce(&mut PolicyBundleSpec)) -> Arc<PolicyBundle> {
    let mut spec = PolicyBundleSpec::default();
    f(&mut spec);
    Arc::new(PolicyBundle::new(name, spec))
}

/// A PolicyBundle `name` whose kill switch is engaged for `reason`.
fn kill_switch(name: &str, reason: &str) -> Arc<PolicyBundle> {
    bundle(name, |s| {
        s.kill_switch = Some(KillSwitch {
            engaged: true,
            reason: Some(reason.into()),
        })
    })
}

fn eu_only() -> Arc<PolicyBundle> {
    bundle("eu-only", |s| {
        s.residency = Some(Residency {
            rules: vec![ResidencyRule {
                data_classification: somastack_crds::common::DataClassification::Confidential,
                allowed_regions: vec!["eu-west-1".into(), "eu-central-1".into()],
            }],
        })
    })
}

/// The condition of `type_` among `conditions` (the test fails without one).
fn condition<'a>(conditions: &'a [Desired], type_: &str) -> &'a Desired {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// The condition of `type_` among `conditions`, checked to have `status`
/// and `reason`.
fn condition_is<'a>(conditions: &'a [Desired], type_: &str, status: Status, reason: &str) -> &'a Desired {
    let c = condition(conditions, type_);
    assert_eq!((c.status, c.reason), (status, reason), "the {type_} condition");
    c
}

#[test]
fn missing_capsule_is_pending() {
    let inst = installation(Some(1), None);
    assert_eq!(
        may_install(&inst, &Resolved::Missing, &[], "eu-west-1"),
        CapsuleUse::CapsuleNotFound
    );
    let a = assess(&CapsuleUse::CapsuleNotFound, &Workload::default(), false, false);
    assert_eq!(a.phase, InstallationPhase::Pending);
    condition_is(&a.conditions, "Ready", Status::False, "CapsuleNotFound");
}

#[test]
fn residency_decides_where_it_may_run() {
    let inst = installation(Some(1), None);
    let cap = capsule_object();
    assert!(matches!(
        found(&inst, &cap, &[eu_only()], "eu-west-1"),
        CapsuleUse::Allowed(_)
    ));
    let CapsuleUse::Blocked(eval) = found(&inst, &cap, &[eu_only()], "us-east-1") else {
        panic!("blocked")
    };
    assert!(eval.blocking[0].message.contains("region us-east-1"));
    assert!(eval.blocking[0].message.contains("PolicyBundle eu-only"));
}

#[test]
fn blocked_keeps_the_running_workload_and_says_so() {
    let tight = bundle("tight", |s| {
        s.limits = Some(Limits {
            max_replicas: Some(2),
            ..Default::default()
        })
    });
    let decision = found_in_eu(4, tight);
    let running = rolled_out(4);
    let a = assess(&decision, &running, false, true);
    assert_eq!(a.phase, InstallationPhase::Blocked);
    let compliant = condition_is(&a.conditions, "PolicyCompliant", Status::False, "PolicyViolation");
    assert!(
        compliant
            .message
            .contains("4 replicas exceed the ceiling of 2 (rule maxReplicas, PolicyBundle tight)")
    );
    let ready = condition(&a.conditions, "Ready");
    assert!(ready.message.ends_with("the running workload is left as it was"));
}

#[test]
fn kill_switch_suspends() {
    let stop = kill_switch("stop", "incident");
    let decision = found_in_eu(2, stop);
    let a = assess(
        &decision,
        &Workload {
            exists: true,
            observed: true,
            ..Default::default()
        },
        false,
        true,
    );
    assert_eq!(a.phase, InstallationPhase::Suspended);
    let ready = condition_is(&a.conditions, "Ready", Status::False, "KillSwitchEngaged");
    assert!(ready.message.contains("PolicyBundle stop: incident"));
}

#[test]
fn ready_only_when_rolled_out_and_available() {
    let decision = CapsuleUse::Allowed(Evaluation::default());
    let rolling = Workload {
        total: 4,
        updated: 1,
        ..rolled_out(3)
    };
    let a = assess(&decision, &rolling, false, true);
    assert_eq!(a.phase, InstallationPhase::Progressing);
    condition_is(&a.conditions, "Progressing", Status::True, "RollingOut");

    let done = Workload {
        total: 3,
        updated: 3,
        ..rolling.clone()
    };
    let a = assess(&decision, &done, false, true);
    assert_eq!(a.phase, InstallationPhase::Ready);
    assert!(
        a.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == Status::True)
    );

    let stalled = Workload {
        deadline_exceeded: true,
        ..rolling
    };
    let a = assess(&decision, &stalled, false, true);
    assert_eq!(a.phase, InstallationPhase::Degraded);
    assert!(
        a.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "ProgressDeadlineExceeded")
    );
}

#[test]
fn active_region_accepts_only_failover_regions() {
    let mut inst = installation(Some(1), None);
    assert_eq!(active_region(&inst), "eu-west-1");
    inst.annotations_mut()
        .insert(ACTIVE_REGION_ANNOTATION.into(), "eu-central-1".into());
    assert_eq!(active_region(&inst), "eu-central-1");
    inst.annotations_mut()
        .insert(ACTIVE_REGION_ANNOTATION.into(), "ap-south-1".into());
    assert_eq!(
        active_region(&inst),
        "eu-west-1",
        "not a failover region: stay home"
    );
}

#[test]
fn rejected_capsule_is_unusable() {
    let inst = installation(Some(1), None);
    let mut cap = capsule_object();
    cap.annotations_mut()
        .insert(DECISION_ANNOTATION.into(), "reject".into());
    assert!(matches!(
        found(&inst, &cap, &[], "eu-west-1"),
        CapsuleUse::CapsuleUnusable(_)
    ));
}

#[test]
fn an_automatic_rollback_is_not_repeated_for_the_revision_it_made() {
    let record = RollbackRecord {
        from_revision: 2,
        to_revision: 1,
        trigger: "Automatic".into(),
        reason: String::new(),
        time: crate::status::now(),
    };
    assert!(!already_rolled_back(None, 2, 1));
    assert!(
        already_rolled_back(Some(&record), 3, 1),
        "revision 3 is the rollback itself"
    );
    assert!(
        !already_rolled_back(Some(&record), 4, 2),
        "a later failed upgrade may roll back again"
    );
}

mod admission {
    //! The validating webhook's decisions (crate::admission::installation).
    use super::*;
    use crate::admission::installation as admit;
    use somastack_crds::policy::Enforcement;

    fn in_us() -> Installation {
        let mut inst = installation(Some(1), None);
        inst.spec.region = "us-east-1".into();
        inst.spec.failover_regions = vec![];
        inst
    }

    #[test]
    fn an_enforced_violation_is_denied_naming_rule_and_bundle() {
        let v = admit(&in_us(), None, &[Arc::new(capsule_object())], &[eu_only()]);
        assert_eq!(
            v.denied.as_deref(),
            Some(
                "Installation summarizer violates enforced policy: confidential data may not be processed in \
                 region us-east-1; allowed regions: eu-central-1, eu-west-1 (rule residency, PolicyBundle eu-only)"
            )
        );
    }

    #[test]
    fn an_audit_violation_is_admitted_with_a_warning() {
        let mut audit = (*eu_only()).clone();
        audit.spec.enforcement = Enforcement::Audit;
        let v = admit(&in_us(), None, &[Arc::new(capsule_object())], &[Arc::new(audit)]);
        assert_eq!(v.denied, None);
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(
            v.warnings[0].starts_with("audit: confidential data may not be processed in region us-east-1")
        );
    }

    #[test]
    fn metadata_only_updates_are_not_judged_again() {
        let old = in_us();
        let mut new = old.clone();
        new.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
        let v = admit(&new, Some(&old), &[Arc::new(capsule_object())], &[eu_only()]);
        assert_eq!(v, crate::admission::Answer::default());
        // A spec change is.
        new.spec.replicas = Some(2);
        assert!(
            admit(&new, Some(&old), &[Arc::new(capsule_object())], &[eu_only()])
                .denied
                .is_some()
        );
    }

    #[test]
    fn an_unpublished_capsule_is_admitted_with_a_warning() {
        let v = admit(&in_us(), None, &[], &[eu_only()]);
        assert_eq!(v.denied, None);
        assert_eq!(
            v.warnings,
            vec!["Capsule summarizer version 1.4.2 is not published yet; the Installation waits for it"]
        );
    }

    #[test]
    fn a_kill_switch_is_a_warning_not_a_denial() {
        let kill = kill_switch("freeze", "incident 42");
        let v = admit(
            &installation(Some(1), None),
            None,
            &[Arc::new(capsule_object())],
            &[kill],
        );
        assert_eq!(v.denied, None);
        assert!(v.warnings[0].contains("kill switch engaged by PolicyBundle freeze (incident 42)"));
    }
}

fn published(name: &str, publisher: &str, second: i64) -> Arc<Capsule> {
    let mut c = Capsule::new(name, capsule());
    c.spec.publisher = publisher.into();
    c.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap(),
    ));
    Arc::new(c)
}

#[test]
fn a_package_version_resolves_to_the_first_capsule_published() {
    let wanted = somastack_crds::common::CapsuleRef {
        package: capsule().package,
        version: capsule().version,
    };
    let original = published("z-original", "acme", 0);
    // A later Capsule whose name sorts first never shadows the original.
    let impostor = published("a-impostor", "mallory", 5);
    let both = [impostor.clone(), original.clone()];
    assert_eq!(
        capsules::resolve(&both, &wanted).found().map(|c| c.name_any()),
        Some("z-original".to_string())
    );
    // Nor while the original is being deleted (its Installations hold it).
    let mut deleting = (*original).clone();
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(1_800_000_100).unwrap(),
    ));
    let both = [impostor.clone(), Arc::new(deleting)];
    let resolved = capsules::resolve(&both, &wanted);
    assert_eq!(
        resolved.found().map(|c| c.name_any()),
        Some("z-original".to_string())
    );
    assert!(matches!(
        may_use(&resolved, &[], "eu-west-1", 1),
        CapsuleUse::CapsuleUnusable(_)
    ));
    // Published in the same second: neither is used.
    let tied = [published("b", "acme", 0), published("a", "mallory", 0)];
    let Resolved::Ambiguous(why) = capsules::resolve(&tied, &wanted) else {
        panic!("a tie must be ambiguous");
    };
    assert!(why.contains("a (publisher mallory), b (publisher acme)"), "{why}");
    assert!(matches!(
        may_use(&capsules::resolve(&tied, &wanted), &[], "eu-west-1", 1),
        CapsuleUse::CapsuleUnusable(_)
    ));
    assert!(matches!(capsules::resolve(&[], &wanted), Resolved::Missing));
}

#[test]
fn a_refused_child_blocks_and_says_which() {
    let mut a = assess(
        &CapsuleUse::Allowed(Evaluation::default()),
        &Workload::default(),
        false,
        false,
    );
    a.refused("the API server refused Deployment app: field is immutable");
    assert_eq!(a.phase, InstallationPhase::Blocked);
    let ready: Vec<&Desired> = a.conditions.iter().filter(|c| c.type_ == "Ready").collect();
    assert_eq!(ready.len(), 1);
    assert_eq!(
        (ready[0].status, ready[0].reason),
        (Status::False, "ChildRejected")
    );
    assert!(
        ready[0]
            .message
            .starts_with("the API server refused Deployment app")
    );
    // A write that may pass says so too, and keeps the phase the workload shows.
    let mut b = assess(
        &CapsuleUse::Allowed(Evaluation::default()),
        &Workload::default(),
        false,
        false,
    );
    let phase = b.phase;
    b.failed("could not write Service app: range is full");
    assert_eq!(b.phase, phase);
    let ready = condition_is(&b.conditions, "Ready", Status::False, "ApplyFailed");
    assert_eq!(
        ready.message,
        "could not write Service app: range is full; retrying"
    );
}

mod rollback {
    //! The automatic-rollback decision.
    use super::*;

    /// An Installation that asks for automatic rollback within 120s.
    fn watched() -> InstallationSpec {
        let mut spec = installation(Some(2), None).spec;
        spec.upgrade = Some(UpgradePolicy {
            gate: None,
            auto_rollback: true,
            progress_deadline_seconds: 120,
        });
        spec
    }

    /// The Deployment controller saw the current spec and gave up on it:
    /// one of two replicas updated, past the deadline.
    fn stalled() -> Workload {
        Workload {
            total: 3,
            updated: 1,
            deadline_exceeded: true,
            ..rolled_out(2)
        }
    }

    fn record(from: i64, to: i64) -> RollbackRecord {
        RollbackRecord {
            from_revision: from,
            to_revision: to,
            trigger: "Automatic".into(),
            reason: String::new(),
            time: crate::status::now(),
        }
    }

    #[test]
    fn a_stalled_revision_rolls_back_to_the_last_available_one() {
        assert_eq!(
            rollback_decision(&watched(), &stalled(), Some(3), Some(2), None),
            Some(RollbackPlan {
                from: 3,
                to: 2,
                reason:
                    "revision 3 (summarizer 1.4.2) was not Available within 120s; rolled back to revision 2"
                        .into(),
            })
        );
        // A rollback to an earlier target does not stop a later one.
        assert!(rollback_decision(&watched(), &stalled(), Some(5), Some(4), Some(&record(2, 1))).is_some());
    }

    #[test]
    fn not_while_paused() {
        let mut spec = watched();
        spec.paused = true;
        assert_eq!(rollback_decision(&spec, &stalled(), Some(3), Some(2), None), None);
    }

    #[test]
    fn not_unless_asked_for() {
        let mut spec = watched();
        spec.upgrade = Some(UpgradePolicy {
            gate: None,
            auto_rollback: false,
            progress_deadline_seconds: 120,
        });
        assert_eq!(rollback_decision(&spec, &stalled(), Some(3), Some(2), None), None);
        spec.upgrade = None;
        assert_eq!(rollback_decision(&spec, &stalled(), Some(3), Some(2), None), None);
    }

    #[test]
    fn not_before_the_deadline_nor_on_a_verdict_about_an_older_deployment_spec() {
        for (why, workload) in [
            (
                "in time",
                Workload {
                    deadline_exceeded: false,
                    ..stalled()
                },
            ),
            (
                "an old verdict",
                Workload {
                    observed: false,
                    ..stalled()
                },
            ),
            (
                "rolled out",
                Workload {
                    total: 2,
                    updated: 2,
                    ..stalled()
                },
            ),
        ] {
            assert_eq!(
                rollback_decision(&watched(), &workload, Some(3), Some(2), None),
                None,
                "{why}"
            );
        }
    }

    #[test]
    fn not_twice_to_the_same_target() {
        // Revision 4 is the rollback from 3 to 2: it failed too.
        assert_eq!(
            rollback_decision(&watched(), &stalled(), Some(4), Some(2), Some(&record(3, 2))),
            None
        );
    }

    #[test]
    fn not_without_an_earlier_available_revision() {
        for (current, last_available) in [(Some(1), None), (Some(2), Some(2)), (None, Some(2))] {
            assert_eq!(
                rollback_decision(&watched(), &stalled(), current, last_available, None),
                None,
                "current {current:?}, last available {last_available:?}"
            );
        }
    }
}

#[test]
fn the_key_is_namespace_name_and_uid_or_says_what_is_missing() {
    let inst = installation(Some(1), None);
    assert_eq!(
        ObjectKey::of(&inst).unwrap(),
        ObjectKey {
            namespace: "tenant".into(),
            name: "summarizer".into(),
            uid: "uid-1".into(),
        }
    );
    let mut nowhere = inst.clone();
    nowhere.metadata.namespace = None;
    assert!(matches!(
        ObjectKey::of(&nowhere),
        Err(Error::MissingField("metadata.namespace"))
    ));
    let mut unsaved = inst;
    unsaved.metadata.uid = None;
    assert!(matches!(
        ObjectKey::of(&unsaved),
        Err(Error::MissingField("metadata.uid"))
    ));
}

#[test]
fn the_last_rollback_is_the_annotation_else_status() {
    let mut inst = installation(Some(1), None);
    assert_eq!(last_rollback(&inst), None);
    let mut from_status = RollbackRecord {
        from_revision: 2,
        to_revision: 1,
        trigger: "Manual".into(),
        reason: "manual rollback to revision 1".into(),
        time: crate::status::now(),
    };
    inst.status = Some(InstallationStatus {
        last_rollback: Some(from_status.clone()),
        ..Default::default()
    });
    assert_eq!(last_rollback(&inst), Some(from_status.clone()));
    from_status.from_revision = 4;
    inst.annotations_mut().insert(
        LAST_ROLLBACK_ANNOTATION.into(),
        serde_json::to_string(&from_status).unwrap(),
    );
    assert_eq!(last_rollback(&inst).map(|r| r.from_revision), Some(4));
}

#[test]
fn the_available_revision_moves_only_when_the_current_one_is_rolled_out_and_available() {
    let allowed = CapsuleUse::Allowed(Evaluation::default());
    let done = rolled_out(2);
    assert_eq!(available_revision(&allowed, &done, Some(3), Some(2)), Some(3));
    let rolling = Workload {
        updated: 1,
        ..done.clone()
    };
    assert_eq!(available_revision(&allowed, &rolling, Some(3), Some(2)), Some(2));
    assert_eq!(
        available_revision(&CapsuleUse::CapsuleNotFound, &done, Some(3), Some(2)),
        Some(2)
    );
}

#[test]
fn the_typed_status_has_the_wire_format_of_the_json_it_replaced() {
    // What the status looked like when it was written as JSON: every field,
    // the absent ones null, nulls then dropped before the write.
    let conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "WorkloadReady".into(),
        message: "2/2 replica(s) updated, 2 ready".into(),
        observed_generation: Some(4),
        last_transition_time: crate::status::now(),
    }];
    let before = json!({
        "observedGeneration": 4,
        "phase": InstallationPhase::Ready,
        "conditions": conditions,
        "currentRevision": 3,
        "readyReplicas": 2,
        "activeRegion": "eu-west-1",
        "availableRevision": null,
        "lastRollback": null,
    });
    let serde_json::Value::Object(before) = before else {
        panic!("an object")
    };
    let before: serde_json::Map<_, _> = before.into_iter().filter(|(_, v)| !v.is_null()).collect();
    let typed = InstallationStatus {
        observed_generation: Some(4),
        phase: Some(InstallationPhase::Ready),
        conditions,
        current_revision: Some(3),
        ready_replicas: Some(2),
        active_region: Some("eu-west-1".into()),
        available_revision: None,
        last_rollback: None,
        gate: None,
    };
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        serde_json::Value::Object(before)
    );
}

/// How kstatus and Argo CD read an Installation in each state a user meets.
#[test]
fn gitops_tools_read_each_state_of_an_installation() {
    use somastack_crds::installation::RollbackRecord;
    let read = |phase, reason, status, current: Option<i64>, rollback: Option<RollbackRecord>| {
        let observed = InstallationStatus {
            phase: Some(phase),
            current_revision: current,
            last_rollback: rollback,
            ..Default::default()
        };
        health(&observed, &[Desired::new("Ready", status, reason, "m")])
    };
    use InstallationPhase as P;
    let plain = |phase, reason, status| read(phase, reason, status, Some(2), None).0;
    assert_eq!(plain(P::Ready, "WorkloadReady", Status::True), Health::Current);
    assert_eq!(
        plain(P::Progressing, "RollingOut", Status::False),
        Health::Progressing
    );
    assert_eq!(
        plain(P::Progressing, "ApplyFailed", Status::False),
        Health::Progressing
    );
    assert_eq!(plain(P::Suspended, "RollingOut", Status::False), Health::Waiting);
    assert_eq!(
        plain(P::Suspended, "KillSwitchEngaged", Status::False),
        Health::Waiting
    );
    assert_eq!(
        plain(P::Pending, "CapsuleNotFound", Status::False),
        Health::Waiting
    );
    assert_eq!(
        plain(P::Blocked, "PolicyViolation", Status::False),
        Health::Stalled
    );
    assert_eq!(plain(P::Blocked, "ChildRejected", Status::False), Health::Stalled);
    assert_eq!(
        plain(P::Degraded, "ProgressDeadlineExceeded", Status::False),
        Health::Stalled
    );

    // An automatic rollback from revision 3 to 2 wrote revision 4: while 4
    // runs, the Installation is Stalled in the rollback's words, even with
    // the old version serving; a new spec (revision 5) clears it, and a
    // manual rollback never sets it.
    let record = |trigger: &str| RollbackRecord {
        from_revision: 3,
        to_revision: 2,
        trigger: trigger.into(),
        reason: "revision 3 was not Available within 60s; rolled back to revision 2".into(),
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
    };
    let (h, stalled) = read(
        P::Ready,
        "WorkloadReady",
        Status::True,
        Some(4),
        Some(record("Automatic")),
    );
    assert_eq!(h, Health::Stalled);
    let stalled = stalled.map(|d| (d.type_, d.reason, d.message));
    assert_eq!(
        stalled,
        Some((
            "Stalled",
            "RolledBack",
            "revision 3 was not Available within 60s; rolled back to revision 2; change the spec to try again"
                .to_string()
        ))
    );
    // While the restored revision rolls out, it is a rollout like any other.
    let rolling = read(
        P::Progressing,
        "RollingOut",
        Status::False,
        Some(4),
        Some(record("Automatic")),
    );
    assert_eq!(rolling, (Health::Progressing, None));
    let later = read(
        P::Ready,
        "WorkloadReady",
        Status::True,
        Some(5),
        Some(record("Automatic")),
    );
    assert_eq!(later, (Health::Current, None));
    let manual = read(
        P::Ready,
        "WorkloadReady",
        Status::True,
        Some(4),
        Some(record("Manual")),
    );
    assert_eq!(manual, (Health::Current, None));
}
