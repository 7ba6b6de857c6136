//! Upstash's REST API (`[http_api]`), for applications that reach Redis over HTTP only:
//! serverless and edge functions using `@upstash/redis`, which then need nothing but the
//! endpoint's URL and a token.
//!
//! - `POST /` with a JSON array body (`["SET","k","v","EX",100]`) runs one command:
//!   `200 {"result": …}`, or `400 {"error": "<Redis's error text>"}`.
//! - `POST /pipeline` with an array of commands runs them as one pipeline: `200` with an array
//!   of `{"result": …}` or `{"error": …}`, in order.
//! - `POST /multi-exec` runs them as one `MULTI`…`EXEC`: the same array, or one `400
//!   {"error"}` for a transaction Redis discarded.
//! - `GET` or `POST` `/subscribe/<channel>…` and `/psubscribe/<pattern>…` answer with
//!   server-sent events ([`events`]).
//! - Any other path is a command in path form, for shells: `GET /get/foo`,
//!   `GET /set/foo/bar/EX/100`, or `POST /set/foo` with the value as the body, answered as
//!   `POST /` is.
//!
//! Every request carries a configured token (`Authorization: Bearer <token>` or
//! `?_token=<token>`), else `401`; every answer to one carries `upstash-sync-token` (see
//! [`SYNC_TOKEN`]). With `Upstash-Encoding: base64`, every string in a result is base64
//! ([`json`]). With `[http_api] tls`, the endpoint serves HTTPS only.
//!
//! Each request runs in a keyward session of its own ([`exchange`]), so every policy applies
//! to it. Before that, read-only tokens and commands a REST request cannot run are refused
//! ([`commands`]), and scripts in Upstash's Lua dialect are translated for Redis ([`lua`]).
//! A request holds nothing until its body has arrived, within [`BODY_TIMEOUT`] and the
//! request size limit, so a slow or hostile client holds only its own connection.

mod auth;
mod commands;
mod events;
mod exchange;
mod json;
mod lua;

use auth::Tokens;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::Context;
use crate::metrics;
use crate::resp::request::MAX_REQUEST_LEN;
use crate::tls::{self, ServerTls};
use commands::Command;
use events::Events;
use exchange::Caller;
use json::Encoding;

/// How long a client may take to send a request's headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The header of `@upstash/redis`'s read-your-writes mode: the client sends the last token it
/// was given and expects one back. keyward reads from the Redis it writes to, so every read
/// already sees the caller's writes: the token is answered as it came.
const SYNC_TOKEN: &str = "upstash-sync-token";

/// What every request needs: the callers, keyward's shared state, and where sessions run.
struct Endpoint {
    tokens: Tokens,
    /// `[listen] max_clients`: REST sessions count as clients too.
    max_clients: usize,
    /// Upstash's Lua scripts seen, for their clients' `EVALSHA`.
    scripts: lua::Scripts,
    /// HTTPS, when `[http_api] tls` is set.
    tls: Option<Arc<ServerTls>>,
    context: Arc<Context>,
    /// Sessions and connections, so that a graceful shutdown waits for them.
    tasks: TaskTracker,
}

/// The REST API as configured, its address bound: ready to serve.
pub struct FrontDoor {
    listener: TcpListener,
    tokens: Tokens,
    max_clients: usize,
    tls: Option<Arc<ServerTls>>,
}

impl FrontDoor {
    /// Reads the tokens from the environment and the TLS files, and binds the address; `None`
    /// without `[http_api]`.
    pub async fn open(config: &Config) -> Result<Option<FrontDoor>, String> {
        let Some(api) = &config.http_api else {
            return Ok(None);
        };
        let tokens = Tokens::new(
            config
                .http_api_tokens()?
                .into_iter()
                .map(|(token, secret)| (token.name.get_ref().clone(), secret, token.read_only)),
        );
        let tls = api
            .tls
            .as_ref()
            .map(|tls| ServerTls::from_config(tls, "http_api").map(Arc::new))
            .transpose()?;
        let listener = TcpListener::bind(api.address)
            .await
            .map_err(|e| format!("cannot serve the REST API on {}: {e}", api.address))?;
        Ok(Some(FrontDoor {
            listener,
            tokens,
            max_clients: config.listen.max_clients.get(),
            tls,
        }))
    }

