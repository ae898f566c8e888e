//! Unit tests of the pure drill logic (plan.rs).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use somastack_crds::drill::{
    ActiveRun, DrDrillSpec, DrDrillStatus, DrillRun, LocalRef, Objectives, Scenario, Scope, Verdict,
};
use somastack_crds::{Capsule, DrDrill};

use super::plan::*;
use crate::domain::capsules::{CapsuleUse, Resolved, may_install};
use crate::domain::drills::{beyond_tenant_bounds, shortest_gap};
use crate::testing::{capsule, installation};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn spec(scenario: Scenario) -> DrDrillSpec {
    DrDrillSpec {
        installation_ref: LocalRef {
            name: "summarizer".into(),
        },
        scenario,
        scope: Scope::Installation,
        target_region: None,
        failover_region: None,
        objectives: Objectives {
            rto_seconds: 60,
            rpo_seconds: None,
        },
        schedule: None,
        timeout_seconds: 900,
        restore: true,
        suspend: false,
        history_limit: 5,
    }
}

fn ready(mut inst: somastack_crds::Installation) -> somastack_crds::Installation {
    let mut status = inst.status.unwrap_or_default();
    status.conditions = vec![Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Available".into(),
        message: String::new(),
        last_transition_time: time(ts("2026-11-01T00:00:00Z")),
        observed_generation: None,
    }];
    inst.status = Some(status);
    inst
}

#[test]
fn a_one_off_drill_runs_once() {
    let s = spec(Scenario::PodLoss);
    let now = ts("2026-11-23T10:00:00Z");
    assert_eq!(
        should_start(&s, now, None, false, now),
        Ok(Start::Now { scheduled_for: None })
    );
    assert_eq!(should_start(&s, now, None, true, now), Ok(Start::Never));
    let mut suspended = s.clone();
    suspended.suspend = true;
    assert_eq!(should_start(&suspended, now, None, false, now), Ok(Start::Never));
}

#[test]
fn a_schedule_runs_at_its_times_and_collapses_missed_ones() {
    let mut s = spec(Scenario::PodLoss);
    s.schedule = Some("*/5 * * * *".into());
    let created = ts("2026-11-23T10:01:00Z");
    assert_eq!(
        should_start(&s, created, None, false, ts("2026-11-23T10:03:00Z")),
        Ok(Start::At(ts("2026-11-23T10:05:00Z")))
    );
    assert_eq!(
        should_start(&s, created, None, false, ts("2026-11-23T10:05:00Z")),
        Ok(Start::Now {
            scheduled_for: Some(ts("2026-11-23T10:05:00Z"))
        })
    );
    // Ran for 10:05; at 10:21 the missed 10:10, 10:15 and 10:20 make one run, for 10:20.
    assert_eq!(
        should_start(
            &s,
            created,
            Some(ts("2026-11-23T10:05:00Z")),
            true,
            ts("2026-11-23T10:21:00Z")
        ),
        Ok(Start::Now {
            scheduled_for: Some(ts("2026-11-23T10:20:00Z"))
        })
    );
    s.schedule = Some("not a schedule".into());
    assert!(should_start(&s, created, None, false, created).is_err());
}

fn judge(
    inst: &somastack_crds::Installation,
    bundles: &[Arc<somastack_crds::PolicyBundle>],
) -> impl Fn(&str) -> CapsuleUse {
    let mut c = capsule();
    c.data_classification = somastack_crds::common::DataClassification::Confidential;
    let cap = Capsule::new("summarizer-1.4.2", c);
    let inst = inst.clone();
    let bundles = bundles.to_vec();
    move |region: &str| may_install(&inst, &Resolved::Found(&Arc::new(cap.clone())), &bundles, region)
}

#[test]
fn validation_picks_an_allowed_failover_region_and_snapshots_home() {
    let inst = ready(installation(Some(2), None));
    let t = validate(&spec(Scenario::RegionOutage), Some(&inst), judge(&inst, &[])).unwrap();
    assert_eq!(t.target_region, "eu-west-1");
    assert_eq!(t.failover_region.as_deref(), Some("eu-central-1"));
    assert_eq!(t.home_region, "eu-west-1");
    assert_eq!(t.previous_active_region, None);
    assert_eq!(t.replicas, 2);
}

