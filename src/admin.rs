//! The admin HTTP endpoint. Read-only, and bound to localhost by default.
//!
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: Redis answers and keyward is not shutting down (200), else 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::context::Context;

/// Histogram samples are folded into buckets this often, bounding their memory between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, prometheus: PrometheusHandle, context: Arc<Context>) {
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP);
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let prometheus = prometheus.clone();
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &prometheus, &context);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection failed");
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    prometheus: &PrometheusHandle,
    context: &Context,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, prometheus.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if context.shutdown.is_cancelled() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
        }
        "/readyz" if !context.upstream.is_ready() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream Redis unavailable\n".into(),
        ),
        "/readyz" => text(StatusCode::OK, "ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
