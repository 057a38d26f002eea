//! What the process tells its operator: log lines (JSON for machines, or text for a
//! terminal) and, when a collector is configured, spans exported over OTLP. Set up once per
//! process by `init`; the rules every log line follows live here too: the level a refusal is
//! logged at (`refusal_level`), and how a refusal's reason loses any secret a client put in
//! it (`scrub`).
//!
//! Spans carry who and where (`session` with `replica`, `session`, `remote`, `agent`; `http`
//! with `method`, `route`, `remote`, `status`, `latency_ms`); lines inside them inherit those
//! fields. Nothing here runs per delivered event.

mod json;
mod otlp;
mod scrub;

pub use json::JsonLines;
pub use otlp::OtlpError;
pub use scrub::scrub;

use crate::protocol::{CloseCode, ErrorCode};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How the process logs and traces.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// JSON lines (else text for a terminal).
    pub json: bool,
    /// This replica's id, on every JSON line and on exported spans.
    pub replica: Option<String>,
    /// An OTLP/HTTP collector (`http://host:4318`): spans are exported there when set.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP export: {0}")]
    Otlp(#[from] OtlpError),
    #[error("a log subscriber is already installed")]
    AlreadySet,
}

/// Held while the process runs; `shutdown` exports the spans still buffered.
pub struct Telemetry {
    otlp: Option<otlp::Exporting>,
}

impl Telemetry {
    /// Sends what is buffered to the collector (a few seconds at most) and stops exporting.
    /// It blocks: call it from a blocking thread, after the hub has stopped.
    pub fn shutdown(self) {
        if let Some(o) = self.otlp {
            o.shutdown();
        }
    }
}

type Boxed = Box<dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, Registry>> + Send + Sync>;

/// Installs the process's subscriber: `RUST_LOG` (default `info,sqlx=warn`) decides what is
/// logged and traced.
pub fn init(opts: &Options) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let lines: Boxed = if opts.json {
        Box::new(JsonLines::new(opts.replica.as_deref(), std::io::stderr))
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    let mut layers = vec![lines];
    let exporting = match &opts.otlp_endpoint {
        Some(endpoint) => {
            let e = otlp::Exporting::start(endpoint, opts.replica.as_deref())?;
            layers.push(Box::new(e.layer()));
            Some(e)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    Ok(Telemetry { otlp: exporting })
}

/// The level a refused command or request is logged at. A client's mistake is not the
/// hub's error: what an operator looks into (credentials, permissions, malformed input,
/// limits) at info; ordinary answers (no such thing, already done) at debug; the hub's own
/// trouble at warn, its cause having been logged where it happened.
pub fn refusal_level(code: ErrorCode) -> Level {
    match code {
        ErrorCode::Unauthorized
        | ErrorCode::Forbidden
        | ErrorCode::BadRequest
        | ErrorCode::TooLarge
        | ErrorCode::RateLimited => Level::INFO,
        ErrorCode::NotFound | ErrorCode::Conflict => Level::DEBUG,
        ErrorCode::Unavailable | ErrorCode::Internal => Level::WARN,
    }
}

/// The level a session's close is logged at: a slow consumer cut off at warn (the replica
/// may be overloaded, or the client too slow for the traffic), and so is a resubscription
/// whose history could not be read (the database is unavailable); every other close at info.
pub fn close_level(code: CloseCode) -> Level {
    match code {
        CloseCode::TooSlow | CloseCode::TryAgain => Level::WARN,
        _ => Level::INFO,
    }
}

/// `tracing`'s macros take their level as a constant; this picks one at run time.
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::error!($($rest)+),
            ::tracing::Level::WARN => ::tracing::warn!($($rest)+),
            ::tracing::Level::INFO => ::tracing::info!($($rest)+),
            ::tracing::Level::DEBUG => ::tracing::debug!($($rest)+),
            _ => ::tracing::trace!($($rest)+),
        }
    };
}
pub(crate) use event_at;
