//! Which signal asked keyward to stop, since SIGTERM (an orchestrator draining the pod) and
//! SIGINT (a person at a terminal) get different grace periods.

use tokio::signal::unix::{signal, SignalKind};

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
