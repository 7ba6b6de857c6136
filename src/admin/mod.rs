//! The admin HTTP endpoint, bound to localhost by default. Everything it serves is read-only
//! except `POST /reload`.
//!
//! - `GET /`: the admin page ([`page`]), which shows the reports below and updates itself.
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: Redis answers, accepts keyward's credentials, and keyward is not shutting
//!   down (200), else 503 with the reason.
//! - `GET /config`: the config in force (JSON): the file's SHA-256, load time, last reload error,
//!   settings waiting for a restart, and the effective settings. It holds no secret: the file
//!   only names the environment variables that hold them.
//! - `GET /overview`: keyward and its upstream, clients, command totals, cache and rate-limit
//!   rules, and the config's status, in one JSON answer (what the page polls).
//! - `GET /hotkeys?window=1m&by=requests|bytes&offset=0&limit=20`: the hottest keys and key
//!   patterns (JSON), a page at a time.
//! - `GET /bigkeys?offset=0&limit=20`: the largest replies and written values seen, by key
//!   (JSON).
//! - `GET /locks?offset=0&limit=100`: contended lock keys, their waiters and holders (JSON). A
//!   holder's token is shown only to a request with the token in `[admin] token_env` (without
//!   one configured, to the machine itself); to others it is `null`, with
//!   `holder_redacted: true`.
//! - `POST /reload`: reloads the config file. It changes keyward, so from other hosts (when
//!   the endpoint is bound beyond localhost) it needs the token in `[admin] token_env`, and
//!   without one it is accepted from the machine itself only.
//!
//! A parameter that is not what it should be (`limit=ten`, an unknown window) gets a 400 that
//! says why.

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
use crate::metrics;
use crate::reload::{ReloadOutcome, Trigger};
use crate::reports;

mod access;
mod page;
mod query;
mod views;

use access::Caller;

/// Histogram samples are folded into buckets this often, bounding their memory between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    context: Arc<Context>,
    token: Option<String>,
) {
    let token: Arc<Option<String>> = Arc::new(token);
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
        let token = Arc::clone(&token);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let prometheus = prometheus.clone();
                let context = Arc::clone(&context);
                let token = Arc::clone(&token);
                async move {
                    let caller = Caller {
                        peer,
                        token: token.as_deref(),
                    };
                    Ok::<_, Infallible>(respond(&request, caller, &prometheus, &context).await)
                }
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
    caller: Caller<'_>,
    prometheus: &PrometheusHandle,
    context: &Arc<Context>,
) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    if request.uri().path() == "/reload" {
        return reload(request.method(), caller.may_change(authorization), context).await;
    }
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    let query = request.uri().query().unwrap_or_default();
    match request.uri().path() {
        "/metrics" => prometheus_text(prometheus, context),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if context.shutdown.is_cancelled() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
        }
        "/readyz" => match context.upstream.not_ready_because() {
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            // Serving, with what an SRE should know.
            None => match context.upstream.sentinel.as_ref().and_then(|s| s.caveat()) {
                Some(caveat) => text(StatusCode::OK, format!("ready, but {caveat}\n")),
                None => text(StatusCode::OK, "ready\n".into()),
            },
        },
        "/config" => json(StatusCode::OK, reports::config(context)),
        "/overview" => json(StatusCode::OK, views::overview(context)),
        "/hotkeys" => report(views::hotkeys(query, context)),
        "/bigkeys" => report(views::big_keys(query, context)),
        "/locks" => report(views::locks(
            query,
            context,
            caller.may_read_secrets(authorization),
        )),
        path => match page::asset(path) {
            Some(asset) => page::serve(asset),
            None => text(StatusCode::NOT_FOUND, "not found\n".into()),
        },
    }
}

fn prometheus_text(prometheus: &PrometheusHandle, context: &Context) -> Response<Full<Bytes>> {
    let active = context.live.load();
    active.policies.publish_metrics();
    let status = context.live.status();
    metrics::publish(&metrics::Observed {
        upstream_up: context.upstream.is_ready(),
        config_rejected: status.last_reload_failed,
        config_loaded_at: status.loaded_at,
    });
    let mut body = prometheus.render();
    context.command_metrics.render(&mut body);
    if let Some(hotkeys) = &active.policies.hotkeys {
        let cluster = context.upstream.cluster.as_deref();
        hotkeys.render_prometheus(&mut body, |key| cluster?.node_of_key(key.as_bytes()));
    }
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn reload(
    method: &Method,
    allowed: Result<(), (StatusCode, &'static str)>,
    context: &Arc<Context>,
) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n".into());
    }
    if let Err((status, why)) = allowed {
        return text(status, format!("reload {why}"));
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

/// A report, or the reason the request could not have one (a bad parameter).
fn report(view: Result<serde_json::Value, String>) -> Response<Full<Bytes>> {
    match view {
        Ok(body) => json(StatusCode::OK, body),
        Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    }
}

pub(super) fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(status, format!("{body:#}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
