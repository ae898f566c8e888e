//! The pure part of a drill: when to run, what to check before acting, when
//! the workload counts as recovered, the verdict, the timeline, and the
//! summary across drills. No API calls; time is an argument.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use somastack_crds::drill::{
    ActiveRun, DrDrillSpec, DrillPhase, DrillRun, DrillStep, Scenario, StepOutcome, TimelineEntry, Verdict,
};
use somastack_crds::{DrDrill, Installation};

use crate::conditions::{Desired, Health, Status};
use crate::domain::capsules::CapsuleUse;
use crate::domain::drills::Schedule;
use crate::domain::regions::active_region;

/// Most entries a timeline holds (the CRD's bound).
pub const MAX_TIMELINE: usize = 32;

/// Pure: the drill's `Ready` and how GitOps tools read it, from the phase
/// it takes and the reason and message it gives. A passed drill, one
/// waiting for its next scheduled run and a suspended one are Current; a
/// failed verdict (or a drill that cannot run: a bad schedule, a requester
/// not allowed) is Stalled until the next run passes or the spec changes;
/// a run (or its wait for the target) is Progressing. A scheduled drill
/// between runs keeps what its last run concluded.
pub fn readiness(phase: DrillPhase, reason: &'static str, message: &str) -> (Desired, Health) {
    let (status, health) = match phase {
        DrillPhase::Succeeded | DrillPhase::Scheduled | DrillPhase::Suspended => {
            (Status::True, Health::Current)
        }
        DrillPhase::Failed => (Status::False, Health::Stalled),
        DrillPhase::Pending | DrillPhase::Waiting | DrillPhase::Running | DrillPhase::Restoring => {
            (Status::False, Health::Progressing)
        }
    };
    (Desired::new("Ready", status, reason, message), health)
}

pub fn time(ts: Timestamp) -> Time {
    Time(ts)
}

pub fn micro(ts: Timestamp) -> MicroTime {
    MicroTime(ts)
}

/// Whether a drill without a run in progress should start one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Start now; for a scheduled drill, the schedule time it stands for.
    Now { scheduled_for: Option<Timestamp> },
    /// Nothing to do until this time (the next scheduled run).
    At(Timestamp),
    /// Nothing to do: suspended, or a one-off drill that has run.
    Never,
}

/// Decides whether to start a run at `now`. One-off drills run once; a
/// schedule runs at each cron time after the last one it ran for (missed
/// times collapse into one run, like a CronJob), never two at once.
pub fn should_start(
    spec: &DrDrillSpec,
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    ran_before: bool,
    now: Timestamp,
) -> Result<Start, String> {
    if spec.suspend {
        return Ok(Start::Never);
    }
    let Some(schedule) = &spec.schedule else {
        return Ok(if ran_before {
            Start::Never
        } else {
            Start::Now { scheduled_for: None }
        });
    };
    let schedule = Schedule::parse(schedule)?;
    let mut next = schedule.next_after(last_scheduled.unwrap_or(created))?;
    if next > now {
        return Ok(Start::At(next));
    }
    // The latest missed time is the one to run for.
    for _ in 0..10_000 {
        let after = schedule.next_after(next)?;
        if after > now {
            break;
        }
        next = after;
    }
    Ok(Start::Now {
        scheduled_for: Some(next),
    })
}

/// The on-demand run request not yet acted on: the value of the drill's
/// [`RUN_ANNOTATION`](somastack_crds::drill::RUN_ANNOTATION) when it differs
/// from the one `status.runRequest` records. A request starts a run now,
/// whatever the schedule, once.
pub fn run_requested<'a>(
    annotations: &'a BTreeMap<String, String>,
    acted_on: Option<&str>,
) -> Option<&'a str> {
    annotations
        .get(somastack_crds::drill::RUN_ANNOTATION)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && Some(*v) != acted_on)
}

/// Where a run acts, as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// The region the outage hits (where the workload runs now).
    pub target_region: String,
    /// Where the workload fails over to (none for PodLoss).
    pub failover_region: Option<String>,
    /// The Installation's home region, where a restore brings it back.
    pub home_region: String,
    /// The active-region annotation before the run, put back by a restore.
    pub previous_active_region: Option<String>,
    /// Ready replicas that count as recovered.
    pub replicas: i32,
}

