//! Planner answers (controllers/src/planner.rs, kinds/project/plan.rs,
//! domain/plans.rs): the bytes are the body a planner answered with.
//!
//! Read as the operator reads it (a PlanResponse, or a PlanError's `error`
//! for a refusal), every message that could reach status is clean and
//! bounded; a plan is validated without a panic, and a plan found valid is
//! a DAG of unique, known names that fits its ConfigMap, whose digest does
//! not depend on the order tasks and dependencies were listed in.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use somastack_controllers::domain::plans::plan_bytes;
use somastack_controllers::kinds::project::plan::{self, MAX_PLAN_BYTES};
use somastack_controllers::planner::MAX_REASON_CHARS;
use somastack_controllers::text::{bounded, is_clean};
use somastack_crds::kamachiq::{DEFAULT_MAX_TASKS, Task};
use somastack_crds::planner::{PLANNER_API_VERSION, PlanError, PlanResponse};

fuzz_target!(|data: &[u8]| {
    // A refusal's body: its `error`, sanitized and cut, is what status shows.
    if let Ok(PlanError { error }) = serde_json::from_slice::<PlanError>(data) {
        shown(&bounded(error.trim(), MAX_REASON_CHARS), MAX_REASON_CHARS);
    }
    let answer = match serde_json::from_slice::<PlanResponse>(data) {
        Ok(answer) => answer,
        Err(e) => {
            // serde's message may quote the answer: it is cut and cleaned.
            shown(&bounded(&e.to_string(), MAX_REASON_CHARS), MAX_REASON_CHARS);
            return;
        }
    };
    if answer.api_version != PLANNER_API_VERSION {
        shown(&bounded(&answer.api_version, 64), 64);
    }
    let tasks = answer.tasks;
    cycle_is_real(&tasks);
    for max_tasks in [DEFAULT_MAX_TASKS, tasks.len() as i32, 0, -1] {
        match plan::validate(&tasks, max_tasks) {
            Ok(()) => valid(&tasks, max_tasks),
            Err(problems) => {
                assert!(!problems.is_empty() && problems.len() <= 11, "{problems:?}");
            }
        }
    }
});

/// A message as status shows it: clean, and at most `max` bytes.
fn shown(message: &str, max: usize) {
    assert!(is_clean(message), "{message:?} is shown as it is");
    assert!(message.len() <= max, "{} bytes shown: {message:?}", message.len());
}

/// A cycle [`plan::find_cycle`] reports is one: each task in it depends on
/// the one before (work flows left to right), and it closes.
fn cycle_is_real(tasks: &[Task]) {
    let Some(cycle) = plan::find_cycle(tasks) else {
        return;
    };
    assert!(cycle.len() >= 2 && cycle.first() == cycle.last(), "{cycle:?}");
    let names: BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    if names.len() != tasks.len() {
        return; // Repeated names: validate() refuses the plan before any cycle.
    }
    for pair in cycle.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let needs = tasks
            .iter()
            .find(|t| &t.name == after)
            .is_some_and(|t| t.depends_on.contains(before));
        assert!(needs, "cycle {cycle:?}: {after} does not depend on {before}");
    }
}

/// What a plan [`plan::validate`] accepted must be.
fn valid(tasks: &[Task], max_tasks: i32) {
    assert!(!tasks.is_empty() && tasks.len() <= max_tasks.max(0) as usize);
    assert!(plan_bytes(tasks) <= MAX_PLAN_BYTES);
    let names: BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), tasks.len(), "repeated names accepted");
    for t in tasks {
        for d in &t.depends_on {
            assert!(
                d != &t.name && names.contains(d.as_str()),
                "{} depends on {d}",
                t.name
            );
        }
    }
    assert_eq!(plan::find_cycle(tasks), None);
    // An approval is bound to the digest: listing order must not matter.
    let mut reordered: Vec<Task> = tasks.iter().rev().cloned().collect();
    for t in &mut reordered {
        t.depends_on.reverse();
    }
    assert_eq!(plan::digest("goal", tasks), plan::digest("goal", &reordered));
    assert_ne!(
        plan::digest("goal", tasks),
        plan::digest("goal ", tasks),
        "the goal is not in the digest"
    );
}