#[test]
fn a_failover_residency_forbids_is_a_finding() {
    use somastack_crds::policy::{PolicyBundleSpec, Residency, ResidencyRule};
    let inst = ready(installation(Some(2), None));
    let b = PolicyBundleSpec {
        residency: Some(Residency {
            rules: vec![ResidencyRule {
                data_classification: somastack_crds::common::DataClassification::Confidential,
                allowed_regions: vec!["eu-west-1".into()],
            }],
        }),
        ..PolicyBundleSpec::default()
    };
    let bundles = [Arc::new(somastack_crds::PolicyBundle::new("eu-west-only", b))];
    let finding = validate(&spec(Scenario::RegionOutage), Some(&inst), judge(&inst, &bundles)).unwrap_err();
    assert!(
        finding.contains("failover to eu-central-1 refused by policy")
            && finding.contains("rule residency, PolicyBundle eu-west-only"),
        "{finding}"
    );
}

#[test]
fn a_run_waits_for_a_target_still_being_created_but_not_for_an_old_unhealthy_one() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let s = spec(Scenario::PodLoss);
    let drill_created = ts("2026-11-23T10:00:00Z");
    let now = ts("2026-11-23T10:01:00Z");
    // Applied together: the Installation is not there yet.
    assert_eq!(
        settling(&s, None, drill_created, now).as_deref(),
        Some("waiting for Installation summarizer to be created")
    );
    // Still missing after the drill's timeoutSeconds (900): judge it.
    assert_eq!(
        settling(&s, None, drill_created, ts("2026-11-23T10:15:00Z")),
        None
    );
    // Rolling out: created 20 s ago, not Ready yet.
    let mut inst = installation(Some(2), None);
    inst.metadata.creation_timestamp = Some(Time(ts("2026-11-23T10:00:40Z")));
    assert_eq!(
        settling(&s, Some(&inst), drill_created, now).as_deref(),
        Some("waiting for Installation summarizer, created 20s ago, to become Ready")
    );
    // Not Ready an hour after it was created: a finding, no waiting.
    inst.metadata.creation_timestamp = Some(Time(ts("2026-11-23T09:00:00Z")));
    assert_eq!(settling(&s, Some(&inst), drill_created, now), None);
    // Ready: nothing to wait for, whatever its age.
    inst.metadata.creation_timestamp = Some(Time(ts("2026-11-23T10:00:59Z")));
    assert_eq!(settling(&s, Some(&ready(inst)), drill_created, now), None);
}

#[test]
fn unhealthy_or_missing_targets_are_findings() {
    let inst = installation(Some(2), None);
    assert!(
        validate(&spec(Scenario::PodLoss), Some(&inst), judge(&inst, &[]))
            .unwrap_err()
            .contains("is not Ready")
    );
    assert!(
        validate(&spec(Scenario::PodLoss), None, |_| CapsuleUse::CapsuleNotFound)
            .unwrap_err()
            .contains("does not exist")
    );
    let mut s = spec(Scenario::RegionOutage);
    s.failover_region = Some("us-east-1".into());
    let inst = ready(inst);
    assert!(
        validate(&s, Some(&inst), judge(&inst, &[]))
            .unwrap_err()
            .contains("not one of the Installation's failoverRegions")
    );
}

fn pod(region: &str, created: &str, ready: Option<&str>) -> PodView {
    PodView {
        name: format!("{region}-{created}"),
        region: Some(region.into()),
        created: ts(created),
        ready_since: ready.map(ts),
    }
}

