//! Logs and traces: `tracing` to stderr (readable text locally, one JSON
//! object per line in a cluster) and, with `--otlp-endpoint`, every span
//! (a `reconcile` span per reconcile, an `admission` span per webhook
//! request, with kind, namespace and name) exported to an OpenTelemetry
//! collector over OTLP/HTTP.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;
use crate::error::{Error, Result};

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("somastack-operator: flushing traces failed: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL for a collector's base URL (as in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`): `<base>/v1/traces`.
pub fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the global subscriber. Call before starting the async runtime:
/// the exporter runs on its own thread with a blocking HTTP client.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let provider = match otlp_endpoint.filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            // A client of our own: reqwest's TLS is built without a crypto
            // provider (ring is given explicitly), and the image has no CA
            // bundle, so the exporter's default client could not be built.
            let config_error = |e: String| Error::Config(format!("--otlp-endpoint {endpoint}: {e}"));
            let tls = somastack_controllers::planner::client_tls_config().map_err(config_error)?;
            let http = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| config_error(e.to_string()))?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(http)
                .with_endpoint(traces_url(endpoint))
                .with_headers(Default::default())
                .build()
                .map_err(|e| Error::Config(format!("--otlp-endpoint {endpoint}: {e}")))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name("somastack-operator")
                            .build(),
                    )
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("somastack-operator")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(stderr).init(),
        LogFormat::Json => registry
            .with(stderr.json().flatten_event(true).with_current_span(true))
            .init(),
    }
    if let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) {
        tracing::info!(url = %traces_url(endpoint), "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_the_signal_path() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
