//! Prometheus metrics (`prometheus-client`), served by the operator on `/metrics`.
//!
//! Names and label sets are part of the operator's interface (dashboards and
//! the chart's PrometheusRule use them); `docs/operations.md` lists them and
//! the integration test `metrics` checks them.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use somastack_crds::{Capsule, DrDrill, Installation, KamachiqProject, PolicyBundle};

use crate::caches::Caches;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookNameLabels {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: String,
    pub decision: String,
}

/// What an admission webhook answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookDecision {
    Allowed,
    /// Allowed, with warnings shown to the client.
    Warned,
    Denied,
    /// The request could not be judged (bad body, cache not ready, API error).
    Error,
}

impl WebhookDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookDecision::Allowed => "allowed",
            WebhookDecision::Warned => "warned",
            WebhookDecision::Denied => "denied",
            WebhookDecision::Error => "error",
        }
    }
}

/// Where an admission webhook read the PolicyBundles from.
#[derive(Clone, Copy, Debug)]
pub enum BundleSource {
    /// The cache: the record of bundle writes showed it complete.
    Cache,
    /// The API server: the cache did not show every recorded write yet.
    List,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabels {
    pub namespace: String,
    pub drill: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillRunLabels {
    pub namespace: String,
    pub drill: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub namespace: String,
    /// `accepted`, `rejected` or `failed`.
    pub verdict: String,
}

/// Every metric the operator records.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    webhook: Family<WebhookLabels, Counter>,
    webhook_duration: Family<WebhookNameLabels, Histogram>,
    bundle_reads: Family<SourceLabels, Counter>,
    /// 1 while this replica holds the Lease (or runs without leader election).
    pub leader: Gauge,
    /// Unix time the webhook's serving certificate expires.
    pub certificate_expiry: Gauge,
    drill_runs: Family<DrillRunLabels, Counter>,
    drill_rto: Family<DrillLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    task_attempts: Family<TaskLabels, Counter>,
    task_duration: Family<TaskLabels, Histogram>,
    /// The drills and namespaces that have series, so the series of those
    /// that are gone can be dropped ([`Metrics::forget_gone`]).
    labelled: std::sync::Mutex<Labelled>,
}

/// Who has per-object series.
#[derive(Debug, Default)]
struct Labelled {
    drills: std::collections::BTreeSet<(String, String)>,
    namespaces: std::collections::BTreeSet<String>,
}

const VERDICTS: [&str; 3] = ["accepted", "rejected", "failed"];

fn task_histogram() -> Histogram {
    // 1 s .. ~9 h: agent tasks run for seconds to hours.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 16,
    ))
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~20 s: a reconcile is a handful of API calls.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 13,
    ))
}

fn webhook_histogram() -> Histogram {
    // 0.5 ms .. ~1.1 s in steps of 1.5x: admission answers within a few
    // milliseconds, and its p99 is judged against 20 ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 1.5, 20,
    ))
}

