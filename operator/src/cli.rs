//! Command-line interface.

use somastack_controllers::shards::LabelSelector;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "somastack-operator",
    version,
    about = "Kubernetes operator for the SomaStack agent platform",
    after_help = "Users' commands (status, history, rollback, signing, reviews, summaries) are in the kubectl plugin: kubectl soma --help"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controllers against a cluster.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions (YAML), or write one file per CRD.
    Crd(CrdArgs),
}

/// Which cluster to talk to.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "SOMASTACK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How long to wait for the CRDs to be established before giving up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub crd_wait: Duration,
    /// Run the controllers only while holding a Lease (for several replicas).
    #[arg(long, env = "SOMASTACK_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "somastack-operator")]
    pub lease_name: String,
    /// The operator's own namespace: Lease and webhook certificate Secret live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Namespace of the Lease, when not the operator's namespace.
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (in a cluster: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format: readable text, or JSON (one object per line, for clusters).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SOMASTACK_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Export traces (a span per reconcile and per admission request) to this
    /// OpenTelemetry collector, OTLP over HTTP (e.g. http://otel-collector:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Reconciles each controller runs at once (every kind has its own).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), env = "SOMASTACK_CONCURRENCY")]
    pub concurrency: u16,
    /// How a cache gets its first full list of a kind (at start and after
    /// a watch expired): `stream`, a watch that starts with every object
    /// (Kubernetes' streaming lists; needs the WatchList feature, on by
    /// default from 1.34), or `pages`, a list in pages of --page-size, then
    /// a watch (any API server).
    #[arg(long, value_enum, default_value_t = InitialList::Stream, env = "SOMASTACK_INITIAL_LIST")]
    pub initial_list: InitialList,
    /// Objects per page when a cache lists a kind with `--initial-list pages`.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=10000), env = "SOMASTACK_PAGE_SIZE")]
    pub page_size: u32,
    /// Act only on DrDrills this label selector selects (shards drills
    /// between operators; e.g. `!somastack.io/shard` here and
    /// `somastack.io/shard=b` on a second operator).
    #[arg(long, value_parser = parse_selector)]
    pub drill_selector: Option<LabelSelector>,
    /// Act only on KamachiqProjects this label selector selects (as
    /// `--drill-selector`; the label `somastack.io/project-shard` is the convention).
    #[arg(long, value_parser = parse_selector)]
    pub project_selector: Option<LabelSelector>,
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// The /metrics server and the probes (served by every replica).
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Address of the /metrics server. Without --metrics-secure it is plain
    /// HTTP and also serves /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SOMASTACK_METRICS_ADDR")]
    pub metrics_addr: std::net::SocketAddr,
    /// Serve /metrics over HTTPS only, to callers whose bearer token the API
    /// server authenticates (TokenReview) and authorizes to `get` the
    /// non-resource URL /metrics (SubjectAccessReview); the probes move to
    /// --health-probe-addr.
    #[arg(long, env = "SOMASTACK_METRICS_SECURE")]
    pub metrics_secure: bool,
    /// Folder holding tls.crt and tls.key for --metrics-secure (re-read every
    /// minute, so a renewed certificate is served); without it the operator
    /// makes a self-signed certificate at start.
    #[arg(long, env = "SOMASTACK_METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<PathBuf>,
    /// Address of the plain-HTTP server for /healthz and /readyz (the
    /// probes). Default with --metrics-secure: 127.0.0.1:8081; without, the
    /// probes are served on --metrics-addr, and here too when given.
    #[arg(long, env = "SOMASTACK_HEALTH_PROBE_ADDR")]
    pub health_probe_addr: Option<std::net::SocketAddr>,
}

/// Where the probes go with --metrics-secure when --health-probe-addr is not given.
pub const DEFAULT_HEALTH_PROBE_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8081));

/// The admission webhook server (served by every replica).
#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Do not serve admission webhooks (policy is then enforced by the controllers only).
    #[arg(long)]
    pub no_webhook: bool,
    /// Address of the webhook's HTTPS server.
    #[arg(long, default_value = "127.0.0.1:8443", env = "SOMASTACK_WEBHOOK_ADDR")]
    pub webhook_addr: std::net::SocketAddr,
    /// Who issues the serving certificate: the operator itself (stored in the
    /// Secret, CA bundle patched into the webhook configurations, rotated), or
    /// someone else such as cert-manager (the operator only reads the Secret).
    #[arg(long, value_enum, default_value_t = CertMode::SelfManaged)]
    pub webhook_cert_mode: CertMode,
    /// Secret (in the operator's namespace) holding ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "somastack-operator-webhook-tls")]
    pub webhook_secret: String,
    /// Service through which the API server calls the webhook; its DNS names go in the certificate.
    #[arg(long, default_value = "somastack-operator-webhook")]
    pub webhook_service: String,
    /// Name of the Validating- and MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, default_value = "somastack-operator")]
    pub webhook_configuration: String,
    /// ConfigMap (in the operator's namespace) recording the PolicyBundle
    /// writes the webhook let through, so that every replica can judge
    /// Installations from its cache and still see a bundle applied with them.
    #[arg(long, default_value = "somastack-operator-bundle-writes")]
    pub bundle_record: String,
    /// Extra names or IP addresses for the certificate (e.g. 127.0.0.1 when the
    /// API server calls an operator running outside the cluster).
    #[arg(long = "webhook-san")]
    pub webhook_sans: Vec<String>,
    /// Lifetime of a serving certificate the operator issues.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub webhook_cert_validity: Duration,
    /// Issue a new serving certificate when the current one has less than this left.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub webhook_cert_renew_before: Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitialList {
    Stream,
    Pages,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    SelfManaged,
    External,
}

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Write `<name>.yaml` per CRD into this folder instead of printing a stream.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Also write the field reference (every field of every kind) into this
    /// markdown file, between its markers (appended when it has none).
    #[arg(long)]
    pub api_doc: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `90`, `90s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 30s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("'{s}': unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// A `--drill-selector`/`--project-selector` value, refused at startup when it
/// does not parse (rather than matching nothing).
fn parse_selector(s: &str) -> std::result::Result<LabelSelector, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
