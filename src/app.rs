//! Starting keyward from a config and stopping it on a signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::Context;
use crate::reload::{self, LiveConfig};
use crate::signals::{self, Stop, StopSignals};
use crate::tls::ServerTls;
use crate::upstream::{invalidations, Upstream, UpstreamSettings};
use crate::{admin, http_api, metrics, server};

/// SIGINT means a person is waiting at a terminal: drain, but not for long.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// How often idle rate-limit buckets are dropped.
const JANITOR_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the proxy until SIGTERM or SIGINT, then drains within the grace period. `source` is the
/// config file that `config` came from, with its text; the file is watched for changes.
pub async fn run(config: Config, source: Option<(&Path, &str)>) -> Result<(), String> {
    let signals = StopSignals::install().map_err(|e| format!("cannot watch signals: {e}"))?;
    serve(config, source, async move { Ok(signals.wait().await) }).await
}

/// Runs the proxy until `stop` completes, then drains within the grace period. Embedders
/// (benchmarks) pass their own stop; the binary passes the signal watcher.
pub async fn serve(
    config: Config,
    source: Option<(&Path, &str)>,
    stop: impl std::future::Future<Output = Result<Stop, String>>,
) -> Result<(), String> {
    // The requests' clock calibrates itself on first use (up to 200 ms): before the first
    // client, not during its first request.
    quanta::Instant::now();
    let prometheus = metrics::install()?;
    metrics::max_clients(config.listen.max_clients.get());
    let settings = UpstreamSettings::from_config(&config)?;
    let listen_password = config.listen_password()?;
    let admin_token = config.admin_token()?;
    let listen_tls = config
        .listen
        .tls
        .as_ref()
        .map(|tls| ServerTls::from_config(tls, "listen").map(Arc::new))
        .transpose()?;
    let upstream = Upstream::start(settings);
    let (path, text) = source.map_or((None, ""), |(path, text)| (Some(path), text));
    let live = Arc::new(LiveConfig::new(path, config.clone(), text));
    let _watcher = match path {
        Some(_) => Some(reload::watch_file(Arc::clone(&live))?),
        None => None,
    };
    let _password_watcher = watch_password_file(&upstream, &live)?;
    signals::reload_on_hangup(Arc::clone(&live))
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    // Listen last, once every signal has its handler.
    let listener = TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen.address))?;
    let admin_listener = TcpListener::bind(config.admin.address)
        .await
        .map_err(|e| format!("cannot serve admin on {}: {e}", config.admin.address))?;
    let http_api = http_api::FrontDoor::open(&config).await?;

    tokio::spawn(forget_idle_buckets(Arc::clone(&live)));
    let context = Arc::new(Context::new(
        upstream,
        live,
        listen_password,
        config.listen.idle_timeout.map(|timeout| timeout.get()),
    ));
    tokio::spawn(invalidations::run(
        Arc::clone(&context.upstream),
        context.shutdown.clone(),
        Arc::clone(&context),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        prometheus,
        Arc::clone(&context),
        admin_token,
    ));
    let sessions = TaskTracker::new();
    tokio::spawn(server::accept_clients(
        listener,
        Arc::clone(&context),
        config.listen.max_clients.get(),
        listen_tls,
        sessions.clone(),
    ));
    if let Some(http_api) = http_api {
        tokio::spawn(http_api.serve(Arc::clone(&context), sessions.clone()));
    }
    tracing::info!(
        listen = %config.listen.address,
        http_api = ?config.http_api.as_ref().map(|api| api.address),
        admin = %config.admin.address,
        upstream = %config.upstream.address,
        "keyward {} started",
        env!("CARGO_PKG_VERSION"),
    );

    drain(stop.await?, &context, &sessions).await;
    Ok(())
}

/// Stops taking clients and lets the sessions finish what they were sent, within the grace
/// period.
async fn drain(stop: Stop, context: &Context, sessions: &TaskTracker) {
    // The config in force now: the grace period may have been changed by a reload.
    let grace_period = context.live.load().config.shutdown.grace_period.get();
    let grace = match stop {
        Stop::Terminate => grace_period,
        Stop::Interrupt => grace_period.min(INTERRUPT_GRACE),
    };
    tracing::info!(
        ?stop,
        ?grace,
        "stopping: no new clients, draining requests in flight"
    );
    context.shutdown.cancel();
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "grace period over; closing sessions that were still busy"
        );
    }
}

/// Reads the upstream password file again whenever it changes, or a reload is asked for, when
/// the config names one.
fn watch_password_file(
    upstream: &Arc<Upstream>,
    live: &LiveConfig,
) -> Result<Option<impl Drop>, String> {
    let Some(file) = upstream.settings().credentials.file() else {
        return Ok(None);
    };
    let reread = {
        let upstream = Arc::clone(upstream);
        move || upstream.reread_credentials()
    };
    live.also_on_request(reread.clone());
    let runtime = tokio::runtime::Handle::current();
    let watcher = reload::watch_directory_of(file, move || {
        let reread = reread.clone();
        runtime.spawn_blocking(reread);
    })?;
    Ok(Some(watcher))
}

/// Drops rate-limit buckets that are full again, so distinct keys do not pile up.
async fn forget_idle_buckets(live: Arc<LiveConfig>) {
    let mut ticks = tokio::time::interval(JANITOR_INTERVAL);
    loop {
        ticks.tick().await;
        for limiter in &live.load().policies.rate_limits {
            limiter.forget_idle();
        }
    }
}