/// Replicas the workload must have ready to count as recovered.
pub fn expected_replicas(inst: &Installation) -> i32 {
    match &inst.spec.autoscaling {
        Some(a) => a.min_replicas.max(1),
        None => inst.spec.replicas.unwrap_or(1),
    }
}

fn is_ready(inst: &Installation) -> bool {
    inst.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Why a run should wait before judging its target, or `None` to judge
/// now. GitOps and `kubectl apply -f dir/` create a drill and its
/// Installation together, and a rollout takes a while, so a run waits while
/// the Installation does not exist yet and the drill is younger than its
/// `timeoutSeconds`, or while it exists, is not Ready and is itself younger
/// than that (still rolling out). An older target that is missing or not
/// Ready is a finding, not something to wait for.
pub fn settling(
    spec: &DrDrillSpec,
    inst: Option<&Installation>,
    drill_created: Timestamp,
    now: Timestamp,
) -> Option<String> {
    let name = &spec.installation_ref.name;
    let patience = f64::from(spec.timeout_seconds);
    match inst {
        None => (seconds(drill_created, now) < patience)
            .then(|| format!("waiting for Installation {name} to be created")),
        Some(inst) if !is_ready(inst) => {
            let created = inst.metadata.creation_timestamp.as_ref()?.0;
            let age = seconds(created, now);
            (age < patience).then(|| {
                format!(
                    "waiting for Installation {name}, created {}s ago, to become Ready",
                    age.max(0.0).round()
                )
            })
        }
        Some(_) => None,
    }
}

/// Checks what a run needs before anything is injected. `judge` answers
/// the Installation's policy decision for a region (residency for its
/// capsule). An `Err` is a drill finding: the verdict is Fail and nothing
/// is injected.
pub fn validate(
    spec: &DrDrillSpec,
    inst: Option<&Installation>,
    judge: impl Fn(&str) -> CapsuleUse,
) -> Result<Targets, String> {
    let Some(inst) = inst else {
        return Err(format!(
            "Installation {} does not exist",
            spec.installation_ref.name
        ));
    };
    if !is_ready(inst) {
        return Err(format!(
            "Installation {} is not Ready; a drill needs a healthy target",
            spec.installation_ref.name
        ));
    }
    let active = active_region(inst);
    let target = spec.target_region.clone().unwrap_or_else(|| active.clone());
    let failover = match spec.scenario {
        Scenario::PodLoss => None,
        Scenario::RegionOutage => {
            if target != active {
                return Err(format!(
                    "targetRegion {target} is not where Installation {} runs ({active})",
                    spec.installation_ref.name
                ));
            }
            Some(failover_region(spec, inst, &target, judge)?)
        }
    };
    Ok(Targets {
        target_region: target,
        failover_region: failover,
        home_region: inst.spec.region.clone(),
        previous_active_region: inst
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(somastack_crds::installation::ACTIVE_REGION_ANNOTATION))
            .cloned(),
        replicas: expected_replicas(inst),
    })
}

