//! Signals: which one asked keyward to stop, since SIGTERM (an orchestrator draining the pod)
//! and SIGINT (a person at a terminal) get different grace periods; and SIGHUP, which reloads
//! the config.

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::reload::{LiveConfig, Trigger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Terminate,
    Interrupt,
}

/// SIGTERM and SIGINT, caught from the moment this is created: created before keyward listens,
/// so a signal that arrives right after the port opens is never left to the default action
/// (which would kill the process without draining).
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn wait(mut self) -> Stop {
        tokio::select! {
            _ = self.terminate.recv() => Stop::Terminate,
            _ = self.interrupt.recv() => Stop::Interrupt,
        }
    }
}

/// Reloads the config on every SIGHUP, for as long as keyward runs. The handler is installed
/// before this returns, for the same reason as [`StopSignals`].
pub fn reload_on_hangup(live: Arc<LiveConfig>) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let live = Arc::clone(&live);
            let _ =
                tokio::task::spawn_blocking(move || live.reload(Trigger::Request("SIGHUP"))).await;
        }
    });
    Ok(())
}
