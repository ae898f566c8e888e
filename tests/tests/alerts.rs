//! The chart's alerts and dashboard against the real tools and the real
//! operator: `promtool check rules` and `promtool test rules` on
//! `charts/somastack-operator/files/` (promtool from hack/build-checkers.sh,
//! found on PATH), the dashboard's queries parsed by promtool too and its
//! panels covering every area without overlapping, every
//! alert with a severity, a summary, a description and a runbook in
//! docs/operations.md, and every metric name the rules, their unit tests and
//! the dashboard use found in a scrape of the running operator
//! (`SOMASTACK_METRICS_URL`), with the label names the unit tests give them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use somastack_tests::fixtures::{bundle, put};
use somastack_tests::{http_get, metrics_port, repo_root, setup, unique_suffix, wait_for};

fn files_dir() -> PathBuf {
    repo_root().join("charts/somastack-operator/files")
}

fn rules_path() -> PathBuf {
    files_dir().join("prometheus-rules.yaml")
}

fn rules_test_path() -> PathBuf {
    files_dir().join("prometheus-rules.test.yaml")
}

fn dashboard_path() -> PathBuf {
    repo_root().join("charts/somastack-operator/dashboards/somastack-operator.json")
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// promtool, from PATH.
fn promtool() -> PathBuf {
    somastack_tests::checker("promtool")
}

/// Runs promtool with `args`; its combined output, asserting success.
fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// Every alerting rule of the rule file.
fn alerts() -> Vec<Value> {
    let file = read_yaml(&rules_path());
    let mut out = Vec::new();
    for group in file["groups"].as_array().expect("groups") {
        out.extend(group["rules"].as_array().expect("rules").iter().cloned());
    }
    out
}

/// Every query of the dashboard: its panels' targets and its variables'
/// `label_values(...)` selectors.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(dashboard_path()).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = var["query"]["query"].as_str()
            && let Some(args) = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')'))
        {
            let selector = args.rsplit_once(',').map_or(args, |(s, _)| s);
            out.push(selector.trim().to_string());
        }
    }
    out
}

