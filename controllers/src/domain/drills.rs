//! Drill schedules and the bounds of what a tenant may drill on their own
//! (enforced at admission, and by the drill controller). Pure; time is an
//! argument.

use std::str::FromStr;

use jiff::Timestamp;
use somastack_crds::drill::{
    DrDrillSpec, Scope, TENANT_MAX_TIMEOUT_SECONDS, TENANT_MIN_SCHEDULE_INTERVAL_SECONDS,
};

/// A drill schedule, parsed once: finding its next runs does not parse it
/// again (admission looks at its next 500 runs, the controller at up to
/// 10,000 missed ones).
pub struct Schedule<'a> {
    text: &'a str,
    cron: croner::Cron,
}

impl<'a> Schedule<'a> {
    /// `schedule` parsed, or why it does not parse.
    pub fn parse(schedule: &'a str) -> Result<Self, String> {
        let cron = croner::Cron::from_str(schedule).map_err(|e| format!("schedule {schedule:?}: {e}"))?;
        Ok(Self { text: schedule, cron })
    }

    /// The next time it fires strictly after `after` (UTC).
    pub fn next_after(&self, after: Timestamp) -> Result<Timestamp, String> {
        first_after(&self.cron, after).map_err(|e| format!("schedule {:?}: {e}", self.text))
    }
}

fn first_after(cron: &croner::Cron, after: Timestamp) -> Result<Timestamp, croner::errors::CronError> {
    let zoned = after.to_zoned(jiff::tz::TimeZone::UTC);
    cron.find_next_occurrence(&zoned, false).map(|z| z.timestamp())
}

/// The next time `schedule` fires strictly after `after` (UTC).
pub fn next_after(schedule: &str, after: Timestamp) -> Result<Timestamp, String> {
    Schedule::parse(schedule)?.next_after(after)
}

/// Why `schedule` cannot drive a drill, if it cannot: it does not parse
/// (the CRD's rule checks only its shape: five fields of cron characters),
/// or it never fires (e.g. `0 0 31 2 *`). Admission refuses such a
/// schedule, so the drill controller never meets one it cannot run.
pub fn schedule_problem(schedule: &str, now: Timestamp) -> Option<String> {
    let cron = match croner::Cron::from_str(schedule) {
        Ok(cron) => cron,
        Err(e) => return Some(format!("spec.schedule {schedule:?} is not a schedule: {e}")),
    };
    match first_after(&cron, now) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "spec.schedule {schedule:?} never runs ({e}); give a date that exists, such as '0 3 28 2 *'"
        )),
    }
}

/// Why `spec` goes beyond what a tenant may do on their own (each reason
/// needs the RBAC verb [`somastack_crds::drill::DISRUPT_VERB`]): empty when it stays within the
/// tenant bounds. A schedule is judged by the shortest gap between its next
/// 500 runs after `now`.
pub fn beyond_tenant_bounds(spec: &DrDrillSpec, now: Timestamp) -> Vec<String> {
    let mut out = Vec::new();
    if spec.scope == Scope::Region {
        out.push(
            "scope: Region taints every node of a region NoExecute, evicting every tenant's pods there"
                .to_string(),
        );
    }
    if spec.timeout_seconds > TENANT_MAX_TIMEOUT_SECONDS {
        out.push(format!(
            "timeoutSeconds {} is above {TENANT_MAX_TIMEOUT_SECONDS}",
            spec.timeout_seconds
        ));
    }
    if let Some(schedule) = &spec.schedule
        && let Some(gap) = shortest_gap(schedule, now, 500)
        && gap < TENANT_MIN_SCHEDULE_INTERVAL_SECONDS
    {
        out.push(format!(
            "schedule {schedule:?} runs {} apart, more often than every {} minutes",
            if gap < 60 {
                format!("{gap} s")
            } else {
                format!("{} min", gap / 60)
            },
            TENANT_MIN_SCHEDULE_INTERVAL_SECONDS / 60
        ));
    }
    out
}

/// Shortest time in seconds between two consecutive runs among the next
/// `runs` of `schedule` after `now`; `None` for a schedule that does not parse
/// (reported elsewhere) or runs less than twice.
pub fn shortest_gap(schedule: &str, now: Timestamp, runs: usize) -> Option<i64> {
    let schedule = Schedule::parse(schedule).ok()?;
    let mut at = schedule.next_after(now).ok()?;
    let mut shortest: Option<i64> = None;
    for _ in 1..runs {
        let Ok(next) = schedule.next_after(at) else { break };
        let gap = next.as_second() - at.as_second();
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        at = next;
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn schedules_that_pass_the_crd_rule_but_cannot_run_are_named() {
        for bad in ["99 99 99 99 99", "a b c d e", "*/0 * * * *", "0 5-2 * * *"] {
            let why = schedule_problem(bad, now()).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                why.starts_with(&format!("spec.schedule {bad:?} is not a schedule: ")),
                "{why}"
            );
        }
        let started = std::time::Instant::now();
        let why = schedule_problem("0 0 31 2 *", now()).expect("February 31 refused");
        assert!(why.contains("never runs"), "{why}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a never-firing schedule took {:?} to judge",
            started.elapsed()
        );
        for good in ["0 3 * * *", "@daily", "*/15 * * * 1-5", "0 0 29 2 *"] {
            assert_eq!(schedule_problem(good, now()), None, "{good}");
        }
    }
}
