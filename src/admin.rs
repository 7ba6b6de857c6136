//! The admin HTTP endpoint, bound to localhost by default.
//!
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: Redis answers, accepts keyward's credentials, and keyward is not shutting
//!   down (200), else 503 with the reason.
//! - `GET /config`: the config in force (JSON): the file's SHA-256, load time, last reload error,
//!   settings waiting for a restart, and the effective settings. It holds no secret: the file
//!   only names the environment variables that hold them.
//! - `GET /hotkeys?window=1m&by=requests|bytes&limit=20`: the hottest keys and key patterns
//!   (JSON).
//! - `GET /bigkeys?limit=20`: the largest replies and written values seen, by key (JSON).
//! - `GET /locks`: contended lock keys, their waiters and holders (JSON). A holder's token is
//!   shown only to a request with the token in `[admin] token_env` (without one configured,
//!   to the machine itself); to others it is `null`, with `holder_redacted: true`.
//! - `POST /reload`: reloads the config file. It changes keyward, so from other hosts (when
//!   the endpoint is bound beyond localhost) it needs the token in `[admin] token_env`, and
//!   without one it is accepted from the machine itself only.

use std::borrow::Cow;
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
use crate::metrics;
use crate::reload::{ReloadOutcome, Trigger};
use crate::reports;
use crate::secret;

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

/// Who sent a request, and the admin token: what changes keyward from other hosts, or reads
/// the applications' secrets, needs it.
struct Caller<'a> {
    peer: SocketAddr,
    token: Option<&'a str>,
}

impl Caller<'_> {
    /// Whether a request that changes keyward is let through: from the machine itself always;
    /// from elsewhere only with the configured token.
    fn may_change(&self, authorization: Option<&[u8]>) -> Result<(), (StatusCode, &'static str)> {
        if self.peer.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        let Some(token) = self.token else {
            return Err((
                StatusCode::FORBIDDEN,
                "accepted from localhost only, unless [admin] token_env is set\n",
            ));
        };
        if carries(authorization, token) {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <the token in [admin] token_env>\n",
            ))
        }
    }

    /// Whether a request may read the applications' secrets (lock holder tokens): with a
    /// configured token, only when it carries it, wherever it comes from; without one, from
    /// the machine itself only, as with `POST /reload`.
    fn may_read_secrets(&self, authorization: Option<&[u8]>) -> bool {
        match self.token {
            Some(token) => carries(authorization, token),
            None => self.peer.ip().to_canonical().is_loopback(),
        }
    }
}

/// Whether an `Authorization` header is `Bearer <token>`, compared in constant time.
fn carries(authorization: Option<&[u8]>, token: &str) -> bool {
    let given = authorization
        .and_then(|value| value.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    secret::same(given, token.as_bytes())
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
    match request.uri().path() {
        "/metrics" => {
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
        "/readyz" => match context.upstream.not_ready_because() {
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            None => text(StatusCode::OK, "ready\n".into()),
        },
        "/config" => json(StatusCode::OK, reports::config(context)),
        "/hotkeys" => hotkeys(request.uri().query().unwrap_or_default(), context),
        "/bigkeys" => big_keys(request.uri().query().unwrap_or_default(), context),
        "/locks" => json(
            StatusCode::OK,
            locks_report(context, caller.may_read_secrets(authorization)),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
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

/// The value of one `name=value` pair of a query string, decoded as HTTP clients encode it
/// (`%3A`, `+` for a space), so that an encoded request means what the plain one does.
fn query_parameter<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

fn limit_parameter(query: &str) -> usize {
    query_parameter(query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20)
}

fn hotkeys(query: &str, context: &Context) -> Response<Full<Bytes>> {
    let window = query_parameter(query, "window");
    let by = query_parameter(query, "by");
    let limit = limit_parameter(query);
    match reports::hotkeys(context, window.as_deref(), by.as_deref(), limit) {
        Ok(report) => json(StatusCode::OK, serde_json::json!(report)),
        Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    }
}

fn big_keys(query: &str, context: &Context) -> Response<Full<Bytes>> {
    match reports::big_keys(context, limit_parameter(query)) {
        Ok(report) => json(StatusCode::OK, serde_json::json!(report)),
        Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    }
}

/// The report behind `GET /locks`. A holder's token is the application's secret (whoever
/// knows it can release the lock): unless `show_holders`, it is `null`, with
/// `holder_redacted: true` telling a hidden token from one keyward does not know.
fn locks_report(context: &Context, show_holders: bool) -> serde_json::Value {
    let locks: Vec<serde_json::Value> = context
        .locks
        .report()
        .into_iter()
        .map(|mut lock| {
            let redacted = !show_holders && lock.holder.is_some();
            if redacted {
                lock.holder = None;
            }
            let mut report = serde_json::json!(lock);
            report["holder_redacted"] = redacted.into();
            report
        })
        .collect();
    serde_json::json!({ "locks": locks })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ip: [u8; 4], token: Option<&str>) -> Caller<'_> {
        Caller {
            peer: SocketAddr::from((ip, 40000)),
            token,
        }
    }

    #[test]
    fn changes_need_localhost_or_the_token() {
        let status = |result: Result<(), (StatusCode, &str)>| result.err().map(|(code, _)| code);
        assert_eq!(status(caller([127, 0, 0, 1], None).may_change(None)), None);
        let remote = [10, 1, 2, 3];
        assert_eq!(
            status(caller(remote, None).may_change(Some(b"Bearer anything"))),
            Some(StatusCode::FORBIDDEN)
        );
        let with_token = caller(remote, Some("s3cret"));
        assert_eq!(status(with_token.may_change(Some(b"Bearer s3cret"))), None);
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret!",
            b"s3cret",
            b"Basic s3cret",
        ] {
            assert_eq!(
                status(with_token.may_change(Some(wrong))),
                Some(StatusCode::UNAUTHORIZED)
            );
        }
        assert_eq!(
            status(with_token.may_change(None)),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn secrets_need_the_token_once_there_is_one() {
        assert!(caller([127, 0, 0, 1], None).may_read_secrets(None));
        assert!(!caller([10, 1, 2, 3], None).may_read_secrets(Some(b"Bearer anything")));
        for ip in [[127, 0, 0, 1], [10, 1, 2, 3]] {
            let with_token = caller(ip, Some("s3cret"));
            assert!(with_token.may_read_secrets(Some(b"Bearer s3cret")));
            assert!(!with_token.may_read_secrets(Some(b"Bearer s3cre")));
            assert!(!with_token.may_read_secrets(None));
        }
    }
}