impl Metrics {
    /// Creates the metrics and registers them (and the object counts read
    /// from `caches` at scrape time) in `registry` under the `somastack` prefix.
    pub fn register(registry: &mut Registry, caches: Option<&Caches>) -> Arc<Self> {
        let m = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            webhook: Family::default(),
            webhook_duration: Family::new_with_constructor(webhook_histogram),
            bundle_reads: Family::default(),
            leader: Gauge::default(),
            certificate_expiry: Gauge::default(),
            drill_runs: Family::default(),
            drill_rto: Family::default(),
            task_attempts: Family::default(),
            task_duration: Family::new_with_constructor(task_histogram),
            labelled: Default::default(),
        };
        /// Any of the metrics below, so that one table can hold them all.
        #[derive(Debug)]
        struct AnyMetric(Box<dyn Metric>);
        impl EncodeMetric for AnyMetric {
            fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
                self.0.encode(encoder)
            }
            fn metric_type(&self) -> MetricType {
                self.0.metric_type()
            }
            /// Never: a family without series yet (no drill has run, no
            /// reconcile failed) is still described (`# HELP`, `# TYPE`), so
            /// a scrape shows every name dashboards and alerts may use
            /// (prometheus-client leaves out the families it calls empty).
            fn is_empty(&self) -> bool {
                false
            }
        }
        /// Name, unit (Prometheus appends it to the name), metric, help.
        type Row = (&'static str, Option<Unit>, Box<dyn Metric>, &'static str);
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("reconcile",                                    None,                Box::new(m.reconciles.clone()),         "Reconciles run, by kind"),
            ("reconcile_errors",                             None,                Box::new(m.errors.clone()),             "Reconciles that failed, by kind and stable error category"),
            ("reconcile_duration",                           Some(Unit::Seconds), Box::new(m.duration.clone()),           "Time one reconcile took, by kind"),
            ("webhook_requests",                             None,                Box::new(m.webhook.clone()),            "Admission requests answered, by webhook and decision (allowed, warned, denied, error)"),
            ("webhook_duration",                             Some(Unit::Seconds), Box::new(m.webhook_duration.clone()),   "Time an admission request took the operator to answer, by webhook"),
            ("webhook_bundle_reads",                         None,                Box::new(m.bundle_reads.clone()),       "PolicyBundle reads of the admission webhooks, by source (cache: the record of bundle writes showed it complete; list: the API server)"),
            ("leader",                                       None,                Box::new(m.leader.clone()),             "1 while this replica holds the leader Lease and runs the controllers"),
            ("webhook_certificate_expiry_timestamp_seconds", None,                Box::new(m.certificate_expiry.clone()), "Unix time at which the webhook's serving certificate expires"),
            ("drill_runs",                                   None,                Box::new(m.drill_runs.clone()),         "Finished DrDrill runs, by drill and verdict (Pass, Fail)"),
            ("drill_last_rto",                               Some(Unit::Seconds), Box::new(m.drill_rto.clone()),          "RTO measured by the drill's last run that recovered"),
            ("kamachiq_task_attempts",                       None,                Box::new(m.task_attempts.clone()),      "Judged KamachiqProject task attempts, by namespace and verdict (accepted, rejected, failed)"),
            ("kamachiq_task_duration",                       Some(Unit::Seconds), Box::new(m.task_duration.clone()),      "Run time of judged task attempts (Job start to finish), by namespace and verdict"),
        ];
        let r = registry.sub_registry_with_prefix("somastack");
        for (name, unit, metric, help) in table {
            match unit {
                Some(unit) => r.register_with_unit(name, help, unit, AnyMetric(metric)),
                None => r.register(name, help, AnyMetric(metric)),
            }
        }
        if let Some(caches) = caches {
            registry.register_collector(Box::new(ObjectCounts(caches.clone())));
            registry.register_collector(Box::new(StatusGauges(caches.clone())));
        }
        Arc::new(m)
    }

    pub fn reconciled(&self, kind: &str, took: Duration, error: Option<&'static str>) {
        let kind = kind.to_string();
        self.reconciles
            .get_or_create(&KindLabels { kind: kind.clone() })
            .inc();
        self.duration
            .get_or_create(&KindLabels { kind: kind.clone() })
            .observe(took.as_secs_f64());
        if let Some(category) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    kind,
                    category: category.into(),
                })
                .inc();
        }
    }

    /// Drops the series of drills that no longer exist and of namespaces
    /// that are gone (`drill_exists`, `namespace_exists`), so the metrics
    /// do not grow with every drill and tenant namespace there ever was.
    pub fn forget_gone(
        &self,
        drill_exists: impl Fn(&str, &str) -> bool,
        namespace_exists: impl Fn(&str) -> bool,
    ) {
        let Ok(mut l) = self.labelled.lock() else { return };
        l.drills.retain(|(namespace, drill)| {
            if drill_exists(namespace, drill) {
                return true;
            }
            let base = DrillLabels {
                namespace: namespace.clone(),
                drill: drill.clone(),
            };
            self.drill_rto.remove(&base);
            for verdict in ["Pass", "Fail"] {
                self.drill_runs.remove(&DrillRunLabels {
                    namespace: namespace.clone(),
                    drill: drill.clone(),
                    verdict: verdict.into(),
                });
            }
            false
        });
        l.namespaces.retain(|namespace| {
            if namespace_exists(namespace) {
                return true;
            }
            for verdict in VERDICTS {
                let labels = TaskLabels {
                    namespace: namespace.clone(),
                    verdict: verdict.into(),
                };
                self.task_attempts.remove(&labels);
                self.task_duration.remove(&labels);
            }
            false
        });
    }

    /// [`Metrics::forget_gone`] for what `caches` no longer hold (nothing
    /// while they are not filled: a cold cache would look like nothing exists).
    pub fn forget_gone_from(&self, caches: &Caches) {
        if !caches.is_ready() {
            return;
        }
        use kube::runtime::reflector::ObjectRef;
        self.forget_gone(
            |namespace, drill| {
                caches
                    .drills
                    .get(&ObjectRef::new(drill).within(namespace))
                    .is_some()
            },
            |namespace| caches.namespaces.get(&ObjectRef::new(namespace)).is_some(),
        );
    }

    pub fn drill_finished(&self, namespace: &str, drill: &str, passed: bool, rto: Option<f64>) {
        if let Ok(mut l) = self.labelled.lock() {
            l.drills.insert((namespace.to_string(), drill.to_string()));
        }
        self.drill_runs
            .get_or_create(&DrillRunLabels {
                namespace: namespace.into(),
                drill: drill.into(),
                verdict: if passed { "Pass" } else { "Fail" }.into(),
            })
            .inc();
        if let Some(rto) = rto {
            self.drill_rto
                .get_or_create(&DrillLabels {
                    namespace: namespace.into(),
                    drill: drill.into(),
                })
                .set(rto);
        }
    }

    /// A KamachiqProject task attempt was judged (once per attempt's Job).
    pub fn task_judged(&self, namespace: &str, verdict: &str, seconds: Option<f64>) {
        if let Ok(mut l) = self.labelled.lock() {
            l.namespaces.insert(namespace.to_string());
        }
        let labels = TaskLabels {
            namespace: namespace.into(),
            verdict: verdict.into(),
        };
        self.task_attempts.get_or_create(&labels).inc();
        if let Some(s) = seconds {
            self.task_duration.get_or_create(&labels).observe(s);
        }
    }

    /// How long answering one admission request of `webhook` took.
    pub fn webhook_took(&self, webhook: &str, took: Duration) {
        self.webhook_duration
            .get_or_create(&WebhookNameLabels {
                webhook: webhook.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn bundles_read(&self, source: BundleSource) {
        let source = match source {
            BundleSource::Cache => "cache",
            BundleSource::List => "list",
        };
        self.bundle_reads.get_or_create(&SourceLabels { source }).inc();
    }

    pub fn webhook(&self, webhook: &str, decision: WebhookDecision) {
        self.webhook
            .get_or_create(&WebhookLabels {
                webhook: webhook.into(),
                decision: decision.as_str().into(),
            })
            .inc();
    }
}

/// `somastack_objects{kind, phase}`: counted from the caches at scrape time,
/// so it is always exactly what the operator sees.
#[derive(Debug)]
struct ObjectCounts(Caches);

/// Phase of an object for the object count: its `status.phase`, or for kinds
/// without phases its `Ready` condition (`Ready`, `NotReady`, `Unknown`).
fn ready_phase(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> String {
    match conditions.and_then(|c| crate::conditions::find(c, "Ready")) {
        Some(c) if c.status == "True" => "Ready".into(),
        Some(c) if c.status == "False" => "NotReady".into(),
        _ => "Unknown".into(),
    }
}

fn phase_of<T: serde::Serialize>(phase: Option<&T>) -> String {
    phase
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "Pending".into())
}

fn count<K, F>(store: &Store<K>, phase: F) -> std::collections::BTreeMap<String, i64>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    F: Fn(&K) -> String,
{
    let mut out = std::collections::BTreeMap::new();
    for obj in store.state() {
        *out.entry(phase(&obj)).or_insert(0) += 1;
    }
    out
}

impl Collector for ObjectCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let kinds: [(&str, std::collections::BTreeMap<String, i64>); 5] = [
            (
                "Capsule",
                count::<Capsule, _>(&c.capsules, |o| {
                    ready_phase(o.status.as_ref().map(|s| &s.conditions))
                }),
            ),
            (
                "PolicyBundle",
                count::<PolicyBundle, _>(&c.bundles, |o| {
                    ready_phase(o.status.as_ref().map(|s| &s.conditions))
                }),
            ),
            (
                "Installation",
                count::<Installation, _>(&c.installations, |o| {
                    phase_of(o.status.as_ref().and_then(|s| s.phase.as_ref()))
                }),
            ),
            (
                "DrDrill",
                count::<DrDrill, _>(&c.drills, |o| {
                    phase_of(o.status.as_ref().and_then(|s| s.phase.as_ref()))
                }),
            ),
            (
                "KamachiqProject",
                count::<KamachiqProject, _>(&c.projects, |o| {
                    phase_of(o.status.as_ref().and_then(|s| s.phase.as_ref()))
                }),
            ),
        ];
        let gauge = ConstGauge::new(0i64);
        let mut metric = encoder.encode_descriptor(
            "somastack_objects",
            "Objects of each kind the operator sees, by phase (or Ready state for kinds without phases)",
            None,
            gauge.metric_type(),
        )?;
        for (kind, phases) in kinds {
            for (phase, n) in phases {
                let labels = [("kind", kind.to_string()), ("phase", phase)];
                ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Where [`StatusGauges`] reads the objects from: the caches, in the operator.
trait StatusSource: std::fmt::Debug + Send + Sync + 'static {
    fn bundles(&self) -> Vec<Arc<PolicyBundle>>;
    fn drills(&self) -> Vec<Arc<DrDrill>>;
}

impl StatusSource for Caches {
    fn bundles(&self) -> Vec<Arc<PolicyBundle>> {
        self.bundles.state()
    }
    fn drills(&self) -> Vec<Arc<DrDrill>> {
        self.drills.state()
    }
}

/// Per-object gauges the alerts need, read from the objects' spec and status
/// at scrape time, as `somastack_objects` is: every replica reports the same
/// (all keep the caches), what the leader last wrote in status survives its
/// restart, and an object's series goes when the object goes, so there are
/// never more series than PolicyBundles and DrDrills.
///
/// - `somastack_policy_kill_switch_engaged{bundle}`: 1 while the bundle's
///   kill switch is engaged, else 0.
/// - `somastack_policy_violations{bundle,enforcement}`: `status.violationCount`
///   (running Installations that break the bundle, judged as if enforced).
/// - `somastack_drill_last_run_passed{namespace,drill}`: 1 when the drill's
///   last finished run passed, 0 when it failed; absent before the first.
/// - `somastack_drill_last_run_timestamp_seconds{namespace,drill}`:
///   `status.lastRunTime` (the schedule time of the last run started).
/// - `somastack_drill_next_run_timestamp_seconds{namespace,drill}`:
///   `status.nextRunTime`, set while a scheduled drill waits for its next run.
#[derive(Debug)]
struct StatusGauges<S>(S);

/// One gauge family: name, help, and its series (label pairs, value).
type GaugeRows = (
    &'static str,
    &'static str,
    Vec<(Vec<(&'static str, String)>, f64)>,
);

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// The families of [`StatusGauges`] for these objects (pure).
fn status_rows(bundles: &[Arc<PolicyBundle>], drills: &[Arc<DrDrill>]) -> [GaugeRows; 5] {
    use kube::ResourceExt;
    use somastack_crds::drill::Verdict;
    use somastack_crds::policy::Enforcement;
    let (mut kill, mut violations) = (Vec::new(), Vec::new());
    for b in bundles {
        let bundle = || vec![("bundle", b.name_any())];
        let engaged = b.spec.kill_switch.as_ref().is_some_and(|k| k.engaged);
        kill.push((bundle(), if engaged { 1.0 } else { 0.0 }));
        if let Some(n) = b.status.as_ref().and_then(|s| s.violation_count) {
            let enforcement = match b.spec.enforcement {
                Enforcement::Enforce => "Enforce",
                Enforcement::Audit => "Audit",
            };
            let mut labels = bundle();
            labels.push(("enforcement", enforcement.into()));
            violations.push((labels, f64::from(n)));
        }
    }
    let (mut passed, mut last, mut next) = (Vec::new(), Vec::new(), Vec::new());
    for d in drills {
        let labels = || {
            vec![
                ("namespace", d.namespace().unwrap_or_default()),
                ("drill", d.name_any()),
            ]
        };
        let Some(status) = d.status.as_ref() else {
            continue;
        };
        // The newest finished run (a run in progress clears status.verdict).
        let verdict = status.history.first().and_then(|r| r.verdict).or(status.verdict);
        if let Some(v) = verdict {
            passed.push((labels(), if v == Verdict::Pass { 1.0 } else { 0.0 }));
        }
        if let Some(t) = &status.last_run_time {
            last.push((labels(), seconds(t)));
        }
        if let Some(t) = &status.next_run_time {
            next.push((labels(), seconds(t)));
        }
    }
    [
        (
            "somastack_policy_kill_switch_engaged",
            "1 while the PolicyBundle's kill switch is engaged (its governed Installations are scaled to zero and projects halted), else 0",
            kill,
        ),
        (
            "somastack_policy_violations",
            "Running Installations that break the PolicyBundle (status.violationCount, judged as if enforced), by enforcement mode",
            violations,
        ),
        (
            "somastack_drill_last_run_passed",
            "1 when the DrDrill's last finished run passed, 0 when it failed",
            passed,
        ),
        (
            "somastack_drill_last_run_timestamp_seconds",
            "Unix time of the DrDrill's last run (status.lastRunTime: its schedule time)",
            last,
        ),
        (
            "somastack_drill_next_run_timestamp_seconds",
            "Unix time the scheduled DrDrill's next run is due (status.nextRunTime), while it waits for it",
            next,
        ),
    ]
}

impl<S: StatusSource> Collector for StatusGauges<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(0.0f64);
        for (name, help, rows) in status_rows(&self.0.bundles(), &self.0.drills()) {
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (labels, value) in rows {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_in_text_format() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, None);
        m.reconciled("Installation", Duration::from_millis(12), None);
        m.reconciled("Installation", Duration::from_millis(40), Some("api_rejected"));
        m.webhook("installations.somastack.io", WebhookDecision::Denied);
        m.leader.set(1);
        let text = encode(&registry).unwrap();
        assert!(
            text.contains("somastack_reconcile_total{kind=\"Installation\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "somastack_reconcile_errors_total{kind=\"Installation\",category=\"api_rejected\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("somastack_reconcile_duration_seconds_count{kind=\"Installation\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "somastack_webhook_requests_total{webhook=\"installations.somastack.io\",decision=\"denied\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("somastack_leader 1"), "{text}");
    }

    #[test]
    fn families_without_series_are_described() {
        let mut registry = Registry::default();
        Metrics::register(&mut registry, None);
        let text = encode(&registry).unwrap();
        for (family, kind) in [
            ("somastack_reconcile", "counter"),
            ("somastack_reconcile_errors", "counter"),
            ("somastack_reconcile_duration_seconds", "histogram"),
            ("somastack_webhook_requests", "counter"),
            ("somastack_webhook_duration_seconds", "histogram"),
            ("somastack_webhook_bundle_reads", "counter"),
            ("somastack_leader", "gauge"),
            ("somastack_webhook_certificate_expiry_timestamp_seconds", "gauge"),
            ("somastack_drill_runs", "counter"),
            ("somastack_drill_last_rto_seconds", "gauge"),
            ("somastack_kamachiq_task_attempts", "counter"),
            ("somastack_kamachiq_task_duration_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {family} {kind}\n")),
                "{family} in\n{text}"
            );
        }
        assert!(!text.contains("somastack_drill_runs_total"), "no series: {text}");
    }

    #[test]
    fn series_of_gone_drills_and_namespaces_are_dropped() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, None);
        m.drill_finished("t1", "weekly", true, Some(1.5));
        m.drill_finished("t2", "gone", false, None);
        m.task_judged("t1", "accepted", Some(3.0));
        m.task_judged("t3", "failed", None);
        m.forget_gone(|ns, d| (ns, d) == ("t1", "weekly"), |ns| ns == "t1");
        let text = encode(&registry).unwrap();
        assert!(text.contains("drill=\"weekly\""), "{text}");
        assert!(!text.contains("drill=\"gone\""), "{text}");
        assert!(text.contains("namespace=\"t1\",verdict=\"accepted\""), "{text}");
        assert!(!text.contains("namespace=\"t3\""), "{text}");
    }

    /// Objects as a test hands them to [`StatusGauges`] instead of the caches.
    #[derive(Debug)]
    struct Objects(Vec<Arc<PolicyBundle>>, Vec<Arc<DrDrill>>);

    impl StatusSource for Objects {
        fn bundles(&self) -> Vec<Arc<PolicyBundle>> {
            self.0.clone()
        }
        fn drills(&self) -> Vec<Arc<DrDrill>> {
            self.1.clone()
        }
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn drill(name: &str, status: serde_json::Value) -> Arc<DrDrill> {
        object(serde_json::json!({
            "apiVersion": "somastack.io/v1alpha1", "kind": "DrDrill",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"installationRef": {"name": "app"}, "scenario": "PodLoss",
                     "objectives": {"rtoSeconds": 60}},
            "status": status,
        }))
    }

    #[test]
    fn status_gauges_read_kill_switches_violations_and_drill_runs() {
        let bundle = |name: &str, spec: serde_json::Value, status: serde_json::Value| {
            object::<PolicyBundle>(serde_json::json!({
                "apiVersion": "somastack.io/v1alpha1", "kind": "PolicyBundle",
                "metadata": {"name": name}, "spec": spec, "status": status,
            }))
        };
        let bundles = vec![
            bundle(
                "stop",
                serde_json::json!({"killSwitch": {"engaged": true, "reason": "incident 7"}}),
                serde_json::json!({"violationCount": 0}),
            ),
            bundle(
                "audit",
                serde_json::json!({"enforcement": "Audit"}),
                serde_json::json!({"violationCount": 3}),
            ),
            // Not yet reconciled: no count to report.
            bundle("new", serde_json::json!({}), serde_json::json!({})),
        ];
        let drills = vec![
            drill(
                "failed",
                serde_json::json!({"verdict": "Fail", "lastRunTime": "2026-11-26T10:00:00Z",
                    "history": [{"start": "2026-11-26T10:00:00Z", "verdict": "Fail"}]}),
            ),
            // A new run in progress cleared the verdict; the last finished run passed.
            drill(
                "rerun",
                serde_json::json!({"lastRunTime": "2026-11-26T11:00:00Z",
                    "history": [{"start": "2026-11-26T10:00:00Z", "verdict": "Pass"}]}),
            ),
            drill(
                "waiting",
                serde_json::json!({"phase": "Scheduled", "nextRunTime": "2026-11-26T12:00:00Z"}),
            ),
        ];
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatusGauges(Objects(bundles, drills))));
        let text = encode(&registry).unwrap();
        for line in [
            "# TYPE somastack_policy_kill_switch_engaged gauge",
            "somastack_policy_kill_switch_engaged{bundle=\"stop\"} 1.0",
            "somastack_policy_kill_switch_engaged{bundle=\"audit\"} 0.0",
            "somastack_policy_kill_switch_engaged{bundle=\"new\"} 0.0",
            "somastack_policy_violations{bundle=\"stop\",enforcement=\"Enforce\"} 0.0",
            "somastack_policy_violations{bundle=\"audit\",enforcement=\"Audit\"} 3.0",
            "somastack_drill_last_run_passed{namespace=\"team-a\",drill=\"failed\"} 0.0",
            "somastack_drill_last_run_passed{namespace=\"team-a\",drill=\"rerun\"} 1.0",
            "somastack_drill_last_run_timestamp_seconds{namespace=\"team-a\",drill=\"failed\"} 1795687200.0",
            "somastack_drill_next_run_timestamp_seconds{namespace=\"team-a\",drill=\"waiting\"} 1795694400.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("bundle=\"new\",enforcement"), "{text}");
        assert!(
            !text.contains("passed{namespace=\"team-a\",drill=\"waiting\"}"),
            "{text}"
        );
    }

    #[test]
    fn status_gauges_are_described_without_objects() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatusGauges(Objects(vec![], vec![]))));
        let text = encode(&registry).unwrap();
        for name in [
            "somastack_policy_kill_switch_engaged",
            "somastack_policy_violations",
            "somastack_drill_last_run_passed",
            "somastack_drill_last_run_timestamp_seconds",
            "somastack_drill_next_run_timestamp_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} gauge\n")),
                "{name} in\n{text}"
            );
        }
    }

    #[test]
    fn phases_fall_back_to_ready_state() {
        assert_eq!(ready_phase(None), "Unknown");
        assert_eq!(phase_of::<String>(None), "Pending");
        assert_eq!(phase_of(Some(&"Running".to_string())), "Running");
    }
}