/// The region a RegionOutage fails over to: the drill's `failoverRegion`,
/// else the first of the Installation's failoverRegions (other than
/// `target`) that policy allows; `Err` says why none may be used.
fn failover_region(
    spec: &DrDrillSpec,
    inst: &Installation,
    target: &str,
    judge: impl Fn(&str) -> CapsuleUse,
) -> Result<String, String> {
    let candidates: Vec<&String> = match &spec.failover_region {
        Some(r) => vec![r],
        None => inst
            .spec
            .failover_regions
            .iter()
            .filter(|r| **r != target)
            .collect(),
    };
    if candidates.is_empty() {
        return Err(format!(
            "Installation {} has no failoverRegions to fail over to",
            spec.installation_ref.name
        ));
    }
    let mut refusals = Vec::new();
    for region in candidates {
        if !inst.spec.failover_regions.contains(region) && *region != inst.spec.region {
            refusals.push(format!(
                "failover region {region} is not one of the Installation's failoverRegions"
            ));
            continue;
        }
        match judge(region) {
            CapsuleUse::Allowed(_) => return Ok(region.clone()),
            CapsuleUse::Blocked(eval) => refusals.push(format!(
                "failover to {region} refused by policy: {}",
                eval.blocking
                    .iter()
                    .map(|v| v.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            CapsuleUse::CapsuleNotFound => refusals.push("the Capsule is not published".into()),
            CapsuleUse::CapsuleUnusable(why) => refusals.push(why),
        }
    }
    Err(refusals.join("; "))
}

/// A pod of the Installation, as recovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// The pod's name (PodLoss remembers which pods it deleted).
    pub name: String,
    /// The region of its node, once scheduled.
    pub region: Option<String>,
    /// Its creation time: only pods created after the injection count.
    pub created: Timestamp,
    /// When it became Ready (its Ready condition's transition), if it is.
    pub ready_since: Option<Timestamp>,
}

/// When the workload was Available again: `replicas` pods Ready in
/// `region` (any region when `None`), none of them `lost` at the
/// injection nor created before it; the time the last of those became
/// Ready. `None` while not recovered. Kubernetes records pod times in whole
/// seconds, so "before the injection" means before its second.
pub fn recovered_at(
    pods: &[PodView],
    region: Option<&str>,
    replicas: i32,
    injected: Timestamp,
    lost: &[String],
) -> Option<Timestamp> {
    let injected_second = Timestamp::from_second(injected.as_second()).unwrap_or(injected);
    let mut ready: Vec<Timestamp> = pods
        .iter()
        .filter(|p| region.is_none_or(|r| p.region.as_deref() == Some(r)))
        .filter(|p| !lost.contains(&p.name))
        .filter(|p| p.created >= injected_second)
        .filter_map(|p| p.ready_since)
        .collect();
    ready.sort();
    let n = usize::try_from(replicas.max(1)).unwrap_or(1);
    ready.get(n - 1).map(|t| (*t).max(injected))
}

/// Whether the workload is back in `region`: every live pod there, and at
/// least `replicas` of them Ready (whenever they were made).
pub fn back_in(pods: &[PodView], region: &str, replicas: i32) -> bool {
    let ready = pods
        .iter()
        .filter(|p| p.region.as_deref() == Some(region) && p.ready_since.is_some())
        .count();
    pods.iter().all(|p| p.region.as_deref() == Some(region))
        && i64::try_from(ready).unwrap_or(i64::MAX) >= i64::from(replicas.max(1))
}

/// Seconds between two times, to the millisecond.
pub fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    let ms = to.as_millisecond() - from.as_millisecond();
    (ms as f64) / 1000.0
}

/// Measured RTO of a run, when it recovered.
pub fn rto(run: &ActiveRun) -> Option<f64> {
    Some(seconds(run.injected_at.as_ref()?.0, run.recovered_at.as_ref()?.0))
}

/// The verdict of a finished run, and why.
pub fn verdict(run: &ActiveRun, rto_objective: i32, restore_failed: Option<&str>) -> (Verdict, String) {
    if let Some(f) = &run.finding {
        return (Verdict::Fail, format!("finding: {f}"));
    }
    if let Some(a) = &run.abort {
        return (Verdict::Fail, format!("aborted: {a}"));
    }
    if let Some(r) = restore_failed {
        return (Verdict::Fail, format!("restore failed: {r}"));
    }
    match rto(run) {
        None => (Verdict::Fail, "the workload did not recover".into()),
        Some(s) if s <= f64::from(rto_objective) => (
            Verdict::Pass,
            format!("recovered in {s:.1}s, within the {rto_objective}s objective"),
        ),
        Some(s) => (
            Verdict::Fail,
            format!("recovered in {s:.1}s, over the {rto_objective}s objective"),
        ),
    }
}

/// Opens `step` in the timeline (closing any step still running as Succeeded).
pub fn begin(timeline: &mut Vec<TimelineEntry>, step: DrillStep, now: Timestamp, message: String) {
    if timeline.last().is_some_and(|e| e.step == step && e.end.is_none()) {
        return;
    }
    finish(timeline, StepOutcome::Succeeded, now, None);
    if timeline.len() >= MAX_TIMELINE {
        timeline.remove(0);
    }
    timeline.push(TimelineEntry {
        step,
        start: time(now),
        end: None,
        outcome: StepOutcome::Running,
        message,
    });
}

/// Closes the running step with `outcome` (and a new message, if given).
pub fn finish(timeline: &mut [TimelineEntry], outcome: StepOutcome, now: Timestamp, message: Option<String>) {
    if let Some(last) = timeline.last_mut()
        && last.end.is_none()
    {
        last.end = Some(time(now));
        last.outcome = outcome;
        if let Some(m) = message {
            last.message = m;
        }
    }
}

/// Records a step that did not apply.
pub fn skipped(timeline: &mut Vec<TimelineEntry>, step: DrillStep, now: Timestamp, message: &str) {
    begin(timeline, step, now, message.into());
    finish(timeline, StepOutcome::Skipped, now, None);
}

/// Adds a finished run in front of `history`, keeping at most `limit`.
pub fn push_history(history: &mut Vec<DrillRun>, run: DrillRun, limit: i32) {
    history.insert(0, run);
    history.truncate(usize::try_from(limit.max(1)).unwrap_or(1));
}

/// One Installation's drill record, across its drills.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    /// The namespace of the Installation.
    pub namespace: String,
    /// The Installation the drills target.
    pub installation: String,
    /// DrDrills targeting it.
    pub drills: usize,
    /// Finished runs in their histories.
    pub runs: usize,
    /// Runs whose verdict is Pass.
    pub passed: usize,
    /// Passed runs / runs, 0..1 (absent without runs).
    pub pass_rate: Option<f64>,
    /// When the latest run started.
    pub last_run: Option<Timestamp>,
    pub median_rto_seconds: Option<f64>,
    pub worst_rto_seconds: Option<f64>,
    /// Drills whose latest run failed.
    pub failing: Vec<String>,
}

