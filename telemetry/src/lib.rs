//! Logs and metrics shared by every Mobilus server binary.
//!
//! - Logs: `tracing` to stderr, filtered by `RUST_LOG`, as text or JSON lines
//!   (`--log-format json`).
//! - Metrics: the `metrics` facade. Each layer records with its macros (a no-op until a
//!   recorder is installed, so libraries and tests need nothing), and a binary given
//!   `--metrics-listen ADDR` installs a Prometheus recorder and serves the text format at
//!   `http://ADDR/metrics`. The names are documented in `docs/metrics.md`.
//! - [`memory`]: a process's resident memory, for the tests that bound a server's.

mod grpc;
pub mod memory;
pub mod worker;

pub use grpc::{describe_grpc_metrics, GrpcMetrics, GrpcMetricsLayer};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Buckets of every `*_seconds` histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histograms are drained into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The flags every server binary shares (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log format; filter with RUST_LOG (for example `RUST_LOG=debug,openraft=info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Write the metrics endpoint's bound address to this file once serving.
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    pub metrics_ready_file: Option<PathBuf>,
}

/// What can go wrong setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Install the log subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A running `/metrics` endpoint; dropping it stops serving.
pub struct MetricsServer {
    addr: SocketAddr,
    handle: PrometheusHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current exposition text (what a scrape returns).
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TelemetryArgs {
    /// Install logging as asked.
    pub fn init_tracing(&self, default_filter: &str) {
        init_tracing(self.log_format, default_filter);
    }

    /// Serve metrics if `--metrics-listen` was given (call once, inside the runtime).
    pub async fn start_metrics(&self) -> Result<Option<MetricsServer>, TelemetryError> {
        let Some(listen) = &self.metrics_listen else {
            return Ok(None);
        };
        let server = serve_metrics(listen).await?;
        if let Some(path) = &self.metrics_ready_file {
            write_atomically(path, &server.addr().to_string())?;
        }
        tracing::info!(addr = %server.addr(), "serving metrics at /metrics");
        Ok(Some(server))
    }
}

fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), TelemetryError> {
    let err = |source| TelemetryError::ReadyFile {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Install the process-wide Prometheus recorder and serve it at `http://listen/metrics`.
pub async fn serve_metrics(listen: &str) -> Result<MetricsServer, TelemetryError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| TelemetryError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    let scrape = handle.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let h = scrape.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        h.render(),
                    )
                }
            }),
        )
        .route(
            "/",
            axum::routing::get(|| async { "Mobilus: metrics at /metrics\n" }),
        );
    let serve = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    let upkeep_handle = handle.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    Ok(MetricsServer {
        addr,
        handle,
        tasks: vec![serve, upkeep],
    })
}

/// The common `main` of a server binary: logs as asked, a tokio runtime, the metrics
/// endpoint if asked, then `run`. An error is printed as `NAME: error` and exits 1.
pub fn main_with<E, Fut>(
    name: &str,
    telemetry: &TelemetryArgs,
    default_filter: &str,
    run: impl FnOnce() -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    telemetry.init_tracing(default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _metrics = telemetry.start_metrics().await.map_err(|e| e.to_string())?;
        run().await.map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_scrape_shows_what_was_recorded_and_a_second_install_is_refused() -> anyhow::Result<()>
    {
        let server = serve_metrics("127.0.0.1:0").await?;
        metrics::counter!("mobilus_test_ops_total", "op" => "write").increment(3);
        metrics::histogram!("mobilus_test_op_seconds").record(0.002);
        server.handle.run_upkeep();
        let body = get(server.addr(), "/metrics").await?;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("mobilus_test_ops_total{op=\"write\"} 3"),
            "{body}"
        );
        assert!(
            body.contains("mobilus_test_op_seconds_bucket{le=\"0.0025\"} 1"),
            "histograms have buckets: {body}"
        );
        let missing = get(server.addr(), "/nope").await?;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let again = serve_metrics("127.0.0.1:0").await;
        assert!(matches!(again, Err(TelemetryError::Recorder(_))));
        Ok(())
    }

    #[tokio::test]
    async fn a_busy_address_is_a_clear_error() -> anyhow::Result<()> {
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = taken.local_addr()?.to_string();
        match serve_metrics(&addr).await {
            Err(e @ TelemetryError::Bind { .. }) => assert!(e.to_string().contains(&addr)),
            Err(e) => anyhow::bail!("wrong error: {e}"),
            Ok(_) => anyhow::bail!("bound a busy address"),
        }
        Ok(())
    }
}