#[test]
fn recovery_counts_new_ready_pods_in_the_region() {
    let injected = ts("2026-11-23T10:00:00Z");
    let pods = [
        pod("eu-west-1", "2026-11-23T09:00:00Z", Some("2026-11-23T09:00:05Z")), // old
        pod(
            "eu-central-1",
            "2026-11-23T10:00:02Z",
            Some("2026-11-23T10:00:04Z"),
        ),
        pod("eu-central-1", "2026-11-23T10:00:02Z", None),
    ];
    assert_eq!(recovered_at(&pods, Some("eu-central-1"), 2, injected, &[]), None);
    let mut pods = pods.to_vec();
    pods[2].ready_since = Some(ts("2026-11-23T10:00:07Z"));
    assert_eq!(
        recovered_at(&pods, Some("eu-central-1"), 2, injected, &[]),
        Some(ts("2026-11-23T10:00:07Z"))
    );
    // In place (PodLoss): any region, but only pods made after the injection.
    assert_eq!(recovered_at(&pods, None, 3, injected, &[]), None);
    // Pod times are whole seconds: a pod made in the injection's second
    // counts unless it is one of those lost at the injection.
    let injected = ts("2026-11-23T10:00:02.600Z");
    assert_eq!(
        recovered_at(&pods, Some("eu-central-1"), 2, injected, &[]),
        Some(ts("2026-11-23T10:00:07Z"))
    );
    let lost = [pods[1].name.clone()];
    assert_eq!(
        recovered_at(&pods, Some("eu-central-1"), 2, injected, &lost),
        None
    );
}

fn finished(rto_secs: Option<i64>) -> ActiveRun {
    let injected = ts("2026-11-23T10:00:00Z");
    ActiveRun {
        start: time(injected),
        scheduled_for: None,
        step: REPORT.into(),
        target_region: "eu-west-1".into(),
        failover_region: Some("eu-central-1".into()),
        home_region: "eu-west-1".into(),
        previous_active_region: None,
        replicas: 2,
        injected_at: Some(micro(injected)),
        recovered_at: rto_secs.map(|s| micro(injected + jiff::SignedDuration::from_secs(s))),
        abort: None,
        finding: None,
        lost_pods: vec![],
    }
}

#[test]
fn verdicts() {
    assert_eq!(verdict(&finished(Some(12)), 60, None).0, Verdict::Pass);
    let (v, why) = verdict(&finished(Some(12)), 5, None);
    assert_eq!(
        (v, why.as_str()),
        (Verdict::Fail, "recovered in 12.0s, over the 5s objective")
    );
    assert_eq!(verdict(&finished(None), 60, None).0, Verdict::Fail);
    let mut aborted = finished(Some(1));
    aborted.abort = Some("the drill was suspended".into());
    assert_eq!(verdict(&aborted, 60, None).1, "aborted: the drill was suspended");
    assert_eq!(verdict(&finished(Some(1)), 60, Some("not home")).0, Verdict::Fail);
}

#[test]
fn the_timeline_opens_and_closes_steps() {
    let mut t = Vec::new();
    let now = ts("2026-11-23T10:00:00Z");
    begin(&mut t, VALIDATE, now, "checking".into());
    begin(&mut t, VALIDATE, now, "again".into()); // already open: no duplicate
    begin(&mut t, SNAPSHOT, now, String::new());
    finish(&mut t, "Failed", now, Some("boom".into()));
    skipped(&mut t, FAILOVER, now, "n/a");
    let steps: Vec<(&str, &str)> = t.iter().map(|e| (e.step.as_str(), e.outcome.as_str())).collect();
    assert_eq!(
        steps,
        [
            ("Validate", "Succeeded"),
            ("Snapshot", "Failed"),
            ("Failover", "Skipped")
        ]
    );
    assert!(t.iter().all(|e| e.end.is_some()));
}

#[test]
fn history_is_newest_first_and_capped() {
    let mut h = Vec::new();
    for i in 0..4 {
        push_history(
            &mut h,
            DrillRun {
                start: time(ts("2026-11-23T10:00:00Z") + jiff::SignedDuration::from_secs(i)),
                end: None,
                verdict: None,
                measured_rto_seconds: None,
                message: i.to_string(),
            },
            3,
        );
    }
    let kept: Vec<&str> = h.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(kept, ["3", "2", "1"]);
}

