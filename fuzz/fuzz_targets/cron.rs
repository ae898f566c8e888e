//! DrDrill schedules (controllers/src/domain/drills.rs, kinds/drill/logic.rs):
//! the bytes are `spec.schedule`.
//!
//! Parsed or refused with a message naming the schedule, never a panic; the
//! next run is after the time asked about and is the first one (asking
//! again from just before it finds it again); the admission's tenant
//! bounds (the shortest gap of the next 500 runs) see a schedule that runs
//! more often than a tenant may; the controller's decision to start agrees
//! with the schedule.

#![no_main]

use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use somastack_controllers::domain::drills::{beyond_tenant_bounds, next_after, schedule_problem};
use somastack_controllers::kinds::drill::logic::{Start, should_start};
use somastack_crds::drill::{DrDrillSpec, TENANT_MIN_SCHEDULE_INTERVAL_SECONDS};

/// The example drill (examples/40-drdrill.yaml), whose schedule is replaced.
static DRILL: std::sync::LazyLock<DrDrillSpec> = std::sync::LazyLock::new(|| {
    match serde_saphyr::from_str::<somastack_crds::DrDrill>(include_str!("../../examples/40-drdrill.yaml")) {
        Ok(d) => d.spec,
        Err(e) => panic!("examples/40-drdrill.yaml does not parse: {e}"),
    }
});

/// Moments schedules are judged at: an ordinary night, a leap day, the last
/// second of a year, and a day before the end of time as jiff knows it.
fn moments() -> [Timestamp; 4] {
    [
        Timestamp::constant(1_795_734_000, 0), // 2026-11-26T23:00:00Z
        Timestamp::constant(1_835_438_400, 0), // 2028-02-29T12:00:00Z
        Timestamp::constant(1_798_761_599, 0), // 2026-12-31T23:59:59Z
        Timestamp::MAX
            .checked_sub(SignedDuration::from_hours(24))
            .unwrap_or(Timestamp::MAX),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(schedule) = std::str::from_utf8(data) else {
        return;
    };
    // The CRD allows 128 characters; longer ones never reach the operator.
    if schedule.len() > 256 {
        return;
    }
    for at in moments() {
        match next_after(schedule, at) {
            Ok(next) => {
                assert!(next > at, "{schedule:?}: next run {next} is not after {at}");
                let before = next - SignedDuration::from_secs(1);
                if before >= at {
                    assert_eq!(
                        next_after(schedule, before).ok(),
                        Some(next),
                        "{schedule:?}: from {before} the next run is not {next}"
                    );
                }
            }
            Err(why) => assert!(
                why.starts_with(&format!("schedule {schedule:?}: ")),
                "{schedule:?}: the error does not name the schedule: {why}"
            ),
        }
    }

    let now = moments()[0];
    // Admission refuses exactly the schedules with no next run.
    let problem = schedule_problem(schedule, now);
    assert_eq!(
        problem.is_none(),
        next_after(schedule, now).is_ok(),
        "{schedule:?}: admission says {problem:?}"
    );
    // What admission computes for every DrDrill a tenant writes.
    let mut spec = DRILL.clone();
    spec.schedule = Some(schedule.to_string());
    let reasons = beyond_tenant_bounds(&spec, now);
    let too_often = reasons.iter().any(|r| r.starts_with("schedule "));
    if let (Ok(first), Ok(second)) = (
        next_after(schedule, now),
        next_after(schedule, now).and_then(|t| next_after(schedule, t)),
    ) {
        // The shortest gap of the next 500 runs is at most the first one.
        let gap = second.as_second() - first.as_second();
        assert!(gap > 0, "{schedule:?}: two runs {gap} s apart");
        if gap < TENANT_MIN_SCHEDULE_INTERVAL_SECONDS {
            assert!(
                too_often,
                "{schedule:?}: runs {gap} s apart, yet the tenant bounds say {reasons:?}"
            );
        }
    } else {
        assert!(
            !too_often,
            "{schedule:?}: runs at most once, yet the tenant bounds say {reasons:?}"
        );
    }

    // The controller: created an hour ago, never ran, looked at now.
    let created = now - SignedDuration::from_hours(1);
    match should_start(&spec, created, None, false, now) {
        Ok(Start::At(at)) => assert!(at > now, "{schedule:?}: waits for {at}, which is not after {now}"),
        Ok(Start::Now { scheduled_for }) => {
            let Some(at) = scheduled_for else {
                panic!("{schedule:?}: a scheduled drill started for no scheduled time")
            };
            assert!(at > created && at <= now, "{schedule:?}: started now for {at}");
        }
        Ok(Start::Never) => panic!("{schedule:?}: a drill neither suspended nor run never starts"),
        Err(why) => assert!(!why.is_empty()),
    }
});