    /// Serves requests until keyward shuts down; sessions and connections run on `tasks`.
    pub async fn serve(self, context: Arc<Context>, tasks: TaskTracker) {
        let FrontDoor {
            listener,
            tokens,
            max_clients,
            tls,
        } = self;
        let endpoint = Arc::new(Endpoint {
            tokens,
            max_clients,
            scripts: lua::Scripts::default(),
            tls,
            context,
            tasks,
        });
        loop {
            let accepted = tokio::select! {
                () = endpoint.context.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = serve_connection(Arc::clone(&endpoint), stream, peer);
                    endpoint.tasks.spawn(connection);
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for some to be released.
                    tracing::warn!(%error, "REST API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One HTTP connection, which may carry many requests (`@upstash/redis` keeps it alive). On
/// shutdown, the request in flight is answered and the connection closed.
async fn serve_connection(endpoint: Arc<Endpoint>, stream: TcpStream, peer: SocketAddr) {
    let tls = endpoint.tls.as_deref();
    let Some(stream) = tls::accept_client(stream, tls, peer, &endpoint.tasks).await else {
        return;
    };
    let shutdown = endpoint.context.shutdown.clone();
    let service = service_fn(move |request| {
        let endpoint = Arc::clone(&endpoint);
        async move { Ok::<_, Infallible>(answer(&endpoint, request, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "REST API connection failed");
    }
}

/// Answers a request and counts it by token and status.
async fn answer(endpoint: &Endpoint, request: Request<Incoming>, peer: SocketAddr) -> Answer {
    let headers = request.headers();
    let caller = endpoint.tokens.caller(
        headers.get(AUTHORIZATION).map(HeaderValue::as_bytes),
        request.uri().query(),
    );
    let Some(token) = caller else {
        metrics::http_request("", StatusCode::UNAUTHORIZED.as_u16());
        return error(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    };
    let sync_token = headers
        .get(SYNC_TOKEN)
        .filter(|token| !token.is_empty())
        .cloned()
        .unwrap_or(HeaderValue::from_static("0"));
    let mut response = match respond(endpoint, request, token, peer).await {
        Ok(response) => response,
        Err((status, message)) => error(status, message),
    };
    response.headers_mut().insert(SYNC_TOKEN, sync_token);
    metrics::http_request(&token.name, response.status().as_u16());
    response
}

/// What an authenticated request asks for, and its answer.
async fn respond(
    endpoint: &Endpoint,
    request: Request<Incoming>,
    token: &auth::Token,
    peer: SocketAddr,
) -> Result<Answer, Failure> {
    let path = request.uri().path().to_owned();
    let (run, methods): (Run, &[Method]) = match path.as_str() {
        "/" => (Run::One, &[Method::POST]),
        "/pipeline" => (Run::Pipeline, &[Method::POST]),
        "/multi-exec" => (Run::Transaction, &[Method::POST]),
        _ if path.starts_with("/subscribe/") || path.starts_with("/psubscribe/") => {
            (Run::Subscribe, &[Method::GET, Method::POST])
        }
        _ => (Run::Path, &[Method::GET, Method::POST]),
    };
    if !methods.contains(request.method()) {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("ERR {} is not allowed here", request.method()),
        ));
    }
    let encoding = match request.headers().get("upstash-encoding") {
        Some(value) if value.as_bytes().eq_ignore_ascii_case(b"base64") => Encoding::Base64,
        _ => Encoding::Plain,
    };
    let body = read_body(request.into_body()).await?;
    let request = Exchange {
        endpoint,
        caller: Caller {
            name: &token.name,
            peer,
        },
        read_only: token.read_only,
        encoding,
    };
    match run {
        Run::One => {
            let command = commands::one(&body, &endpoint.scripts).map_err(bad_request)?;
            request.one(command).await
        }
        Run::Path => {
            let command =
                commands::from_path(&path, &body, &endpoint.scripts).map_err(bad_request)?;
            request.one(command).await
        }
        Run::Pipeline => request.pipeline(&body).await,
        Run::Transaction => request.transaction(&body).await,
        Run::Subscribe => request.subscribe(&path).await,
    }
}

/// How a request's commands run.
enum Run {
    /// `POST /` with the command as JSON.
    One,
    /// The command in the path (`GET /get/foo`), with the body as its last argument.
    Path,
    Pipeline,
    Transaction,
    /// `/subscribe/<channel>…` or `/psubscribe/<pattern>…`: an event stream ([`events`]).
    Subscribe,
}

/// An authenticated request, ready to run its commands.
struct Exchange<'a> {
    endpoint: &'a Endpoint,
    caller: Caller<'a>,
    read_only: bool,
    encoding: Encoding,
}

/// An HTTP answer: JSON, or an event stream.
type Answer = Response<Either<Full<Bytes>, Events>>;

/// An answer that is an error: its status and the error text (`ERR …`).
type Failure = (StatusCode, String);

impl Exchange<'_> {
    /// One command (`POST /`, or the path form): its result or its error.
    async fn one(&self, command: Command) -> Result<Answer, Failure> {
        if let Some(refusal) = command.refusal(self.read_only) {
            return Err(bad_request(refusal));
        }
        let replies = self.run(std::slice::from_ref(&command.resp)).await?;
        let result = json::reply(&replies[0], self.encoding).map_err(bad_request)?;
        Ok(ok(&json!({ "result": result })))
    }

    /// `POST /pipeline`: every command, in one pipeline; refused ones answered in their place.
    async fn pipeline(&self, body: &[u8]) -> Result<Answer, Failure> {
        let commands = commands::many(body, &self.endpoint.scripts).map_err(bad_request)?;
        let refusals: Vec<Option<String>> = commands
            .iter()
            .map(|command| command.refusal(self.read_only))
            .collect();
        let runnable: Vec<Bytes> = commands
            .iter()
            .zip(&refusals)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|(command, _)| command.resp.clone())
            .collect();
        let mut replies = self.run(&runnable).await?.into_iter();
        let results: Vec<Value> = refusals
            .into_iter()
            .map(|refusal| match refusal {
                Some(refusal) => json!({ "error": refusal }),
                None => {
                    let reply = replies.next().unwrap_or_default();
                    element(json::reply(&reply, self.encoding))
                }
            })
            .collect();
        Ok(ok(&Value::Array(results)))
    }

    /// `POST /multi-exec`: the commands in one transaction. A refused command refuses the
    /// whole of it, as an error while queueing makes Redis discard a transaction.
    async fn transaction(&self, body: &[u8]) -> Result<Answer, Failure> {
        let commands = commands::many(body, &self.endpoint.scripts).map_err(bad_request)?;
        if let Some(refusal) = commands
            .iter()
            .find_map(|command| command.refusal(self.read_only))
        {
            return Err(bad_request(refusal));
        }
        let wrap = |word: &str| Command::new(&[word]).map(|command| command.resp);
        let mut sent = vec![wrap("MULTI").map_err(bad_request)?];
        sent.extend(commands.iter().map(|command| command.resp.clone()));
        sent.push(wrap("EXEC").map_err(bad_request)?);
        let replies = self.run(&sent).await?;
        let exec = replies.last().cloned().unwrap_or_default();
        let Some(elements) = json::elements(&exec) else {
            // Discarded (`EXECABORT`), or Redis could not run it: one error.
            let message = match json::reply(&exec, self.encoding) {
                Err(message) => message,
                Ok(_) => "ERR keyward: the transaction did not run".into(),
            };
            return Err(bad_request(message));
        };
        let results = elements
            .into_iter()
            .map(|reply| element(json::reply(reply, self.encoding)))
            .collect();
        Ok(ok(&Value::Array(results)))
    }

    /// An event stream of the messages of the channels (or patterns) in the path. Whatever
    /// the body holds (`@upstash/redis` sends `[]`), only the path says what to subscribe to.
    async fn subscribe(&self, path: &str) -> Result<Answer, Failure> {
        let endpoint = self.endpoint;
        let command = commands::from_path(path, b"", &endpoint.scripts).map_err(bad_request)?;
        let mut connection = exchange::open(endpoint, &self.caller).await?;
        let first = connection
            .exchange(std::slice::from_ref(&command.resp))
            .await
            .pop()
            .unwrap_or_else(exchange::unanswered);
        // Refused (a deny rule, Redis): an error as for any command, not a stream.
        json::reply(&first, Encoding::Plain).map_err(bad_request)?;
        let (events, relay) = events::stream(connection, &first);
        endpoint.tasks.spawn(relay);
        let mut response = Response::new(Either::Right(events));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    async fn run(&self, commands: &[Bytes]) -> Result<Vec<Bytes>, Failure> {
        let endpoint = self.endpoint;
        exchange::run(endpoint, &self.caller, commands).await
    }
}

/// One element of a pipeline's or a transaction's answer.
fn element(reply: Result<Value, String>) -> Value {
    match reply {
        Ok(result) => json!({ "result": result }),
        Err(message) => json!({ "error": message }),
    }
}

/// The body, once it has all arrived: within the request size limit and [`BODY_TIMEOUT`].
/// A body that declares a length over the limit is refused before any of it is read.
async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR the request body is over the request size limit (1 GiB)".to_string(),
        )
    };
    if body.size_hint().lower() > MAX_REQUEST_LEN as u64 {
        return Err(too_large());
    }
    let limited = Limited::new(body, MAX_REQUEST_LEN);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(bad_request(format!(
            "ERR cannot read the request body: {error}"
        ))),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("ERR the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn bad_request(message: String) -> Failure {
    (StatusCode::BAD_REQUEST, message)
}

fn ok(body: &Value) -> Answer {
    respond_json(StatusCode::OK, body)
}

fn error(status: StatusCode, message: String) -> Answer {
    respond_json(status, &json!({ "error": message }))
}

fn respond_json(status: StatusCode, body: &Value) -> Answer {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
