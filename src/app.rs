//! Starting keyward from a config and stopping it on a signal.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::Context;
use crate::signals::{self, Stop};
use crate::upstream::{Upstream, UpstreamSettings};
use crate::{admin, metrics, server};

/// SIGINT means a person is waiting at a terminal: drain, but not for long.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// Runs the proxy until SIGTERM or SIGINT, then drains within the grace period.
pub async fn run(config: Config) -> Result<(), String> {
    serve(config, async {
        signals::wait_for_stop()
            .await
            .map_err(|e| format!("cannot watch signals: {e}"))
    })
    .await
}

/// Runs the proxy until `stop` completes, then drains within the grace period. Embedders
/// (benchmarks) pass their own stop; the binary passes the signal watcher.
pub async fn serve(
    config: Config,
    stop: impl std::future::Future<Output = Result<Stop, String>>,
) -> Result<(), String> {
    let prometheus = metrics::install()?;
    let settings = UpstreamSettings::from_config(&config)?;
    let listener = TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen.address))?;
    let admin_listener = TcpListener::bind(config.admin.address)
        .await
        .map_err(|e| format!("cannot serve admin on {}: {e}", config.admin.address))?;

    let upstream = Upstream::start(settings);
    let context = Arc::new(Context::new(
        upstream,
        config.upstream.request_timeout.get(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        prometheus,
        Arc::clone(&context),
    ));
    let sessions = TaskTracker::new();
    tokio::spawn(server::accept_clients(
        listener,
        Arc::clone(&context),
        config.listen.max_clients.get(),
        sessions.clone(),
    ));
    tracing::info!(
        listen = %config.listen.address,
        admin = %config.admin.address,
        upstream = %config.upstream.address,
        "keyward {} started",
        env!("CARGO_PKG_VERSION"),
    );

    let stop = stop.await?;
    let grace = match stop {
        Stop::Terminate => config.shutdown.grace_period.get(),
        Stop::Interrupt => config.shutdown.grace_period.get().min(INTERRUPT_GRACE),
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
    Ok(())
}
