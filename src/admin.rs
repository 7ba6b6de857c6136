//! The admin HTTP endpoint, bound to localhost by default.
//!
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: Redis answers and keyward is not shutting down (200), else 503.
//! - `GET /config`: the config in force (JSON): file hash, load time, last reload error,
//!   settings waiting for a restart, and the effective settings. It holds no secret: the file
//!   only names the environment variables that hold them.
//! - `GET /hotkeys?window=1m&by=requests&limit=20`: the hottest keys and key patterns (JSON).
//! - `POST /reload`: reloads the config file. It changes keyward, so it is accepted only from
//!   the machine itself, whatever address the endpoint is bound to.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use crate::reload::{ReloadOutcome, Trigger};

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
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let prometheus = prometheus.clone();
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let prometheus = prometheus.clone();
                let context = Arc::clone(&context);
                async move { Ok::<_, Infallible>(respond(&request, peer, &prometheus, &context).await) }
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

async fn respond(
    request: &Request<Incoming>,
    peer: SocketAddr,
    prometheus: &PrometheusHandle,
    context: &Arc<Context>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/reload" {
        return reload(request.method(), peer, context).await;
    }
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let active = context.live.load();
            active.policies.publish_metrics();
            let mut body = prometheus.render();
            if let Some(hotkeys) = &active.policies.hotkeys {
                hotkeys.render_prometheus(&mut body);
            }
            let mut response = text(StatusCode::OK, body);
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
        "/config" => json(StatusCode::OK, config_report(context)),
        "/hotkeys" => hotkeys(request.uri().query().unwrap_or_default(), context),
        "/locks" => json(
            StatusCode::OK,
            serde_json::json!({ "locks": context.locks.report() }),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn reload(
    method: &Method,
    peer: SocketAddr,
    context: &Arc<Context>,
) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n".into());
    }
    if !peer.ip().to_canonical().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "reload is accepted from localhost only\n".into(),
        );
    }
    let live = Arc::clone(&context.live);
    let outcome =
        tokio::task::spawn_blocking(move || live.reload(Trigger::Request("POST /reload"))).await;
    match outcome {
        Ok(ReloadOutcome::Applied) => {
            json(StatusCode::OK, serde_json::json!({"outcome": "applied"}))
        }
        Ok(ReloadOutcome::Unchanged) => {
            json(StatusCode::OK, serde_json::json!({"outcome": "unchanged"}))
        }
        Ok(ReloadOutcome::Rejected(errors)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"outcome": "rejected", "errors": errors}),
        ),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn hotkeys(query: &str, context: &Context) -> Response<Full<Bytes>> {
    let parameter = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    };
    let limit = parameter("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20);
    match hotkeys_report(context, parameter("window"), parameter("by"), limit) {
        Ok(report) => json(StatusCode::OK, serde_json::json!(report)),
        Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    }
}

/// The report behind `GET /hotkeys` and `KEYWARD HOTKEYS`.
pub fn hotkeys_report(
    context: &Context,
    window: Option<&str>,
    by: Option<&str>,
    limit: usize,
) -> Result<crate::hotkeys::Report, String> {
    let active = context.live.load();
    let hotkeys = active
        .policies
        .hotkeys
        .as_ref()
        .ok_or("hot keys are disabled ([hotkeys] enabled = false)")?;
    if by.is_some_and(|by| !by.eq_ignore_ascii_case("requests")) {
        return Err("only by=requests is available".into());
    }
    let wanted = window
        .map(|text| humantime::parse_duration(text).map_err(|_| format!("bad window {text:?}")))
        .transpose()?;
    let length = hotkeys
        .window(wanted)
        .ok_or_else(|| format!("window {window:?} is not one of [hotkeys] windows"))?;
    hotkeys
        .report(length, limit)
        .ok_or_else(|| "no such window".to_string())
}

/// The report behind `GET /config` and `KEYWARD CONFIG`.
pub fn config_report(context: &Context) -> serde_json::Value {
    let status = context.live.status();
    serde_json::json!({
        "status": status,
        "config": context.live.load().config,
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(status, format!("{body:#}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
