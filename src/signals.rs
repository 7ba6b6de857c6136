//! Signals: which one asked keyward to stop, since SIGTERM (an orchestrator draining the pod)
//! and SIGINT (a person at a terminal) get different grace periods; and SIGHUP, which reloads
//! the config.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::reload::{LiveConfig, Trigger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Terminate,
    Interrupt,
}

pub async fn wait_for_stop() -> std::io::Result<Stop> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => Stop::Terminate,
        _ = interrupt.recv() => Stop::Interrupt,
    })
}

/// Reloads the config on every SIGHUP, for as long as keyward runs.
pub async fn reload_on_hangup(live: Arc<LiveConfig>) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    while hangups.recv().await.is_some() {
        let live = Arc::clone(&live);
        let _ = tokio::task::spawn_blocking(move || live.reload(Trigger::Request("SIGHUP"))).await;
    }
    Ok(())
}
