//! Unit tests of the pure drill logic (logic.rs) and its step transitions (steps.rs).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use somastack_crds::drill::{
    ActiveRun, DrDrillSpec, DrDrillStatus, DrillRun, DrillStep, LocalRef, Objectives, Scenario, Scope,
    StepOutcome, Verdict,
};
use somastack_crds::{Capsule, DrDrill};

use super::logic::*;
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
        step: DrillStep::Report,
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
    begin(&mut t, DrillStep::Validate, now, "checking".into());
    begin(&mut t, DrillStep::Validate, now, "again".into()); // already open: no duplicate
    begin(&mut t, DrillStep::Snapshot, now, String::new());
    finish(&mut t, StepOutcome::Failed, now, Some("boom".into()));
    skipped(&mut t, DrillStep::Failover, now, "n/a");
    let steps: Vec<(DrillStep, StepOutcome)> = t.iter().map(|e| (e.step, e.outcome)).collect();
    assert_eq!(
        steps,
        [
            (DrillStep::Validate, StepOutcome::Succeeded),
            (DrillStep::Snapshot, StepOutcome::Failed),
            (DrillStep::Failover, StepOutcome::Skipped)
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

// The step transitions (steps.rs), driven the way the shell drives them.

use std::time::Duration;

use somastack_crds::drill::TimelineEntry;

use super::steps::{self, Acted, Effect, Finished, Observations, RESTORE_WAIT_SECS, TICK, Then, Transition};

fn at(secs: i64) -> Timestamp {
    ts("2026-11-23T10:00:00Z") + jiff::SignedDuration::from_secs(secs)
}

/// A drill whose run opened at `at(0)`, as its status holds it.
struct Drill {
    spec: DrDrillSpec,
    status: DrDrillStatus,
    deleting: bool,
}

impl Drill {
    fn opened(spec: DrDrillSpec) -> Drill {
        let mut status = DrDrillStatus::default();
        steps::open(&mut status, "summarizer", None, at(0));
        Drill {
            spec,
            status,
            deleting: false,
        }
    }

    fn run(&self) -> &ActiveRun {
        self.status.run.as_ref().unwrap()
    }

    /// What `next` decides on these observations (the status is not changed).
    fn decide(
        &self,
        inst: Option<&somastack_crds::Installation>,
        pods: &[PodView],
        acted: Acted,
        now: Timestamp,
    ) -> Transition {
        let judge = |region: &str| match inst {
            Some(i) => judge(i, &[])(region),
            None => CapsuleUse::CapsuleNotFound,
        };
        let seen = Observations {
            spec: &self.spec,
            drill_created: at(-60),
            deleting: self.deleting,
            timeline: &self.status.timeline,
            installation: inst,
            judge: &judge,
            pods,
            acted,
        };
        steps::next(self.run(), &seen, now)
    }

    /// `decide`, then record the transition in the status as the shell does.
    fn step(
        &mut self,
        inst: Option<&somastack_crds::Installation>,
        pods: &[PodView],
        acted: Acted,
        now: Timestamp,
    ) -> Transition {
        let t = self.decide(inst, pods, acted, now);
        self.status.timeline = t.timeline.clone();
        self.status.run = Some(t.run.clone());
        t
    }

    fn step_is(&self) -> DrillStep {
        self.run().step
    }

    /// Validate at 1 s, on a Ready target of two replicas.
    fn validate(&mut self) -> Transition {
        self.step(
            Some(&ready(installation(Some(2), None))),
            &[],
            Acted::Nothing,
            at(1),
        )
    }

    /// A step at `secs` s that asks the shell for `effects` and to
    /// recheck once they are done.
    fn acts(&mut self, secs: i64, effects: &[Effect]) {
        let t = self.step(None, &[], Acted::Nothing, at(secs));
        assert_eq!(t.then, Then::Recheck);
        assert_eq!(t.effects, effects);
    }

    /// Restore, from its opening: the outage and the failover are removed
    /// at `removed` s, leaving the active region at `kept`; once the
    /// workload is back (`pods`, seen at `back` s) the lock goes, again
    /// leaving `kept`. Returns the transition that ends the run.
    fn come_home(&mut self, kept: Option<&str>, removed: i64, pods: &[PodView], back: i64) -> Transition {
        let kept = kept.map(String::from);
        self.acts(
            removed,
            &[
                Effect::Untaint,
                Effect::Annotate {
                    unavailable: None,
                    active_region: kept.clone(),
                },
            ],
        );
        let t = self.step(None, pods, Acted::Done, at(back));
        assert_eq!(t.then, NOW);
        assert_eq!(t.effects, [Effect::Unlock { active_region: kept }]);
        t
    }
}

fn outcomes(timeline: &[TimelineEntry]) -> Vec<(DrillStep, StepOutcome)> {
    timeline.iter().map(|e| (e.step, e.outcome)).collect()
}

fn messages(timeline: &[TimelineEntry]) -> Vec<&str> {
    timeline.iter().map(|e| e.message.as_str()).collect()
}

fn named(name: &str, region: &str, created: Timestamp, ready: Option<Timestamp>) -> PodView {
    PodView {
        name: name.into(),
        region: Some(region.into()),
        created,
        ready_since: ready,
    }
}

/// Two pods in `region`, created at `created` s and Ready from `ready` s.
fn two(names: [&str; 2], region: &str, created: i64, ready: Option<i64>) -> [PodView; 2] {
    names.map(|name| named(name, region, at(created), ready.map(at)))
}

/// The two pods of the failed-over workload, Ready in eu-central-1 at 9 s.
fn recovered() -> [PodView; 2] {
    two(["a", "b"], "eu-central-1", 6, Some(9))
}

const NOW: Then = Then::Requeue(Duration::ZERO);

#[test]
fn a_region_outage_runs_through_every_step_and_passes_within_its_rto() {
    let mut d = Drill::opened(spec(Scenario::RegionOutage));
    assert_eq!(d.step_is(), DrillStep::Validate);
    assert_eq!(messages(&d.status.timeline), ["checking Installation summarizer"]);

    // Validate: the target is healthy and may fail over; the snapshot is recorded.
    let t = d.validate();
    assert_eq!((t.then, t.effects.clone()), (NOW, vec![]));
    assert_eq!(d.step_is(), DrillStep::Snapshot);
    assert_eq!(
        (d.run().target_region.as_str(), d.run().failover_region.as_deref()),
        ("eu-west-1", Some("eu-central-1"))
    );

    // Snapshot: the injection time is written before anything is injected.
    let t = d.step(None, &[], Acted::Nothing, at(2));
    assert_eq!((t.then, t.effects.clone()), (NOW, vec![]));
    assert_eq!(d.step_is(), DrillStep::Inject);
    assert_eq!(d.run().injected_at, Some(micro(at(2))));

    // Inject: the region is made unavailable to the Installation...
    d.acts(
        3,
        &[Effect::Annotate {
            unavailable: Some("eu-west-1".into()),
            active_region: None,
        }],
    );
    // ... and is in effect once no pod is left there.
    let old = named("old", "eu-west-1", at(-3600), Some(at(-3600)));
    let t = d.step(None, &[old], Acted::Done, at(3));
    assert_eq!(t.then, Then::Requeue(TICK));
    assert_eq!(d.step_is(), DrillStep::Inject);
    let t = d.step(None, &[], Acted::Done, at(4));
    assert_eq!(t.then, NOW);
    assert_eq!(d.step_is(), DrillStep::Failover);

    // Failover: the active region is set; then Verify waits for it.
    d.acts(
        5,
        &[Effect::Failover {
            unavailable: Some("eu-west-1".into()),
            to: "eu-central-1".into(),
        }],
    );
    d.step(None, &[], Acted::Done, at(5));
    assert_eq!(d.step_is(), DrillStep::Verify);

    // Verify: two new pods Ready in eu-central-1, the last at 14 s.
    let first = named("a", "eu-central-1", at(6), Some(at(9)));
    let second = named("b", "eu-central-1", at(6), Some(at(14)));
    let t = d.step(None, std::slice::from_ref(&first), Acted::Nothing, at(10));
    assert_eq!(t.then, Then::Requeue(TICK));
    let t = d.step(None, &[first, second], Acted::Nothing, at(14));
    assert_eq!(t.then, NOW);
    assert_eq!(t.measured_rto_seconds, Some(12.0));
    assert_eq!(d.step_is(), DrillStep::Restore);

    // Restore: opened, then the outage and the failover are removed...
    let t = d.step(None, &[], Acted::Nothing, at(15));
    assert_eq!((t.then, t.effects.clone()), (NOW, vec![]));
    // ... and once the workload is back home, the lock goes and the run ends.
    let home = two(["c", "d"], "eu-west-1", 17, Some(18));
    let t = d.come_home(None, 16, &home, 20);
    assert_eq!(
        t.finished,
        Some(Finished {
            verdict: Verdict::Pass,
            message: "recovered in 12.0s, within the 60s objective".into(),
            rto_seconds: Some(12.0),
        })
    );
    use DrillStep::*;
    use StepOutcome::*;
    assert_eq!(
        outcomes(&t.timeline),
        [
            (Validate, Succeeded),
            (Snapshot, Succeeded),
            (Inject, Succeeded),
            (Failover, Succeeded),
            (Verify, Succeeded),
            (Restore, Succeeded),
            (Report, Succeeded)
        ]
    );
    assert_eq!(
        messages(&t.timeline),
        [
            "outage of eu-west-1 then failover to eu-central-1: allowed",
            "home region eu-west-1, active-region annotation unset, 2 replica(s)",
            "region eu-west-1 unavailable to the Installation: its pods there stop and cannot return",
            "active region set to eu-central-1",
            "2 replica(s) ready in eu-central-1; RTO 12.0s",
            "returning to eu-west-1",
            "recovered in 12.0s, within the 60s objective",
        ]
    );
    assert!(t.timeline.iter().all(|e| e.end.is_some()));
}

#[test]
fn a_region_scoped_outage_taints_the_region() {
    let mut s = spec(Scenario::RegionOutage);
    s.scope = Scope::Region;
    let mut d = Drill::opened(s);
    d.validate();
    d.step(None, &[], Acted::Nothing, at(2));
    assert_eq!(
        d.status.timeline.last().map(|e| e.message.as_str()),
        Some(
            "every node of eu-west-1 tainted somastack.io/drill-outage:NoExecute; the taint manager evicts their pods"
        )
    );
    d.acts(
        3,
        &[
            Effect::Annotate {
                unavailable: None,
                active_region: None,
            },
            Effect::Taint("eu-west-1".into()),
        ],
    );
    d.step(None, &[], Acted::Done, at(3));
    d.acts(
        4,
        &[Effect::Failover {
            unavailable: None,
            to: "eu-central-1".into(),
        }],
    );
}

#[test]
fn a_pod_loss_deletes_the_pods_it_saw_and_recovers_in_place() {
    let mut d = Drill::opened(spec(Scenario::PodLoss));
    d.validate();
    let before = two(["p1", "p2"], "eu-west-1", -3600, Some(-3600));
    d.step(None, &before, Acted::Nothing, at(2));
    assert_eq!(d.run().lost_pods, ["p1", "p2"]);
    d.acts(3, &[Effect::DeletePods(vec!["p1".into(), "p2".into()])]);
    // A lost pod still there: the outage is not in effect yet.
    let t = d.step(None, &before[..1], Acted::Done, at(3));
    assert_eq!(t.then, Then::Requeue(TICK));
    let new = two(["p3", "p4"], "eu-west-1", 3, None);
    d.step(None, &new, Acted::Done, at(4));
    assert_eq!(d.step_is(), DrillStep::Verify);
    assert_eq!(
        outcomes(&d.status.timeline)[3..],
        [
            (DrillStep::Failover, StepOutcome::Skipped),
            (DrillStep::Verify, StepOutcome::Running)
        ]
    );
    assert_eq!(d.status.timeline[3].message, "PodLoss recovers in place");
    let ready_pods = [
        named("p3", "eu-west-1", at(3), Some(at(7))),
        named("p4", "eu-west-1", at(3), Some(at(8))),
    ];
    let t = d.step(None, &ready_pods, Acted::Nothing, at(8));
    assert_eq!(t.measured_rto_seconds, Some(6.0));
    assert_eq!(
        d.status.timeline.last().map(|e| e.message.as_str()),
        Some("2 replica(s) ready; RTO 6.0s")
    );
}

/// A drill validated, snapshot and injected (at 3 s), about to fail over.
fn failing_over(spec: DrDrillSpec) -> Drill {
    let mut d = Drill::opened(spec);
    d.validate();
    d.step(None, &[], Acted::Nothing, at(2));
    d.step(None, &[], Acted::Done, at(3));
    d
}

/// A drill of `spec` in Verify, 5 s into its run.
fn verifying_with(spec: DrDrillSpec) -> Drill {
    let mut d = failing_over(spec);
    d.step(None, &[], Acted::Done, at(4));
    d.step(None, &[], Acted::Done, at(5));
    assert_eq!(d.step_is(), DrillStep::Verify);
    d
}

/// A RegionOutage drill in Verify, 5 s into its run.
fn verifying() -> Drill {
    verifying_with(spec(Scenario::RegionOutage))
}

/// A drill of `spec` that recovered (`recovered()`, seen at 10 s) and
/// opened its Restore at 11 s.
fn restoring(spec: DrDrillSpec) -> Drill {
    let mut d = verifying_with(spec);
    d.step(None, &recovered(), Acted::Nothing, at(10));
    d.step(None, &[], Acted::Nothing, at(11));
    d
}

#[test]
fn a_run_out_of_time_fails_its_step_and_restores() {
    let d = verifying();
    // Within timeoutSeconds (900): Verify goes on waiting.
    assert_eq!(
        d.decide(None, &[], Acted::Nothing, at(900)).then,
        Then::Requeue(TICK)
    );
    let t = d.decide(None, &[], Acted::Nothing, at(901));
    assert_eq!(t.run.step, DrillStep::Restore);
    assert_eq!(
        t.run.abort.as_deref(),
        Some("timed out after 900s in step Verify")
    );
    let last_two: Vec<_> = t.timeline[t.timeline.len() - 2..]
        .iter()
        .map(|e| (e.step, e.outcome, e.message.as_str()))
        .collect();
    assert_eq!(
        last_two,
        [
            (
                DrillStep::Verify,
                StepOutcome::Failed,
                "timed out after 900s in step Verify"
            ),
            (DrillStep::Restore, StepOutcome::Running, "returning to eu-west-1"),
        ]
    );
    assert_eq!((t.then, t.effects), (NOW, vec![]));
}

#[test]
fn deleting_or_suspending_a_drill_mid_run_restores_and_fails_it() {
    let mut d = verifying();
    d.deleting = true;
    let t = d.step(None, &[], Acted::Nothing, at(20));
    assert_eq!(t.run.abort.as_deref(), Some("the drill was deleted"));
    assert_eq!(t.run.step, DrillStep::Restore);
    // Restore goes home even though the drill asked to stay failed over.
    d.spec.restore = false;
    let home = two(["c", "d"], "eu-west-1", 21, Some(22));
    let t = d.come_home(None, 21, &home, 23);
    assert_eq!(
        t.finished.map(|f| (f.verdict, f.message, f.rto_seconds)),
        Some((Verdict::Fail, "aborted: the drill was deleted".into(), None))
    );

    let mut d = verifying();
    d.spec.suspend = true;
    let t = d.decide(None, &[], Acted::Nothing, at(20));
    assert_eq!(t.run.abort.as_deref(), Some("the drill was suspended"));
    d.step(None, &[], Acted::Nothing, at(20));
    // Once restoring, nothing aborts it again.
    d.deleting = true;
    let t = d.decide(None, &[], Acted::Nothing, at(2000));
    assert_eq!(t.run.abort.as_deref(), Some("the drill was suspended"));
    assert_eq!(t.then, Then::Recheck);
}

#[test]
fn a_missing_or_unhealthy_target_is_a_finding_and_nothing_is_injected() {
    for (inst, finding) in [
        (None, "Installation summarizer does not exist"),
        (
            Some(installation(Some(2), None)),
            "Installation summarizer is not Ready; a drill needs a healthy target",
        ),
    ] {
        let mut d = Drill::opened(spec(Scenario::RegionOutage));
        let t = d.step(inst.as_ref(), &[], Acted::Nothing, at(1));
        assert_eq!(t.effects, [Effect::Finding(finding.into())]);
        assert_eq!(t.run.finding.as_deref(), Some(finding));
        assert_eq!(t.run.step, DrillStep::Restore);
        assert_eq!(
            outcomes(&t.timeline),
            [(DrillStep::Validate, StepOutcome::Failed)]
        );
        d.step(None, &[], Acted::Nothing, at(2));
        assert_eq!(
            d.status.timeline.last().map(|e| e.message.as_str()),
            Some("nothing was injected; releasing the drill lock")
        );
        d.step(None, &[], Acted::Nothing, at(2));
        // Nothing to wait for: the lock goes and the verdict is Fail.
        let t = d.step(None, &[], Acted::Done, at(2));
        assert_eq!(t.effects, [Effect::Unlock { active_region: None }]);
        assert_eq!(
            t.finished,
            Some(Finished {
                verdict: Verdict::Fail,
                message: format!("finding: {finding}"),
                rto_seconds: None,
            })
        );
    }
}

#[test]
fn a_target_still_rolling_out_is_waited_for_in_validate() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut inst = installation(Some(2), None);
    inst.metadata.creation_timestamp = Some(Time(at(-20)));
    let d = Drill::opened(spec(Scenario::PodLoss));
    let t = d.decide(Some(&inst), &[], Acted::Nothing, at(1));
    assert_eq!(t.then, Then::Requeue(steps::SETTLE_TICK));
    assert_eq!(
        t.waiting.as_deref(),
        Some("waiting for Installation summarizer, created 21s ago, to become Ready")
    );
    assert_eq!(t.run.step, DrillStep::Validate);
}

#[test]
fn a_refused_failover_is_a_finding() {
    let mut d = failing_over(spec(Scenario::RegionOutage));
    let refusal = Acted::FailoverRefused("denied by the admission webhook".into());
    let t = d.step(None, &[], refusal, at(4));
    let why = "failover to eu-central-1 was refused: denied by the admission webhook";
    assert_eq!(t.run.finding.as_deref(), Some(why));
    assert_eq!(t.run.step, DrillStep::Restore);
    assert_eq!(
        t.timeline.last().map(|e| (e.step, e.outcome)),
        Some((DrillStep::Failover, StepOutcome::Failed))
    );
}

#[test]
fn a_workload_not_back_home_in_time_fails_the_restore() {
    let d = restoring(spec(Scenario::RegionOutage)); // Restore opens at 11 s
    let recovered = recovered();
    let t = d.decide(None, &recovered, Acted::Done, at(130));
    assert_eq!(t.then, Then::Requeue(TICK));
    assert_eq!(t.finished, None);
    let t = d.decide(None, &recovered, Acted::Done, at(131));
    let why = format!("the workload was not back in eu-west-1 within {RESTORE_WAIT_SECS}s");
    assert_eq!(why, "the workload was not back in eu-west-1 within 120s");
    assert_eq!(t.effects, [Effect::Unlock { active_region: None }]);
    assert_eq!(
        t.timeline
            .iter()
            .rev()
            .take(2)
            .map(|e| (e.step, e.outcome, e.message.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                DrillStep::Report,
                StepOutcome::Succeeded,
                format!("restore failed: {why}").as_str()
            ),
            (DrillStep::Restore, StepOutcome::Failed, why.as_str()),
        ]
    );
    assert_eq!(
        t.finished,
        Some(Finished {
            verdict: Verdict::Fail,
            message: format!("restore failed: {why}"),
            rto_seconds: Some(8.0),
        })
    );
}

#[test]
fn restore_false_stays_failed_over_and_reports_the_rto() {
    let mut s = spec(Scenario::RegionOutage);
    s.restore = false;
    s.objectives.rto_seconds = 2;
    let mut d = restoring(s);
    assert_eq!(
        d.status.timeline.last().map(|e| e.message.as_str()),
        Some("restore: false; removing the outage, staying failed over")
    );
    let t = d.come_home(Some("eu-central-1"), 12, &recovered(), 12);
    // Injected at 2 s; both pods Ready in the second of 9 s, seen at 10 s:
    // 8 s, over a 2 s objective.
    let finished = t.finished.unwrap();
    assert_eq!(
        (finished.verdict, finished.message.as_str(), finished.rto_seconds),
        (
            Verdict::Fail,
            "recovered in 8.0s, over the 2s objective",
            Some(8.0)
        )
    );
}

#[test]
fn each_step_reads_only_what_it_decides_on() {
    use steps::{Reads, reads};
    let nothing = Reads::default();
    let pods = Reads {
        installation: false,
        pods: true,
    };
    let mut d = Drill::opened(spec(Scenario::PodLoss));
    let r = |d: &Drill, acted: Acted, now: Timestamp| reads(d.run(), &d.spec, d.deleting, &acted, now);
    assert_eq!(
        r(&d, Acted::Nothing, at(1)),
        Reads {
            installation: true,
            pods: false
        }
    );
    // Past its timeout the run restores without looking at the target.
    assert_eq!(r(&d, Acted::Nothing, at(901)), nothing);
    d.validate();
    // Snapshot: PodLoss records the pods it will delete.
    assert_eq!(r(&d, Acted::Nothing, at(2)), pods);
    d.step(None, &[], Acted::Nothing, at(2));
    // Inject: the pods are looked at once the outage is made.
    assert_eq!(r(&d, Acted::Nothing, at(3)), nothing);
    assert_eq!(r(&d, Acted::Done, at(3)), pods);
    d.step(None, &[], Acted::Done, at(3));
    assert_eq!(r(&d, Acted::Nothing, at(4)), pods);
    d.deleting = true;
    assert_eq!(r(&d, Acted::Nothing, at(4)), nothing);
}

/// How kstatus and Argo CD read a drill in each phase.
#[test]
fn gitops_tools_read_each_phase_of_a_drill() {
    use crate::conditions::{Health, Status};
    use somastack_crds::drill::DrillPhase as P;
    let read = |phase| {
        let (ready, health) = readiness(phase, "Why", "because");
        (ready.type_, ready.status, ready.reason, health)
    };
    assert_eq!(
        read(P::Running),
        ("Ready", Status::False, "Why", Health::Progressing)
    );
    assert_eq!(read(P::Waiting).3, Health::Progressing);
    assert_eq!(read(P::Pending).3, Health::Progressing);
    assert_eq!(
        read(P::Succeeded),
        ("Ready", Status::True, "Why", Health::Current)
    );
    assert_eq!(read(P::Scheduled).3, Health::Current);
    assert_eq!(
        read(P::Suspended),
        ("Ready", Status::True, "Why", Health::Current)
    );
    assert_eq!(read(P::Failed), ("Ready", Status::False, "Why", Health::Stalled));
}
