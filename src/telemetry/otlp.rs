//! Span export to an OpenTelemetry collector over OTLP/HTTP with protobuf bodies. Spans are
//! batched on the SDK's own thread and posted to `<endpoint>/v1/traces`; the process is
//! described by `service.name` `carapace` and `service.instance.id` (the replica id). The
//! HTTP client has no TLS: the collector is a local agent or a sidecar reached over plain
//! HTTP, as is usual.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// How long `shutdown` may take to hand the last spans to the collector.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the endpoint must be an http:// URL, got '{0}'")]
    Endpoint(String),
    #[error("cannot build the exporter: {0}")]
    Build(String),
}

/// A running span export.
pub struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Exporting {
    pub fn start(endpoint: &str, replica: Option<&str>) -> Result<Exporting, OtlpError> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| OtlpError::Build(e.to_string()))?;
        let mut resource = Resource::builder().with_service_name("carapace");
        if let Some(r) = replica {
            resource = resource.with_attribute(KeyValue::new("service.instance.id", r.to_string()));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("carapace");
        Ok(Exporting { provider, tracer })
    }

    /// The layer that turns `tracing` spans into exported ones.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + Send + Sync + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        // Busy and idle times would cost two clock reads at every poll of a session's task,
        // and nothing in the hub reads the OpenTelemetry context a span would activate.
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
    }

    pub fn shutdown(self) {
        let provider = self.provider;
        // The exporter's HTTP client keeps a runtime of its own, which must not be dropped on
        // one of tokio's threads: the shutdown runs on a thread of its own.
        let _ = std::thread::spawn(move || {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_WAIT);
        })
        .join();
    }
}

/// `http://host:port` (a collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is) becomes
/// `http://host:port/v1/traces`; a URL already ending in `/v1/traces` is kept.
fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let e = endpoint.trim();
    let Some(rest) = e.strip_prefix("http://") else {
        return Err(OtlpError::Endpoint(e.to_string()));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(OtlpError::Endpoint(e.to_string()));
    }
    if e.ends_with("/v1/traces") {
        return Ok(e.to_string());
    }
    Ok(format!("{}/v1/traces", e.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once_and_only_http_is_taken() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c/otlp/v1/traces").unwrap(),
            "http://c/otlp/v1/traces"
        );
        for bad in ["https://c:4318", "c:4318", "http://", "ftp://c"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