/// The disaster-drill summary: per Installation, from the runs kept in the
/// drills' status.
pub fn summary(drills: &[DrDrill]) -> Vec<SummaryRow> {
    let mut rows: BTreeMap<(String, String), SummaryRow> = BTreeMap::new();
    for d in drills {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let inst = d.spec.installation_ref.name.clone();
        let row = rows
            .entry((ns.clone(), inst.clone()))
            .or_insert_with(|| SummaryRow {
                namespace: ns,
                installation: inst,
                drills: 0,
                runs: 0,
                passed: 0,
                pass_rate: None,
                last_run: None,
                median_rto_seconds: None,
                worst_rto_seconds: None,
                failing: vec![],
            });
        row.drills += 1;
        let history = d
            .status
            .as_ref()
            .map(|s| s.history.as_slice())
            .unwrap_or_default();
        for run in history {
            row.runs += 1;
            if run.verdict == Some(Verdict::Pass) {
                row.passed += 1;
            }
            row.last_run = row.last_run.max(Some(run.start.0));
        }
        if history.first().is_some_and(|r| r.verdict == Some(Verdict::Fail)) {
            row.failing.push(d.metadata.name.clone().unwrap_or_default());
        }
    }
    for ((ns, inst), row) in rows.iter_mut() {
        let mut rtos: Vec<f64> = drills
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == Some(ns) && &d.spec.installation_ref.name == inst)
            .flat_map(|d| d.status.iter().flat_map(|s| s.history.iter()))
            .filter_map(|r| r.measured_rto_seconds)
            .collect();
        rtos.sort_by(f64::total_cmp);
        row.median_rto_seconds = median(&rtos);
        row.worst_rto_seconds = rtos.last().copied();
        row.pass_rate = (row.runs > 0).then(|| row.passed as f64 / row.runs as f64);
    }
    rows.into_values().collect()
}

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod run_request_tests {
    use super::run_requested;
    use std::collections::BTreeMap;

    #[test]
    fn a_run_request_is_honoured_once() {
        let none = BTreeMap::new();
        assert_eq!(run_requested(&none, None), None);
        let asked = BTreeMap::from([(
            "drills.somastack.io/run".to_string(),
            "2026-11-26T17:00:00Z".to_string(),
        )]);
        assert_eq!(run_requested(&asked, None), Some("2026-11-26T17:00:00Z"));
        assert_eq!(
            run_requested(&asked, Some("2026-11-26T16:00:00Z")),
            Some("2026-11-26T17:00:00Z")
        );
        // Acted on: nothing more until a new value.
        assert_eq!(run_requested(&asked, Some("2026-11-26T17:00:00Z")), None);
        let blank = BTreeMap::from([("drills.somastack.io/run".to_string(), " ".to_string())]);
        assert_eq!(run_requested(&blank, None), None);
    }
}