fn drill_with(name: &str, inst: &str, runs: &[(Verdict, f64)]) -> DrDrill {
    let mut s = spec(Scenario::RegionOutage);
    s.installation_ref.name = inst.into();
    let mut d = DrDrill::new(name, s);
    d.metadata.namespace = Some("tenant".into());
    d.status = Some(DrDrillStatus {
        history: runs
            .iter()
            .enumerate()
            .map(|(i, (v, rto))| DrillRun {
                start: time(ts("2026-11-23T10:00:00Z") - jiff::SignedDuration::from_hours(i as i64)),
                end: None,
                verdict: Some(*v),
                measured_rto_seconds: Some(*rto),
                message: String::new(),
            })
            .collect(),
        ..DrDrillStatus::default()
    });
    d
}

#[test]
fn the_summary_groups_by_installation() {
    let drills = [
        drill_with("a", "summarizer", &[(Verdict::Pass, 10.0), (Verdict::Pass, 30.0)]),
        drill_with("b", "summarizer", &[(Verdict::Fail, 90.0)]),
        drill_with("c", "other", &[]),
    ];
    let rows = summary(&drills);
    assert_eq!(rows.len(), 2);
    let other = &rows[0];
    assert_eq!(
        (other.installation.as_str(), other.runs, other.pass_rate),
        ("other", 0, None)
    );
    let s = &rows[1];
    assert_eq!(s.installation, "summarizer");
    assert_eq!((s.drills, s.runs, s.passed), (2, 3, 2));
    assert!((s.pass_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(s.median_rto_seconds, Some(30.0));
    assert_eq!(s.worst_rto_seconds, Some(90.0));
    assert_eq!(s.failing, ["b"]);
    assert_eq!(s.last_run, Some(ts("2026-11-23T10:00:00Z")));
}

#[test]
fn back_home_means_every_pod_there_and_enough_ready() {
    let home = pod("eu-west-1", "2026-11-23T09:00:00Z", Some("2026-11-23T09:00:01Z"));
    let away = pod(
        "eu-central-1",
        "2026-11-23T10:00:00Z",
        Some("2026-11-23T10:00:01Z"),
    );
    let unready = pod("eu-west-1", "2026-11-23T10:01:00Z", None);
    assert!(back_in(&[home.clone(), home.clone()], "eu-west-1", 2));
    assert!(!back_in(&[home.clone(), home.clone(), away], "eu-west-1", 2));
    assert!(!back_in(&[home, unready], "eu-west-1", 2));
}

#[test]
fn tenant_bounds_name_each_option_that_needs_the_disrupt_verb() {
    let now = ts("2026-11-25T10:00:00Z");
    let within = DrDrillSpec {
        schedule: Some("0 3 * * 1".into()),
        timeout_seconds: 1800,
        ..spec(Scenario::RegionOutage)
    };
    assert!(beyond_tenant_bounds(&within, now).is_empty());
    // Hourly is within; every 30 minutes is not.
    let hourly = DrDrillSpec {
        schedule: Some("@hourly".into()),
        ..spec(Scenario::PodLoss)
    };
    assert!(beyond_tenant_bounds(&hourly, now).is_empty());
    let beyond = DrDrillSpec {
        scope: Scope::Region,
        timeout_seconds: 1801,
        schedule: Some("0,30 * * * *".into()),
        ..spec(Scenario::RegionOutage)
    };
    let reasons = beyond_tenant_bounds(&beyond, now);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("scope: Region taints every node of a region"));
    assert_eq!(reasons[1], "timeoutSeconds 1801 is above 1800");
    assert_eq!(
        reasons[2],
        "schedule \"0,30 * * * *\" runs 30 min apart, more often than every 60 minutes"
    );
    // Two runs a minute apart once a day are as disruptive as every minute.
    assert_eq!(shortest_gap("0,1 3 * * *", now, 500), Some(60));
    assert_eq!(shortest_gap("not cron", now, 500), None);
}
