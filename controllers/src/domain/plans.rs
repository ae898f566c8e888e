//! KamachiqProject plans as admission and the project controller both see them. Pure.

use somastack_crds::kamachiq::Task;

/// Bytes of the plan as it is stored (`plan.json`, indented for people).
pub fn plan_bytes(tasks: &[Task]) -> usize {
    serde_json::to_string_pretty(tasks)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}
