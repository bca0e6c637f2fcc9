//! A tower layer that counts and times every gRPC call a server answers, by service and
//! method: `mobilus_grpc_requests_total{service,method,code}` and
//! `mobilus_grpc_request_seconds{service,method}`.
//!
//! The time is to the response head: the whole call for unary RPCs, the time to the first
//! message for streaming ones. The status code is the `grpc-status` of a trailers-only
//! response (how tonic answers an error), otherwise 0 (OK). Methods the server does not
//! implement are labelled `unknown`, so a misbehaving client cannot create series.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Help texts of the gRPC metrics.
pub fn describe_grpc_metrics() {
    metrics::describe_counter!(
        "mobilus_grpc_requests_total",
        "gRPC calls answered, by service, method and status code"
    );
    metrics::describe_histogram!(
        "mobilus_grpc_request_seconds",
        metrics::Unit::Seconds,
        "Time to answer a gRPC call (to the first message of a stream), by service and method"
    );
}

/// Add with `Server::builder().layer(GrpcMetricsLayer)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// `/mobilus.meta.Meta/Lookup` → (`Meta`, `Lookup`).
fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    let method = parts.next().unwrap_or_default();
    (service.to_string(), method.to_string())
}

/// The `grpc-status` code of a response head (0 when it carries none).
fn status_code<B>(response: &http::Response<B>) -> String {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string()
}

/// gRPC's Unimplemented.
const UNIMPLEMENTED: &str = "12";

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let start = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => status_code(response),
                Err(_) => "transport".to_string(),
            };
            let (service, method) = if code == UNIMPLEMENTED {
                ("unknown".to_string(), "unknown".to_string())
            } else {
                (service, method)
            };
            metrics::counter!("mobilus_grpc_requests_total",
                "service" => service.clone(), "method" => method.clone(), "code" => code)
            .increment(1);
            metrics::histogram!("mobilus_grpc_request_seconds",
                "service" => service, "method" => method)
            .record(start.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/mobilus.meta.Meta/Lookup"),
            ("Meta".to_string(), "Lookup".to_string())
        );
        assert_eq!(
            split_path("/Chunks/Put"),
            ("Chunks".to_string(), "Put".to_string())
        );
        assert_eq!(split_path(""), (String::new(), String::new()));
    }

    #[test]
    fn the_status_comes_from_a_trailers_only_head() -> Result<(), http::Error> {
        let ok = http::Response::builder().body(())?;
        assert_eq!(status_code(&ok), "0");
        let refused = http::Response::builder()
            .header("grpc-status", "5")
            .body(())?;
        assert_eq!(status_code(&refused), "5");
        Ok(())
    }
}