/// A dashboard query as Prometheus sees it once Grafana filled in its variables.
fn as_prometheus_sees_it(query: &str) -> String {
    query
        .replace("$__rate_interval", "2m")
        .replace("$__range", "6h")
        .replace("$namespace", "somastack-system")
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (in `{...}` or in the
/// list after `by`, `without`, `on`, `ignoring`, `group_left`,
/// `group_right`), strings, numbers, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let c: Vec<char> = expr.chars().collect();
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    // The index after the string that starts at i.
    let skip_string = |mut i: usize| {
        let quote = c[i];
        i += 1;
        while i < c.len() && c[i] != quote {
            i += if c[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // The index after the bracket that closes the one at i (strings skipped).
    let skip_block = |mut i: usize, close: char| {
        while i < c.len() && c[i] != close {
            i = if matches!(c[i], '"' | '\'' | '`') {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_block(i, '}'),
            '[' => i = skip_block(i, ']'),
            '#' => i = skip_block(i, '\n'),
            '(' if label_list_next => {
                label_list_next = false;
                i = skip_block(i, ')');
            }
            '$' => {
                i += 1;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
            }
            ch if ch.is_ascii_digit() || ch == '.' => {
                while i < c.len() && (ident(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            ch if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let after: String = c[i..].iter().collect();
                let after = after.trim_start();
                let next_word: String = after.chars().take_while(|ch| ident(*ch)).collect();
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    label_list_next = true;
                } else if KEYWORDS.contains(&lower.as_str())
                    || after.starts_with('(')
                    || ["by", "without"].contains(&next_word.to_ascii_lowercase().as_str())
                {
                    // An operator keyword, a function, or an aggregation
                    // (`sum (...)`, `sum by (...) (...)`).
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// A scrape of `/metrics`: each family's `# TYPE`, and the label names of
/// each sample name.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<BTreeSet<String>>>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            scrape.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels) = series_labels(line.rsplit_once(' ').map_or(line, |(s, _)| s));
        scrape.samples.entry(name).or_default().insert(labels);
    }
    scrape
}

/// Name and label names of `name{k="v",...}` (values may hold `,` or `=`).
fn series_labels(series: &str) -> (String, BTreeSet<String>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series.trim().to_string(), BTreeSet::new());
    };
    let mut labels = BTreeSet::new();
    let mut rest = rest.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        labels.insert(key.trim().trim_start_matches(',').trim().to_string());
        // Skip the quoted value.
        let after = after.trim_start();
        let quote = after.chars().next().expect("a quoted value");
        let mut end = 1;
        let chars: Vec<char> = after.chars().collect();
        while end < chars.len() && chars[end] != quote {
            end += if chars[end] == '\\' { 2 } else { 1 };
        }
        rest = after
            .get(after.char_indices().nth(end + 1).map_or(after.len(), |(i, _)| i)..)
            .unwrap_or_default()
            .trim_start_matches([',', ' ']);
        if rest.starts_with('}') {
            break;
        }
    }
    (name.trim().to_string(), labels)
}

/// Whether a query of `name` finds the operator's series: a sample of that
/// name, or a family printed without series whose samples would carry it
/// (a gauge of that name; a counter `name` minus `_total`; a histogram or
/// summary `name` minus `_bucket`, `_sum` or `_count`).
fn exposed(scrape: &Scrape, name: &str) -> bool {
    if scrape.samples.contains_key(name) {
        return true;
    }
    let typed = |family: &str, kinds: &[&str]| {
        scrape
            .types
            .get(family)
            .is_some_and(|t| kinds.contains(&t.as_str()))
    };
    if typed(name, &["gauge", "unknown", "untyped"]) {
        return true;
    }
    if name
        .strip_suffix("_total")
        .is_some_and(|family| typed(family, &["counter"]))
    {
        return true;
    }
    if let Some(family) = name.strip_suffix("_bucket") {
        return typed(family, &["histogram", "gaugehistogram"]);
    }
    ["_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|family| typed(family, &["histogram", "gaugehistogram", "summary"]))
    })
}

/// Labels Prometheus gives every target scraped through the chart's
/// ServiceMonitor, in the unit tests' input series.
const TARGET_LABELS: [&str; 7] = [
    "container",
    "endpoint",
    "instance",
    "job",
    "namespace",
    "pod",
    "service",
];

/// The operator's own label names of an input series of the unit tests:
/// the target's labels removed, `exported_X` (a label of the operator that
/// collided with the target's) back to `X`.
fn operator_labels(labels: &BTreeSet<String>) -> BTreeSet<String> {
    labels
        .iter()
        .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
        .map(|l| l.strip_prefix("exported_").unwrap_or(l).to_string())
        .collect()
}

/// The unit tests' input series: (metric name, label names).
fn input_series() -> Vec<(String, BTreeSet<String>)> {
    let tests = read_yaml(&rules_test_path());
    let mut out = Vec::new();
    for test in tests["tests"].as_array().expect("tests") {
        for s in test["input_series"].as_array().expect("input_series") {
            out.push(series_labels(s["series"].as_str().expect("series")));
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(r#"max(somastack_leader{namespace="x"}) < 1 or absent(somastack_leader{namespace="x"})"#),
        ["somastack_leader"]
    );
    assert_eq!(
        names(
            "sum by (kind, category) (rate(a_total{kind=~\"In.*\", x=\"}{\"}[5m])) \
             / on (kind) group_left(category) sum without (pod) (rate(b_total[$__rate_interval] offset 1h)) > bool 0.1"
        ),
        ["a_total", "b_total"]
    );
    assert_eq!(
        names("max by (pod) (g) + count(g2) by (kind) - sum by (kind) (c_total)"),
        ["c_total", "g", "g2"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(h_seconds_bucket{}[1m]))) * 1e3"),
        ["h_seconds_bucket"]
    );
    assert_eq!(
        names("time() - max by (exported_namespace, drill) (x_timestamp_seconds) > 7 * 86400"),
        ["x_timestamp_seconds"]
    );
    assert_eq!(names("vector(1) unless on() up # comment name\n"), ["up"]);
    assert_eq!(
        names("label_replace(m, \"dst\", \"$1\", \"src\", \"(.*)\")"),
        ["m"]
    );
}

#[test]
fn a_scrape_exposes_families_with_and_without_series() {
    let scrape = parse_scrape(
        "# TYPE c counter\nc_total{kind=\"A\",category=\"x,y=z\"} 1\n\
         # TYPE empty_c counter\n# TYPE h_seconds histogram\n# TYPE g gauge\n# TYPE empty_g gauge\n\
         g 2\n# EOF\n",
    );
    for name in [
        "c_total",
        "empty_c_total",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "g",
        "empty_g",
    ] {
        assert!(exposed(&scrape, name), "{name}: {scrape:?}");
    }
    for name in [
        "c",
        "empty_c",
        "h_seconds",
        "g_total",
        "missing",
        "empty_g_bucket",
    ] {
        assert!(!exposed(&scrape, name), "{name}: {scrape:?}");
    }
    assert_eq!(
        scrape.samples["c_total"],
        BTreeSet::from([BTreeSet::from(["category".to_string(), "kind".to_string()])])
    );
    assert_eq!(
        operator_labels(&series_labels(r#"d{pod="p", exported_namespace="t", drill="w", namespace="n"}"#).1),
        BTreeSet::from(["drill".to_string(), "namespace".to_string()])
    );
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let rules = rules_path();
    let checked = run_promtool(&["check", "rules", &rules.to_string_lossy()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts().len())),
        "{checked}"
    );
    let tested = run_promtool(&["test", "rules", &rules_test_path().to_string_lossy()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_severity_annotations_runbook_and_unit_tests() {
    let operations =
        std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("docs/operations.md");
    let runbooks = operations
        .split_once("\n## Runbooks\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or_default())
        .expect("docs/operations.md has a Runbooks section");
    let tests = std::fs::read_to_string(rules_test_path()).expect("the unit tests");
    for alert in alerts() {
        let name = alert["alert"].as_str().expect("an alerting rule");
        assert!(
            ["critical", "warning", "info"]
                .contains(&alert["labels"]["severity"].as_str().unwrap_or_default()),
            "{name}: severity"
        );
        for field in ["summary", "description"] {
            assert!(
                alert["annotations"][field]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: {field}"
            );
        }
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert!(
            url.ends_with(&format!("docs/operations.md#{}", name.to_lowercase())),
            "{name}: runbook_url {url}"
        );
        assert!(
            runbooks.contains(&format!("\n### {name}\n")),
            "{name}: no heading `### {name}` under ## Runbooks in docs/operations.md"
        );
        // Tested firing (an expected alert) and not firing (an empty one).
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name} is never tested not firing"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{name} is never tested firing"
        );
    }
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    // promtool parses each query as the expression of a recording rule.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({ "record": format!("dashboard:query_{i}"), "expr": as_prometheus_sees_it(q) }))
        .collect();
    let file = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let path = std::env::temp_dir().join(format!("somastack-dashboard-{}.rules.json", unique_suffix()));
    std::fs::write(&path, file.to_string()).expect("write the rules");
    let checked = run_promtool(&["check", "rules", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

#[test]
fn dashboard_covers_every_area_in_a_valid_layout() {
    let text = std::fs::read_to_string(dashboard_path()).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let used: BTreeSet<String> = dashboard_queries().iter().flat_map(|q| metric_names(q)).collect();
    // Reconciles (rate, errors, latency), webhooks (decisions, latency),
    // leader, certificate, drills (runs, RTO), KAMACHIQ tasks, objects, memory.
    for name in [
        "somastack_reconcile_total",
        "somastack_reconcile_errors_total",
        "somastack_reconcile_duration_seconds_bucket",
        "somastack_webhook_requests_total",
        "somastack_webhook_duration_seconds_bucket",
        "somastack_leader",
        "somastack_webhook_certificate_expiry_timestamp_seconds",
        "somastack_drill_runs_total",
        "somastack_drill_last_rto_seconds",
        "somastack_kamachiq_task_attempts_total",
        "somastack_kamachiq_task_duration_seconds_bucket",
        "somastack_objects",
        "somastack_heap_allocated_bytes",
        "somastack_policy_kill_switch_engaged",
    ] {
        assert!(used.contains(name), "no dashboard panel queries {name}");
    }
    // Unique panel ids, targets with unique refIds, a data source from the
    // variable, and panels that do not overlap on Grafana's 24-column grid.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(ids.insert(panel["id"].as_u64().expect("an id")), "{title}: id");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
            assert!(!targets.is_empty(), "{title}: no query");
        }
        let at = |k: &str| panel["gridPos"][k].as_u64().expect("gridPos");
        assert!(at("x") + at("w") <= 24, "{title}: wider than the grid");
        for x in at("x")..at("x") + at("w") {
            for y in at("y")..at("y") + at("h") {
                if let Some(other) = cells.insert((x, y), title) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
    }
}

#[tokio::test]
async fn every_metric_name_is_in_a_scrape_of_the_operator() {
    // Objects whose per-object gauges the alerts read, so the scrape has
    // their series (not only their families): a bundle in Audit mode with
    // its kill switch engaged, governing only this test's empty namespace,
    // and a yearly drill waiting for its first run.
    let (client, ns) = setup("alerts").await;
    let name = format!("alerts-{}", unique_suffix());
    let policy = bundle(
        &name,
        &ns.name,
        json!({ "enforcement": "Audit", "killSwitch": { "engaged": true, "reason": "alerts test" } }),
    );
    put(&client, ns.owns(&policy)).await;
    let drill = json!({
        "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
        "metadata": { "name": "yearly", "namespace": ns.name },
        "spec": { "installationRef": { "name": "absent" }, "scenario": "PodLoss",
                  "objectives": { "rtoSeconds": 60 }, "schedule": "0 0 1 1 *" },
    });
    put(&client, &drill).await;

    let port = metrics_port();
    let want = [
        format!("somastack_policy_kill_switch_engaged{{bundle=\"{name}\"}} 1"),
        format!("somastack_policy_violations{{bundle=\"{name}\",enforcement=\"Audit\"}} 0"),
        format!(
            "somastack_drill_next_run_timestamp_seconds{{namespace=\"{}\",drill=\"yearly\"}} ",
            ns.name
        ),
    ];
    let text = wait_for(
        "the bundle's and the drill's gauges in /metrics",
        Duration::from_secs(30),
        || async {
            let (code, body) = http_get(port, "/metrics").await?;
            assert_eq!(code, 200, "/metrics on 127.0.0.1:{port}");
            want.iter()
                .all(|w| body.lines().any(|l| l.starts_with(w.as_str())))
                .then_some(body)
        },
    )
    .await;
    let scrape = parse_scrape(&text);

    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for alert in alerts() {
        let expr = alert["expr"].as_str().expect("expr");
        for metric in metric_names(expr) {
            used.entry(metric)
                .or_default()
                .insert(format!("alert {}", alert["alert"]));
        }
    }
    for query in dashboard_queries() {
        let names = metric_names(&query);
        assert!(!names.is_empty(), "no metric in the dashboard query {query}");
        for metric in names {
            used.entry(metric).or_default().insert("dashboard".into());
        }
    }
    let inputs = input_series();
    for (metric, _) in &inputs {
        used.entry(metric.clone())
            .or_default()
            .insert("unit tests".into());
    }
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<String> = used
        .iter()
        .filter(|(metric, _)| !exposed(&scrape, metric))
        .map(|(metric, by)| format!("{metric} (used by {by:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metric names the operator does not expose:\n{}\nscraped families: {:?}",
        missing.join("\n"),
        scrape.types.keys().collect::<Vec<_>>()
    );

    // The unit tests' series carry the operator's label names (besides the
    // target's), as its samples show them.
    let mut unchecked = BTreeSet::new();
    for (metric, labels) in &inputs {
        let Some(shown) = scrape.samples.get(metric) else {
            unchecked.insert(metric.clone());
            continue;
        };
        let own = operator_labels(labels);
        assert!(
            shown.contains(&own),
            "the unit tests give {metric} the labels {own:?}; the operator's samples have {shown:?}"
        );
    }
    // Families the scrape has no sample of (nothing failed or ran yet) are
    // checked by name only.
    eprintln!("label names not checked (no sample in this scrape): {unchecked:?}");
    for required in [
        "somastack_policy_kill_switch_engaged",
        "somastack_policy_violations",
        "somastack_leader",
    ] {
        assert!(!unchecked.contains(required), "{required} was checked");
    }
    ns.delete().await;
}
